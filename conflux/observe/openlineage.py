"""OpenLineage run events for both paths, built from the same declarations as the Dagster assets.

Every unit of real work is an OpenLineage *run* of a *job* with input and output datasets:

| work | job name | inputs → outputs |
|---|---|---|
| batch table load (``conflux.batch.asset``) | ``<dataset>`` | ``postgres://host:port`` ``db.schema.table`` → lake dataset |
| batch join (``conflux.batch.asset``) | ``<dataset>`` | upstream lake datasets → lake dataset (+ column lineage) |
| ingest run (``conflux.event.job``) | ``<dataset>__ingest`` | Kafka topics → lake dataset, DLQ topic |
| sensor tick that applies records inline | ``<dataset>__kafka`` | Kafka topics → lake dataset, DLQ topic |
| batch fallback (``conflux.batch.fallback``) | ``<dataset>__reconcile`` | ops table, lake dataset → lake dataset |

A run emits ``START`` when the work begins, then ``COMPLETE`` (with row counts) or ``FAIL`` (with
an ``errorMessage`` facet; the error is re-raised), or ``ABORT`` when it is interrupted. Datasets
carry the ``schema`` facet from their pydantic contract (the same ``column_types`` as
``dagster/column_schema``), ``documentation`` and ``ownership`` from the declaration, and a join's
output the ``columnLineage`` facet from ``derive_column_lineage`` (the same call as
``dagster/column_lineage``). Runs launched by Dagster name their Dagster run in the ``parent``
facet. Dataset names follow OpenLineage's naming conventions: Kafka ``kafka://host:port`` +
topic, Postgres ``postgres://host:port`` + ``database.schema.table``, the lake ``file`` + the
absolute folder of the dataset (or ``scheme://bucket`` + path for an object-store lake).

**Off by default.** Nothing is built or sent unless the environment configures a transport with
the OpenLineage client's own variables:

| variable | meaning |
|---|---|
| ``OPENLINEAGE_URL`` (+ ``OPENLINEAGE_ENDPOINT``, ``OPENLINEAGE_API_KEY``) | HTTP transport: POST every event to ``$OPENLINEAGE_URL/api/v1/lineage`` |
| ``OPENLINEAGE__TRANSPORT__TYPE=file`` + ``OPENLINEAGE__TRANSPORT__LOG_FILE_PATH=/path/events.jsonl`` + ``OPENLINEAGE__TRANSPORT__APPEND=true`` | file transport: one JSON event per line (without ``APPEND``, one file per event, named ``<path>-<timestamp>.json``) |
| ``OPENLINEAGE__TRANSPORT__*`` | any other transport or option of the client (``http`` with retries and auth, ``async_http``, ``console``, ...) |
| ``OPENLINEAGE_CONFIG`` | an ``openlineage.yml`` with the client's configuration |
| ``OPENLINEAGE_DISABLED=true`` | off, whatever else is set |
| ``OPENLINEAGE_NAMESPACE`` | namespace of Conflux's jobs (default ``conflux``) |

Sending never fails the pipeline and never holds a sensor tick: events are built and sent by one
background thread per process, through a bounded queue; a failed send is logged as a warning (at
most once a minute per process) and dropped. A step of a Dagster run waits at most
``FLUSH_TIMEOUT_S`` when it ends for its events to leave (the run's process exits soon after).
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from conflux.contracts.lineage import column_types, derive_column_lineage
from conflux.core.declarations import BatchDataset, Dataset, EventDataset

log = logging.getLogger("conflux.openlineage")

DEFAULT_NAMESPACE = "conflux"
INTEGRATION = "CONFLUX"
FLUSH_TIMEOUT_S = 5.0    # a Dagster run waits at most this long for its events to be sent
MAX_QUEUED = 10_000      # events waiting to be sent per process; beyond, new ones are dropped
WARN_EVERY_S = 60.0      # emission failures are logged at most this often per process

DATA, DLQ = "data", "dlq"  # roles of output datasets (row counts are reported per role)


# --- configuration ------------------------------------------------------------------------------
def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment configures an OpenLineage transport (off by default)."""
    env = os.environ if env is None else env
    if env.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    return bool(env.get("OPENLINEAGE_URL") or env.get("OPENLINEAGE__TRANSPORT__TYPE")
                or env.get("OPENLINEAGE_CONFIG"))


def job_namespace(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE


@functools.cache
def _versions() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import dagster as dg

    try:
        mine = version("conflux")
    except PackageNotFoundError:
        mine = "0.0.0"
    return mine, dg.__version__


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562), the run id OpenLineage recommends (stdlib only: the
    client's own helper would import its transports into the caller's thread)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def producer() -> str:
    """The URI naming the code that produced an event (``producer`` / ``_producer``)."""
    return f"urn:conflux:{_versions()[0]}"


# --- dataset naming (OpenLineage naming conventions) --------------------------------------------
def lake_dataset(lake_path: str, dataset: str) -> tuple[str, str]:
    """``(namespace, name)`` of a lake dataset: ``file`` + its absolute folder, or
    ``scheme://bucket`` + its path for an object-store lake."""
    if "://" in lake_path and not lake_path.startswith("file://"):
        parts = urlsplit(lake_path)
        prefix = parts.path.strip("/")
        return f"{parts.scheme}://{parts.netloc}", f"{prefix}/{dataset}" if prefix else dataset
    path = urlsplit(lake_path).path if lake_path.startswith("file://") else lake_path
    return "file", os.path.join(os.path.abspath(path), dataset)


def kafka_dataset(bootstrap_servers: str, topic: str) -> tuple[str, str]:
    """``(kafka://host:port, topic)``, named after the first bootstrap server."""
    first = bootstrap_servers.split(",")[0].strip()
    first = first.split("://", 1)[-1]  # PLAINTEXT://host:port
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        host, port = first, "9092"
    return f"kafka://{host}:{port}", topic


def postgres_dataset(url: str, table: str) -> tuple[str, str]:
    """``(postgres://host:port, database.schema.table)`` from a libpq URL or key=value string;
    credentials never leave it."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # not parseable: still name the table
        info = {}
    host = str(info.get("host") or "localhost").split(",")[0]
    port = str(info.get("port") or "5432").split(",")[0]
    database = info.get("dbname") or info.get("user") or "postgres"
    return f"postgres://{host}:{port}", f"{database}.{table}"


# --- what a run reads and writes ------------------------------------------------------------------
@dataclass(frozen=True)
class LineageDataset:
    """One input or output of a run, with what its facets are built from.

    Args:
        namespace, name: the OpenLineage dataset identity.
        contract: pydantic contract of its rows (``schema`` facet), if known.
        description, owner: ``documentation`` and ``ownership`` facets, if set.
        column_lineage: ``{column: ((namespace, name, field), ...)}`` (``columnLineage`` facet).
        role: ``data`` or ``dlq``: which row count of the run is reported for it.
    """

    namespace: str
    name: str
    contract: type[BaseModel] | None = None
    description: str = ""
    owner: str = ""
    column_lineage: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = ()
    role: str = DATA


@dataclass(frozen=True)
class LineageIO:
    """The job of a run and the datasets it reads and writes (pure data; see the builders)."""

    job_name: str
    job_type: str
    inputs: tuple[LineageDataset, ...]
    outputs: tuple[LineageDataset, ...]
    description: str = ""


def _declared(ds: Dataset, namespace: str, name: str, **extra: Any) -> LineageDataset:
    return LineageDataset(namespace=namespace, name=name, contract=ds.contract,
                          description=ds.description, owner=ds.owner, **extra)


def declared_column_lineage(ds: Dataset, catalog: Mapping[str, Dataset]
                            ) -> dict[str, list[tuple[str, str]]]:
    """``{column: [(upstream, field), ...]}``: the same derivation as ``dagster/column_lineage``."""
    if not isinstance(ds, BatchDataset) or not ds.upstream:
        return {}
    return derive_column_lineage(ds.fields, {u: catalog[u].fields for u in ds.upstream},
                                 ds.lineage)


def batch_io(ds: BatchDataset, catalog: Mapping[str, Dataset], *, lake_path: str,
             postgres_url: str) -> LineageIO:
    """A batch asset's run: an ops table → the lake, or upstream lake datasets → the lake."""
    out_ns, out_name = lake_dataset(lake_path, ds.name)
    if ds.source_table:
        ns, name = postgres_dataset(postgres_url, ds.source_table)
        return LineageIO(job_name=ds.name, job_type="TABLE_LOAD",
                         inputs=(LineageDataset(namespace=ns, name=name, contract=ds.contract),),
                         outputs=(_declared(ds, out_ns, out_name),),
                         description=f"Load {ds.source_table} into the lake dataset {ds.name}")
    ids = {up: lake_dataset(lake_path, up) for up in ds.upstream}
    lineage = tuple(
        (column, tuple((*ids[up], fld) for up, fld in deps))
        for column, deps in declared_column_lineage(ds, catalog).items())
    return LineageIO(
        job_name=ds.name, job_type="JOIN",
        inputs=tuple(_declared(catalog[up], *ids[up]) for up in ds.upstream),
        outputs=(_declared(ds, out_ns, out_name, column_lineage=lineage),),
        description=f"Compute {ds.name} from {', '.join(ds.upstream)}")


def ingest_io(ds: EventDataset, *, lake_path: str, bootstrap_servers: str,
              job_name: str, job_type: str = "INGEST") -> LineageIO:
    """An event dataset's ingest (a run, or a sensor tick applying records inline): its topics →
    the lake dataset, bad records → the DLQ topic."""
    topics = tuple(LineageDataset(*kafka_dataset(bootstrap_servers, t), contract=ds.contract)
                   for t in ds.topics)
    outputs = [_declared(ds, *lake_dataset(lake_path, ds.name))]
    if ds.dlq_topic:
        outputs.append(LineageDataset(*kafka_dataset(bootstrap_servers, ds.dlq_topic), role=DLQ))
    return LineageIO(job_name=job_name, job_type=job_type, inputs=topics, outputs=tuple(outputs),
                     description=f"Apply {', '.join(ds.topics)} to {ds.name}")


def fallback_io(ds: EventDataset, *, lake_path: str, postgres_url: str,
                repair: bool = True) -> LineageIO:
    """A batch fallback run: reconcile the lake dataset with its ops table (and repair it)."""
    assert ds.fallback is not None, f"{ds.name} declares no batch fallback"
    lake = _declared(ds, *lake_dataset(lake_path, ds.name))
    source = LineageDataset(*postgres_dataset(postgres_url, ds.fallback.source_table),
                            contract=ds.contract)
    return LineageIO(job_name=f"{ds.name}__reconcile", job_type="RECONCILE",
                     inputs=(source, lake), outputs=(lake,) if repair else (),
                     description=f"Reconcile {ds.name} with {ds.fallback.source_table}")


# --- events (pure) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parent:
    """The Dagster run a lineage run belongs to (``parent`` facet)."""

    job_name: str
    run_id: str


def dagster_parent(context: Any) -> Parent | None:
    """The parent of a run started inside a Dagster op, asset or check context."""
    ctx = getattr(context, "op_execution_context", context)
    try:
        return Parent(job_name=ctx.job_name, run_id=ctx.run_id)
    except Exception:  # not inside a run
        return None


@functools.lru_cache(maxsize=256)
def _schema_fields(contract: type[BaseModel]) -> tuple[tuple[str, str, str | None], ...]:
    return tuple((name, kind, desc) for name, kind, desc, _ in column_types(contract))


def _dataset_facets(ref: LineageDataset, prod: str) -> dict[str, Any]:
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        documentation_dataset,
        ownership_dataset,
        schema_dataset,
    )

    facets: dict[str, Any] = {}
    if ref.contract is not None:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(
                name=name, type=kind, description=desc, ordinal_position=i)
                for i, (name, kind, desc) in enumerate(_schema_fields(ref.contract), start=1)],
            producer=prod)
    if ref.description:
        facets["documentation"] = documentation_dataset.DocumentationDatasetFacet(
            description=ref.description, producer=prod)
    if ref.owner:
        facets["ownership"] = ownership_dataset.OwnershipDatasetFacet(
            owners=[ownership_dataset.Owner(name=ref.owner)], producer=prod)
    if ref.column_lineage:
        facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={column: column_lineage_dataset.Fields(inputFields=[
                column_lineage_dataset.InputField(namespace=ns, name=name, field=fld)
                for ns, name, fld in deps]) for column, deps in ref.column_lineage},
            producer=prod)
    return facets


def run_event(io: LineageIO, *, state: str, run_id: str, parent: Parent | None = None,
              rows: Mapping[str, int] | None = None, error: BaseException | None = None,
              event_time: dt.datetime | None = None, namespace: str | None = None):
    """The OpenLineage ``RunEvent`` of one state transition of a run (pure: no I/O).

    Args:
        io: the job and its datasets.
        state: ``START``, ``COMPLETE``, ``FAIL`` or ``ABORT``.
        run_id: the lineage run's UUID (the same for every event of the run).
        parent: the Dagster run it belongs to, if any.
        rows: rows written per output role (``outputStatistics`` facet), on completion.
        error: the exception of a failed run (``errorMessage`` facet).
        event_time: when the transition happened (default: now, UTC).
        namespace: the job namespace (default: ``OPENLINEAGE_NAMESPACE`` or ``conflux``).

    Returns:
        An ``openlineage.client.event_v2.RunEvent``.

    Examples:
        >>> ev = run_event(batch_io(REVENUE_BY_NATION, CATALOG, lake_path="/lake",
        ...                         postgres_url="postgresql://u@h:5432/db"),
        ...                state="START", run_id=str(uuid.uuid4()))
        >>> ev.outputs[0].facets["columnLineage"].fields["revenue"].inputFields[0].field
        'l_extendedprice'
    """
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )
    from openlineage.client.facet_v2 import (
        error_message_run,
        job_type_job,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
    )

    prod = producer()
    ns = namespace or job_namespace()
    mine, dagster_version = _versions()
    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=dagster_version, name="Dagster", openlineageAdapterVersion=mine,
            producer=prod),
    }
    if parent is not None:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent.run_id),
            job=parent_run.Job(namespace=ns, name=parent.job_name),
            root=parent_run.Root(run=parent_run.RootRun(runId=parent.run_id),
                                 job=parent_run.RootJob(namespace=ns, name=parent.job_name)),
            producer=prod)
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=f"{type(error).__name__}: {error}"[:4000], programmingLanguage="python",
            stackTrace="".join(traceback.format_exception(error))[-16000:], producer=prod)
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration=INTEGRATION,
                                               jobType=io.job_type, producer=prod),
    }
    if io.description:
        from openlineage.client.facet_v2 import documentation_job

        job_facets["documentation"] = documentation_job.DocumentationJobFacet(
            description=io.description, producer=prod)
    outputs = []
    for ref in io.outputs:
        out_facets = {}
        if rows is not None and ref.role in rows:
            out_facets["outputStatistics"] = \
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=int(rows[ref.role]), producer=prod)
        outputs.append(OutputDataset(namespace=ref.namespace, name=ref.name,
                                     facets=_dataset_facets(ref, prod), outputFacets=out_facets))
    return RunEvent(
        eventType=RunState[state],
        eventTime=(event_time or dt.datetime.now(dt.timezone.utc)).isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=ns, name=io.job_name, facets=job_facets),
        inputs=[InputDataset(namespace=ref.namespace, name=ref.name,
                             facets=_dataset_facets(ref, prod)) for ref in io.inputs],
        outputs=outputs,
        producer=prod,
    )


def event_dict(event: Any) -> dict:
    """The JSON object an event is sent as."""
    from openlineage.client.serde import Serde

    return Serde.to_dict(event)


# --- sending (never blocks or fails the pipeline) -------------------------------------------------
def _signature(env: Mapping[str, str]) -> tuple:
    # the client adds OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__* aliases itself
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("OPENLINEAGE")
                        and not k.startswith("OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP")))


class _Emitter:
    """One background sender per process and configuration: a bounded queue and a thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self.pid = os.getpid()
        self.client: Any = None
        self.failures = Counter()
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._work, name="conflux-openlineage",
                                        daemon=True)
        self._thread.start()

    def submit(self, state: str, job: str, build: Callable[[], Any]) -> None:
        """Queue the event ``build()`` returns (``state`` and ``job`` name it in warnings)."""
        try:
            self.queue.put_nowait((state, job, build))
        except queue.Full:
            self._warn("queue full", f"{MAX_QUEUED} events wait to be sent; dropping "
                                     f"{state} of {job}")

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was handled (sent or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.queue.all_tasks_done.wait(remaining)
        return True

    def _warn(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("OpenLineage: %s (%s failure(s) so far in this process; lineage only — "
                        "the pipeline goes on)", message, sum(self.failures.values()))

    def _work(self) -> None:
        while True:
            state, job, build = self.queue.get()
            try:
                if self.client is None:
                    from openlineage.client import OpenLineageClient

                    self.client = OpenLineageClient()
                self.client.emit(build())
            except Exception as exc:  # lineage must never break the pipeline
                self._warn("emit", f"could not send {state} of {job}: "
                                   f"{type(exc).__name__}: {exc}")
            finally:
                self.queue.task_done()


_emitters: dict[tuple, _Emitter] = {}
_lock = threading.Lock()


def _emitter() -> _Emitter | None:
    """This process's sender for the current configuration, or None when lineage is off."""
    if not enabled():
        return None
    key = _signature(os.environ)
    em = _emitters.get(key)
    if em is None or em.pid != os.getpid():  # a forked child starts its own thread
        with _lock:
            em = _emitters.get(key)
            if em is None or em.pid != os.getpid():
                em = _emitters[key] = _Emitter()
                atexit.register(em.flush, FLUSH_TIMEOUT_S)
    return em


def flush(timeout: float = FLUSH_TIMEOUT_S) -> bool:
    """Wait for every queued event of this process to be handled; False on timeout."""
    return all(em.flush(timeout) for em in list(_emitters.values()) if em.pid == os.getpid())


# --- runs -----------------------------------------------------------------------------------------
@dataclass
class LineageRun:
    """One lineage run: ``start()`` once, then ``complete()``, ``fail(exc)`` or ``abort()``.

    Every method is idempotent and never raises; ``add_rows`` counts rows written per output role
    for the ``outputStatistics`` facet of ``COMPLETE``.
    """

    io: LineageIO
    parent: Parent | None = None
    flush_timeout: float | None = FLUSH_TIMEOUT_S
    run_id: str = field(default="")
    rows: Counter = field(default_factory=Counter)
    started: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = uuid7()

    def add_rows(self, role: str, rows: Any) -> None:
        """Count ``rows`` (an int or a Dagster metadata value) written to outputs of ``role``."""
        try:
            self.rows[role] += int(getattr(rows, "value", rows))
        except (TypeError, ValueError):
            pass

    def _send(self, state: str, **kwargs: Any) -> None:
        try:
            em = _emitter()
            if em is not None:  # the event is built by the sender thread, off the caller's time
                em.submit(state, self.io.job_name, functools.partial(
                    run_event, self.io, state=state, run_id=self.run_id, parent=self.parent,
                    event_time=dt.datetime.now(dt.timezone.utc), **kwargs))
        except Exception as exc:  # lineage must never break the pipeline
            log.warning("OpenLineage: could not queue %s of %s: %s: %s", state, self.io.job_name,
                        type(exc).__name__, exc)

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._send("START")

    def _finish(self, state: str, **kwargs: Any) -> None:
        if self.started and not self.finished:
            self.finished = True
            self._send(state, **kwargs)
            if self.flush_timeout:
                em = _emitter()
                if em is not None and not em.flush(self.flush_timeout):
                    log.warning("OpenLineage: events of %s still unsent after %.0f s",
                                self.io.job_name, self.flush_timeout)

    def complete(self) -> None:
        self._finish("COMPLETE", rows=dict(self.rows))

    def fail(self, error: BaseException) -> None:
        self._finish("FAIL", error=error)

    def abort(self) -> None:
        self._finish("ABORT")


class _Off:
    """The run of a process where lineage is off: does nothing."""

    run_id = ""
    started = finished = False

    def add_rows(self, role: str, rows: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def complete(self) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass

    def abort(self) -> None:
        pass


OFF = _Off()


def open_run(io: LineageIO | Callable[[], LineageIO], *, parent: Parent | None = None,
             flush_timeout: float | None = FLUSH_TIMEOUT_S) -> LineageRun | _Off:
    """A lineage run of ``io`` (not started yet), or ``OFF`` when lineage is off.

    Args:
        io: the job and its datasets (``batch_io``, ``ingest_io``, ``fallback_io``), or a
            function returning them, called only when lineage is on.
        parent: the Dagster run it belongs to.
        flush_timeout: how long finishing waits for the events to be sent; None for long-lived
            processes (the sensor's code server), whose sender thread goes on in the background.

    Returns:
        A ``LineageRun``, or ``OFF`` (whose methods do nothing).
    """
    if not enabled():
        return OFF
    try:
        return LineageRun(io=io() if callable(io) else io, parent=parent,
                          flush_timeout=flush_timeout)
    except Exception as exc:  # lineage must never break the pipeline
        log.warning("OpenLineage: could not describe the run: %s: %s", type(exc).__name__, exc)
        return OFF


@contextmanager
def lineage_run(io: LineageIO | Callable[[], LineageIO], *, parent: Parent | None = None,
                flush_timeout: float | None = FLUSH_TIMEOUT_S) -> Iterator[LineageRun | _Off]:
    """``START`` on enter; ``COMPLETE`` on success, ``FAIL`` (re-raising) on an exception,
    ``ABORT`` on an interruption. Nothing at all when lineage is off.

    Examples:
        >>> with lineage_run(batch_io(ds, catalog, lake_path=lake.path,
        ...                           postgres_url=postgres.url),
        ...                  parent=dagster_parent(context)) as run:
        ...     rows = compute()
        ...     run.add_rows("data", rows)
    """
    run = open_run(io, parent=parent, flush_timeout=flush_timeout)
    run.start()
    try:
        yield run
    except Exception as exc:
        run.fail(exc)
        raise
    except BaseException:  # interrupted (run terminated, generator closed, Ctrl-C)
        run.abort()
        raise
    run.complete()
