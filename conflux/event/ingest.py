"""Apply Kafka records to an event dataset: decode → validate → dead-letter → upsert → report.

Shared by both ways records reach the lake — the sensor's inline micro-batches and the ingest
runs — so they behave identically. Every stored row carries its provenance (``__topic``,
``__partition``, ``__offset``, ``__ts``, ``__correlation_id``); the upsert keeps, per key, the
row of the newest record (by Kafka timestamp, then offset) — or the oldest for append-only
datasets — so replaying any range, or receiving the same event twice, changes nothing.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conflux.contracts.fingerprint import fingerprint
from conflux.contracts.lineage import contract_schema
from conflux.core.declarations import EventDataset
from conflux.event import phases
from conflux.event.decode import ContractResolver, Decoded, dead_letter, decode_batch
from conflux.contracts.metadata import materialization_metadata
from conflux.io.kafka import KafkaResource, Outgoing, Record
from conflux.io.lake import ORIGIN_KEY, SOURCES_KEY, UNPARTITIONED, LakeResource
from conflux.io.registry import SchemaRegistryResource

DECODE_CHUNK = 5000
CORRELATION_HEADER = "correlation_id"
TRACE_HEADER = "traceparent"
MAX_LINEAGE_ID_BYTES = 256
_CONTROL_CHARS = {c: "\ufffd" for c in [*range(32), 127]}
PROVENANCE = ["__topic", "__partition", "__offset", "__ts", "__correlation_id"]
ORDER_BY = ["__ts", "__offset"]


@dataclass
class IngestReport:
    """What one application of records did (for logs, tags and tests)."""

    rows_in: int = 0
    rows_valid: int = 0
    dead: Counter = field(default_factory=Counter)
    partitions: dict[str, int] = field(default_factory=dict)  # partition -> rows written
    correlation_ids: list[str] = field(default_factory=list)  # up to 20 examples
    distinct_correlation_ids: int = 0
    traceparents: list[str] = field(default_factory=list)
    materializations: list[dg.AssetMaterialization] = field(default_factory=list)
    seconds: Counter = field(default_factory=Counter)  # phase -> wall seconds (decode, dlq, lake)
    consumed: int = 0  # records applied: all of them, or a prefix (``max_partitions``)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead.values())


def resolver_for(ds: EventDataset, registry: SchemaRegistryResource) -> ContractResolver:
    """What this code can read: the registered versions of the subject, their global schema ids
    (Confluent-framed records), and its own version. Loaded once per tick or run: an id
    registered later is read from the next one on."""
    client = registry.client
    # one query per tick: soft-deleted versions stay readable; ids, this code's version and the
    # latest live one follow from the list (newest live wins where content repeats, as ids())
    versions = sorted(client.versions(ds.subject, deleted=True),
                      key=lambda v: (not v.deleted, v.version))
    mine_fp = fingerprint(contract_schema(ds.contract))
    live = [v.version for v in versions if not v.deleted]
    mine = [v.version for v in versions if not v.deleted and v.fingerprint == mine_fp]
    return ContractResolver(
        ds.subject, mine[-1] if mine else None, [v.version for v in versions],
        ids={v.schema_id: v.version for v in versions}, latest=max(live, default=None),
        registered_as=lambda schema_id: [f"{s}@{v}" for s, v in
                                         client.usages(schema_id, deleted=True)])


def newest_ref(refs: Iterable[str]) -> str:
    """The highest ``subject@version`` among ``refs`` (by version number, not text)."""
    def version(ref: str) -> int:
        tail = ref.rpartition("@")[2]
        return int(tail) if tail.isdigit() else -1
    return max(refs, key=version)


def split_by_partition(ds: EventDataset, table: pa.Table) -> list[tuple[str, np.ndarray]]:
    """Row indices of ``table`` per event-time daily partition, in partition order (vectorised:
    a micro-batch of thousands of rows is split in Arrow, not row by row in Python)."""
    if not ds.partitioned:
        return [(UNPARTITIONED, np.arange(len(table)))]
    days = table[ds.event_time]
    if not pa.types.is_date32(days.type):
        days = pc.cast(days, pa.date32())
    order = pc.sort_indices(days).to_numpy()
    ordered = days.to_numpy(zero_copy_only=False)[order]  # datetime64[D], sorted
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    return [(str(ordered[first]), group) for first, group in zip(starts, np.split(order, cuts))]


def decode_records(ds: EventDataset, records: Iterable[Record],
                   resolver: ContractResolver) -> tuple[Decoded, int]:
    """Decode in chunks (batched validation); returns everything decoded and the count read."""
    total = Decoded()
    seen = 0
    it = iter(records)
    while chunk := list(itertools.islice(it, DECODE_CHUNK)):
        seen += len(chunk)
        part = decode_batch(chunk, ds.contract, ds.key, resolver)
        total.rows += part.rows
        total.records += part.records
        total.contracts += part.contracts
        total.dead += part.dead
    return total, seen


def _lineage_id(value: bytes | None) -> str:
    """A ``correlation_id`` / ``traceparent`` header as stored and reported: "" when missing or
    longer than ``MAX_LINEAGE_ID_BYTES`` (no id is that long: such a header is not traced, and
    megabytes of it are not copied into every row and materialization); bytes that are not
    UTF-8 and control characters are replaced (U+FFFD), so a garbage header never fails the
    record it came with."""
    if not value or len(value) > MAX_LINEAGE_ID_BYTES:
        return ""
    # control characters (NUL above all: Postgres text refuses it, failing the run's tags) too
    text = value.decode(errors="replace")
    return text if text.isprintable() else text.translate(_CONTROL_CHARS)


def _header(rec: Record, name: str) -> str:
    value = rec.header(name)
    return value.decode(errors="replace") if value else ""


def partition_prefix(ds: EventDataset, decoded: Decoded, max_partitions: int) -> int | None:
    """Index of the first decoded row that would make the rows before it span more than
    ``max_partitions`` daily partitions; None when they all fit (pure)."""
    if not ds.partitioned:
        return None
    days: set = set()
    for i, row in enumerate(decoded.rows):
        value = row[ds.event_time]
        day = value.date() if isinstance(value, dt.datetime) else value
        if day not in days:
            if len(days) >= max_partitions:
                return i
            days.add(day)
    return None


def _cut(decoded: Decoded, records: list[Record], row: int) -> tuple[Decoded, int]:
    """The rows before ``row`` and the dead letters before its record; and how many input
    records that prefix is."""
    position = {id(r): i for i, r in enumerate(records)}
    stop = position[id(decoded.records[row])]
    return Decoded(rows=decoded.rows[:row], records=decoded.records[:row],
                   contracts=decoded.contracts[:row],
                   dead=[d for d in decoded.dead if position[id(d.record)] < stop]), stop


def _within(ds: EventDataset, decoded: Decoded, first: dt.date, last: dt.date) -> Decoded:
    """The rows of ``decoded`` whose event day is in ``first .. last`` (all of them without an
    event time); no dead letters."""
    if not ds.event_time:
        return Decoded(rows=decoded.rows, records=decoded.records, contracts=decoded.contracts)

    def day(value):
        return value.date() if isinstance(value, dt.datetime) else value
    keep = [i for i, row in enumerate(decoded.rows) if first <= day(row[ds.event_time]) <= last]
    return Decoded(rows=[decoded.rows[i] for i in keep],
                   records=[decoded.records[i] for i in keep],
                   contracts=[decoded.contracts[i] for i in keep], dead=[])


def apply_records(ds: EventDataset, records: Iterable[Record], *, kafka: KafkaResource,
                  lake: LakeResource, resolver: ContractResolver, origin: str,
                  sources: list[dict] | Callable[[list[Record]], list[dict]],
                  lag: int | None = None,
                  max_partitions: int | None = None, current_as_of: float = 0.0,
                  keep_days: tuple[dt.date, dt.date] | None = None) -> IngestReport:
    """Apply records to ``ds``; returns the report with one materialization per partition touched.

    Args:
        origin: who applied them (a run id, or ``sensor:<name>``), recorded in dead letters.
        sources: the ``[start, end)`` ranges the records came from (materialization metadata),
            or a function giving them for the records applied (with ``max_partitions``).
        lag: records left behind the ranges when they were read.
        max_partitions: apply only the longest prefix of ``records`` touching at most this many
            partitions; ``report.consumed`` says how many records that was.
        current_as_of: the last time the writer knew the dataset held everything that had
            arrived (epoch seconds; 0: unknown) — ``dagster/last_updated_timestamp`` of the
            materializations. Not the newest record's time: other partitions may lag behind.
        keep_days: apply only the rows whose event day is within ``(first, last)`` and write no
            dead letters (a replay of days: bad records were dead-lettered when they arrived).
    """
    t0 = time.perf_counter()
    phases.mark("read", ds.name, origin)
    records = list(records)
    decoded, seen = decode_records(ds, records, resolver)
    if keep_days is not None:
        decoded = _within(ds, decoded, *keep_days)
    cut = partition_prefix(ds, decoded, max_partitions) if max_partitions else None
    if cut is not None:
        decoded, seen = _cut(decoded, records, cut)
    if callable(sources):
        sources = sources(records[:seen])
    report = IngestReport(rows_in=seen, rows_valid=len(decoded.rows), consumed=seen)
    t1 = time.perf_counter()
    report.seconds["decode"] += t1 - t0
    phases.mark("write", ds.name, origin)
    if decoded.dead:
        # every dead letter acknowledged, or the application fails (and is retried): none is
        # dropped silently; letters too big to send again are cut to fit (``dead_letter``)
        with kafka.publisher(ds.dlq_topic) as publish:
            publish([Outgoing(*dead_letter(d, dataset=ds.name, run_id=origin))
                     for d in decoded.dead])
        report.dead.update(d.code for d in decoded.dead)
    t2 = time.perf_counter()
    report.seconds["dlq"] += t2 - t1
    if not decoded.rows:
        return report
    recs = decoded.records
    heads = [dict(r.headers) for r in recs]
    correlation = [_lineage_id(h.get(CORRELATION_HEADER)) for h in heads]
    table = pa.Table.from_pylist(decoded.rows).append_column(
        "__topic", pa.array([r.topic for r in recs], pa.string())).append_column(
        "__partition", pa.array([r.partition for r in recs], pa.int32())).append_column(
        "__offset", pa.array([r.offset for r in recs], pa.int64())).append_column(
        "__ts", pa.array([r.timestamp_ms for r in recs], pa.int64())).append_column(
        "__correlation_id", pa.array(correlation, pa.string()))
    traces = {_lineage_id(h.get(TRACE_HEADER)) for h in itertools.islice(heads, 2000)} - {""}
    report.traceparents = sorted(traces)[:20]
    distinct = set(correlation) - {""}
    report.distinct_correlation_ids = len(distinct)
    report.correlation_ids = heapq.nsmallest(20, distinct)

    contracts = np.array(decoded.contracts, dtype=object)
    reasons = dict(report.dead)
    groups = [(partition, idx, table.take(idx)) for partition, idx in split_by_partition(ds, table)]
    # one MERGE (one Delta commit) for the whole micro-batch, naming the ranges it applied
    commit = lake.upsert_many(
        ds.name, {None if p == UNPARTITIONED else p: part for p, _, part in groups},
        list(ds.key), order_by=ORDER_BY, keep_existing=ds.append_only,
        metadata={SOURCES_KEY: sources, ORIGIN_KEY: origin})
    phases.mark("written", ds.name, origin)
    for partition, idx, part in groups:
        key = None if partition == UNPARTITIONED else partition
        report.partitions[partition] = len(part)
        ids = pc.unique(part["__correlation_id"]).to_pylist()
        ids = sorted(i for i in ids if i)
        times = pc.min_max(part[ds.event_time]).as_py() if ds.event_time else {}
        report.materializations.append(dg.AssetMaterialization(
            asset_key=ds.name, partition=key,
            metadata={**commit.metadata(), **materialization_metadata(
                ds, rows=len(part), contract_version=newest_ref(set(contracts[idx])),
                with_schema=False, current_as_of=current_as_of,
                source_ranges=dg.MetadataValue.json(sources),
                rows_in=seen, rows_valid=len(decoded.rows), rows_changed=commit.rows,
                dead_lettered=report.dead_lettered,
                dead_letter_reasons=dg.MetadataValue.json(reasons),
                correlation_ids=len(ids), correlation_id_examples=", ".join(ids[:5]),
                event_time_min=str(times.get("min") or ""),
                event_time_max=str(times.get("max") or ""),
                lag_at_end=lag if lag is not None else -1,
                applied_by=origin)}))
    report.seconds["lake"] += time.perf_counter() - t2
    return report


def range_lag(kafka: KafkaResource, sources: list[dict]) -> int:
    """Records on the read partitions beyond the ranges' ends."""
    lag = 0
    for topic in {s["topic"] for s in sources}:
        ends = kafka.end_offsets(topic) or {}
        lag += sum(max(ends.get(s["partition"], s["end"]) - s["end"], 0)
                   for s in sources if s["topic"] == topic)
    return lag


def summarize(ds: EventDataset, report: IngestReport, spans: str) -> str:
    return (f"{ds.name}: {spans}: {report.rows_in} read, {report.rows_valid} valid, "
            f"{report.dead_lettered} dead-lettered to {ds.dlq_topic} {dict(report.dead) or ''}, "
            f"{len(report.partitions)} partition(s) touched")


