"""The Kafka sensor of an event dataset: the cursor is the commit.

Each tick reads the end offset of every partition of the dataset's topic (manual assignment, no
consumer group), cuts ``[start, end)`` micro-batches from the cursor, and asks for one run per
range with a ``run_key`` naming dataset / topic / partition / range, so a tick retried after a
crash can never launch a range twice (Dagster drops a repeated run_key) nor skip one (the
cursor only moves with the run requests, in the same tick result).
"""


import json
from dataclasses import dataclass

import dagster as dg

from pipelines.datasets import EventDataset
from resources.kafka import KafkaResource


@dataclass(frozen=True)
class Range:
    topic: str
    partition: int
    start: int
    end: int

    def run_key(self, dataset: str) -> str:
        return f"{dataset}|{self.topic}|{self.partition}|{self.start}-{self.end}"


def plan_ranges(ds: EventDataset, cursor: dict[int, int], ends: dict[int, int]) -> list[Range]:
    """Micro-batches between the cursor and the end offsets (pure: unit-tested)."""
    ranges = []
    for partition, end in sorted(ends.items()):
        start = cursor.get(partition, 0)
        while start < end:
            stop = min(end, start + ds.max_records_per_run)
            ranges.append(Range(ds.topic, partition, start, stop))
            start = stop
    return ranges


def parse_cursor(raw: str | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in json.loads(raw).items()} if raw else {}


def build_kafka_sensor(ds: EventDataset, job: dg.JobDefinition) -> dg.SensorDefinition:
    """A sensor turning new offsets of ``ds.topic`` into runs of ``job``.

    Args:
        ds: the event dataset.
        job: the ingest job; receives the range in its run config.

    Returns:
        A running-by-default sensor named ``<dataset>__kafka``.
    """

    @dg.sensor(name=f"{ds.name}__kafka", job=job, minimum_interval_seconds=1,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"New records on {ds.topic} → ingest runs of {ds.name}")
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
        cursor = parse_cursor(context.cursor)
        try:
            ends = kafka.end_offsets(ds.topic)
        except Exception as exc:  # broker down: report, keep the cursor, try next tick
            return dg.SkipReason(f"Kafka unavailable for {ds.topic}: {exc}")
        if ends is None:
            return dg.SkipReason(f"topic {ds.topic} does not exist yet")
        ranges = plan_ranges(ds, cursor, ends)
        if not ranges:
            return dg.SkipReason(f"no new records on {ds.topic}")
        requests = [
            dg.RunRequest(
                run_key=r.run_key(ds.name),
                run_config={"ops": {f"{ds.name}__ingest": {"config": {
                    "topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}}}},
                tags={"conflux/dataset": ds.name, "conflux/range": r.run_key(ds.name)},
            )
            for r in ranges
        ]
        new_cursor = {**cursor, **{p: e for p, e in ends.items()}}
        return dg.SensorResult(run_requests=requests,
                               cursor=json.dumps({str(p): o for p, o in new_cursor.items()}))

    return _sensor
