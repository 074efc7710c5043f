"""Replaying an event dataset from Kafka, inside one run (``<dataset>__replay_job`` and the
event dataset's materialization when it has no batch source).

* **by arrival time** — everything the topics received since a point in time
  (``offsets_for_times``) up to their end offsets when the run starts, in micro-batches of at
  most ``max_records_per_run`` per partition, applied with the ingest path's own code
  (:func:`~conflux.event.ingest.apply_records`): harmless for data already applied, since
  upserts are idempotent. A partition whose earliest retained record is at or after the start
  time, while older records existed, may have lost records of the window to retention: the plan
  names it as a gap.
* **by event days** — every retained record of the topics, keeping only the rows whose event
  day is in the range (and writing no dead letters again: bad records were dead-lettered when
  they first arrived).

Records removed while a replay reads them (retention racing it) are listed in ``plan.lost``;
they are not recorded as offset gaps of the dataset: the Kafka sensor applied them when they
arrived, or recorded the gap itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from conflux.core.declarations import EventDataset
from conflux.core.errors import ConfigError
from conflux.event.ingest import IngestReport, apply_records
from conflux.event.offsets import Gap, Range, gap_at, next_batch, plan_ranges

Offsets = dict[str, dict[int, tuple[int, int, int]]]  # topic -> partition -> (at, earliest, end)


@dataclass
class ReplayPlan:
    """Micro-batches (one range per partition each), the partitions with a retention gap, and
    the offsets found removed while applying (``apply_plan``)."""

    runs: list[list[Range]] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    lost: list[Gap] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(r.end - r.start for run in self.runs for r in run)


def plan_replay(ds: EventDataset, offsets: Offsets) -> ReplayPlan:
    """From ``{topic: {partition: (offset at since, earliest retained, end)}}`` (pure).

    A partition whose earliest retained record is already at or after the start time, while
    older records existed (earliest > 0), may have lost records of the window to retention.
    """
    plan = ReplayPlan()
    starts = {t: {p: o[0] for p, o in parts.items()} for t, parts in offsets.items()}
    ends = {t: {p: o[2] for p, o in parts.items()} for t, parts in offsets.items()}
    for topic, parts in sorted(offsets.items()):
        for p, (start, begin, _) in sorted(parts.items()):
            if begin > 0 and start <= begin:
                plan.gaps.append(f"{topic}[{p}] (earliest retained offset {begin})")
    pending = plan_ranges(ds, starts, ends)
    while pending:
        batch = next_batch(pending)
        plan.runs.append(batch)
        taken = set(batch)
        pending = [r for r in pending if r not in taken]
    return plan


def offsets_since(ds: EventDataset, kafka, when: dt.datetime) -> Offsets:
    """The offsets of ``when`` (and the earliest and end ones) on each of ``ds``'s topics."""
    ms = int(when.timestamp() * 1000)
    offsets = {}
    for topic in ds.topics:
        found = kafka.offsets_at(topic, ms)
        if found is None:
            raise ConfigError(f"topic {topic} of {ds.name} does not exist")
        offsets[topic] = found
    return offsets


def describe_plan(ds: EventDataset, plan: ReplayPlan, offsets: Offsets,
                  when: dt.datetime) -> list[str]:
    """The plan in lines (the CLI prints them, the run logs them)."""
    lines = [f"{ds.name}: {plan.records} record(s) since {when.isoformat()} in "
             f"{len(plan.runs)} micro-batch(es)"]
    for topic, parts in offsets.items():
        for p, (start, _, end) in sorted(parts.items()):
            lines.append(f"  {topic}[{p}]: [{start}, {end})")
    if plan.gaps:
        lines.append(f"{ds.name}: retention removed records that may fall in the window: "
                     f"{', '.join(plan.gaps)}")
    return lines


def apply_plan(ds: EventDataset, plan: ReplayPlan, *, kafka, lake, resolver, origin: str,
               keep_days: tuple[dt.date, dt.date] | None = None,
               on_batch: Callable[[IngestReport, list[Range]], None] | None = None
               ) -> list[IngestReport]:
    """Apply the plan's micro-batches one after another (one lake commit each)."""
    reports = []
    for batch in plan.runs:
        sources = [r.as_config() for r in batch]
        records = kafka.read_ranges([(r.topic, r.partition, r.start, r.end) for r in batch],
                                    on_gap=lambda jump, end: plan.lost.append(gap_at(jump, end)))
        report = apply_records(ds, records, kafka=kafka, lake=lake, resolver=resolver,
                               origin=origin, sources=sources, keep_days=keep_days)
        reports.append(report)
        if on_batch:
            on_batch(report, batch)
    return reports


def plan_days(ds: EventDataset, kafka) -> ReplayPlan:
    """Every retained record of ``ds``'s topics (for a replay by event days)."""
    offsets = {}
    for topic in ds.topics:
        ends = kafka.end_offsets(topic)
        if ends is None:
            raise ConfigError(f"topic {topic} of {ds.name} does not exist")
        found = kafka.offsets_at(topic, 0) or {}
        offsets[topic] = {p: (found.get(p, (0, 0, end))[1], found.get(p, (0, 0, end))[1], end)
                          for p, end in ends.items()}
    plan = plan_replay(ds, offsets)
    plan.gaps = [f"{t}[{p}] (earliest retained offset {begin})"
                 for t, parts in sorted(offsets.items())
                 for p, (_, begin, _) in sorted(parts.items()) if begin > 0]
    return plan
