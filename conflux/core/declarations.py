"""The declarative API: one declaration per dataset, ``batch`` or ``event``, one contract.

Declarations are plain frozen dataclasses (no Dagster here). ``validate_catalog`` checks a set
of them at load time and ``conflux.dagster.compile`` turns them into Dagster definitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from conflux.core.errors import DeclarationError

Mode = Literal["batch", "event"]
DEFAULT_EVENT_FRESHNESS = dt.timedelta(seconds=30)
DEFAULT_START = dt.date(1992, 1, 1)


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """What every dataset declares.

    Args:
        name: dataset name; also the Dagster asset key and the registry subject.
        contract: pydantic model describing one row / event.
        key: fields that identify a row (upserts are idempotent by this key).
        event_time: date field that picks the daily partition, or None for unpartitioned.
        owner: team or person answering for the dataset (``team:name`` or an e-mail).
        description: one paragraph shown in the UI.
        group: domain the dataset belongs to (one Dagster group per domain).
        freshness: how old the newest data may get before the dataset counts as stale
            (event datasets default to 30 seconds; a scheduled batch dataset that declares none
            must be updated in the period before each tick of its schedule).
        start: the first daily partition of a partitioned dataset (a date or ``"YYYY-MM-DD"``;
            default 1992-01-01 — set it to the first day of your data, as Dagster shows and
            backfills every day from it). A partitioned dataset may not start before a
            partitioned upstream (its first days would have no upstream partitions).
    """

    name: str
    contract: type[BaseModel]
    key: tuple[str, ...]
    event_time: str | None = None
    owner: str = "team:data-platform"
    description: str = ""
    group: str = "commerce"
    freshness: dt.timedelta | None = None
    start: dt.date | str = DEFAULT_START

    mode: Mode = field(init=False, default="batch")

    def __post_init__(self):
        object.__setattr__(self, "start", _as_date(self.start))

    @property
    def subject(self) -> str:
        """Registry subject of the contract."""
        return self.name

    @property
    def partitioned(self) -> bool:
        return self.event_time is not None

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.contract.model_fields)


def _as_date(value):
    """A date from a date, a datetime or ``"YYYY-MM-DD"``; any other value is returned as it is,
    for ``validate_catalog`` to reject with the dataset's name."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True, kw_only=True)
class BatchFallback:
    """Where an event dataset can be rebuilt or reconciled from in batch.

    Args:
        source_table: ``schema.table`` in the operational Postgres holding the same rows.
        cron: cadence of the fallback schedule (off until turned on in the UI).
    """

    source_table: str
    cron: str = "0 * * * *"


@dataclass(frozen=True, kw_only=True)
class DeadLetterPolicy:
    """When an event dataset's dead letters are a problem: its ``dead_letters`` asset check.

    Over the trailing ``window``, the check counts the records that arrived on the dataset's
    topics and the dead letters written to its DLQ topic. The *rate* is dead letters / records;
    a window holding fewer than ``min_records`` records is judged as if it held
    ``min_records``, so a handful of bad records in a quiet hour is neither missed nor read as
    a 33 % failure rate. The check fails with severity ERROR when the rate reaches
    ``error_rate`` or the count reaches ``error_count``, with WARN at ``warn_rate`` /
    ``warn_count``, and passes otherwise. A threshold set to None is not applied.

    Args:
        window: trailing time window the counts cover (default one hour).
        warn_rate: rate from which the check warns (default 0.01, 1 %).
        error_rate: rate from which the check fails with ERROR (default 0.05, 5 %).
        warn_count: dead letters in the window from which the check warns (default None).
        error_count: dead letters in the window from which it errors (default None; e.g. 1 for
            an audit-critical dataset, where any dead letter is an incident).
        min_records: smallest number of records a rate is computed over (default 100).
        every: how often the ``dlq_monitor`` sensor evaluates the check (default one minute).

    Examples:
        >>> DeadLetterPolicy(window=dt.timedelta(minutes=15), warn_rate=0.001, error_count=500)
    """

    window: dt.timedelta = dt.timedelta(hours=1)
    warn_rate: float | None = 0.01
    error_rate: float | None = 0.05
    warn_count: int | None = None
    error_count: int | None = None
    min_records: int = 100
    every: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True)
class EventDataset(Dataset):
    """A dataset built from Kafka topics.

    Args:
        topics: source topic(s); the first one names the dead-letter topic.
        dlq_topic: where bad records go (default ``<first topic>.dlq``).
        partitions: partitions the platform creates each topic with.
        max_records_per_run: micro-batch bound: at most this many records per partition range.
        max_inflight_runs: backpressure: no new ingest run while this many are queued/running.
        ingest: ``"inline"`` — the sensor applies small backlogs itself, in micro-batches, for
            seconds-fresh data, and hands large ones (over ``inline_max_backlog`` records) to
            ingest runs; ``"runs"`` — every micro-batch is an ingest run.
        tick_budget_s: how long one sensor tick may read and apply (the daemon ticks every 5 s).
        linger_ms: an inline micro-batch is applied this long after its first record arrives
            (or at ``flush_records`` records, whichever comes first).
        inline_max_partitions: an inline micro-batch applies records up to the first one that
            would make it touch more lake partitions than this (the rest follow in the next
            micro-batch): each partition costs a write and an event, and a tick must end in time
            however widely a backlog's event times are spread.
        fallback: optional batch source to rebuild / reconcile from.
        dlq: thresholds of the ``dead_letters`` asset check (:class:`DeadLetterPolicy`).
        append_only: event-sourced (audit-critical): rows are never updated in place; a
            repeated key is ignored instead of replacing the stored row.

    Examples:
        >>> EventDataset(name="orders", contract=Order, key=("o_orderkey",),
        ...              event_time="o_orderdate", topics=("tpch.orders",))
    """

    topics: tuple[str, ...]
    dlq_topic: str | None = None
    partitions: int = 3
    max_records_per_run: int = 50_000
    max_inflight_runs: int = 2
    ingest: Literal["inline", "runs"] = "inline"
    inline_max_backlog: int = 10_000
    tick_budget_s: float = 3.5
    linger_ms: int = 200
    flush_records: int = 5_000
    inline_max_partitions: int = 64
    fallback: BatchFallback | None = None
    dlq: DeadLetterPolicy = field(default_factory=DeadLetterPolicy)
    append_only: bool = False
    mode: Mode = field(init=False, default="event")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.topics, str):
            object.__setattr__(self, "topics", (self.topics,))
        if self.dlq_topic is None and self.topics:
            object.__setattr__(self, "dlq_topic", f"{self.topics[0]}.dlq")
        if self.freshness is None:
            object.__setattr__(self, "freshness", DEFAULT_EVENT_FRESHNESS)

    @property
    def topic(self) -> str:
        """The main source topic."""
        return self.topics[0]


@dataclass(frozen=True, kw_only=True)
class BatchDataset(Dataset):
    """A dataset computed in batch: loaded from an ``ops`` table or joined from upstreams.

    Args:
        source_table: ``schema.table`` in the operational Postgres to load from, or None.
        upstream: names of the datasets ``compute`` reads (a Dagster asset ``compute``'s
            inputs name them already: left empty, they are taken from it).
        compute: how the rows are computed, or None for a table load. Either
            ``compute(inputs: dict[name, Arrow table]) -> DataFrame`` (Conflux reads the
            upstream partitions and writes the result), or a Dagster asset (``@dg.asset``) whose
            parameters are named after upstream datasets: Dagster loads them through the lake
            IO manager and stores what it returns in the lake under the contract; the asset's
            key, partitions and metadata come from this declaration.
        schedule: cron of the schedule that materializes it, or None.
        automation: also materialize exactly the partitions whose upstream partitions changed
            (declarative automation, evaluated by the ``conflux_automation`` sensor, on unless
            ``CONFLUX_AUTOMATION=off``); a dataset without upstream datasets is loaded once
            when it was never materialized.
        backfill: ``"single_run"`` (a range runs as one vectorized run) or ``"per_partition"``.
        lineage: extra column lineage ``{column: ("upstream.field", ...)}``; columns named like
            an upstream field are derived automatically.
        reads: the columns ``compute`` needs per upstream (default: every contract field); a
            join over wide tables reads, and holds in memory, only these.
        stream: upstreams handed to ``compute`` as lazy scans (``to_batches()`` /
            ``to_table()``) instead of tables, so a large input is never held whole.
        full_every: a table load with an ``updated_at`` column is incremental; every
            ``full_every``-th load is a full snapshot (incremental reads cannot see deletions).
        overlap_s: incremental reads go back this far before the watermark (late commits).
    """

    source_table: str | None = None
    upstream: tuple[str, ...] = ()
    compute: Callable | None = None
    schedule: str | None = None
    automation: bool = False
    backfill: Literal["single_run", "per_partition"] = "single_run"
    lineage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stream: tuple[str, ...] = ()
    full_every: int = 24
    overlap_s: float = 300.0
    mode: Mode = field(init=False, default="batch")

    def __post_init__(self):
        super().__post_init__()
        if not self.upstream and is_dagster_asset(self.compute):
            inputs = self.compute.keys_by_input_name.values()
            object.__setattr__(self, "upstream", tuple(k.to_user_string() for k in inputs))

    @property
    def asset_compute(self) -> bool:
        """Whether ``compute`` is a Dagster asset (see ``compute``)."""
        return is_dagster_asset(self.compute)

    @property
    def schedule_cron(self) -> str | None:
        """The cron the schedule really runs on: a partitioned dataset's schedule materializes
        the latest day once a day, at the declared minute and hour (``0`` where they are ``*``)."""
        if not self.schedule or not self.partitioned:
            return self.schedule
        minute, hour = (self.schedule.split() + ["0", "0"])[:2]
        return f"{minute if minute.isdigit() else 0} {hour if hour.isdigit() else 0} * * *"


def is_dagster_asset(compute: object) -> bool:
    """Whether a ``compute`` is a Dagster asset definition (``@dg.asset``), told apart without
    importing Dagster (declarations stay free of it)."""
    return hasattr(compute, "keys_by_input_name") and hasattr(compute, "op")


def _fail(ds_name: str, problem: str) -> None:
    raise DeclarationError(f"dataset {ds_name!r}: {problem}")


def _check_one(ds: Dataset) -> None:
    if not ds.name or not ds.name.replace("_", "").isalnum() or not ds.name[0].isalpha():
        _fail(ds.name, "name must start with a letter and use letters, digits and '_' only")
    if not (isinstance(ds.contract, type) and issubclass(ds.contract, BaseModel)):
        _fail(ds.name, f"contract must be a pydantic model class, got {ds.contract!r}")
    if not ds.key:
        _fail(ds.name, "declares no key fields (a key makes upserts idempotent)")
    for key in ds.key:
        if key not in ds.fields:
            _fail(ds.name, f"key field {key!r} is not in contract {ds.contract.__name__} "
                           f"(fields: {', '.join(ds.fields)})")
    if not isinstance(ds.start, dt.date):
        _fail(ds.name, f"start={ds.start!r} is not a date (a datetime.date or 'YYYY-MM-DD')")
    if ds.event_time is not None:
        if ds.event_time not in ds.fields:
            _fail(ds.name, f"event-time field {ds.event_time!r} is not in contract "
                           f"{ds.contract.__name__}")
        ann = ds.contract.model_fields[ds.event_time].annotation
        if ann not in (dt.date, dt.datetime):
            _fail(ds.name, f"event-time field {ds.event_time!r} must be a date or datetime, "
                           f"not {getattr(ann, '__name__', ann)}")
    if isinstance(ds, EventDataset):
        if not ds.topics:
            _fail(ds.name, "an event dataset needs at least one topic")
        if not 0.5 <= ds.tick_budget_s <= 30:
            _fail(ds.name, f"tick_budget_s={ds.tick_budget_s} must be within 0.5..30 seconds")
        if min(ds.partitions, ds.max_records_per_run, ds.max_inflight_runs, ds.flush_records,
               ds.inline_max_partitions) < 1:
            _fail(ds.name, "partitions, max_records_per_run, max_inflight_runs, flush_records and "
                           "inline_max_partitions must be positive")
        _check_dlq(ds)
    if isinstance(ds, BatchDataset):
        if (ds.source_table is None) == (ds.compute is None):
            _fail(ds.name, "a batch dataset declares exactly one of source_table or compute")
        if ds.compute is not None and not ds.upstream:
            _fail(ds.name, "a computed batch dataset must name its upstream datasets")
        if is_dagster_asset(ds.compute):
            keys = [k.to_user_string() for k in ds.compute.keys]
            if len(keys) != 1:
                _fail(ds.name, f"compute is a Dagster asset definition of {len(keys)} assets "
                               f"({', '.join(keys)}); it must define one")
            inputs = sorted(k.to_user_string() for k in ds.compute.keys_by_input_name.values())
            if inputs != sorted(ds.upstream):
                _fail(ds.name, f"compute asset's inputs ({', '.join(inputs) or 'none'}) are not "
                               f"its upstream ({', '.join(ds.upstream)})")
            if ds.stream or ds.reads:
                _fail(ds.name, "stream and reads apply to a compute(inputs) function; a Dagster "
                               "asset compute picks columns with AssetIn(metadata={'columns': "
                               "[...]})")
        if ds.full_every < 1 or ds.overlap_s < 0:
            _fail(ds.name, "full_every must be >= 1 and overlap_s >= 0")
        if ds.source_table is not None and "." not in ds.source_table:
            _fail(ds.name, f"source_table {ds.source_table!r} must be schema.table")


def _check_dlq(ds: EventDataset) -> None:
    policy = ds.dlq
    if not isinstance(policy, DeadLetterPolicy):
        _fail(ds.name, f"dlq must be a DeadLetterPolicy, got {policy!r}")
    if policy.window < dt.timedelta(minutes=1) or policy.every < dt.timedelta(seconds=10):
        _fail(ds.name, f"dlq.window ({policy.window}) must be at least a minute and dlq.every "
                       f"({policy.every}) at least 10 seconds")
    for name in ("warn_rate", "error_rate"):
        rate = getattr(policy, name)
        if rate is not None and not 0 < rate <= 1:
            _fail(ds.name, f"dlq.{name}={rate} must be a fraction within (0, 1]")
    for name in ("warn_count", "error_count"):
        count = getattr(policy, name)
        if count is not None and (not isinstance(count, int) or count < 1):
            _fail(ds.name, f"dlq.{name}={count!r} must be a positive whole number of dead letters")
    for kind in ("rate", "count"):
        warn, error = getattr(policy, f"warn_{kind}"), getattr(policy, f"error_{kind}")
        if warn is not None and error is not None and warn > error:
            _fail(ds.name, f"dlq.warn_{kind}={warn} is above dlq.error_{kind}={error}; "
                           f"a check warns before it errors")
    if policy.min_records < 1:
        _fail(ds.name, f"dlq.min_records={policy.min_records} must be at least 1")


def validate_catalog(datasets: Iterable[Dataset]) -> dict[str, Dataset]:
    """Check declarations together; returns them by name.

    Raises DeclarationError naming the dataset and the problem: bad names, key or event-time
    fields missing from the contract, duplicate names, topic collisions, unknown upstreams,
    lineage to unknown fields, and dependency cycles.
    """
    by_name: dict[str, Dataset] = {}
    topic_owner: dict[str, str] = {}
    for ds in datasets:
        _check_one(ds)
        if ds.name in by_name:
            _fail(ds.name, "is declared twice")
        by_name[ds.name] = ds
        if isinstance(ds, EventDataset):
            for topic in (*ds.topics, ds.dlq_topic):
                if topic in topic_owner:
                    _fail(ds.name, f"topic {topic!r} is already used by dataset "
                                   f"{topic_owner[topic]!r}")
                topic_owner[topic] = ds.name
    for ds in by_name.values():
        if not isinstance(ds, BatchDataset):
            continue
        for up in ds.upstream:
            if up not in by_name:
                _fail(ds.name, f"upstream {up!r} is not a declared dataset")
            upstream = by_name[up]
            if ds.partitioned and upstream.partitioned and ds.start < upstream.start:
                _fail(ds.name, f"starts on {ds.start}, before its upstream {up!r} "
                               f"({upstream.start}): its first days would have no upstream "
                               f"partition; start it on {upstream.start} or later")
        for up in getattr(ds, "stream", ()):
            if up not in ds.upstream:
                _fail(ds.name, f"stream names {up!r}, which is not one of its upstream datasets")
        for up, columns in getattr(ds, "reads", {}).items():
            if up not in ds.upstream:
                _fail(ds.name, f"reads names {up!r}, which is not one of its upstream datasets")
            unknown = [c for c in columns if c not in by_name[up].fields]
            if unknown:
                _fail(ds.name, f"reads {up}.{unknown[0]}, not a field of {up}'s contract")
        for column, sources in ds.lineage.items():
            if column not in ds.fields:
                _fail(ds.name, f"lineage names column {column!r}, not in its contract")
            for source in sources:
                up, _, fld = source.partition(".")
                if up not in ds.upstream or fld not in by_name[up].fields:
                    _fail(ds.name, f"lineage source {source!r} is not a field of an upstream")
    _check_acyclic(by_name)
    return by_name


def _check_acyclic(by_name: dict[str, Dataset]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            _fail(name, f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = 1
        ds = by_name[name]
        for up in getattr(ds, "upstream", ()):
            visit(up, [*path, name])
        state[name] = 2

    for name in by_name:
        visit(name, [])
