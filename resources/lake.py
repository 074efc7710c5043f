"""The lake: Parquet files per dataset and daily partition, written atomically.

Layout: ``<lake>/<dataset>/<partition>.parquet`` (``_all.parquet`` for unpartitioned datasets),
plus, for the event path's fast appends, ``<partition>.delta/*.parquet`` delta files and the
dataset's merge rule in ``_merge.json``; a partition written together with a checkpoint (a
projection and what it has folded) keeps it in ``_checkpoint/<partition>/<generation>/``.

* ``upsert`` replaces rows by key under a per-partition lock (read, merge, rewrite), so
  concurrent writers never lose each other's rows and applying the same rows twice leaves the
  files unchanged.
* ``append`` only writes the incoming rows as a delta file — no read, no rewrite of the
  partition — and readers merge base + deltas by the same rule (key, newest by provenance), so
  the result is exactly what ``upsert`` would have stored, and replays stay harmless. Every
  ``compact_after`` deltas the partition is compacted into its base file. A micro-batch that
  touches thirty partitions (late events) costs thirty small writes instead of thirty rewrites.
* append-only datasets (``keep_existing``) never replace a stored row: the earliest write of a
  key wins — base file first, then delta files in write order — whatever the timestamps of
  later copies say, so compaction and replays cannot change a stored row either.
* ``rewrite_checkpointed`` replaces a partition and its checkpoint in one atomic commit.

Merging is done in Arrow, not pandas.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
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

from conflux.errors import LakeError

UNPARTITIONED = "_all"
DELTA_SUFFIX = ".delta"
MERGE_RULE = "_merge.json"
CHECKPOINT_DIR = "_checkpoint"
CHECKPOINT_KEY = b"conflux.checkpoint"  # Parquet metadata naming a partition's checkpoint


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
    ``keep_existing`` the stored row always wins, and ``order_by`` (first = oldest) only picks
    among the incoming rows of a key that is not stored yet. On a tie the stored row wins.
    """
    return merge_writes(current, [incoming], key, order_by=order_by, keep_existing=keep_existing)


def merge_writes(current: pa.Table | None, writes: list[pa.Table], key: list[str], *,
                 order_by: list[str] | None = None,
                 keep_existing: bool = False) -> tuple[pa.Table, int]:
    """``merge_by_key`` of several writes at once, in the order they were written (a base file
    and its delta files); returns the result and how many rows of the *last* write were kept.

    With ``keep_existing`` (append-only datasets) the earliest write holding a key wins — a row
    once stored is never replaced, whatever the timestamps of later copies say — and
    ``order_by`` only ranks the rows of one write. Otherwise all writes rank as one incoming batch.
    """
    stored = current is not None and len(current) > 0
    parts = [current, *(_align(w, current) for w in writes)] if stored else list(writes)
    # source rank: 0 = stored, then the writes 1.. in order (all 1 unless keep_existing)
    ranks = ([0] if stored else []) + [i + 1 if keep_existing else 1 for i in range(len(writes))]
    tagged = [t.append_column("__src", pa.array(np.full(len(t), r, dtype=np.int32)))
              for t, r in zip(parts, ranks)]
    table = pa.concat_tables(tagged, promote_options="permissive") if len(tagged) > 1 else tagged[0]
    # precedence: later in this order wins; ties between stored and incoming go to stored
    if keep_existing:
        sort_keys = [("__src", "descending")] + [(c, "descending") for c in (order_by or [])]
    elif order_by:
        sort_keys = [(c, "ascending") for c in order_by] + [("__src", "descending")]
    else:
        sort_keys = [("__src", "ascending")]
    order = pc.sort_indices(table, sort_keys=sort_keys) if len(table) > 1 else pa.array([0])
    ranked = table.take(order).append_column("__rank", pa.array(np.arange(len(table))))
    winners = ranked.group_by(key, use_threads=False).aggregate([("__rank", "max")])
    kept = ranked.filter(pc.is_in(ranked["__rank"], winners["__rank_max"]))
    written = int(pc.sum(pc.equal(kept["__src"], ranks[-1])).as_py() or 0)
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
                writes = [pq.read_table(d) for d in deltas]  # in write order (by name)
            except FileNotFoundError:
                continue
            rule = self.merge_rule(dataset)
            if rule is None:
                raise LakeError(f"{dataset}: delta files without {MERGE_RULE}")
            if not rule["keep_existing"]:  # one incoming batch: the newest by order_by wins
                writes = [pa.concat_tables(writes, promote_options="permissive")]
            merged, _ = merge_writes(base, writes, rule["key"], order_by=rule["order_by"],
                                     keep_existing=rule["keep_existing"])
            return merged, deltas
        raise LakeError(f"{dataset}/{partition}: could not read a stable set of delta files")

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

    def find(self, dataset: str, column: str, value: str) -> list[tuple[str, dict]]:
        """Every stored row whose ``column`` equals ``value``, with its partition — base files
        and pending delta files alike (a row a later write superseded in a delta may show
        too: this answers "where did it go", not "what is current"). One multi-threaded Arrow
        scan over all the dataset's files, reading the column and the matching rows only."""
        folder = Path(self.path) / dataset
        for _ in range(5):  # a file compacted away meanwhile: list again
            if not folder.exists():
                return []
            files = [str(f) for f in folder.glob("*.parquet")]
            files += [str(f) for d in folder.glob(f"*{DELTA_SUFFIX}") for f in d.glob("*.parquet")]
            if not files:
                return []
            try:  # the column alone locates the files; then those files' matching rows
                located = pads.dataset(files, format="parquet").to_table(
                    filter=pc.field(column) == value, columns=["__filename"])
                matched = sorted(set(located.column("__filename").to_pylist()))
                table = pads.dataset(matched, format="parquet").to_table(
                    filter=pc.field(column) == value,
                    columns=[*pads.dataset(matched[:1]).schema.names, "__filename"]
                ) if matched else None
                break
            except FileNotFoundError:
                continue
        else:
            raise LakeError(f"{dataset}: files kept changing while searching {column}")
        hits = []
        for row in table.to_pylist() if table is not None else []:
            path = Path(row.pop("__filename"))
            parent = path.parent.name
            partition = parent[:-len(DELTA_SUFFIX)] if parent.endswith(DELTA_SUFFIX) else path.stem
            hits.append((partition, row))
        unique = {(p, tuple(sorted((k, str(v)) for k, v in row.items()))): (p, row)
                  for p, row in hits}
        return sorted(unique.values(), key=lambda hit: (hit[0], str(hit[1].get("__offset"))))

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

    def checkpoint_dir(self, dataset: str, partition: str | None = None) -> Path:
        return Path(self.path) / dataset / CHECKPOINT_DIR / (partition or UNPARTITIONED)

    def read_checkpointed(self, dataset: str, partition: str | None = None
                          ) -> tuple[pa.Table | None, str | None, dict[str, pa.Table]]:
        """A partition and the checkpoint committed with it by ``rewrite_checkpointed``:
        (content, generation, checkpoint tables by name). A partition written another way has
        no checkpoint (None, {}); nothing stored gives (None, None, {})."""
        for _ in range(20):
            try:
                content = self.read_table(dataset, partition)
                meta = json.loads(((content.schema.metadata or {}) if content is not None
                                   else {}).get(CHECKPOINT_KEY, b"null"))
                if not meta:
                    return content, None, {}
                folder = self.checkpoint_dir(dataset, partition) / meta["generation"]
                return content, meta["generation"], {
                    name: pq.read_table(folder / f"{name}.parquet") for name in meta["tables"]}
            except FileNotFoundError:  # a newer generation replaced it meanwhile: read again
                continue
        raise LakeError(f"{dataset}/{partition}: could not read a stable checkpoint")

    def rewrite_checkpointed(
            self, dataset: str,
            transform: Callable[[pa.Table | None, dict[str, pa.Table]],
                                tuple[pa.Table | pd.DataFrame, dict[str, pa.Table | pd.DataFrame]] | None],
            partition: str | None = None) -> str | None:
        """Replace a partition *and* its checkpoint together, under the partition's lock:
        ``transform(content, checkpoint)`` returns the new content and checkpoint tables (or
        None to leave both alone); returns the new generation (None when left alone).

        The commit is one rename: the checkpoint tables are written first under a new
        generation folder, then the partition file — naming that generation in its Parquet
        metadata — replaces the old one atomically, then older generations are removed. A crash
        at any point leaves the old pair or the new pair, never a mix; readers
        (``read_checkpointed``) always see a matching pair."""
        with self.locked(dataset, partition):
            content, _, checkpoint = self.read_checkpointed(dataset, partition)
            result = transform(content, checkpoint)
            if result is None:
                return None
            data, tables = result
            generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            folder = self.checkpoint_dir(dataset, partition) / generation
            for name, table in tables.items():
                self._write_file(folder / f"{name}.parquet", table)
            data = _as_table(data)
            meta = {**(data.schema.metadata or {}),
                    CHECKPOINT_KEY: json.dumps({"generation": generation,
                                                "tables": sorted(tables)}).encode()}
            self._write_file(self.file(dataset, partition), data.replace_schema_metadata(meta))
            for d in self.deltas(dataset, partition):
                d.unlink(missing_ok=True)
            for old in folder.parent.iterdir():
                if old.name != generation:
                    shutil.rmtree(old, ignore_errors=True)
            return generation

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
