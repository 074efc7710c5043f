"""Batch fallback of an event dataset: reconcile it against its batch source, then repair it.

The operational database holds the same rows the events describe (``ops.orders`` for
``orders``). Reconciliation compares the two by key over a date range and finds

* **missing** keys — in the source, not in the dataset (an event never arrived, or was
  dead-lettered);
* **extra** keys — in the dataset, not in the source (an event for a row that was rolled back);
* **changed** keys — in both, with different values (a lost update).

Repair makes the dataset's partitions equal to the source: missing and changed rows are written
with provenance ``batch:<table>`` and the repair time as ``__ts`` (so a replay of older events
cannot undo them, while a genuinely newer event still wins), extra rows are removed. A second
reconciliation then finds nothing and writes nothing: repairs are idempotent.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from conflux.core.declarations import EventDataset
from conflux.io.lake import ORIGIN_KEY, LakeResource, merge_by_key
from conflux.io.postgres import PostgresResource

EXAMPLES = 10


@dataclass
class Diff:
    """What differs between the batch source and the dataset (key columns only for extra)."""

    missing: pd.DataFrame
    extra: pd.DataFrame
    changed: pd.DataFrame

    @property
    def clean(self) -> bool:
        return not (len(self.missing) or len(self.extra) or len(self.changed))

    def counts(self) -> dict[str, int]:
        return {"missing": len(self.missing), "extra": len(self.extra),
                "changed": len(self.changed)}

    def examples(self, key: list[str]) -> dict[str, list]:
        """A few keys of each kind (for metadata and logs)."""
        def keys(df: pd.DataFrame) -> list:
            rows = df[key].head(EXAMPLES).astype(str).agg("|".join, axis=1) if len(df) else []
            return list(rows)
        return {"missing": keys(self.missing), "extra": keys(self.extra),
                "changed": keys(self.changed)}


def _comparable(df: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
    """Dates as ISO text, everything else as is: both sides compare alike."""
    out = df[fields].copy()
    for c in fields:
        if out[c].dtype == object and len(out) and isinstance(out[c].iloc[0], (dt.date, dt.datetime)):
            out[c] = out[c].map(lambda v: v.isoformat() if v is not None else None)
        elif out[c].dtype.kind == "M":
            out[c] = out[c].dt.strftime("%Y-%m-%d")
    return out


def _differs(a: pd.Series, b: pd.Series) -> np.ndarray:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        x, y = a.astype(float).to_numpy(), b.astype(float).to_numpy()
        return ~(np.isclose(x, y, rtol=1e-9, atol=1e-9) | (np.isnan(x) & np.isnan(y)))
    return (a.astype(str).to_numpy() != b.astype(str).to_numpy())


def diff_frames(source: pd.DataFrame, stored: pd.DataFrame, key: list[str],
                fields: list[str]) -> Diff:
    """Compare ``stored`` with ``source`` by ``key`` over the contract ``fields`` (pure)."""
    src = _comparable(source, fields)
    cur = _comparable(stored, fields) if len(stored) else pd.DataFrame(columns=fields)
    joined = src.merge(cur, on=key, how="outer", suffixes=("", "__stored"), indicator=True)
    missing_mask = joined["_merge"] == "left_only"
    extra = joined.loc[joined["_merge"] == "right_only", key].reset_index(drop=True)
    both = joined[joined["_merge"] == "both"]
    changed_mask = np.zeros(len(both), dtype=bool)
    for c in fields:
        if c not in key:
            changed_mask |= _differs(both[c], both[f"{c}__stored"])
    missing = source.loc[source.set_index(key).index.isin(
        joined.loc[missing_mask].set_index(key).index)].reset_index(drop=True)
    changed_keys = both.loc[changed_mask].set_index(key).index
    changed = source.loc[source.set_index(key).index.isin(changed_keys)].reset_index(drop=True)
    return Diff(missing=missing, extra=extra, changed=changed)


def read_source(ds: EventDataset, postgres: PostgresResource, start: dt.date | None,
                end: dt.date | None) -> pd.DataFrame:
    """Rows of the batch source within ``[start, end]`` event days (all when unbounded)."""
    schema, table = ds.fallback.source_table.split(".", 1)
    cols = ", ".join(f'"{c}"' for c in ds.fields)
    sql, params = f'select {cols} from "{schema}"."{table}"', []
    if ds.event_time and (start or end):
        sql += f' where "{ds.event_time}"::date between %s and %s'
        params = [start or dt.date.min, end or dt.date.max]
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    return pd.DataFrame.from_records(rows, columns=list(ds.fields))


def _partition_of(value) -> str:
    return (value.date() if isinstance(value, dt.datetime) else value).isoformat()


def partitions_in(ds: EventDataset, lake: LakeResource, source: pd.DataFrame,
                  start: dt.date | None, end: dt.date | None) -> list[str | None]:
    """The dataset partitions to compare: those in the range on either side."""
    if not ds.partitioned:
        return [None]
    names = set(source[ds.event_time].map(_partition_of)) if len(source) else set()
    for p in lake.partitions(ds.name):
        day = dt.date.fromisoformat(p)
        if (start is None or day >= start) and (end is None or day <= end):
            names.add(p)
    return sorted(names)


@dataclass
class Reconciliation:
    diff: Diff
    partitions_compared: int
    partitions_repaired: list[str]
    source_rows: int
    stored_rows: int
    commits: dict = field(default_factory=dict)  # repaired partition → its lake Commit
    written: dict = field(default_factory=dict)  # repaired partition → rows inserted or updated


def reconcile(ds: EventDataset, *, postgres: PostgresResource, lake: LakeResource,
              start: dt.date | None = None, end: dt.date | None = None,
              repair: bool = True, remove_extra: bool = True) -> Reconciliation:
    """Compare ``ds`` with its batch source over ``[start, end]`` and (optionally) repair it."""
    if ds.fallback is None:
        raise ValueError(f"{ds.name} declares no batch fallback source")
    key, fields = list(ds.key), list(ds.fields)
    source = read_source(ds, postgres, start, end)
    partitions = partitions_in(ds, lake, source, start, end)
    frames = [f for p in partitions if (f := lake.read(ds.name, p)) is not None and len(f)]
    stored = (pd.concat(frames, ignore_index=True)[fields] if frames
              else pd.DataFrame(columns=fields))
    diff = diff_frames(source, stored, key, fields)  # one vectorised comparison for the range
    repaired: list[str] = []
    commits: dict = {}
    written: dict = {}
    if repair and not diff.clean:
        by_part = lambda df: (df[ds.event_time].map(_partition_of) if ds.partitioned and len(df)
                              else pd.Series([None] * len(df), index=df.index, dtype=object))
        fix = pd.concat([diff.missing, diff.changed], ignore_index=True)
        drop = (stored.merge(diff.extra, on=key) if remove_extra and len(diff.extra)
                else stored.iloc[0:0])
        # a changed row whose day changed leaves its old day (a key is unique in the dataset)
        old = stored.merge(diff.changed[key + [ds.event_time]].rename(
            columns={ds.event_time: "__new_time"}), on=key) if len(diff.changed) else stored.iloc[0:0]
        if ds.partitioned and len(old):
            moved = old[old[ds.event_time].map(_partition_of) != old["__new_time"].map(_partition_of)]
            drop = pd.concat([drop, moved[stored.columns]], ignore_index=True)
        rows_by: dict = {p: g for p, g in fix.groupby(by_part(fix), dropna=False)} if len(fix) else {}
        drop_by: dict = {p: g for p, g in drop.groupby(by_part(drop), dropna=False)} if len(drop) else {}
        touched = sorted(rows_by.keys() | drop_by.keys(), key=str)
        transforms = {None if p is None else p: _repair(ds, rows_by.get(p), drop_by.get(p))
                      for p in touched}
        commit = lake.rewrite_many(ds.name, transforms, metadata={
            ORIGIN_KEY: f"repair from {ds.fallback.source_table}"})
        repaired = [p or "" for p in touched]
        commits = {p: commit for p in repaired} if commit is not None else {}
        written = {p or "": len(rows_by.get(p, ())) for p in touched}
    return Reconciliation(diff, len(partitions), repaired, len(source), len(stored), commits,
                          written)


def _repair(ds: EventDataset, fix: pd.DataFrame | None, drop: pd.DataFrame | None):
    """The transform repairing one partition: rows of the source written (with ``batch:``
    provenance, newer than any event), keys of ``drop`` removed."""
    now_ms = int(time.time() * 1000)
    rows = pa.Table.from_pandas(fix, preserve_index=False) if fix is not None and len(fix) else None
    if rows is not None:
        n = len(rows)
        rows = (rows.append_column("__topic", pa.array([f"batch:{ds.fallback.source_table}"] * n))
                .append_column("__partition", pa.array([-1] * n, pa.int32()))
                .append_column("__offset", pa.array([-1] * n, pa.int64()))
                .append_column("__ts", pa.array([now_ms] * n, pa.int64()))
                .append_column("__correlation_id", pa.array([""] * n, pa.string())))
    drop_keys = (set(map(tuple, drop[list(ds.key)].astype(str).to_numpy()))
                 if drop is not None and len(drop) else set())

    def transform(current: pa.Table | None) -> pa.Table | None:
        table = current
        if table is not None and drop_keys:
            keys = table.select(list(ds.key)).to_pandas().astype(str).to_numpy()
            keep = np.array([tuple(k) not in drop_keys for k in keys], dtype=bool)
            table = table.filter(pa.array(keep))
        if rows is not None:
            table, _ = merge_by_key(table, rows, list(ds.key), order_by=["__ts", "__offset"])
        return table if table is not None and len(table) else rows

    return transform
