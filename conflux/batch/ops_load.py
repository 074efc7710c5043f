"""Loading a batch dataset from its ``ops`` table: incremental where the table allows, a
snapshot otherwise.

A table with a key and an ``updated_at`` column (the demo's ``ops`` tables get one, kept
current by a trigger) is read incrementally: only rows changed since the previous load's
watermark — minus an overlap window, because a transaction that commits late can carry an
``updated_at`` older than rows already read — are upserted by key into the lake (the overlap
re-reads a few rows; the upsert makes that harmless). The watermark is the newest
``updated_at`` read, kept in the materialization's metadata. Deleted rows leave no trace in an
incremental read, so every ``full_every``-th load (and any load without a watermark) takes a
full snapshot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from conflux.core.declarations import BatchDataset
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource

UPDATED_AT = "updated_at"
TRIGGER = """
create or replace function ops.touch_updated_at() returns trigger language plpgsql as $$
begin new.updated_at := now(); return new; end $$;
"""


def add_updated_at(conn, table: str) -> None:
    """Give ``ops.<table>`` an ``updated_at`` column kept current on every insert and update."""
    conn.execute(TRIGGER)
    conn.execute(f'alter table ops."{table}" add column if not exists {UPDATED_AT} '
                 f"timestamptz not null default now()")
    conn.execute(f'drop trigger if exists touch_updated_at on ops."{table}"')
    conn.execute(f'create trigger touch_updated_at before update on ops."{table}" '
                 f"for each row execute function ops.touch_updated_at()")
    conn.execute(f'create index if not exists "{table}_updated_at" on ops."{table}" ({UPDATED_AT})')


@dataclass
class Loaded:
    mode: str            # "incremental" | "snapshot"
    rows_read: int
    rows_written: int
    watermark: str | None  # newest updated_at read (ISO), None without the column
    reason: str


def _has_column(postgres: PostgresResource, schema: str, table: str, column: str) -> bool:
    with postgres.connect() as conn:
        return conn.execute(
            "select 1 from information_schema.columns where table_schema = %s and "
            "table_name = %s and column_name = %s", [schema, table, column]).fetchone() is not None


def load(ds: BatchDataset, *, postgres: PostgresResource, lake: LakeResource,
         previous_watermark: str | None, loads_since_full: int) -> Loaded:
    """Load ``ds`` from its source table into the lake (see the module docstring)."""
    schema, table = ds.source_table.split(".", 1)
    fields = list(ds.fields)
    incremental_ok = _has_column(postgres, schema, table, UPDATED_AT)
    cols = ", ".join(f'"{c}"' for c in fields)
    stamp = f', max("{UPDATED_AT}") over ()' if incremental_ok else ""
    sql, params = f'select {cols}{stamp} from "{schema}"."{table}"', []
    if not incremental_ok:
        reason = f"{ds.source_table} has no {UPDATED_AT} column"
    elif previous_watermark is None or not lake.partitions(ds.name):
        reason = "no previous load"
    elif loads_since_full + 1 >= ds.full_every:
        reason = f"every {ds.full_every}th load is a full snapshot (deleted rows)"
    else:
        reason = ""
        since = dt.datetime.fromisoformat(previous_watermark) - dt.timedelta(seconds=ds.overlap_s)
        sql = (f'select {cols}, max("{UPDATED_AT}") over () from "{schema}"."{table}" '
               f'where "{UPDATED_AT}" > %s')
        params = [since]
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    names = fields + (["__watermark"] if incremental_ok else [])
    df = pd.DataFrame.from_records(rows, columns=names)
    watermark = None
    if incremental_ok:
        newest = df["__watermark"].max() if len(df) else None
        watermark = newest.isoformat() if newest is not None else previous_watermark
        df = df.drop(columns="__watermark")
    if reason:
        lake.write(ds.name, df)
        return Loaded("snapshot", len(df), len(df), watermark, reason)
    written = lake.upsert(ds.name, df, list(ds.key)).rows if len(df) else 0
    return Loaded("incremental", len(df), written, watermark,
                  f"rows updated since {previous_watermark} (minus {ds.overlap_s:g}s overlap)")
