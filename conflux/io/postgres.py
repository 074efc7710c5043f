"""Postgres access for the platform (the ``ops`` source schema, later the registry and outbox)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import psycopg
from pydantic import Field


class PostgresResource(dg.ConfigurableResource):
    """A Postgres database reached by URL (``CONFLUX_POSTGRES_URL``)."""

    url: str = Field(description="libpq URL of the platform database, e.g. "
                                 "postgresql://user:pass@host:5432/conflux")
    connect_timeout_s: int = Field(default=5, description="Seconds to wait for a connection.")

    def connect(self, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit, connect_timeout=self.connect_timeout_s)

    def read_table(self, schema: str, table: str, columns: list[str]) -> pd.DataFrame:
        """Read ``columns`` of ``schema.table`` into a DataFrame (column order as given)."""
        cols = ", ".join(f'"{c}"' for c in columns)
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f'select {cols} from "{schema}"."{table}"')
            rows = cur.fetchall()
        return pd.DataFrame.from_records(rows, columns=columns)


def _pg_type(series: pd.Series) -> str:
    kind = series.dtype.kind
    if kind in "iu":
        return "bigint"
    if kind == "f":
        return "double precision"
    if kind == "b":
        return "boolean"
    if kind == "M":
        return "timestamptz"
    sample = series.dropna().head(1)
    if len(sample) and type(sample.iloc[0]).__name__ == "date":
        return "date"
    return "text"


def replace_table(conn: psycopg.Connection, schema: str, table: str, df: pd.DataFrame,
                  key: list[str]) -> int:
    """(Re)create ``schema.table`` with ``df``'s columns and primary ``key``, loaded by COPY.

    Runs inside the caller's transaction; returns rows written.
    """
    cols = ", ".join(f'"{c}" {_pg_type(df[c])}' for c in df.columns)
    pk = ", ".join(f'"{k}"' for k in key)
    conn.execute(f'create schema if not exists "{schema}"')
    conn.execute(f'drop table if exists "{schema}"."{table}"')
    conn.execute(f'create table "{schema}"."{table}" ({cols}, primary key ({pk}))')
    names = ", ".join(f'"{c}"' for c in df.columns)
    with conn.cursor().copy(f'copy "{schema}"."{table}" ({names}) from stdin') as copy:
        for row in df.itertuples(index=False, name=None):
            copy.write_row(row)
    return len(df)
