"""The lake: Parquet files per dataset and daily partition, written atomically, in a local
folder or on S3-compatible object storage.

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

Storage (``LakeStore``, through ``pyarrow.fs``): a plain path or ``file://`` URL is a local
folder; ``s3://bucket/prefix`` is S3 or an S3-compatible store. Credentials and region come from
the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_REGION`` or ``AWS_DEFAULT_REGION``, profiles, instance or pod roles); pyarrow reads no
endpoint from the environment, so ``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``) is passed
as its endpoint override. Buckets are never created: a missing bucket, refused credentials or an
unreachable endpoint is a ``LakeStorageError`` naming the lake URL (never a secret).

* Atomic replace: locally a temp file then ``os.replace``; on S3 one PUT of the whole object
  (S3 has no rename; readers see the old object or the new one). A checkpointed rewrite writes
  the checkpoint tables under a new generation prefix first, then the partition object naming
  that generation: still the old pair or the new pair.
* Locks: locally ``fcntl`` lock files. An object store is shared by writers on several
  machines (Kubernetes runs), so its partition locks are Postgres advisory locks
  (``pg_advisory_lock`` on a connection of its own to ``lock_url``, key = a stable 64-bit hash of
  lake URL + dataset + partition), released on unlock or when the holder's connection dies. An
  S3 lake without ``lock_url`` refuses its first write (``LakeLockError``).
* Listing: S3 lists what was written (strongly consistent); it has no empty folders, so
  partitions are found from object listings (a delta "folder" counts only while it holds
  delta files).

Merging is done in Arrow, not pandas.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from conflux.core.errors import LakeError, LakeLockError, LakeStorageError

UNPARTITIONED = "_all"
DELTA_SUFFIX = ".delta"
MERGE_RULE = "_merge.json"
CHECKPOINT_DIR = "_checkpoint"
CHECKPOINT_KEY = b"conflux.checkpoint"  # Parquet metadata naming a partition's checkpoint
# the environment an S3 store is built from (a change builds a new one)
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


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


def is_object_store(path: str) -> bool:
    """Whether a lake path is an object-store URL (``s3://...``) rather than a local folder."""
    return "://" in path and not path.startswith("file://")


def _redact(message: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if secret := os.environ.get(name):
            message = message.replace(secret, "***")
    return message


@dataclass(frozen=True)
class LakeStore:
    """A lake's root on a ``pyarrow.fs`` filesystem, with the few operations the lake needs;
    storage errors (other than a missing file) become ``LakeStorageError`` naming ``url``."""

    url: str
    fs: pafs.FileSystem = field(repr=False)
    root: str
    remote: bool

    @classmethod
    def open(cls, path: str) -> "LakeStore":
        """The store of a lake path: a local folder, ``file://`` URL or ``s3://bucket/prefix``
        (see the module docstring for the S3 environment); the bucket must exist."""
        if not is_object_store(path):
            local = urlsplit(path).path if path.startswith("file://") else path
            return cls(path, pafs.LocalFileSystem(), os.path.abspath(local), remote=False)
        parts = urlsplit(path)
        if parts.scheme != "s3" or not parts.netloc:
            raise LakeStorageError(f"lake {path}: unsupported lake URL (a local folder, file://"
                                   " or s3://bucket/prefix)")
        url = f"s3://{parts.netloc}{parts.path.rstrip('/')}"
        # allow_delayed_open: an object smaller than one upload part is one PutObject
        # (not create + upload part + complete multipart)
        options: dict = {"connect_timeout": 5, "request_timeout": 60, "allow_delayed_open": True,
                         "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
        if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            options["region"] = region
        if endpoint := (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(endpoint_override=ep.netloc, scheme=ep.scheme)
        where = f" at {endpoint}" if endpoint else ""
        try:
            fs = pafs.S3FileSystem(**options)  # allow_bucket_creation stays off
            bucket = fs.get_file_info(parts.netloc)
        except OSError as exc:
            refused = any(s in str(exc) for s in ("ACCESS_DENIED", "InvalidAccessKeyId",
                                                  "SignatureDoesNotMatch", "Forbidden"))
            hint = (" (credentials refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                    "AWS_SESSION_TOKEN, or the role, and the bucket's policy)" if refused else "")
            raise LakeStorageError(f"lake {url}: object store{where} not usable{hint}: "
                                   f"{_redact(str(exc))}") from None
        if bucket.type == pafs.FileType.NotFound:
            raise LakeStorageError(f"lake {url}: bucket {parts.netloc!r} does not exist{where} "
                                   "(Conflux never creates buckets: create it first)")
        return cls(url, fs, f"{parts.netloc}{parts.path.rstrip('/')}", remote=True)

    def join(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "RESOURCE_NOT_FOUND" in str(exc) or "NoSuchKey" in str(exc):
                # an object removed between pyarrow's HEAD and its GET (a compaction): missing
                raise FileNotFoundError(str(exc)) from None
            raise LakeStorageError(f"lake {self.url}: {what} failed: {_redact(str(exc))}") from None

    def exists(self, path: str) -> bool:
        with self._guard(f"stat {path}"):
            return self.fs.get_file_info(path).type == pafs.FileType.File

    def info(self, path: str) -> pafs.FileInfo:
        with self._guard(f"stat {path}"):
            return self.fs.get_file_info(path)

    def files(self, folder: str, recursive: bool = False) -> list[str]:
        """Paths of the files under ``folder`` (none when it does not exist), sorted."""
        if not (self.remote or recursive):  # as fast as before the store existed
            try:
                return sorted(e.path for e in os.scandir(folder) if e.is_file())
            except FileNotFoundError:
                return []
        return sorted(i.path for i in self._list(folder, recursive) if i.type == pafs.FileType.File)

    def names(self, folder: str) -> list[str]:
        """Names of the files and folders directly in ``folder``, sorted."""
        return sorted(i.base_name for i in self._list(folder, False))

    def _list(self, folder: str, recursive: bool) -> list[pafs.FileInfo]:
        for _ in range(5):  # a local entry removed between readdir and stat: list again
            try:
                with self._guard(f"list {folder}"):
                    return self.fs.get_file_info(
                        pafs.FileSelector(folder, allow_not_found=True, recursive=recursive))
            except FileNotFoundError:
                continue
        return []

    def read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file (FileNotFoundError when missing)."""
        if not self.remote:
            return pq.ParquetFile(path).read(columns=columns)
        return self._fetch(path).read(columns=columns)

    def num_rows(self, path: str) -> int:
        if not self.remote:
            return pq.ParquetFile(path).metadata.num_rows
        return self._fetch(path).metadata.num_rows

    def _fetch(self, path: str) -> pq.ParquetFile:
        """A whole Parquet object, checked. pyarrow sizes an object (HEAD) before it GETs it:
        an object replaced in between comes back torn (the new object cut at the old size),
        which the Parquet magic at both ends and a parse of the footer reveal; such a read is
        simply repeated (a replace is one PUT, so the next read sees one whole object)."""
        for attempt in range(10):
            with self._guard(f"read {path}"):
                try:
                    with self.fs.open_input_stream(path) as src:
                        data = src.readall()
                    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
                        return pq.ParquetFile(pa.BufferReader(data))  # the footer parses
                except FileNotFoundError:
                    raise
                except (OSError, pa.ArrowInvalid) as exc:
                    if "RESOURCE_NOT_FOUND" in str(exc) or "NoSuchKey" in str(exc):
                        raise  # the guard makes it a FileNotFoundError
            time.sleep(0.005 * (attempt + 1))
        raise LakeStorageError(f"lake {self.url}: {path} is not a readable Parquet object "
                               "(or kept changing while read)")

    def read_text(self, path: str) -> str | None:
        try:
            with self._guard(f"read {path}"), self.fs.open_input_stream(path) as src:
                return src.readall().decode()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, data: bytes | pa.Buffer) -> None:
        """Replace ``path`` atomically: locally a temp file then a rename, on S3 one PUT."""
        if not self.remote:
            self._replace_local(path, lambda tmp: Path(tmp).write_bytes(data))
            return
        with self._guard(f"write {path}"), self.fs.open_output_stream(path) as out:
            out.write(data)

    def write_table(self, path: str, table: pa.Table) -> None:
        if not self.remote:
            self._replace_local(path, lambda tmp: pq.write_table(table, tmp))
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(path, sink.getvalue())

    def _replace_local(self, path: str, write: Callable[[str], object]) -> None:
        with self._guard(f"write {path}"):
            folder, name = os.path.split(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
            write(tmp)
            os.replace(tmp, path)

    def delete(self, path: str) -> None:
        """Remove a file; a missing one is fine."""
        try:
            with self._guard(f"delete {path}"):
                if self.remote:
                    self.fs.delete_file(path)
                else:
                    os.unlink(path)
        except FileNotFoundError:
            pass

    def delete_dir(self, path: str) -> None:
        """Remove a folder (a prefix on S3) and all it holds; a missing one is fine."""
        if not self.remote:
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            with self._guard(f"delete {path}"):
                self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    def dataset(self, files: list[str]) -> pads.Dataset:
        with self._guard("open dataset"):
            return pads.dataset(files, format="parquet", filesystem=self.fs)


_STORES: dict[tuple, LakeStore] = {}
_STORES_LOCK = threading.Lock()


def lake_store(path: str) -> LakeStore:
    """The store of a lake path; an S3 store is cached (and rebuilt when its AWS_* environment
    changes), a local one is cheap enough to make each time."""
    if not is_object_store(path):
        return LakeStore.open(path)
    key = (path, *(os.environ.get(n) for n in S3_ENV))
    with _STORES_LOCK:
        store = _STORES.get(key)
    if store is None:
        store = LakeStore.open(path)
        with _STORES_LOCK:
            _STORES[key] = store
    return store


def lock_key(url: str, dataset: str, partition: str | None) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``: lake URL + dataset + partition."""
    digest = hashlib.blake2b(f"{url}\0{dataset}\0{partition or UNPARTITIONED}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _pg_host(url: str) -> str:
    """A Postgres URL without its user and password, for messages."""
    return url.split("@")[-1] if "@" in url else url.split("://")[-1]


@contextlib.contextmanager
def advisory_lock(lock_url: str, key: int, what: str) -> Iterator[None]:
    """Hold ``pg_advisory_lock(key)`` on a connection of its own; released on exit, or by
    Postgres when the holder's connection dies (a crashed writer never leaves it held)."""
    import psycopg

    try:
        conn = psycopg.connect(lock_url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise LakeLockError(f"{what}: cannot reach the lock database "
                            f"{_pg_host(lock_url)}: {str(exc).strip().splitlines()[0]}") from None
    try:
        conn.execute("select pg_advisory_lock(%s)", (key,))
        yield
    finally:
        conn.close()  # a session's advisory locks end with it (or with its dead connection)


@dataclass(frozen=True)
class LakeScan:
    """Partitions of a dataset read lazily, batch by batch (bounded memory): what a join that
    aggregates a large input as it goes consumes. ``to_table`` materializes it."""

    files: tuple[str, ...]
    columns: tuple[str, ...]
    store: LakeStore | None = field(default=None, compare=False, repr=False)

    def _store(self) -> LakeStore:
        return self.store or LakeStore("", pafs.LocalFileSystem(), "/", remote=False)

    def to_batches(self, files_per_batch: int = 128) -> Iterator[pa.RecordBatch]:
        """One batch per group of files, read by four threads; the next group is read while
        the caller works on the current one (two groups in memory at most)."""
        store = self._store()

        def read(f: str) -> pa.Table:
            return store.read(f, list(self.columns))

        groups = [self.files[i:i + files_per_batch]
                  for i in range(0, len(self.files), files_per_batch)]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-scan") as pool:
            pending = [pool.submit(read, f) for f in groups[0]] if groups else []
            for i in range(len(groups)):
                current = [p.result() for p in pending]
                pending = [pool.submit(read, f) for f in groups[i + 1]] if i + 1 < len(groups) else []
                yield from pa.concat_tables(current).combine_chunks().to_batches()

    def to_table(self) -> pa.Table:
        store = self._store()
        if store.remote:  # whole checked objects (see LakeStore._fetch), not ranged reads
            return pa.concat_tables([store.read(f, list(self.columns)) for f in self.files])
        return store.dataset(list(self.files)).to_table(columns=list(self.columns))

    def __len__(self) -> int:
        store = self._store()
        return sum(store.num_rows(f) for f in self.files)


class LakeResource(dg.ConfigurableResource):
    """Dataset storage shared by the event and batch paths."""

    path: str = Field(description="Root of the lake (CONFLUX_LAKE_PATH): a local folder, or "
                                  "s3://bucket/prefix on S3 or an S3-compatible store.")
    lock_url: str | None = Field(
        default=None, description="Postgres URL (CONFLUX_POSTGRES_URL) whose advisory locks "
                                  "serialise writers of an object-store lake across machines; "
                                  "required to write an s3:// lake, unused by a local one.")

    @classmethod
    def for_stack(cls, settings, path: str | None = None) -> "LakeResource":
        """The lake of a stack's ``Settings`` (``path`` overrides its location), locked through
        the stack's Postgres when it is on object storage."""
        return cls(path=path or settings.lake_location, lock_url=settings.postgres_url)

    def store(self) -> LakeStore:
        return lake_store(self.path)

    def file(self, dataset: str, partition: str | None = None) -> str:
        return self.store().join(dataset, f"{partition or UNPARTITIONED}.parquet")

    def delta_dir(self, dataset: str, partition: str | None = None) -> str:
        return self.store().join(dataset, f"{partition or UNPARTITIONED}{DELTA_SUFFIX}")

    def checkpoint_dir(self, dataset: str, partition: str | None = None) -> str:
        return self.store().join(dataset, CHECKPOINT_DIR, partition or UNPARTITIONED)

    def exists(self, dataset: str, partition: str | None = None) -> bool:
        """Whether the partition has a base file (pending deltas aside)."""
        return self.store().exists(self.file(dataset, partition))

    def _index(self, dataset: str) -> tuple[dict[str, str], dict[str, list[str]]]:
        """From one recursive listing: base file by partition, and delta files (in write
        order) by partition, for the partitions that have any."""
        store = self.store()
        folder = store.join(dataset)
        bases: dict[str, str] = {}
        deltas: dict[str, list[str]] = {}
        if store.remote:
            paths = store.files(folder, recursive=True)
        else:  # one listdir, and one per delta folder (the checkpoints are not walked)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                names = []
            paths = [f"{folder}/{n}" for n in names]
            paths += [f for n in names if n.endswith(DELTA_SUFFIX)
                      for f in store.files(f"{folder}/{n}")]
        for path in paths:
            parts = path[len(folder) + 1:].split("/")
            if not parts[-1].endswith(".parquet") or parts[-1].startswith("."):
                continue
            if len(parts) == 1:
                bases[parts[0][:-len(".parquet")]] = path
            elif len(parts) == 2 and parts[0].endswith(DELTA_SUFFIX):
                deltas.setdefault(parts[0][:-len(DELTA_SUFFIX)], []).append(path)
        return bases, deltas

    def partitions(self, dataset: str) -> list[str]:
        bases, deltas = self._index(dataset)
        return sorted(bases.keys() | deltas.keys())

    def deltas(self, dataset: str, partition: str | None = None) -> list[str]:
        return [f for f in self.store().files(self.delta_dir(dataset, partition))
                if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith(".")]

    def merge_rule(self, dataset: str) -> dict | None:
        text = self.store().read_text(self.store().join(dataset, MERGE_RULE))
        return json.loads(text) if text is not None else None

    def _set_merge_rule(self, dataset: str, rule: dict) -> None:
        if self.merge_rule(dataset) == rule:
            return
        self.store().write_bytes(self.store().join(dataset, MERGE_RULE), json.dumps(rule).encode())

    def _read_merged(self, dataset: str, partition: str | None) -> tuple[pa.Table | None, list[str]]:
        """Base + deltas of one partition, merged; and the delta files that were read. A delta
        compacted away meanwhile is already in the base, so the read simply starts over."""
        store = self.store()
        for _ in range(20):
            f = self.file(dataset, partition)
            deltas = self.deltas(dataset, partition)
            try:
                try:
                    base = store.read(f)
                except FileNotFoundError:
                    base = None
                if not deltas:
                    return base, []
                writes = [store.read(d) for d in deltas]  # in write order (by name)
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
        store = self.store()
        try:
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-read") as pool:
                tables = list(pool.map(lambda f: store.read(f, columns), bulk))
        except FileNotFoundError:  # a partition was compacted or rewritten meanwhile
            return self.read_partitions(dataset, partitions, columns)
        tables += merged
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]

    def _split(self, dataset: str, partitions: list[str] | None) -> tuple[list[str], list[str]]:
        """(base files of partitions without pending deltas, partitions with deltas), from one
        listing."""
        bases, deltas = self._index(dataset)
        names = sorted(bases.keys() | deltas.keys()) if partitions is None else partitions
        files, merged = [], []
        for name in names:
            if name in deltas:
                merged.append(name)
            elif name in bases:
                files.append(bases[name])
        return files, merged

    def scan(self, dataset: str, partitions: list[str] | None, columns: list[str]
             ) -> LakeScan | pa.Table | None:
        """Partitions for streaming: a ``LakeScan`` when they are all compacted base files,
        otherwise (pending deltas need merging) the merged table. None when nothing is stored."""
        files, merged = self._split(dataset, partitions)
        if merged:
            return self.read_partitions(dataset, partitions, columns)
        return LakeScan(tuple(files), tuple(columns), self.store()) if files else None

    def find(self, dataset: str, column: str, value: str) -> list[tuple[str, dict]]:
        """Every stored row whose ``column`` equals ``value``, with its partition — base files
        and pending delta files alike (a row a later write superseded in a delta may show
        too: this answers "where did it go", not "what is current"). One multi-threaded Arrow
        scan over all the dataset's files, reading the column and the matching rows only."""
        store = self.store()
        for _ in range(5):  # a file compacted away meanwhile: list again
            bases, deltas = self._index(dataset)
            files = [*bases.values(), *(f for fs in deltas.values() for f in fs)]
            if not files:
                return []
            try:  # the column alone locates the files; then those files' matching rows
                located = store.dataset(files).to_table(
                    filter=pc.field(column) == value, columns=["__filename"])
                matched = sorted(set(located.column("__filename").to_pylist()))
                table = store.dataset(matched).to_table(
                    filter=pc.field(column) == value,
                    columns=[*store.dataset(matched[:1]).schema.names, "__filename"]
                ) if matched else None
                break
            except (OSError, pa.ArrowInvalid) as exc:  # FileNotFoundError included
                if not (isinstance(exc, FileNotFoundError) or store.remote):
                    raise
                continue  # on S3 also a ranged read of an object replaced meanwhile
        else:
            raise LakeError(f"{dataset}: files kept changing while searching {column}")
        hits = []
        for row in table.to_pylist() if table is not None else []:
            folder, _, name = row.pop("__filename").rpartition("/")
            parent = folder.rpartition("/")[2]
            partition = (parent[:-len(DELTA_SUFFIX)] if parent.endswith(DELTA_SUFFIX)
                         else name[:-len(".parquet")])
            hits.append((partition, row))
        unique = {(p, tuple(sorted((k, str(v)) for k, v in row.items()))): (p, row)
                  for p, row in hits}
        return sorted(unique.values(), key=lambda hit: (hit[0], str(hit[1].get("__offset"))))

    def row_count(self, dataset: str, partition: str | None = None) -> int:
        """Rows stored in a partition (from Parquet metadata unless deltas must be merged)."""
        if self.deltas(dataset, partition):
            table = self.read_table(dataset, partition)
            return len(table) if table is not None else 0
        try:
            return self.store().num_rows(self.file(dataset, partition))
        except FileNotFoundError:
            return 0

    def read_table(self, dataset: str, partition: str | None = None) -> pa.Table | None:
        return self._read_merged(dataset, partition)[0]

    def read(self, dataset: str, partition: str | None = None) -> pd.DataFrame | None:
        table = self.read_table(dataset, partition)
        return table.to_pandas() if table is not None else None

    def _write_file(self, target: str, data: pd.DataFrame | pa.Table) -> str:
        self.store().write_table(target, _as_table(data))
        return target

    def _drop(self, files: list[str]) -> None:
        store = self.store()
        for f in files:
            store.delete(f)

    def write(self, dataset: str, data: pd.DataFrame | pa.Table, partition: str | None = None) -> str:
        """Replace one partition's content atomically (a temp file then a rename, or one PUT);
        pending delta files of the partition are dropped, as the new content replaces them."""
        with self.locked(dataset, partition):
            target = self._write_file(self.file(dataset, partition), data)
            self._drop(self.deltas(dataset, partition))
        return target

    def _require_lock(self, dataset: str) -> LakeStore:
        store = self.store()
        if store.remote and not self.lock_url:
            raise LakeLockError(
                f"lake {store.url}: writing {dataset} needs a lock shared by every writer: set "
                "LakeResource.lock_url (CONFLUX_POSTGRES_URL) for an object-store lake")
        return store

    @contextlib.contextmanager
    def locked(self, dataset: str, partition: str | None = None) -> Iterator[None]:
        """Exclusive lock on one partition across processes (read-modify-write safety): an
        ``fcntl`` lock file locally, a Postgres advisory lock for an object-store lake."""
        store = self._require_lock(dataset)
        if store.remote:
            with advisory_lock(self.lock_url, lock_key(store.url, dataset, partition),
                               f"lake {store.url}: lock of {dataset}/{partition or UNPARTITIONED}"):
                yield
            return
        lock = store.join(dataset, f".{partition or UNPARTITIONED}.lock")
        os.makedirs(os.path.dirname(lock), exist_ok=True)
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
            self._drop(deltas)
            return written

    def append(self, dataset: str, data: pd.DataFrame | pa.Table, key: list[str],
               partition: str | None = None, *, order_by: list[str],
               keep_existing: bool = False, compact_after: int = 16) -> int:
        """Store ``data`` as a delta file of the partition, to be merged by ``key`` with the
        newest row by ``order_by`` winning (the oldest with ``keep_existing``) — the rule
        ``upsert`` applies, so the stored result is the same. Returns the rows appended."""
        self._require_lock(dataset)  # compaction will need it: refuse before writing anything
        incoming = _as_table(data)
        self._set_merge_rule(dataset, {"key": list(key), "order_by": list(order_by),
                                       "keep_existing": keep_existing})
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self._write_file(f"{self.delta_dir(dataset, partition)}/{name}", incoming)
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
                self.store().delete(target)
            else:
                self._write_file(target, result)
            self._drop(deltas)

    def read_checkpointed(self, dataset: str, partition: str | None = None
                          ) -> tuple[pa.Table | None, str | None, dict[str, pa.Table]]:
        """A partition and the checkpoint committed with it by ``rewrite_checkpointed``:
        (content, generation, checkpoint tables by name). A partition written another way has
        no checkpoint (None, {}); nothing stored gives (None, None, {})."""
        store = self.store()
        for _ in range(20):
            try:
                content = self.read_table(dataset, partition)
                meta = json.loads(((content.schema.metadata or {}) if content is not None
                                   else {}).get(CHECKPOINT_KEY, b"null"))
                if not meta:
                    return content, None, {}
                folder = f"{self.checkpoint_dir(dataset, partition)}/{meta['generation']}"
                return content, meta["generation"], {
                    name: store.read(f"{folder}/{name}.parquet") for name in meta["tables"]}
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

        The commit is one atomic replace (a rename, or one PUT on S3): the checkpoint tables are
        written first under a new generation folder, then the partition file — naming that
        generation in its Parquet metadata — replaces the old one, then older generations are
        removed. A crash at any point leaves the old pair or the new pair, never a mix; readers
        (``read_checkpointed``) always see a matching pair."""
        with self.locked(dataset, partition):
            content, _, checkpoint = self.read_checkpointed(dataset, partition)
            result = transform(content, checkpoint)
            if result is None:
                return None
            data, tables = result
            generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            parent = self.checkpoint_dir(dataset, partition)
            for name, table in tables.items():
                self._write_file(f"{parent}/{generation}/{name}.parquet", _as_table(table))
            data = _as_table(data)
            meta = {**(data.schema.metadata or {}),
                    CHECKPOINT_KEY: json.dumps({"generation": generation,
                                                "tables": sorted(tables)}).encode()}
            self._write_file(self.file(dataset, partition), data.replace_schema_metadata(meta))
            self._drop(self.deltas(dataset, partition))
            store = self.store()
            for old in store.names(parent):
                if old != generation:
                    store.delete_dir(f"{parent}/{old}")
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
            self._drop(deltas)
            return len(deltas)
