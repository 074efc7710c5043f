"""Failed ingest runs are re-requested by the sensor that launched them.

In ``runs`` mode the Kafka sensor's cursor moves past a range when it requests the run, so a
run that fails for good would leave its range unapplied. Dagster retries a failed run
(``run_retries``), but it tries to *launch* each retry once: a retry that cannot be launched —
the code location cannot load while Postgres is down — is never tried again, and a retry that
fails after ``max_retries`` ends the chain. So the sensor keeps watch itself: a failed ingest run
of its dataset with no successor (no Dagster retry names it ``dagster/parent_run_id``, no
requeue names it ``conflux/requeued_from``) is requested again with the same run config once
Dagster has decided not to retry it or has had ``grace_s`` to do so. The request's run_key is
``requeue:<run id>``, so Dagster drops a second request for the same failure; depth is bounded
by ``MAX_REQUEUES`` (a run that fails every time is a bug, not an outage: it is reported, and
``conflux replay`` repairs its range once fixed). Applying a range twice is harmless — the
upsert is idempotent — so a requeue racing a late Dagster retry loses nothing and doubles nothing.
"""

import datetime as dt
from dataclasses import dataclass, field

import dagster as dg

PARENT = "dagster/parent_run_id"
WILL_RETRY = "dagster/will_retry"
REQUEUED_FROM = "conflux/requeued_from"
REQUEUE_DEPTH = "conflux/requeue_depth"
MAX_REQUEUES = 5
GRACE_S = 60.0  # Dagster's retry daemon launches a retry within seconds when it can
WINDOW = dt.timedelta(days=1)  # failures older than this are left to `conflux replay`


@dataclass
class RequeuePlan:
    """Failed runs without a successor, by what happens to them now."""

    requeue: list = field(default_factory=list)  # DagsterRuns to request again
    waiting: list = field(default_factory=list)  # Dagster may still retry them
    given_up: list = field(default_factory=list)  # requeued MAX_REQUEUES times already

    @property
    def unsettled(self) -> int:
        """Failed runs whose ranges are not known to be applied (nothing succeeded them)."""
        return len(self.requeue) + len(self.waiting) + len(self.given_up)


def depth(run) -> int:
    try:
        return int(run.tags.get(REQUEUE_DEPTH, "0"))
    except ValueError:
        return MAX_REQUEUES


def plan(failed, successors: set[str], now: float) -> RequeuePlan:
    """Sort failed run records (pure: unit-tested).

    Args:
        failed: ``RunRecord``s of failed runs (``dagster_run`` and ``update_timestamp``).
        successors: ids that some run names as its parent or requeue origin.
        now: the current time (epoch seconds).
    """
    out = RequeuePlan()
    for record in failed:
        run = record.dagster_run
        if run.run_id in successors:
            continue
        if depth(run) >= MAX_REQUEUES:
            out.given_up.append(run)
        elif run.tags.get(WILL_RETRY) == "false" or now - record.update_timestamp.timestamp() >= GRACE_S:
            out.requeue.append(run)
        else:
            out.waiting.append(run)
    return out


def failed_runs_plan(instance: dg.DagsterInstance, job_name: str, dataset: str,
                     now: float) -> RequeuePlan:
    """The plan for the failed ingest runs of ``dataset`` created within ``WINDOW``: one query
    when nothing failed, two more (successors by tag) when something did."""
    created = dt.datetime.fromtimestamp(now, dt.timezone.utc) - WINDOW
    failed = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, statuses=[dg.DagsterRunStatus.FAILURE], created_after=created,
        tags={"conflux/dataset": dataset}), limit=200)
    if not failed:
        return RequeuePlan()
    ids = [r.dagster_run.run_id for r in failed]
    successors: set[str] = set()
    for tag in (PARENT, REQUEUED_FROM):
        successors |= {r.tags[tag] for r in instance.get_runs(dg.RunsFilter(tags={tag: ids}))}
    return plan(failed, successors, now)


def requeue_request(run) -> dg.RunRequest:
    """The same run config again, under run_key ``requeue:<run id>`` (deduplicated by Dagster)."""
    tags = {k: v for k, v in run.tags.items()
            if k.startswith("conflux/") and k not in (REQUEUED_FROM, REQUEUE_DEPTH)}
    tags.update({REQUEUED_FROM: run.run_id, REQUEUE_DEPTH: str(depth(run) + 1)})
    return dg.RunRequest(run_key=f"requeue:{run.run_id}", run_config=run.run_config, tags=tags)


def describe(p: RequeuePlan) -> str:
    """What the tick history says about failures (empty when there are none)."""
    parts = []
    if p.waiting:
        parts.append(f"{len(p.waiting)} failed ingest run(s) awaiting Dagster's retry")
    if p.given_up:
        ids = ", ".join(r.run_id[:8] for r in p.given_up)
        parts.append(f"{len(p.given_up)} failed ingest run(s) requeued {MAX_REQUEUES} times "
                     f"already, given up ({ids}): their ranges need `conflux replay`")
    return "; ".join(parts)
