"""The lake: Parquet files per dataset and daily partition, written atomically.

Layout: ``<lake>/<dataset>/<partition>.parquet`` (``_all.parquet`` for unpartitioned datasets).
Upserts replace rows by key under a per-partition lock, so concurrent writers (an inline sensor
tick and an ingest run) never lose each other's rows, and applying the same rows twice leaves
the files unchanged. Merging is done in Arrow: a micro-batch touching a thousand partitions
costs a thousand small Parquet writes, not a thousand pandas round trips.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

UNPARTITIONED = "_all"


def _as_table(data: pd.DataFrame | pa.Table) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)


def _align(incoming: pa.Table, current: pa.Table) -> pa.Table:
    """Cast ``incoming`` to the stored schema where the columns match (e.g. int → double)."""
    if incoming.schema.names == current.schema.names and incoming.schema != current.schema:
        try:
            return incoming.cast(current.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return incoming
    return incoming


def merge_by_key(current: pa.Table | None, incoming: pa.Table, key: list[str], *,
                 order_by: list[str] | None = None, keep_existing: bool = False) -> tuple[pa.Table, int]:
    """Upsert ``incoming`` into ``current``; returns (result sorted by key, incoming rows kept).

    Per key the row that sorts last by ``order_by`` wins (the incoming row when None); with
    ``keep_existing`` the first one wins. On a tie the stored row wins.
    """
    parts = [incoming.append_column("__src", pa.array(np.ones(len(incoming), dtype=np.int8)))]
    if current is not None and len(current):
        incoming = _align(incoming, current)
        parts = [current.append_column("__src", pa.array(np.zeros(len(current), dtype=np.int8))),
                 incoming.append_column("__src", pa.array(np.ones(len(incoming), dtype=np.int8)))]
    table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    # precedence: later in this order wins; ties between stored and incoming go to stored
    if keep_existing:
        sort_keys = [(c, "descending") for c in (order_by or [])] + [("__src", "descending")]
    elif order_by:
        sort_keys = [(c, "ascending") for c in order_by] + [("__src", "descending")]
    else:
        sort_keys = [("__src", "ascending")]
    order = pc.sort_indices(table, sort_keys=sort_keys) if len(table) > 1 else pa.array([0])
    ranked = table.take(order).append_column("__rank", pa.array(np.arange(len(table))))
    winners = ranked.group_by(key, use_threads=False).aggregate([("__rank", "max")])
    kept = ranked.filter(pc.is_in(ranked["__rank"], winners["__rank_max"]))
    written = int(pc.sum(kept["__src"]).as_py() or 0)
    kept = kept.drop_columns(["__src", "__rank"])
    kept = kept.take(pc.sort_indices(kept, sort_keys=[(k, "ascending") for k in key]))
    return kept, written


class LakeResource(dg.ConfigurableResource):
    """Dataset storage shared by the event and batch paths."""

    path: str = Field(description="Root folder of the lake (CONFLUX_LAKE_PATH).")

    def file(self, dataset: str, partition: str | None = None) -> Path:
        return Path(self.path) / dataset / f"{partition or UNPARTITIONED}.parquet"

    def partitions(self, dataset: str) -> list[str]:
        folder = Path(self.path) / dataset
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_table(self, dataset: str, partition: str | None = None) -> pa.Table | None:
        f = self.file(dataset, partition)
        return pq.read_table(f) if f.exists() else None

    def read(self, dataset: str, partition: str | None = None) -> pd.DataFrame | None:
        table = self.read_table(dataset, partition)
        return table.to_pandas() if table is not None else None

    def write(self, dataset: str, data: pd.DataFrame | pa.Table, partition: str | None = None) -> Path:
        """Replace one partition's content atomically (write a temp file, then rename)."""
        target = self.file(dataset, partition)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(_as_table(data), tmp)
        os.replace(tmp, target)
        return target

    @contextlib.contextmanager
    def locked(self, dataset: str, partition: str | None = None) -> Iterator[None]:
        """Exclusive lock on one partition across processes (read-modify-write safety)."""
        lock = Path(self.path) / dataset / f".{partition or UNPARTITIONED}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def upsert(self, dataset: str, data: pd.DataFrame | pa.Table, key: list[str],
               partition: str | None = None, *, order_by: list[str] | None = None,
               keep_existing: bool = False) -> int:
        """Insert or replace rows by ``key`` (see ``merge_by_key``); returns how many incoming
        rows were written — 0 when the partition already held them, in which case the file is
        left alone."""
        incoming = _as_table(data)
        with self.locked(dataset, partition):
            current = self.read_table(dataset, partition)
            result, written = merge_by_key(current, incoming, key, order_by=order_by,
                                           keep_existing=keep_existing)
            if current is not None and result.equals(current):
                return 0
            self.write(dataset, result, partition)
            return written
