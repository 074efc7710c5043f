"""Backfills from the command line, through the webserver (so they show in the UI).

* a partitioned dataset, **batch or event**: a Dagster backfill of the date range — one run for
  the whole range when the dataset's ``BackfillPolicy`` is ``single_run`` (always, for an event
  dataset, whose materialization reconciles and repairs the days from its batch source, or
  replays them from Kafka without one: ``conflux.dagster.operations``);
* an **event** dataset, by arrival time: ``replay`` prints the plan (offsets of a point in time,
  ``offsets_for_times``) and launches ``<dataset>__replay_job``, which re-reads Kafka in one run —
  harmless for data already applied, since upserts are idempotent. When retention has removed
  records that may fall in the window, the run rebuilds from the batch source instead (the plan
  says so; without a batch source the CLI stops).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from conflux.cli import dagster_api as api
from conflux.core import opconfig
from conflux.core.errors import ConfigError, UsageError
from conflux.core.declarations import BatchDataset, Dataset, EventDataset
from conflux.event.replay import describe_plan, offsets_since, plan_replay


parse_day = opconfig.parse_day


def parse_time(text: str) -> dt.datetime:
    """An ISO date or date-time (naive values are UTC) or a duration back from now."""
    return opconfig.parse_since(text, "--since")


def backfill(ds: Dataset, start: str, end: str, *, url: str, wait: bool, timeout: float,
             report: Callable[[str], None] = print) -> bool:
    """Launch (and optionally follow) the backfill of ``ds`` over ``start..end``; True when it
    was launched (and, with ``wait``, succeeded)."""
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if first > last:
        raise UsageError(f"--start {first} is after --end {last}")
    if isinstance(ds, (BatchDataset, EventDataset)):
        if not ds.partitioned:
            raise UsageError(f"{ds.name} is not partitioned by day: a date range does not apply "
                             f"(materialize it from the UI, or wait for its schedule)")
        backfill_id = api.launch_backfill(url, ds.name, first.isoformat(), last.isoformat())
        days = (last - first).days + 1
        policy = (getattr(ds, "backfill", None) or "single_run")
        how = ("; materializing an event dataset's days "
               + (f"repairs them from {ds.fallback.source_table}" if ds.fallback is not None
                  else "replays them from Kafka")) if isinstance(ds, EventDataset) else ""
        report(f"{ds.name}: backfill {backfill_id} launched for {days} partition(s) "
               f"{first} .. {last} ({policy} backfill policy{how}); "
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
    raise UsageError(f"{ds.name}: nothing to backfill")


def replay(ds: EventDataset, since: str, *, kafka, url: str, wait: bool, timeout: float,
           dry_run: bool = False, report: Callable[[str], None] = print) -> bool:
    """Re-apply everything ``ds``'s topics received since ``since`` (arrival time): prints the
    plan, then launches ``<dataset>__replay_job`` through the webserver (a dry run launches
    nothing)."""
    from conflux.cli.jobs import launch_job, outcome, validated
    from conflux.core.opconfig import ReplayConfig

    config = validated(ReplayConfig, "--since", since=since)
    when = parse_time(since)
    offsets = offsets_since(ds, kafka, when)
    plan = plan_replay(ds, offsets)
    for line in describe_plan(ds, plan, offsets, when):
        report(line)
    if plan.gaps:
        if ds.fallback is None:
            raise ConfigError(f"{ds.name} has no batch source to rebuild the missing records "
                              f"from; replaying what Kafka still holds would leave gaps")
        report(f"{ds.name}: rebuilding from the batch source {ds.fallback.source_table} instead")
    if dry_run or not (plan.runs or plan.gaps):
        return True
    config["since"] = when.isoformat()  # the same instant, whenever the run starts
    run = launch_job(url, f"{ds.name}__replay_job", f"{ds.name}__replay", config,
                     what=f"{ds.name}: replay", wait=wait, timeout=timeout, report=report,
                     tags={"conflux/replay_since": when.isoformat()})
    return outcome(run, report) if wait else True
