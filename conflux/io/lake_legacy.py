"""Read-only access to a lake in the pre-Delta format, for ``conflux lake migrate``.

That format, per dataset folder ``<lake>/<dataset>/``: a base file ``<partition>.parquet`` per
daily partition (``_all.parquet`` when unpartitioned); pending delta files
``<partition>.delta/*.parquet`` (names sort in write order), merged on read by the rule in
``_merge.json`` (``key``, ``order_by``, ``keep_existing``) with ``merge_writes``; and, for a
partition written with a checkpoint, Parquet schema metadata ``conflux.checkpoint`` =
``{"generation": G, "tables": [...]}`` naming ``_checkpoint/<partition>/<G>/<name>.parquet``.
A dataset folder holding a ``_delta_log`` is a Delta table, never an old-format dataset.

The lake is a local folder (or ``file://`` URL) or ``s3://bucket/prefix`` through
``pyarrow.fs``, with ``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``) as endpoint override.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from conflux.io.merge import merge_writes
from conflux.core.errors import LakeError, LakeStorageError

UNPARTITIONED = "_all"
DELTA_SUFFIX = ".delta"
MERGE_RULE = "_merge.json"
CHECKPOINT_DIR = "_checkpoint"
CHECKPOINT_KEY = b"conflux.checkpoint"
DELTA_LOG = "_delta_log"
COPIED = ".copied"  # written in a folder moved on S3 once every object is copied


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class LegacyLake:
    """An old-format lake's root on a ``pyarrow.fs`` filesystem. Reads only the old format;
    ``move``, ``delete_dir`` and ``write_text`` are what migration needs to set it aside."""

    url: str
    fs: pafs.FileSystem = field(repr=False)
    root: str
    remote: bool

    @classmethod
    def open(cls, path: str) -> "LegacyLake":
        if not _is_remote(path):
            local = urlsplit(path).path if path.startswith("file://") else path
            return cls(path, pafs.LocalFileSystem(), os.path.abspath(local), remote=False)
        parts = urlsplit(path)
        if parts.scheme != "s3" or not parts.netloc:
            raise LakeStorageError(f"lake {path}: unsupported lake URL (a local folder, file://"
                                   " or s3://bucket/prefix)")
        options: dict = {"connect_timeout": 5, "request_timeout": 60,
                         "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
        if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            options["region"] = region
        if endpoint := (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(endpoint_override=ep.netloc, scheme=ep.scheme)
        url = f"s3://{parts.netloc}{parts.path.rstrip('/')}"
        try:
            fs = pafs.S3FileSystem(**options)
        except OSError as exc:
            raise LakeStorageError(f"lake {url}: object store not usable: "
                                   f"{str(exc).splitlines()[0]}") from None
        return cls(url, fs, f"{parts.netloc}{parts.path.rstrip('/')}", remote=True)

    # -- storage -------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _list(self, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(
                pafs.FileSelector(folder, allow_not_found=True, recursive=recursive))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LakeStorageError(f"lake {self.url}: list {folder} failed: "
                                   f"{str(exc).splitlines()[0]}") from None

    def _read(self, path: str) -> pa.Table:
        try:
            if not self.remote:
                return pq.ParquetFile(path).read()
            with self.fs.open_input_file(path) as src:
                return pq.ParquetFile(src).read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise LakeStorageError(f"lake {self.url}: read {path} failed: "
                                   f"{str(exc).splitlines()[0]}") from None

    def _metadata(self, path: str) -> dict:
        if not self.remote:
            return pq.read_schema(path).metadata or {}
        with self.fs.open_input_file(path) as src:
            return pq.read_schema(src).metadata or {}

    def _text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as src:
                return src.readall().decode()
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_text(self, path: str, text: str) -> None:
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with self.fs.open_output_stream(path) as out:
            out.write(text.encode())

    def move(self, source: str, target: str) -> None:
        """Move a folder: one rename locally; on S3 every object copied, then a ``.copied``
        written in the target, then the source deleted (``moved`` tells a finished copy)."""
        if not self.remote:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(source, target)
            return
        files = [i.path for i in self._list(source, recursive=True)
                 if i.type == pafs.FileType.File]
        for path in files:
            self.fs.copy_file(path, f"{target}{path[len(source):]}")
        self.write_text(f"{target}/{COPIED}", "")
        self.delete_dir(source)

    def moved(self, target: str) -> bool:
        """Whether a ``move`` to ``target`` got past its copy (locally: whether it exists)."""
        if not self.remote:
            return self.exists(target)
        return self.exists(f"{target}/{COPIED}")

    def delete_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    # -- the old format ------------------------------------------------------------------
    def is_legacy(self, dataset: str) -> bool:
        """Whether the dataset folder holds old-format files and no ``_delta_log`` (one listing)."""
        names = {i.base_name: i.type for i in self._list(self.join(dataset))}
        if DELTA_LOG in names:
            return False
        return any(n == MERGE_RULE or n.endswith(DELTA_SUFFIX)
                   or (n.endswith(".parquet") and not n.startswith(".")
                       and t == pafs.FileType.File)
                   for n, t in names.items())

    def folders(self, relative: str = "") -> list[str]:
        """Names of the folders in a folder under the root, sorted."""
        where = self.join(relative) if relative else self.root
        return sorted(i.base_name for i in self._list(where) if i.type == pafs.FileType.Directory)

    def datasets(self) -> list[str]:
        """The old-format datasets of the lake (folders starting with ``_`` or ``.`` skipped)."""
        return [n for n in self.folders() if n[:1] not in ("_", ".") and self.is_legacy(n)]

    def _index(self, folder: str) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Base file by partition, and delta files in write order by partition."""
        bases: dict[str, str] = {}
        deltas: dict[str, list[str]] = {}
        entries = self._list(folder)
        for info in entries:
            name = info.base_name
            if name.startswith("."):
                continue
            if info.type == pafs.FileType.File and name.endswith(".parquet"):
                bases[name[:-len(".parquet")]] = info.path
            elif info.type == pafs.FileType.Directory and name.endswith(DELTA_SUFFIX):
                files = sorted(i.path for i in self._list(info.path)
                               if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                               and not i.base_name.startswith("."))
                if files:
                    deltas[name[:-len(DELTA_SUFFIX)]] = files
        return bases, deltas

    def partitions(self, dataset: str) -> list[str]:
        """Partition names (``_all`` for an unpartitioned dataset), sorted."""
        bases, deltas = self._index(self.join(dataset))
        return sorted(bases.keys() | deltas.keys())

    def merge_rule(self, dataset: str) -> dict | None:
        text = self._text(self.join(dataset, MERGE_RULE))
        return json.loads(text) if text is not None else None

    def read_partition(self, dataset: str, partition: str | None = None) -> pa.Table | None:
        """One partition (``None`` or ``_all``: unpartitioned) merged as the old lake read it:
        the base file, then its delta files by the dataset's merge rule; None when it has
        neither. ``dataset`` is a folder under the root (``_legacy/<name>`` for a backup)."""
        name = partition or UNPARTITIONED
        bases, deltas = self._index(self.join(dataset))
        base = self._read(bases[name]) if name in bases else None
        if name not in deltas:
            return base
        rule = self.merge_rule(dataset)
        if rule is None:
            raise LakeError(f"lake {self.url}: {dataset}: delta files without {MERGE_RULE}")
        writes = [self._read(f) for f in deltas[name]]
        if not rule["keep_existing"]:  # one incoming batch: the newest by order_by wins
            writes = [pa.concat_tables(writes, promote_options="permissive")]
        merged, _ = merge_writes(base, writes, rule["key"], order_by=rule["order_by"],
                                 keep_existing=rule["keep_existing"])
        return merged

    def checkpoint(self, dataset: str, partition: str | None = None
                   ) -> tuple[str, dict[str, pa.Table]] | None:
        """The checkpoint a partition was written with by ``rewrite_checkpointed``:
        (generation, tables by name); None when it has none."""
        name = partition or UNPARTITIONED
        bases, _ = self._index(self.join(dataset))
        if name not in bases:
            return None
        meta = json.loads(self._metadata(bases[name]).get(CHECKPOINT_KEY, b"null"))
        if not meta:
            return None
        where = self.join(dataset, CHECKPOINT_DIR, name, meta["generation"])
        try:
            return meta["generation"], {t: self._read(f"{where}/{t}.parquet")
                                        for t in meta["tables"]}
        except FileNotFoundError:
            raise LakeError(f"lake {self.url}: {dataset}/{name}: checkpoint "
                            f"{meta['generation']} is missing a table") from None


def without_checkpoint_key(table: pa.Table) -> pa.Table:
    """A table read from the old lake without its checkpoint metadata key."""
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != CHECKPOINT_KEY}
    return table.replace_schema_metadata(meta or None)


def is_legacy_dataset(lake_path: str, dataset: str) -> bool:
    """Whether ``dataset`` of the lake at ``lake_path`` is in the pre-Delta format (one listing)."""
    return LegacyLake.open(lake_path).is_legacy(dataset)


def legacy_datasets(lake_path: str) -> list[str]:
    return LegacyLake.open(lake_path).datasets()
