"""The lake: Parquet files per dataset and daily partition, written atomically.

Layout: ``<lake>/<dataset>/<partition>.parquet`` (``_all.parquet`` for unpartitioned datasets).
Upserts replace rows by key, so applying the same rows twice leaves the files unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

UNPARTITIONED = "_all"


class LakeResource(dg.ConfigurableResource):
    """Dataset storage shared by the event and batch paths."""

    path: str = Field(description="Root folder of the lake (CONFLUX_LAKE_PATH).")

    def file(self, dataset: str, partition: str | None = None) -> Path:
        return Path(self.path) / dataset / f"{partition or UNPARTITIONED}.parquet"

    def partitions(self, dataset: str) -> list[str]:
        folder = Path(self.path) / dataset
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read(self, dataset: str, partition: str | None = None) -> pd.DataFrame | None:
        f = self.file(dataset, partition)
        return pq.read_table(f).to_pandas() if f.exists() else None

    def write(self, dataset: str, df: pd.DataFrame, partition: str | None = None) -> Path:
        """Replace one partition's content atomically (write a temp file, then rename)."""
        target = self.file(dataset, partition)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
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

    def upsert(self, dataset: str, df: pd.DataFrame, key: list[str], partition: str | None = None,
               *, order_by: list[str] | None = None, keep_existing: bool = False) -> int:
        """Insert or replace rows by ``key`` under the partition's lock; see ``_upsert``."""
        with self.locked(dataset, partition):
            return self._upsert(dataset, df, key, partition, order_by=order_by,
                                keep_existing=keep_existing)

    def _upsert(self, dataset: str, df: pd.DataFrame, key: list[str], partition: str | None,
                *, order_by: list[str] | None, keep_existing: bool) -> int:
        """Insert or replace rows by ``key``; returns how many incoming rows were written.

        Per key the row that sorts last by ``order_by`` wins (the incoming row when None); with
        ``keep_existing`` (append-only data) the first one wins and a stored row is never
        replaced. On a tie the stored row wins, and a result equal to what is stored is not
        written, so applying the same rows twice changes nothing.
        """
        current = self.read(dataset, partition)
        incoming = df.assign(__new=True)
        if current is None or current.empty:
            merged = incoming
        else:
            stored = current.assign(__new=False)
            # the row meant to win a tie goes last (drop_duplicates keeps the last)
            first, last = (incoming, stored) if order_by or keep_existing else (stored, incoming)
            merged = pd.concat([first, last], ignore_index=True)
            if order_by:
                merged = merged.sort_values(order_by, kind="stable")
        if keep_existing:
            merged = merged.iloc[::-1]  # now the last row of a key is its first arrival
        merged = merged.drop_duplicates(subset=key, keep="last")
        result = merged.drop(columns="__new").sort_values(key, kind="stable").reset_index(drop=True)
        if current is not None and list(current.columns) == list(result.columns) and \
                current.sort_values(key, kind="stable").reset_index(drop=True).equals(result):
            return 0  # nothing new: leave the file (and its mtime) alone
        self.write(dataset, result, partition)
        return int(merged["__new"].sum())
