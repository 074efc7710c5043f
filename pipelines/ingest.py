"""Apply Kafka records to an event dataset: decode → validate → dead-letter → upsert → report.

Shared by both ways records reach the lake — the sensor's inline micro-batches and the ingest
runs — so they behave identically. Every stored row carries its provenance (``__topic``,
``__partition``, ``__offset``, ``__ts``, ``__correlation_id``); the upsert keeps, per key, the
row of the newest record (by Kafka timestamp, then offset) — or the oldest for append-only
datasets — so replaying any range, or receiving the same event twice, changes nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg
import pyarrow as pa

from contracts.lineage import contract_schema
from pipelines.datasets import EventDataset
from pipelines.decode import ContractResolver, Decoded, dead_letter_headers, decode_batch
from pipelines.metadata import materialization_metadata
from resources.kafka import KafkaResource, Record
from resources.lake import UNPARTITIONED, LakeResource
from resources.registry import SchemaRegistryResource

DECODE_CHUNK = 5000
CORRELATION_HEADER = "correlation_id"
TRACE_HEADER = "traceparent"
PROVENANCE = ["__topic", "__partition", "__offset", "__ts", "__correlation_id"]
ORDER_BY = ["__ts", "__offset"]


@dataclass
class IngestReport:
    """What one application of records did (for logs, tags and tests)."""

    rows_in: int = 0
    rows_valid: int = 0
    dead: Counter = field(default_factory=Counter)
    partitions: dict[str, int] = field(default_factory=dict)  # partition -> rows written
    correlation_ids: list[str] = field(default_factory=list)
    traceparents: list[str] = field(default_factory=list)
    materializations: list[dg.AssetMaterialization] = field(default_factory=list)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead.values())


def resolver_for(ds: EventDataset, registry: SchemaRegistryResource) -> ContractResolver:
    """What this code can read: the registered versions of the subject, and its own version."""
    client = registry.client
    versions = [v.version for v in client.versions(ds.subject)]
    mine = client.lookup(ds.subject, contract_schema(ds.contract))
    return ContractResolver(ds.subject, mine.version if mine else None, versions)


def partition_of(ds: EventDataset, value) -> str:
    if not ds.partitioned:
        return UNPARTITIONED
    return (value.date() if isinstance(value, dt.datetime) else value).isoformat()


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


def _header(rec: Record, name: str) -> str:
    value = rec.header(name)
    return value.decode(errors="replace") if value else ""


def apply_records(ds: EventDataset, records: Iterable[Record], *, kafka: KafkaResource,
                  lake: LakeResource, resolver: ContractResolver, origin: str,
                  sources: list[dict], lag: int | None = None) -> IngestReport:
    """Apply records to ``ds``; returns the report with one materialization per partition touched.

    Args:
        origin: who applied them (a run id, or ``sensor:<name>``), recorded in dead letters.
        sources: the ``[start, end)`` ranges the records came from (materialization metadata).
        lag: records left behind the ranges when they were read.
    """
    decoded, seen = decode_records(ds, records, resolver)
    report = IngestReport(rows_in=seen, rows_valid=len(decoded.rows))
    if decoded.dead:
        kafka.send_raw(ds.dlq_topic, [
            (d.record.key, d.record.value, dead_letter_headers(d, dataset=ds.name, run_id=origin))
            for d in decoded.dead])
        report.dead.update(d.code for d in decoded.dead)
    if not decoded.rows:
        return report
    recs = decoded.records
    correlation = [_header(r, CORRELATION_HEADER) for r in recs]
    table = pa.Table.from_pylist(decoded.rows).append_column(
        "__topic", pa.array([r.topic for r in recs], pa.string())).append_column(
        "__partition", pa.array([r.partition for r in recs], pa.int32())).append_column(
        "__offset", pa.array([r.offset for r in recs], pa.int64())).append_column(
        "__ts", pa.array([r.timestamp_ms for r in recs], pa.int64())).append_column(
        "__correlation_id", pa.array(correlation, pa.string()))
    traces: set[str] = set()
    for r in recs:  # a few examples are enough
        if (t := _header(r, TRACE_HEADER)) and len(traces) < 20:
            traces.add(t)
        elif len(traces) >= 20:
            break
    report.traceparents = sorted(traces)
    report.correlation_ids = sorted(set(correlation) - {""})

    by_partition: dict[str, list[int]] = {}
    if ds.partitioned:
        names: dict = {}  # event-time value -> partition name (a stream repeats a few days)
        field_name = ds.event_time
        for i, row in enumerate(decoded.rows):
            value = row[field_name]
            name = names.get(value)
            if name is None:
                name = names[value] = partition_of(ds, value)
            by_partition.setdefault(name, []).append(i)
    else:
        by_partition[UNPARTITIONED] = list(range(len(decoded.rows)))
    reasons = dict(report.dead)
    for partition, idx in sorted(by_partition.items()):
        part = table.take(pa.array(idx))
        key = None if partition == UNPARTITIONED else partition
        written = lake.upsert(ds.name, part, list(ds.key), key, order_by=ORDER_BY,
                              keep_existing=ds.append_only)
        report.partitions[partition] = written
        ids = sorted({correlation[i] for i in idx} - {""})
        times = [decoded.rows[i][ds.event_time] for i in idx] if ds.event_time else []
        report.materializations.append(dg.AssetMaterialization(
            asset_key=ds.name, partition=key,
            metadata=materialization_metadata(
                ds, rows=len(idx), contract_version=max(decoded.contracts[i] for i in idx),
                with_schema=False,
                source_ranges=dg.MetadataValue.json(sources),
                rows_in=seen, rows_valid=len(decoded.rows), rows_changed=written,
                dead_lettered=report.dead_lettered,
                dead_letter_reasons=dg.MetadataValue.json(reasons),
                correlation_ids=len(ids), correlation_id_examples=", ".join(ids[:5]),
                event_time_min=str(min(times)) if times else "",
                event_time_max=str(max(times)) if times else "",
                lag_at_end=lag if lag is not None else -1,
                applied_by=origin)))
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


