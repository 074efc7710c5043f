"""The Kafka sensor of an event dataset: the cursor is the commit.

Each tick reads the end offset of every partition of the dataset's topics (manual assignment,
no consumer group) and cuts ``[start, end)`` micro-batches from the cursor — at most one per
partition and tick, each at most ``max_records_per_run`` long — into ONE run whose ``run_key``
names dataset / topic / partition / range of every range in it. Dagster drops a RunRequest whose
run_key it has already seen, so a tick retried after a crash never launches a range twice; the
cursor moves in the same tick result as the request, so no range is skipped.

Backpressure: while ``max_inflight_runs`` runs of the dataset are queued or running, ticks skip
and new records accumulate into bigger ranges — the run count grows with micro-batches, not
with events, and never outruns the machine.
"""

import json
from dataclasses import dataclass

import dagster as dg

from pipelines.datasets import EventDataset
from resources.kafka import KafkaResource

Cursor = dict[str, dict[int, int]]  # topic -> partition -> next offset to read


@dataclass(frozen=True)
class Range:
    topic: str
    partition: int
    start: int
    end: int

    def label(self) -> str:
        return f"{self.topic}|{self.partition}|{self.start}-{self.end}"


def run_key(dataset: str, ranges: list[Range]) -> str:
    """``dataset|topic|partition|start-end`` for each range, ``;``-separated."""
    return f"{dataset}|" + ";".join(r.label() for r in ranges)


def next_batch(ranges: list[Range]) -> list[Range]:
    """The first pending range of every partition: what one run takes on this tick."""
    seen: set[tuple[str, int]] = set()
    batch = []
    for r in ranges:
        if (r.topic, r.partition) not in seen:
            seen.add((r.topic, r.partition))
            batch.append(r)
    return batch


def plan_ranges(ds: EventDataset, cursor: Cursor, ends: Cursor) -> list[Range]:
    """Micro-batches between the cursor and the end offsets (pure: unit-tested)."""
    ranges = []
    for topic, parts in sorted(ends.items()):
        done = cursor.get(topic, {})
        for partition, end in sorted(parts.items()):
            start = done.get(partition, 0)
            while start < end:
                stop = min(end, start + ds.max_records_per_run)
                ranges.append(Range(topic, partition, start, stop))
                start = stop
    return ranges


def parse_cursor(raw: str | None) -> Cursor:
    if not raw:
        return {}
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in json.loads(raw).items()}


def dump_cursor(cursor: Cursor) -> str:
    return json.dumps({t: {str(p): o for p, o in sorted(parts.items())}
                       for t, parts in sorted(cursor.items())})


def advance(cursor: Cursor, ranges: list[Range]) -> Cursor:
    """The cursor after the given ranges were requested."""
    out = {t: dict(parts) for t, parts in cursor.items()}
    for r in ranges:
        out.setdefault(r.topic, {})[r.partition] = max(out.get(r.topic, {}).get(r.partition, 0), r.end)
    return out


def build_kafka_sensor(ds: EventDataset, job: dg.JobDefinition) -> dg.SensorDefinition:
    """A sensor turning new offsets of ``ds.topics`` into runs of ``job``.

    Args:
        ds: the event dataset.
        job: the ingest job; receives the range in its run config.

    Returns:
        A running-by-default sensor named ``<dataset>__kafka``.

    Examples:
        >>> build_kafka_sensor(ORDERS, build_ingest_job(ORDERS)).name
        'orders__kafka'
    """

    @dg.sensor(name=f"{ds.name}__kafka", job=job, minimum_interval_seconds=1,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"New records on {', '.join(ds.topics)} → ingest runs of {ds.name}")
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
        cursor = parse_cursor(context.cursor)
        ends: Cursor = {}
        missing = []
        for topic in ds.topics:
            try:
                found = kafka.end_offsets(topic)
            except Exception as exc:  # broker down: say so, keep the cursor, try next tick
                return dg.SkipReason(f"Kafka unavailable for {topic}: {exc}")
            if found is None:
                missing.append(topic)
            else:
                ends[topic] = found
        ranges = plan_ranges(ds, cursor, ends)
        if not ranges:
            reason = (f"topic(s) {', '.join(missing)} do not exist yet" if missing
                      else f"no new records on {', '.join(ds.topics)}")
            return dg.SkipReason(reason)
        inflight = context.instance.get_runs_count(dg.RunsFilter(
            job_name=job.name, statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                         dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
        pending = sum(r.end - r.start for r in ranges)
        if inflight >= ds.max_inflight_runs:
            return dg.SkipReason(f"{inflight} ingest runs in flight; {pending} records wait "
                                 f"(backpressure, max_inflight_runs={ds.max_inflight_runs})")
        batch = next_batch(ranges)
        request = dg.RunRequest(
            run_key=run_key(ds.name, batch),
            run_config={"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
                {"topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}
                for r in batch]}}}},
            tags={"conflux/dataset": ds.name, "conflux/records": str(sum(r.end - r.start for r in batch)),
                  "conflux/ranges": str(len(batch))},
        )
        return dg.SensorResult(run_requests=[request], cursor=dump_cursor(advance(cursor, batch)))

    return _sensor
