"""The lake: Parquet files per dataset and daily partition, written atomically.

Layout: ``<lake>/<dataset>/<partition>.parquet`` (``_all.parquet`` for unpartitioned datasets).
Upserts replace rows by key, so applying the same rows twice leaves the files unchanged.
"""

from __future__ import annotations

import os
import uuid
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

    def upsert(self, dataset: str, df: pd.DataFrame, key: list[str], partition: str | None = None,
               *, keep_existing: bool = False) -> int:
        """Insert or replace rows by ``key`` (the last row wins); with ``keep_existing`` (an
        append-only dataset) a stored row is never replaced and the first row wins.

        Returns the number of rows written (0 when nothing changed).
        """
        current = self.read(dataset, partition)
        keep = "first" if keep_existing else "last"
        incoming = df.drop_duplicates(subset=key, keep=keep)
        if current is None or current.empty:
            merged = incoming
        else:
            merged = pd.concat([current, incoming], ignore_index=True).drop_duplicates(
                subset=key, keep=keep)
        merged = merged.sort_values(key, kind="stable").reset_index(drop=True)
        if current is not None and list(current.columns) == list(merged.columns):
            if current.sort_values(key, kind="stable").reset_index(drop=True).equals(merged):
                return 0  # nothing new: leave the file (and its mtime) alone
        self.write(dataset, merged, partition)
        return len(incoming)
