"""The lake: Parquet files per dataset and daily partition, written atomically.

Layout: ``<lake>/<dataset>/<partition>.parquet`` (``_all.parquet`` for unpartitioned datasets),
plus, for the event path's fast appends, ``<partition>.delta/*.parquet`` delta files and the
dataset's merge rule in ``_merge.json``.

* ``upsert`` replaces rows by key under a per-partition lock (read, merge, rewrite), so
  concurrent writers never lose each other's rows and applying the same rows twice leaves the
  files unchanged.
* ``append`` only writes the incoming rows as a delta file — no read, no rewrite of the
  partition — and readers merge base + deltas by the same rule (key, newest by provenance), so
  the result is exactly what ``upsert`` would have stored, and replays stay harmless. Every
  ``compact_after`` deltas the partition is compacted into its base file. A micro-batch that
  touches thirty partitions (late events) costs thirty small writes instead of thirty rewrites.

Merging is done in Arrow, not pandas.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import Field

UNPARTITIONED = "_all"
DELTA_SUFFIX = ".delta"
MERGE_RULE = "_merge.json"


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


@dataclass(frozen=True)
class LakeScan:
    """Partitions of a dataset read lazily, batch by batch (bounded memory): what a join that
    aggregates a large input as it goes consumes. ``to_table`` materializes it."""

    files: tuple[str, ...]
    columns: tuple[str, ...]

    def to_batches(self, files_per_batch: int = 128) -> Iterator[pa.RecordBatch]:
        """One batch per group of files, read by four threads; the next group is read while
        the caller works on the current one (two groups in memory at most)."""
        def read(f: str) -> pa.Table:
            return pq.ParquetFile(f).read(columns=list(self.columns))

        groups = [self.files[i:i + files_per_batch]
                  for i in range(0, len(self.files), files_per_batch)]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-scan") as pool:
            pending = [pool.submit(read, f) for f in groups[0]] if groups else []
            for i in range(len(groups)):
                current = [p.result() for p in pending]
                pending = [pool.submit(read, f) for f in groups[i + 1]] if i + 1 < len(groups) else []
                yield from pa.concat_tables(current).combine_chunks().to_batches()

    def to_table(self) -> pa.Table:
        return pads.dataset(list(self.files), format="parquet").to_table(columns=list(self.columns))

    def __len__(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)


class LakeResource(dg.ConfigurableResource):
    """Dataset storage shared by the event and batch paths."""

    path: str = Field(description="Root folder of the lake (CONFLUX_LAKE_PATH).")

    def file(self, dataset: str, partition: str | None = None) -> Path:
        return Path(self.path) / dataset / f"{partition or UNPARTITIONED}.parquet"

    def delta_dir(self, dataset: str, partition: str | None = None) -> Path:
        return Path(self.path) / dataset / f"{partition or UNPARTITIONED}{DELTA_SUFFIX}"

    def partitions(self, dataset: str) -> list[str]:
        folder = Path(self.path) / dataset
        if not folder.exists():
            return []
        names = {p.stem for p in folder.glob("*.parquet")}
        names |= {d.name[:-len(DELTA_SUFFIX)] for d in folder.glob(f"*{DELTA_SUFFIX}")
                  if any(d.glob("*.parquet"))}
        return sorted(names)

    def deltas(self, dataset: str, partition: str | None = None) -> list[Path]:
        folder = self.delta_dir(dataset, partition)
        return sorted(folder.glob("*.parquet")) if folder.exists() else []

    def merge_rule(self, dataset: str) -> dict | None:
        f = Path(self.path) / dataset / MERGE_RULE
        return json.loads(f.read_text()) if f.exists() else None

    def _set_merge_rule(self, dataset: str, rule: dict) -> None:
        if self.merge_rule(dataset) == rule:
            return
        f = Path(self.path) / dataset / MERGE_RULE
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(rule))
        os.replace(tmp, f)

    def _read_merged(self, dataset: str, partition: str | None) -> tuple[pa.Table | None, list[Path]]:
        """Base + deltas of one partition, merged; and the delta files that were read. A delta
        compacted away meanwhile is already in the base, so the read simply starts over."""
        for _ in range(20):
            f = self.file(dataset, partition)
            deltas = self.deltas(dataset, partition)
            try:
                base = pq.read_table(f) if f.exists() else None
                if not deltas:
                    return base, []
                incoming = pa.concat_tables([pq.read_table(d) for d in deltas],
                                            promote_options="permissive")
            except FileNotFoundError:
                continue
            rule = self.merge_rule(dataset)
            if rule is None:
                raise RuntimeError(f"{dataset}: delta files without {MERGE_RULE}")
            merged, _ = merge_by_key(base, incoming, rule["key"], order_by=rule["order_by"],
                                     keep_existing=rule["keep_existing"])
            return merged, deltas
        raise RuntimeError(f"{dataset}/{partition}: could not read a stable set of delta files")

    def read_partitions(self, dataset: str, partitions: list[str] | None = None,
                        columns: list[str] | None = None) -> pa.Table | None:
        """Several partitions (all when None) as one table: base files read by a few threads
        at once (Parquet decoding releases the GIL; per-file overhead dominates small daily
        files), partitions with pending deltas merged one by one. None when none holds data."""
        bulk, with_deltas = self._split(dataset, partitions)
        merged = []
        for name in with_deltas:
            table = self.read_table(dataset, name)
            if table is not None:
                merged.append(table.select(columns) if columns else table)
        try:
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-read") as pool:
                tables = list(pool.map(lambda f: pq.ParquetFile(f).read(columns=columns), bulk))
        except FileNotFoundError:  # a partition was compacted or rewritten meanwhile
            return self.read_partitions(dataset, partitions, columns)
        tables += merged
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]

    def _split(self, dataset: str, partitions: list[str] | None) -> tuple[list[str], list[str]]:
        """(base files of partitions without pending deltas, partitions with deltas), from one
        directory listing."""
        folder = Path(self.path) / dataset
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            return [], []
        names = self.partitions(dataset) if partitions is None else partitions
        files, merged = [], []
        for name in names:
            if f"{name}{DELTA_SUFFIX}" in present and self.deltas(dataset, name):
                merged.append(name)
            elif f"{name}.parquet" in present:
                files.append(os.path.join(folder, f"{name}.parquet"))
        return files, merged

    def scan(self, dataset: str, partitions: list[str] | None, columns: list[str]
             ) -> LakeScan | pa.Table | None:
        """Partitions for streaming: a ``LakeScan`` when they are all compacted base files,
        otherwise (pending deltas need merging) the merged table. None when nothing is stored."""
        files, merged = self._split(dataset, partitions)
        if merged:
            return self.read_partitions(dataset, partitions, columns)
        return LakeScan(tuple(files), tuple(columns)) if files else None

    def row_count(self, dataset: str, partition: str | None = None) -> int:
        """Rows stored in a partition (from Parquet metadata unless deltas must be merged)."""
        if self.deltas(dataset, partition):
            table = self.read_table(dataset, partition)
            return len(table) if table is not None else 0
        f = self.file(dataset, partition)
        return pq.ParquetFile(f).metadata.num_rows if f.exists() else 0

    def read_table(self, dataset: str, partition: str | None = None) -> pa.Table | None:
        return self._read_merged(dataset, partition)[0]

    def read(self, dataset: str, partition: str | None = None) -> pd.DataFrame | None:
        table = self.read_table(dataset, partition)
        return table.to_pandas() if table is not None else None

    def _write_file(self, target: Path, data: pd.DataFrame | pa.Table) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(_as_table(data), tmp)
        os.replace(tmp, target)
        return target

    def write(self, dataset: str, data: pd.DataFrame | pa.Table, partition: str | None = None) -> Path:
        """Replace one partition's content atomically (write a temp file, then rename); pending
        delta files of the partition are dropped, as the new content replaces them."""
        with self.locked(dataset, partition):
            target = self._write_file(self.file(dataset, partition), data)
            for d in self.deltas(dataset, partition):
                d.unlink(missing_ok=True)
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
        left alone. Pending delta files are folded into the base file."""
        incoming = _as_table(data)
        with self.locked(dataset, partition):
            current, deltas = self._read_merged(dataset, partition)
            result, written = merge_by_key(current, incoming, key, order_by=order_by,
                                           keep_existing=keep_existing)
            if current is not None and result.equals(current) and not deltas:
                return 0
            self._write_file(self.file(dataset, partition), result)
            for d in deltas:
                d.unlink(missing_ok=True)
            return written

    def append(self, dataset: str, data: pd.DataFrame | pa.Table, key: list[str],
               partition: str | None = None, *, order_by: list[str],
               keep_existing: bool = False, compact_after: int = 16) -> int:
        """Store ``data`` as a delta file of the partition, to be merged by ``key`` with the
        newest row by ``order_by`` winning (the oldest with ``keep_existing``) — the rule
        ``upsert`` applies, so the stored result is the same. Returns the rows appended."""
        incoming = _as_table(data)
        self._set_merge_rule(dataset, {"key": list(key), "order_by": list(order_by),
                                       "keep_existing": keep_existing})
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self._write_file(self.delta_dir(dataset, partition) / name, incoming)
        if len(self.deltas(dataset, partition)) >= compact_after:
            self.compact(dataset, partition)
        return len(incoming)

    def rewrite(self, dataset: str, partition: str | None,
                transform: Callable[[pa.Table | None], pa.Table | None]) -> None:
        """Replace a partition by ``transform(current content)`` under its lock (pending deltas
        are folded in first and dropped after); ``None`` from ``transform`` empties it."""
        with self.locked(dataset, partition):
            current, deltas = self._read_merged(dataset, partition)
            result = transform(current)
            target = self.file(dataset, partition)
            if result is None:
                target.unlink(missing_ok=True)
            else:
                self._write_file(target, result)
            for d in deltas:
                d.unlink(missing_ok=True)

    def compact(self, dataset: str, partition: str | None = None) -> int:
        """Fold the partition's delta files into its base file; returns how many were folded.
        A crash between the rewrite and the deletions leaves deltas that are already in the
        base: merging them again changes nothing."""
        with self.locked(dataset, partition):
            merged, deltas = self._read_merged(dataset, partition)
            if not deltas:
                return 0
            self._write_file(self.file(dataset, partition), merged)
            for d in deltas:
                d.unlink(missing_ok=True)
            return len(deltas)
