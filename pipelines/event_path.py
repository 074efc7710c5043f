"""Event path: the ingest job of an event dataset.

A run reads exactly one ``[start, end)`` range of one partition, decodes and validates it in
batches against the contract version each record declares, dead-letters bad records with their
reason, upserts good rows by key into the event-time daily partitions they belong to, and records
one materialization per partition it changed.
"""

import datetime as dt
import itertools
import json
from collections import defaultdict

import dagster as dg
import pandas as pd

from contracts.lineage import contract_schema
from pipelines.datasets import EventDataset
from pipelines.decode import ContractResolver, decode_batch, dead_letter_headers
from pipelines.metadata import materialization_metadata
from resources.kafka import KafkaResource
from resources.lake import UNPARTITIONED, LakeResource
from resources.registry import SchemaRegistryResource

READ_CHUNK = 5000
CORRELATION_HEADER = "correlation_id"


class RangeConfig(dg.Config):
    topic: str
    partition: int
    start: int
    end: int


class IngestConfig(dg.Config):
    ranges: list[RangeConfig]


def resolver_for(ds: EventDataset, registry: SchemaRegistryResource) -> ContractResolver:
    """What this code can read: the registered versions of the subject, and its own version."""
    client = registry.client
    versions = [v.version for v in client.versions(ds.subject)]
    mine = client.lookup(ds.subject, contract_schema(ds.contract))
    return ContractResolver(ds.subject, mine.version if mine else None, versions)


def partition_of(ds: EventDataset, row: dict) -> str:
    if not ds.partitioned:
        return UNPARTITIONED
    value = row[ds.event_time]
    return (value.date() if isinstance(value, dt.datetime) else value).isoformat()


def build_ingest_job(ds: EventDataset) -> dg.JobDefinition:
    """A one-op job reading its ``[start, end)`` ranges into ``ds`` (in-process executor: no
    per-step subprocess)."""

    @dg.op(name=f"{ds.name}__ingest", tags={"conflux/dataset": ds.name})
    def ingest(context: dg.OpExecutionContext, config: IngestConfig, kafka: KafkaResource,
               lake: LakeResource, registry: SchemaRegistryResource) -> None:
        resolver = resolver_for(ds, registry)
        rows: list[dict] = []
        contracts: list[str] = []
        correlation: list[str] = []
        dead = []
        seen = 0
        records = itertools.chain.from_iterable(
            kafka.read_range(r.topic, r.partition, r.start, r.end) for r in config.ranges)
        while chunk := list(itertools.islice(records, READ_CHUNK)):
            seen += len(chunk)
            decoded = decode_batch(chunk, ds.contract, ds.key, resolver)
            rows += decoded.rows
            contracts += decoded.contracts
            correlation += [(r.header(CORRELATION_HEADER) or b"").decode(errors="replace")
                            for r in decoded.records]
            dead += decoded.dead
        if dead:
            kafka.send_raw(ds.dlq_topic, [
                (d.record.key, d.record.value,
                 dead_letter_headers(d, dataset=ds.name, run_id=context.run_id)) for d in dead])
        by_partition: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_partition[partition_of(ds, row)].append(i)
        lag = 0
        for topic in {r.topic for r in config.ranges}:
            ends = kafka.end_offsets(topic) or {}
            lag += sum(max(ends.get(r.partition, r.end) - r.end, 0)
                       for r in config.ranges if r.topic == topic)
        sources = [r.model_dump() for r in config.ranges]
        ids = sorted({c for c in correlation if c})
        if ids:
            context.instance.add_run_tags(context.run_id, {
                "conflux/correlation_id": ids[0][:63], "conflux/correlation_ids": str(len(ids))})
        reasons: dict[str, int] = defaultdict(int)
        for d in dead:
            reasons[d.code] += 1
        for partition, idx in sorted(by_partition.items()):
            frame = pd.DataFrame([rows[i] for i in idx])
            changed = lake.upsert(ds.name, frame, list(ds.key),
                                  None if partition == UNPARTITIONED else partition,
                                  keep_existing=ds.append_only)
            part_ids = sorted({correlation[i] for i in idx if correlation[i]})
            times = frame[ds.event_time] if ds.event_time else None
            context.log_event(dg.AssetMaterialization(
                asset_key=ds.name,
                partition=None if partition == UNPARTITIONED else partition,
                metadata=materialization_metadata(
                    ds, rows=len(idx), contract_version=max(contracts[i] for i in idx),
                    source_ranges=dg.MetadataValue.json(sources),
                    rows_in=seen, rows_valid=len(rows), rows_changed=changed,
                    dead_lettered=len(dead), dead_letter_reasons=dg.MetadataValue.json(dict(reasons)),
                    correlation_ids=len(part_ids),
                    correlation_id_examples=", ".join(part_ids[:5]),
                    event_time_min=str(times.min()) if times is not None else "",
                    event_time_max=str(times.max()) if times is not None else "",
                    lag_at_end=lag)))
        spans = ", ".join(f"{r.topic}[{r.partition}] [{r.start}, {r.end})" for r in config.ranges)
        context.log.info(
            f"{ds.name}: {spans}: {seen} read, {len(rows)} valid, {len(dead)} dead-lettered to {ds.dlq_topic} "
            f"({json.dumps(dict(reasons))}), {len(by_partition)} partition(s) touched")

    @dg.job(name=f"{ds.name}__ingest_job", tags={"conflux/path": "event"},
            executor_def=dg.in_process_executor,
            description=f"Reads one offset range of {', '.join(ds.topics)} into {ds.name}")
    def ingest_job():
        ingest()

    return ingest_job
