"""The lake: one Delta Lake table per dataset (delta-rs), in a local folder or on S3.

Layout: ``<lake>/<dataset>/`` is a Delta table; a partitioned dataset is partitioned by the
string column ``__day`` (its daily partition key); an unpartitioned one has no such column. Any
Delta reader (DuckDB, Polars, Spark, Trino) sees exactly the current rows: see
docs/outside-readers.md.

* Every write is one Delta commit; concurrent writers (sensor ticks, runs, repairs,
  maintenance) are serialized by Delta's optimistic commit protocol — a writer whose read was
  overtaken by a conflicting commit re-reads and tries again (``_retry``). On S3, delta-rs
  commits with conditional PUTs (``If-None-Match``): no lock service is needed.
* ``upsert``/``upsert_many`` are one MERGE per call (per micro-batch on the event path): rows
  replace stored rows of the same key when newer by ``order_by`` (the stored row wins a tie;
  append-only datasets never replace a stored row), so replays change nothing. Only files
  holding a matched key are rewritten (files are kept near ``TARGET_FILE_BYTES``); files whose
  key statistics lie outside the micro-batch's keys are not even read.
* ``write`` replaces one partition (a predicate overwrite); ``rewrite`` does so from its
  current content; ``rewrite_checkpointed`` commits a partition together with a checkpoint
  (small Delta tables under ``_conflux_checkpoint/``, named by version in the commit's
  metadata: the commit that makes the projection visible is the one that names them).
* A returned ``Commit`` names the table version and commit time (materialization metadata);
  reads take ``version=`` or ``as_of=`` (time travel).

S3: credentials, region and endpoint come from the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; an ``http://`` endpoint
is allowed). Buckets are never created.

delta-rs cannot be used in a process forked after it started (its runtime panics): Dagster's
run workers are spawned, and tests use the ``spawn`` start method.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from pydantic import Field

from conflux.core.errors import LakeError, LakeStorageError
from conflux.io.merge import merge_by_key

UNPARTITIONED = "_all"
DAY = "__day"  # the partition column of a partitioned dataset's table
CHECKPOINTS = "_conflux_checkpoint"  # hidden from Delta (leading "_"): the checkpoint tables
CHECKPOINT_KEY = "conflux.checkpoint"  # commit metadata naming a commit's checkpoint tables
SOURCES_KEY = "conflux.sources"  # commit metadata: the Kafka ranges a commit applied
ORIGIN_KEY = "conflux.origin"    # commit metadata: who wrote it (run id, sensor)
MAINTENANCE = {"OPTIMIZE", "VACUUM START", "VACUUM END", "CHECKPOINT"}
RETRIES = 30
# Files a write, MERGE or compaction aims at (the table property ``delta.targetFileSize``, set
# when a table is created, so outside writers honour it too). A MERGE rewrites every file
# holding a key it updates: bounded files bound what an update costs (docs/scale.md).
TARGET_FILE_BYTES = 8 << 20
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _as_table(data: pd.DataFrame | pa.Table) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)


def _cast_like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast columns to the stored types where both have them (int → double, null → any); a
    column that cannot be stored as its stored type is a ``LakeError`` naming it (never a
    silent truncation, e.g. of 5.5 into an int column)."""
    columns = []
    for f in table.schema:
        i = schema.get_field_index(f.name)
        column = table.column(f.name)
        if i >= 0 and schema.field(i).type != f.type:
            stored = schema.field(i).type
            try:
                column = column.cast(stored)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                what = ("fractional values" if pa.types.is_integer(stored)
                        and pa.types.is_floating(f.type) else f"{f.type} values ({exc})")
                raise LakeError(f"column {f.name}: {what} for the stored {stored} column") from None
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.schema.names)


def _storable(table: pa.Table) -> pa.Table:
    """Types Delta stores: nanosecond timestamps become microseconds, all-null columns
    strings (unless the stored schema says otherwise, see ``_cast_like``)."""
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
            f = f.with_type(pa.timestamp("us", f.type.tz))
        elif pa.types.is_null(f.type):
            f = f.with_type(pa.string())
        elif pa.types.is_large_string(f.type):
            f = f.with_type(pa.string())
        fields.append(f)
    target = pa.schema(fields, metadata=table.schema.metadata)
    return table if target == table.schema else table.cast(target, safe=False)


def is_object_store(path: str) -> bool:
    """Whether a lake path is an object-store URL (``s3://...``) rather than a local folder."""
    return "://" in path and not path.startswith("file://")


def _redact(message: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if secret := os.environ.get(name):
            message = message.replace(secret, "***")
    return message


def storage_options(path: str) -> dict[str, str]:
    """delta-rs storage options of a lake path, from the standard AWS environment."""
    if not is_object_store(path):
        return {}
    options = {"timeout": "60s", "connect_timeout": "5s"}
    if endpoint := (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        options["AWS_ENDPOINT_URL"] = endpoint if "://" in endpoint else f"https://{endpoint}"
        if options["AWS_ENDPOINT_URL"].startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        options["AWS_REGION"] = region
    return options


def _storage_error(uri: str, exc: Exception) -> LakeStorageError:
    import re
    full = re.sub(r"\x1b\[[0-9;]*m|↳", "", _redact(str(exc))).strip()
    lines = [l.strip() for l in full.splitlines() if l.strip()]
    text = lines[0] if lines else type(exc).__name__
    causes = [l for l in lines[1:] if not l.startswith("<")]
    if causes and causes[-1] not in text:
        text = f"{text}: {causes[-1]}"
    if any(s in full for s in ("NoSuchBucket", "bucket does not exist", "404 Not Found")):
        hint = " (does the bucket exist? Conflux never creates buckets: create it first)"
    elif any(s in full for s in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                 "Forbidden", "403")):
        hint = (" (credentials refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                "AWS_SESSION_TOKEN, or the role, and the bucket's policy)")
    else:
        hint = ""
    return LakeStorageError(f"lake {uri}: {text}{hint}")


@dataclass(frozen=True)
class Commit:
    """One Delta commit: the table version it produced, its time (epoch ms) and how many rows
    it wrote (inserted + updated by a MERGE; the rows of a replaced partition)."""

    version: int | None
    timestamp_ms: int | None = None
    rows: int = 0
    metrics: dict = field(default_factory=dict, compare=False)

    def metadata(self) -> dict:
        """Materialization metadata naming the version (Dagster shows it on the asset)."""
        if self.version is None:
            return {}
        stamp = (dt.datetime.fromtimestamp(self.timestamp_ms / 1000, dt.timezone.utc).isoformat()
                 if self.timestamp_ms else "")
        return {"conflux/delta_version": self.version, "conflux/delta_commit_timestamp": stamp}


@dataclass(frozen=True)
class LakeScan:
    """Partitions of a dataset read lazily, batch by batch (bounded memory); ``to_table``
    materializes it. ``files`` are the Parquet files of the scanned table version."""

    source: pads.Dataset = field(repr=False)
    columns: tuple[str, ...]
    filter: pc.Expression | None = field(default=None, repr=False)

    @property
    def files(self) -> list[str]:
        return list(self.source.files) if hasattr(self.source, "files") else []

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        yield from self.source.to_batches(columns=list(self.columns), filter=self.filter,
                                          batch_size=1 << 17)

    def to_table(self) -> pa.Table:
        return self.source.to_table(columns=list(self.columns), filter=self.filter)

    def __len__(self) -> int:
        return self.source.count_rows(filter=self.filter)


_LOCAL = threading.local()  # per thread: open tables (a DeltaTable is not shared across threads)


class LakeResource(dg.ConfigurableResource):
    """Dataset storage shared by the event and batch paths: one Delta table per dataset."""

    path: str = Field(description="Root of the lake (CONFLUX_LAKE_PATH): a local folder, or "
                                  "s3://bucket/prefix on S3 or an S3-compatible store.")

    @classmethod
    def for_stack(cls, settings, path: str | None = None) -> "LakeResource":
        """The lake of a stack's ``Settings`` (``path`` overrides its location)."""
        return cls(path=path or settings.lake_location)

    # -- tables --------------------------------------------------------------------------
    def root(self) -> str:
        if is_object_store(self.path):
            parts = urlsplit(self.path)
            if parts.scheme != "s3" or not parts.netloc:
                raise LakeStorageError(f"lake {self.path}: unsupported lake URL (a local folder,"
                                       " file:// or s3://bucket/prefix)")
            return f"s3://{parts.netloc}{parts.path.rstrip('/')}"
        local = urlsplit(self.path).path if self.path.startswith("file://") else self.path
        return os.path.abspath(local)

    def uri(self, dataset: str) -> str:
        """Where a dataset's Delta table is (what outside readers open)."""
        return f"{self.root()}/{dataset}"

    def options(self) -> dict[str, str]:
        return storage_options(self.path)

    def _open(self, uri: str, version: int | None = None) -> DeltaTable | None:
        """The table at ``uri`` (latest, or a version), None when there is none."""
        try:
            if version is not None:
                return DeltaTable(uri, version=version, storage_options=self.options())
            cache = _LOCAL.__dict__.setdefault("tables", {})
            table = cache.get(uri)
            if table is None:
                table = cache[uri] = DeltaTable(uri, storage_options=self.options())
            else:
                table.update_incremental()
            return table
        except TableNotFoundError:
            return None
        except DeltaError as exc:
            if version is not None and DeltaTable.is_deltatable(uri, self.options()):
                latest = DeltaTable(uri, storage_options=self.options()).version()
                raise LakeError(f"lake {uri}: no version {version} (versions 0..{latest}, "
                                "older ones possibly vacuumed)") from None
            raise _storage_error(uri, exc) from None
        except OSError as exc:
            raise _storage_error(uri, exc) from None

    def table(self, dataset: str, version: int | None = None,
              as_of: dt.datetime | str | None = None) -> DeltaTable | None:
        """A dataset's Delta table, latest or as of a version or a time; None when it has none
        (an old-format dataset is refused with the command that converts it)."""
        table = self._open(self.uri(dataset), version)
        if table is None:
            self._refuse_legacy(dataset)
            return None
        if as_of is not None:
            try:
                when = pd.Timestamp(as_of)
            except ValueError:
                raise LakeError(f"{dataset}: {as_of!r} is not a time (ISO 8601, e.g. "
                                "2026-12-06T15:00:00Z)") from None
            when = when.tz_localize("UTC") if when.tzinfo is None else when
            table = DeltaTable(self.uri(dataset), storage_options=self.options())
            first = min((c["timestamp"] for c in table.history()), default=None)
            if first is None or when.timestamp() * 1000 < first:
                raise LakeError(f"{dataset}: no version as of {when.isoformat()} (the oldest "
                                f"kept commit is later)")
            try:
                table.load_as_version(when.to_pydatetime())
            except DeltaError as exc:
                raise LakeError(f"{dataset}: no version as of {when.isoformat()}: {exc}") from None
        return table

    def _refuse_legacy(self, dataset: str) -> None:
        from conflux.io.lake_legacy import is_legacy_dataset

        if is_legacy_dataset(self.path, dataset):
            raise LakeError(f"lake {self.path}: dataset {dataset} is in the pre-Delta format; "
                            "run `conflux lake migrate` to convert it")

    def drop(self, dataset: str) -> None:
        """Delete a dataset's table and everything under it (history included)."""
        root = self.uri(dataset)
        parent, _, name = root.rpartition("/")
        try:
            table_filesystem(parent).delete_dir(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _storage_error(root, exc) from None
        _LOCAL.__dict__.get("tables", {}).pop(root, None)

    def exists_table(self, dataset: str) -> bool:
        return self.table(dataset) is not None

    def datasets(self) -> list[str]:
        """Names of the datasets that have a table (local lakes only list; on S3 the catalog
        names them)."""
        root = self.root()
        if is_object_store(root):
            return []
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.isdir(f"{root}/{n}/_delta_log")]

    def version(self, dataset: str) -> int | None:
        table = self.table(dataset)
        return table.version() if table is not None else None

    @staticmethod
    def _partitioned(table: DeltaTable) -> bool:
        return DAY in table.metadata().partition_columns

    def partitions(self, dataset: str) -> list[str]:
        """The partitions holding rows: days, or ``["_all"]`` for an unpartitioned table with
        rows (reads take it for the whole table); ``[]`` when nothing is stored."""
        table = self.table(dataset)
        if table is None:
            return []
        if not self._partitioned(table):
            return [UNPARTITIONED] if table.count() else []
        return sorted({p[DAY] for p in table.partitions()})

    def exists(self, dataset: str, partition: str | None = None) -> bool:
        """Whether the partition (the table, when None) holds a stored write."""
        table = self.table(dataset)
        if table is None:
            return False
        return partition is None or partition in self.partitions(dataset)

    # -- reads ---------------------------------------------------------------------------
    def _source(self, table: DeltaTable, partitions: list[str] | None) -> pads.Dataset:
        """The table's files (those of ``partitions`` when given) as a pyarrow dataset read by
        pyarrow's own (C++) filesystem; see ``delta_dataset``."""
        wanted = partitions if partitions is not None and self._partitioned(table) else None
        return delta_dataset(table, wanted)

    @staticmethod
    def _columns(source: pads.Dataset, columns: list[str] | None) -> list[str]:
        names = [n for n in source.schema.names if n != DAY]
        return [c for c in columns if c in source.schema.names] if columns else names

    def read_partitions(self, dataset: str, partitions: list[str] | None = None,
                        columns: list[str] | None = None, *, version: int | None = None,
                        as_of: dt.datetime | str | None = None) -> pa.Table | None:
        """Several partitions (all when None) as one table, without the ``__day`` column;
        None when nothing is stored."""
        table = self.table(dataset, version, as_of)
        if table is None:
            return None
        source = self._source(table, partitions)
        out = source.to_table(columns=self._columns(source, columns))
        return out if len(out) or partitions is None else None

    def scan(self, dataset: str, partitions: list[str] | None, columns: list[str]
             ) -> LakeScan | None:
        """Partitions for streaming (``LakeScan``); None when nothing is stored."""
        table = self.table(dataset)
        if table is None:
            return None
        source = self._source(table, partitions)
        return LakeScan(source, tuple(self._columns(source, columns)))

    def read_table(self, dataset: str, partition: str | None = None, *,
                   version: int | None = None,
                   as_of: dt.datetime | str | None = None) -> pa.Table | None:
        """One partition (the whole table when None); None when it holds nothing."""
        table = self.read_partitions(dataset, [partition] if partition else None,
                                     version=version, as_of=as_of)
        return table if table is not None and (len(table) or partition is None) else None

    def read(self, dataset: str, partition: str | None = None, **when) -> pd.DataFrame | None:
        table = self.read_table(dataset, partition, **when)
        return table.to_pandas() if table is not None else None

    def row_count(self, dataset: str, partition: str | None = None) -> int:
        """Rows stored (from the log's file statistics, no data read)."""
        table = self.table(dataset)
        if table is None:
            return 0
        if partition is None or not self._partitioned(table):
            return table.count()
        actions = pa.table(table.get_add_actions(flatten=True))
        mine = pc.equal(actions[f"partition.{DAY}"], partition)
        return int(pc.sum(actions.filter(mine)["num_records"]).as_py() or 0)

    def find(self, dataset: str, column: str, value: str) -> list[tuple[str, dict]]:
        """Every current row whose ``column`` equals ``value``, with its partition."""
        table = self.table(dataset)
        if table is None:
            return []
        source = self._source(table, None)
        # MERGE writes strings as string_view: compare as strings, whatever a file holds
        found = source.to_table(filter=pc.field(column).cast(pa.string()) == value)
        hits = []
        for row in found.to_pylist():
            day = row.pop(DAY, None)
            hits.append((day or UNPARTITIONED, row))
        return sorted(hits, key=lambda hit: (hit[0], str(hit[1].get("__offset"))))

    def history(self, dataset: str, limit: int | None = None) -> list[dict]:
        """The table's commits, newest first (version, timestamp, operation, metadata)."""
        table = self.table(dataset)
        return table.history(limit) if table is not None else []

    def first_version_holding(self, dataset: str, topic: str, partition: int, offset: int, *,
                              history: list[dict] | None = None) -> dict | None:
        """The oldest commit whose applied Kafka ranges include ``topic``/``partition``/
        ``offset`` (from the commits' ``conflux.sources`` metadata), or None; ``history``:
        the table's, when the caller has it already."""
        found = None
        for commit in self.history(dataset) if history is None else history:
            for src in _json(commit.get(SOURCES_KEY)) or []:
                if (src.get("topic") == topic and src.get("partition") == partition
                        and src.get("start", 0) <= offset < src.get("end", -1)):
                    found = commit
        return found

    # -- writes --------------------------------------------------------------------------
    def _properties(self, metadata: Mapping | None) -> CommitProperties | None:
        if not metadata:
            return None
        return CommitProperties(custom_metadata={
            k: v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in metadata.items()})

    def _retry(self, dataset: str, attempt: Callable[[DeltaTable | None], Commit | None]
               ) -> Commit | None:
        """Run a read-then-commit ``attempt`` until Delta accepts its commit (a concurrent
        writer's conflicting commit makes it read again)."""
        uri = self.uri(dataset)
        for n in range(RETRIES):
            table = self.table(dataset)
            try:
                return attempt(table)
            except CommitFailedError:
                time.sleep(min(0.01 * 2 ** n, 0.5) * (0.5 + np.random.random()))
            except DeltaError as exc:
                if "already exists" in str(exc).lower() and table is None:
                    continue  # two writers created the table at once: the other won
                raise _storage_error(uri, exc) from None
            except OSError as exc:
                raise _storage_error(uri, exc) from None
        raise LakeError(f"{dataset}: {RETRIES} concurrent commits in a row overtook this write")

    def _committed(self, dataset: str, rows: int, metrics: dict | None = None,
                   table: DeltaTable | None = None) -> Commit:
        table = table if table is not None else self.table(dataset)
        if table is None:
            return Commit(None, None, rows, metrics or {})
        version = table.version()  # what this commit made (delta-rs updates it in place)
        return Commit(version, _durable_commit(self.uri(dataset), version), rows, metrics or {})

    def _prepare(self, data: pd.DataFrame | pa.Table, partition: str | None,
                 table: DeltaTable | None) -> pa.Table:
        incoming = _as_table(data)
        if DAY in incoming.schema.names:
            incoming = incoming.drop_columns([DAY])
        if table is not None:  # the stored types first (an all-null column takes its type)
            incoming = _cast_like(incoming, pa.schema(table.schema().to_arrow()))
        incoming = _storable(incoming)
        if partition is not None:
            incoming = incoming.append_column(DAY, pa.array([partition] * len(incoming), pa.string()))
        return incoming.replace_schema_metadata(None)

    def _overwrite(self, dataset: str, table: DeltaTable | None, data: pa.Table,
                   partitions: list[str | None], metadata: Mapping | None) -> None:
        """Replace ``partitions`` (the whole table for ``[None]``) by ``data`` in one commit."""
        days = [p for p in partitions if p is not None]
        if table is None:
            write_deltalake(self.uri(dataset), data, mode="error", storage_options=self.options(),
                            partition_by=[DAY] if days else None,
                            configuration={"delta.targetFileSize": str(TARGET_FILE_BYTES)},
                            commit_properties=self._properties(metadata))
            return
        write_deltalake(table, data, mode="overwrite", predicate=self._predicate(table, days),
                        schema_mode="merge",
                        commit_properties=self._properties(metadata))

    def write(self, dataset: str, data: pd.DataFrame | pa.Table, partition: str | None = None,
              *, metadata: Mapping | None = None) -> Commit:
        """Replace one partition (the whole table when None) in one commit."""
        return self.write_many(dataset, {partition: data}, metadata=metadata)

    def write_many(self, dataset: str, parts: Mapping[str | None, pd.DataFrame | pa.Table], *,
                   metadata: Mapping | None = None) -> Commit:
        """Replace several partitions in one commit (an empty part empties its partition)."""
        def attempt(table: DeltaTable | None) -> Commit:
            prepared = [self._prepare(d, p, table) for p, d in parts.items()]
            filled = [t for t in prepared if len(t)] or prepared[:1]  # empty parts: untyped
            incoming = (pa.concat_tables(filled, promote_options="permissive")
                        if len(filled) > 1 else filled[0])
            self._overwrite(dataset, table, incoming, list(parts), metadata)
            return self._committed(dataset, len(incoming), table=table)
        return self._retry(dataset, attempt)

    def upsert(self, dataset: str, data: pd.DataFrame | pa.Table, key: list[str],
               partition: str | None = None, *, order_by: list[str] | None = None,
               keep_existing: bool = False, metadata: Mapping | None = None) -> Commit:
        """Insert or replace rows by ``key`` in one partition (see ``upsert_many``)."""
        return self.upsert_many(dataset, {partition: data}, key, order_by=order_by,
                                keep_existing=keep_existing, metadata=metadata)

    def upsert_many(self, dataset: str, parts: Mapping[str | None, pd.DataFrame | pa.Table],
                    key: list[str], *, order_by: list[str] | None = None,
                    keep_existing: bool = False, metadata: Mapping | None = None) -> Commit:
        """One MERGE of rows of several partitions: a key is unique in the dataset, whatever
        its day. Per key, a row replaces the stored one when it is newer by ``order_by`` (when
        it differs, without ``order_by``) — and moves to its own day; with ``keep_existing`` a
        stored row is never replaced. Rows of one key within the call are reduced first by the
        same rule. ``Commit.rows``: rows inserted or updated (0 when all were stored already;
        then nothing is committed)."""
        def attempt(table: DeltaTable | None) -> Commit:
            prepared = [self._prepare(d, p, table) for p, d in parts.items() if len(d)]
            if not prepared:
                return Commit(table.version() if table is not None else None)
            source = pa.concat_tables(prepared, promote_options="permissive")
            source, _ = merge_by_key(None, source, key, order_by=order_by,
                                     keep_existing=keep_existing)
            if table is None:
                self._overwrite(dataset, None, source, list(parts), metadata)
                return self._committed(dataset, len(source))
            metrics = self._merge(table, source, key, order_by, keep_existing, metadata)
            changed = metrics["num_target_rows_inserted"] + metrics["num_target_rows_updated"]
            if not changed:
                return Commit(table.version(), rows=0, metrics=metrics)
            return self._committed(dataset, changed, metrics, table=table)
        return self._retry(dataset, attempt)

    def _merge(self, table: DeltaTable, source: pa.Table, key: list[str],
               order_by: list[str] | None, keep_existing: bool, metadata: Mapping | None) -> dict:
        on = [f't."{k}" = s."{k}"' for k in key] + _key_range(source, key[0])
        merger = table.merge(source, " AND ".join(on), source_alias="s", target_alias="t",
                             merge_schema=True, commit_properties=self._properties(metadata))
        if not keep_existing:
            merger = merger.when_matched_update_all(_newer(source.schema.names, key, order_by,
                                                           table.schema().to_arrow().names))
        return merger.when_not_matched_insert_all().execute()

    def rewrite(self, dataset: str, partition: str | None,
                transform: Callable[[pa.Table | None], pa.Table | None], *,
                metadata: Mapping | None = None) -> Commit | None:
        """Replace a partition by ``transform(current content)`` (see ``rewrite_many``)."""
        return self.rewrite_many(dataset, {partition: transform}, metadata=metadata)

    def rewrite_many(self, dataset: str,
                     transforms: Mapping[str | None, Callable[[pa.Table | None], pa.Table | None]],
                     *, metadata: Mapping | None = None) -> Commit | None:
        """Replace each partition by its ``transform(current content)``, all in one commit,
        read and written at the same version (a concurrent write makes it read again);
        ``None`` from a transform empties its partition."""
        def attempt(table: DeltaTable | None) -> Commit | None:
            current = self._read_many(table, list(transforms))
            results = {p: t(current.get(p)) for p, t in transforms.items()}
            kept = {p: r for p, r in results.items() if r is not None}
            if not kept:
                if table is None:
                    return None
                table.delete(self._predicate(table, list(transforms)),
                             commit_properties=self._properties(metadata))
                return self._committed(dataset, 0, table=table)
            prepared = [self._prepare(r, p, table) for p, r in kept.items()]
            incoming = (pa.concat_tables(prepared, promote_options="permissive")
                        if len(prepared) > 1 else prepared[0])
            self._overwrite(dataset, table, incoming, list(transforms), metadata)
            return self._committed(dataset, len(incoming), table=table)
        return self._retry(dataset, attempt)

    def _predicate(self, table: DeltaTable, partitions: list[str | None]) -> str | None:
        days = [p for p in partitions if p is not None]
        if not days or not self._partitioned(table):
            return None
        listed = ", ".join(f"'{_quote(d)}'" for d in days)
        return f"{DAY} IN ({listed})"

    def _read_many(self, table: DeltaTable | None, partitions: list[str | None]
                   ) -> dict[str | None, pa.Table]:
        """The partitions' current rows (those holding any), read at ``table``'s version."""
        if table is None:
            return {}
        days = [p for p in partitions if p is not None]
        if not days or not self._partitioned(table):
            whole = self._read_at(table, None)
            return {None: whole} if whole is not None else {}
        source = self._source(table, days)
        rows = source.to_table()
        out = {}
        for day in pc.unique(rows[DAY]).to_pylist() if len(rows) else []:
            out[day] = rows.filter(pc.equal(rows[DAY], day)).drop_columns([DAY])
        return out

    def _read_at(self, table: DeltaTable | None, partition: str | None) -> pa.Table | None:
        if table is None:
            return None
        source = self._source(table, [partition] if partition else None)
        out = source.to_table(columns=self._columns(source, None))
        return out if len(out) else None

    # -- checkpointed partitions (the ledger projection) ---------------------------------
    def _checkpoint_uri(self, dataset: str, partition: str | None, name: str) -> str:
        return f"{self.uri(dataset)}/{CHECKPOINTS}/{partition or UNPARTITIONED}/{name}"

    def _checkpoint_of(self, table: DeltaTable, partition: str | None) -> dict | None:
        """The checkpoint named by the newest commit that wrote ``partition`` (None when that
        commit was not a checkpointed rewrite)."""
        for commit in table.history():
            meta = _json(commit.get(CHECKPOINT_KEY))
            if meta and meta.get("partition") == (partition or UNPARTITIONED):
                return meta
            if commit.get("operation") in MAINTENANCE:
                continue
            if partition is None or f"'{partition}'" in json.dumps(commit.get("operationParameters")):
                return None
        return None

    def read_checkpointed(self, dataset: str, partition: str | None = None
                          ) -> tuple[pa.Table | None, str | None, dict[str, pa.Table]]:
        """A partition and the checkpoint committed with it by ``rewrite_checkpointed``:
        (content, checkpoint id, tables by name); a partition written another way has
        (content, None, {})."""
        while True:  # history() also lists commits newer than the handle: read again then
            table = self.table(dataset)
            seen = table.version() if table is not None else None
            out = self._checkpointed_at(dataset, table, partition)
            if table is None or DeltaTable(self.uri(dataset), storage_options=self.options()
                                           ).version() == seen:
                return out

    def _checkpointed_at(self, dataset: str, table: DeltaTable | None, partition: str | None):
        if table is None:
            return None, None, {}
        content = self._read_at(table, partition)
        meta = self._checkpoint_of(table, partition)
        if not meta:
            return content, None, {}
        tables = {}
        for name, version in meta["tables"].items():
            ck = self._open(self._checkpoint_uri(dataset, partition, name), version)
            tables[name] = ck.to_pyarrow_table() if ck is not None else None
        if any(t is None for t in tables.values()):
            raise LakeError(f"{dataset}: checkpoint {meta['id']} is missing a table")
        return content, meta["id"], tables

    def rewrite_checkpointed(
            self, dataset: str,
            transform: Callable[[pa.Table | None, dict[str, pa.Table]],
                                tuple[pa.Table | pd.DataFrame, dict[str, pa.Table | pd.DataFrame]] | None],
            partition: str | None = None) -> str | None:
        """Replace a partition *and* its checkpoint together: ``transform(content,
        checkpoint)`` returns the new content and checkpoint tables (or None to leave both
        alone); returns the new checkpoint id (None when left alone).

        The checkpoint tables are written first (each a new version of its own small Delta
        table); the partition's commit then names those versions in its metadata, so the
        commit that makes the new content visible is the one that makes its checkpoint
        current: readers see the old pair or the new pair."""
        result: dict = {}

        def attempt(table: DeltaTable | None) -> Commit | None:
            content, _, checkpoint = self._checkpointed_at(dataset, table, partition)
            out = transform(content, checkpoint)
            if out is None:
                return None
            data, tables = out
            ident = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            versions = {}
            for name, part in tables.items():
                uri = self._checkpoint_uri(dataset, partition, name)
                write_deltalake(uri, _storable(_as_table(part)).replace_schema_metadata(None),
                                mode="overwrite", schema_mode="overwrite",
                                storage_options=self.options())
                versions[name] = DeltaTable(uri, storage_options=self.options()).version()
            meta = {CHECKPOINT_KEY: {"id": ident, "partition": partition or UNPARTITIONED,
                                     "tables": versions}}
            incoming = self._prepare(data, partition, table)
            self._overwrite(dataset, table, incoming, [partition], meta)
            result["id"] = ident
            return self._committed(dataset, len(incoming), table=table)
        return result.get("id") if self._retry(dataset, attempt) else None

    # -- maintenance ---------------------------------------------------------------------
    def optimize(self, dataset: str, partition: str | None = None) -> dict:
        """Compact small files (of one partition when given); returns delta-rs's metrics."""
        def attempt(table: DeltaTable | None) -> Commit:
            if table is None:
                return Commit(None)
            filters = [(DAY, "=", partition)] if partition and self._partitioned(table) else None
            return Commit(table.version(), metrics=table.optimize.compact(partition_filters=filters))
        commit = self._retry(dataset, attempt)
        return commit.metrics if commit else {}

    def vacuum(self, dataset: str, *, retention_hours: int) -> list[str]:
        """Delete files no version younger than ``retention_hours`` needs (time travel stays
        possible that far back); checkpoint tables too. Returns the files removed."""
        table = self.table(dataset)
        if table is None:
            return []
        removed = table.vacuum(retention_hours=retention_hours, dry_run=False,
                               enforce_retention_duration=False)
        root = f"{self.uri(dataset)}/{CHECKPOINTS}"
        if not is_object_store(root) and os.path.isdir(root):
            for part in os.listdir(root):
                for name in os.listdir(f"{root}/{part}"):
                    ck = self._open(f"{root}/{part}/{name}")
                    if ck is not None:
                        removed += ck.vacuum(retention_hours=retention_hours, dry_run=False,
                                             enforce_retention_duration=False)
        return removed

    def create_checkpoint(self, dataset: str) -> int | None:
        """Write a Delta log checkpoint of the current version; returns that version."""
        table = self.table(dataset)
        if table is None:
            return None
        table.create_checkpoint()
        return table.version()


_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}


def table_filesystem(table_uri: str) -> pafs.FileSystem:
    """A pyarrow filesystem rooted at a table (files in the log are relative to it): native
    reads, no Python callbacks (faster than deltalake's default handler, and no callback
    threads left running at interpreter exit)."""
    parts = urlsplit(table_uri)
    if parts.scheme in ("", "file"):
        return pafs.SubTreeFileSystem(parts.path if parts.scheme else table_uri,
                                      pafs.LocalFileSystem())
    env = tuple(os.environ.get(n) for n in S3_ENV)
    key = (parts.scheme, env)
    if key not in _FILESYSTEMS:
        options: dict = {"connect_timeout": 5, "request_timeout": 60}
        if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            options["region"] = region
        if endpoint := (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(endpoint_override=ep.netloc, scheme=ep.scheme)
        _FILESYSTEMS[key] = pafs.S3FileSystem(**options)
    return pafs.SubTreeFileSystem(f"{parts.netloc}{parts.path}", _FILESYSTEMS[key])


_UNREADABLE_FEATURES = {"deletionVectors", "columnMapping"}


def delta_dataset(table: DeltaTable, days: list[str] | None = None) -> pads.Dataset:
    """A Delta table version's data files (those whose ``__day`` is in ``days`` when given) as a
    pyarrow dataset: one fragment per add action, ``__day`` filled in from its partition value.

    Built from the log's add actions in one Arrow pass; ``DeltaTable.to_pyarrow_dataset`` also
    turns every file's statistics into a Python expression, which cost more than the join on
    tables of thousands of files (docs/benchmarks.md). Tables needing a reader feature this
    cannot honour (deletion vectors, column mapping: Conflux writes neither) are refused."""
    protocol = table.protocol()
    needed = _UNREADABLE_FEATURES & set(protocol.reader_features or ())
    if needed:
        raise LakeError(f"lake {table.table_uri}: the table uses {', '.join(sorted(needed))}, "
                        "which Conflux does not read (it never writes them)")
    fs = table_filesystem(table.table_uri)
    schema = pa.schema(table.schema().to_arrow())
    actions = pa.table(table.get_add_actions(flatten=True))
    partitioned = f"partition.{DAY}" in actions.column_names
    if days is not None and partitioned:
        actions = actions.filter(pc.is_in(actions[f"partition.{DAY}"], pa.array(days, pa.string())))
    fmt = pads.ParquetFileFormat(
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=True))
    values = actions[f"partition.{DAY}"].to_pylist() if partitioned else [None] * len(actions)
    fragments = [
        # log paths are URI-encoded; the size saves a HEAD request per file on S3
        fmt.make_fragment(unquote(path), filesystem=fs, file_size=size,
                          partition_expression=(pc.field(DAY) == day) if day is not None
                          else (pc.field(DAY).is_null() if partitioned else None))
        for path, size, day in zip(actions["path"].to_pylist(),
                                   actions["size_bytes"].to_pylist(), values)]
    return pads.FileSystemDataset(fragments, schema, fmt, fs)


def _durable_commit(uri: str, version: int) -> int | None:
    """Read commit ``version``'s log entry and return its time (epoch ms). On a local lake,
    first fsync the files it added, the entry and their folders: the commit survives a power
    loss before the caller moves the Kafka cursor past its records (delta-rs renames files into
    place but does not sync them). An S3 PUT is durable once acknowledged."""
    name = f"_delta_log/{version:020d}.json"
    fs = table_filesystem(uri)
    with fs.open_input_stream(name) as src:
        actions = [json.loads(line) for line in src.readall().splitlines() if line.strip()]
    if not is_object_store(uri):
        root = urlsplit(uri).path if uri.startswith("file://") else uri
        added = [unquote(a["add"]["path"]) for a in actions if "add" in a]
        folders = {os.path.dirname(os.path.join(root, p)) for p in added}
        for path in [*(os.path.join(root, p) for p in added), os.path.join(root, name),
                     *folders, os.path.join(root, "_delta_log"), root]:
            _fsync(path)
    info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
    return info.get("timestamp")


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # vacuumed meanwhile
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _quote(value: str) -> str:
    return str(value).replace("'", "''")


def _json(value) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _key_range(source: pa.Table, column: str) -> list[str]:
    """``t.column BETWEEN min AND max`` of the source's keys: lets delta-rs skip every file
    whose key statistics lie outside (keys grow with time in most datasets, so a micro-batch
    touches the newest files and the few that hold its late keys' neighbours)."""
    values = source[column]
    if not (pa.types.is_integer(values.type) or pa.types.is_string(values.type)):
        return []
    bounds = pc.min_max(values).as_py()
    if bounds["min"] is None:
        return []
    lit = (str if pa.types.is_integer(values.type) else lambda v: f"'{_quote(v)}'")
    return [f't."{column}" >= {lit(bounds["min"])}', f't."{column}" <= {lit(bounds["max"])}']


def _newer(columns: list[str], key: list[str], order_by: list[str] | None,
           stored: list[str] | None = None) -> str:
    """The MERGE condition under which a source row replaces the stored row: newer by
    ``order_by`` (lexicographic, the stored row winning a tie), or different at all."""
    if order_by:
        terms = []
        for i, col in enumerate(order_by):
            equal = [f's."{c}" = t."{c}"' for c in order_by[:i]]
            terms.append("(" + " AND ".join([*equal, f's."{col}" > t."{col}"']) + ")")
        return " OR ".join(terms)
    others = [c for c in columns if c not in key]  # __day included: a key moved to another day
    if not others:
        return "false"
    return " OR ".join(f'(s."{c}" IS DISTINCT FROM t."{c}")' if stored is None or c in stored
                       else f'(s."{c}" IS NOT NULL)' for c in others)
