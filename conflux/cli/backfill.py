"""Backfills from the command line, through the webserver (so they show in the UI).

* a partitioned **batch** dataset: a Dagster backfill of the date range — one run for the whole
  range when the dataset's ``BackfillPolicy`` is ``single_run``;
* an **event** dataset, by event days: its batch fallback (reconcile + repair from the source
  table) over the range;
* an **event** dataset, by arrival time: ``replay`` re-reads Kafka from the offsets of a point in
  time (``offsets_for_times``) through ingest runs — harmless for data already applied, since
  upserts are idempotent. When retention has removed records that may fall in the window, the
  replay falls back to the batch source (or stops, if the dataset has none).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from conflux.cli import dagster_api as api
from conflux.core.errors import ConfigError
from conflux.core.declarations import BatchDataset, Dataset, EventDataset
from conflux.event.offsets import Range, next_batch, plan_ranges


def parse_day(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


def parse_time(text: str) -> dt.datetime:
    """An ISO date or date-time; naive values are UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not an ISO date or date-time "
                          f"(e.g. 2026-11-28T09:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def backfill(ds: Dataset, start: str, end: str, *, url: str, wait: bool, timeout: float,
             report: Callable[[str], None] = print) -> bool:
    """Launch (and optionally follow) the backfill of ``ds`` over ``start..end``; True when it
    was launched (and, with ``wait``, succeeded)."""
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}")
    if isinstance(ds, BatchDataset):
        if not ds.partitioned:
            raise ConfigError(f"{ds.name} is not partitioned by day: a date range does not apply "
                              f"(materialize it from the UI, or wait for its schedule)")
        backfill_id = api.launch_backfill(url, ds.name, first.isoformat(), last.isoformat())
        days = (last - first).days + 1
        report(f"{ds.name}: backfill {backfill_id} launched for {days} partition(s) "
               f"{first} .. {last} ({ds.backfill} backfill policy); "
               f"follow it at {url}/runs/b/{backfill_id}")
        if not wait:
            return True

        def poll() -> tuple[bool, str]:
            state = api.backfill_state(url, backfill_id)
            finished = sum(s in api.DONE_RUN for s in state.runs.values())
            return state.done, (f"  {state.status}: {finished}/{len(state.runs)} run(s) finished "
                                f"for {state.partitions} partition(s)")

        api.wait(poll, timeout=timeout, report=report)
        state = api.backfill_state(url, backfill_id)
        report(f"{ds.name}: backfill {backfill_id} {'succeeded' if state.succeeded else 'FAILED'}")
        return state.succeeded
    if isinstance(ds, EventDataset):
        if ds.fallback is None:
            raise ConfigError(f"{ds.name} declares no batch source; replay it from Kafka with "
                              f"`conflux replay {ds.name} --since TIME`")
        config = {"start": first.isoformat(), "end": last.isoformat(), "repair": True}
        return launch_fallback(ds, config, url=url, wait=wait, timeout=timeout, report=report)
    raise ConfigError(f"{ds.name}: nothing to backfill")


def launch_fallback(ds: EventDataset, config: dict, *, url: str, wait: bool, timeout: float,
                    report: Callable[[str], None]) -> bool:
    job = f"{ds.name}__fallback_job"
    run_id = api.launch_run(url, job, {"ops": {f"{ds.name}__reconcile": {"config": config}}},
                            tags={"conflux/launched_by": "cli"})
    span = f"{config.get('start') or 'beginning'} .. {config.get('end') or 'end'}"
    report(f"{ds.name}: fallback run {run_id} launched ({ds.fallback.source_table}, {span}); "
           f"follow it at {url}/runs/{run_id}")
    return _follow_runs(url, [run_id], wait=wait, timeout=timeout, report=report)


def _follow_runs(url: str, run_ids: list[str], *, wait: bool, timeout: float,
                 report: Callable[[str], None]) -> bool:
    if not wait:
        return True
    statuses: dict[str, str] = {}

    def poll() -> tuple[bool, str]:
        for run_id in run_ids:
            if statuses.get(run_id) not in api.DONE_RUN:
                statuses[run_id] = api.run_status(url, run_id)
        done = sum(s in api.DONE_RUN for s in statuses.values())
        return done == len(run_ids), f"  {done}/{len(run_ids)} run(s) finished"

    api.wait(poll, timeout=timeout, report=report)
    failed = [r for r, s in statuses.items() if s != "SUCCESS"]
    report("all runs succeeded" if not failed else f"FAILED runs: {', '.join(failed)}")
    return not failed


@dataclass
class ReplayPlan:
    """Ingest runs (one range per partition each) and the partitions with a retention gap."""

    runs: list[list[Range]] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(r.end - r.start for run in self.runs for r in run)


def plan_replay(ds: EventDataset, offsets: dict[str, dict[int, tuple[int, int, int]]]) -> ReplayPlan:
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


def replay(ds: EventDataset, since: str, *, kafka, url: str, wait: bool, timeout: float,
           dry_run: bool = False, report: Callable[[str], None] = print) -> bool:
    """Re-apply everything ``ds``'s topics received since ``since`` (arrival time)."""
    when = parse_time(since)
    ms = int(when.timestamp() * 1000)
    offsets = {}
    for topic in ds.topics:
        found = kafka.offsets_at(topic, ms)
        if found is None:
            raise ConfigError(f"topic {topic} of {ds.name} does not exist")
        offsets[topic] = found
    plan = plan_replay(ds, offsets)
    report(f"{ds.name}: {plan.records} record(s) since {when.isoformat()} in "
           f"{len(plan.runs)} ingest run(s)")
    for topic, parts in offsets.items():
        for p, (start, _, end) in sorted(parts.items()):
            report(f"  {topic}[{p}]: [{start}, {end})")
    if plan.gaps:
        report(f"{ds.name}: retention removed records that may fall in the window: "
               f"{', '.join(plan.gaps)}")
        if ds.fallback is None:
            raise ConfigError(f"{ds.name} has no batch source to rebuild the missing records "
                              f"from; replaying what Kafka still holds would leave gaps")
        report(f"{ds.name}: rebuilding from the batch source {ds.fallback.source_table} instead")
        if dry_run:
            return True
        return launch_fallback(ds, {"start": "", "end": "", "repair": True}, url=url, wait=wait,
                               timeout=timeout, report=report)
    if dry_run or not plan.runs:
        return True
    run_ids = []
    for batch in plan.runs:
        run_ids.append(api.launch_run(
            url, f"{ds.name}__ingest_job",
            {"ops": {f"{ds.name}__ingest": {"config": {"ranges": [r.as_config() for r in batch]}}}},
            tags={"conflux/dataset": ds.name, "conflux/replay_since": when.isoformat(),
                  "conflux/launched_by": "cli"}))
    report(f"{ds.name}: launched {len(run_ids)} ingest run(s): {', '.join(run_ids)}")
    return _follow_runs(url, run_ids, wait=wait, timeout=timeout, report=report)
