"""Requested ranges stay owed until a run applies them: cancelled, failed, deleted or never
started ingest runs are requested again by the sensor that requested them.

In ``runs`` mode the Kafka sensor's offsets move past a range when it requests the run, so the
range itself is kept in the sensor's cursor (:class:`conflux.event.offsets.Pending`) until a run
carrying its ``conflux/batch`` tag succeeds — Dagster's run retries, a re-execution from the UI and
the sensor's own requests all carry it. Each tick settles every pending batch (:func:`settle`):

* a run of it succeeded: applied, dropped from the cursor;
* a run is queued, starting, started or canceling: in flight;
* its newest run failed and Dagster may still retry it (``dagster/will_retry`` not ``false``,
  within ``GRACE_S``): waiting;
* no run of the latest request exists yet, within ``GRACE_S`` of it: in flight (the daemon
  creates a requested run right after the tick);
* otherwise — every run failed or was cancelled (terminated from the UI), or none exists
  ``GRACE_S`` after the request (deleted, or never created) — it is requested again with the same
  ranges under run_key ``<first run_key>#<n>``, tags ``conflux/requeued_from`` (the newest run,
  or ``missing``) and ``conflux/requeue_depth``. After ``MAX_REQUEUES`` requests a batch that never
  succeeds is a bug, not an outage: it is given up on but stays pending — reported by every tick,
  keeping the freshness check red — until one of its runs is re-executed successfully.

There is no time window: a range is forgotten only once applied. Applying a range twice is
harmless (the upsert is idempotent), so a request racing a late Dagster retry doubles nothing.
"""

import dataclasses
from dataclasses import dataclass, field

import dagster as dg

from conflux.event.offsets import Pending

PARENT = "dagster/parent_run_id"
WILL_RETRY = "dagster/will_retry"
BATCH = "conflux/batch"
REQUEUED_FROM = "conflux/requeued_from"
REQUEUE_DEPTH = "conflux/requeue_depth"
MISSING = "missing"  # REQUEUED_FROM of a batch none of whose runs exists (deleted)
MAX_REQUEUES = 5
GRACE_S = 60.0  # Dagster's retry daemon launches a retry within seconds when it can; the sensor
#                 daemon creates a requested run right after the tick that requested it

IN_FLIGHT = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})


@dataclass
class Settlement:
    """Pending batches by what happens to them on this tick (see the module docstring)."""

    applied: list[Pending] = field(default_factory=list)
    in_flight: list[Pending] = field(default_factory=list)
    waiting: list[Pending] = field(default_factory=list)
    requeue: list[tuple[Pending, str]] = field(default_factory=list)  # (batch, newest run id)
    given_up: list[Pending] = field(default_factory=list)

    @property
    def unsettled(self) -> int:
        """Batches not known to be applied."""
        return len(self.in_flight) + len(self.waiting) + len(self.requeue) + len(self.given_up)

    def still_pending(self, now: float) -> tuple[Pending, ...]:
        """What the cursor keeps: all but the applied, requeued ones counted as requested now."""
        again = [dataclasses.replace(p, requested_at=now, attempts=p.attempts + 1)
                 for p, _ in self.requeue]
        return tuple(self.in_flight + self.waiting + again + self.given_up)


def settle(pending, runs_by_batch, now: float) -> Settlement:
    """Sort pending batches by the runs that carry them (pure: unit-tested).

    Args:
        pending: :class:`Pending` batches from the sensor's cursor.
        runs_by_batch: ``conflux/batch`` tag -> ``RunRecord``s (``dagster_run``,
            ``create_timestamp``, ``update_timestamp``) of the runs that carry it.
        now: the current time (epoch seconds).
    """
    out = Settlement()
    for p in pending:
        records = runs_by_batch.get(p.batch, [])
        statuses = {r.dagster_run.status.value for r in records}
        if "SUCCESS" in statuses:
            out.applied.append(p)
            continue
        newest = max(records, key=lambda r: r.create_timestamp.timestamp()) if records else None
        run = newest.dagster_run if newest else None
        unseen = newest is None or newest.create_timestamp.timestamp() < p.requested_at
        if statuses & IN_FLIGHT or (unseen and now - p.requested_at < GRACE_S):
            out.in_flight.append(p)  # running, or the latest request's run not created yet
            continue
        if (run is not None and run.status.value == "FAILURE"
                and run.tags.get(WILL_RETRY) != "false"
                and now - newest.update_timestamp.timestamp() < GRACE_S):
            out.waiting.append(p)
        elif p.attempts >= MAX_REQUEUES:
            out.given_up.append(p)
        else:
            out.requeue.append((p, run.run_id if run else MISSING))
    return out


def pending_runs(instance: dg.DagsterInstance, pending) -> dict[str, list]:
    """The runs of each pending batch, by ``conflux/batch`` tag (one query; none when nothing
    is pending)."""
    if not pending:
        return {}
    records = instance.get_run_records(dg.RunsFilter(tags={BATCH: [p.batch for p in pending]}))
    out: dict[str, list] = {}
    for record in records:
        out.setdefault(record.dagster_run.tags.get(BATCH), []).append(record)
    return out


def request(dataset: str, p: Pending, *, requeued_from: str | None = None) -> dg.RunRequest:
    """The run request for ``p``: its first (run_key ``p.key``), or request number
    ``p.attempts + 1`` again (run_key ``<key>#<n>``) when ``requeued_from`` is given."""
    tags = {"conflux/dataset": dataset, "conflux/ranges": str(len(p.ranges)),
            "conflux/records": str(sum(r.end - r.start for r in p.ranges)), BATCH: p.batch}
    key = p.key
    if requeued_from is not None:
        key = f"{p.key}#{p.attempts + 1}"
        tags.update({REQUEUED_FROM: requeued_from, REQUEUE_DEPTH: str(p.attempts + 1)})
    return dg.RunRequest(run_key=key, tags=tags, run_config={"ops": {f"{dataset}__ingest": {
        "config": {"ranges": [r.as_config() for r in p.ranges]}}}})


def describe(s: Settlement) -> str:
    """What the tick history says about unsettled batches (empty when there are none)."""
    parts = []
    if s.waiting:
        parts.append(f"{len(s.waiting)} failed ingest run(s) awaiting Dagster's retry")
    if s.requeue:
        parts.append(f"{len(s.requeue)} cancelled, failed or missing ingest run(s) requested "
                     "again")
    if s.given_up:
        ranges = "; ".join(f"{r.topic}[{r.partition}] [{r.start}, {r.end})"
                           for p in s.given_up for r in p.ranges)
        parts.append(f"{len(s.given_up)} batch(es) requested {MAX_REQUEUES + 1} times without "
                     f"success, given up ({ranges}): re-execute one of their runs once fixed")
    return "; ".join(parts)


# -- failed runs without a successor (what the reliability harness counts) --------------------

@dataclass
class RequeuePlan:
    """Failed runs without a successor, by what happens to them now."""

    requeue: list = field(default_factory=list)  # will be requested again
    waiting: list = field(default_factory=list)  # Dagster may still retry them
    given_up: list = field(default_factory=list)  # requeued MAX_REQUEUES times already


def depth(run) -> int:
    try:
        return int(run.tags.get(REQUEUE_DEPTH, "0"))
    except ValueError:
        return MAX_REQUEUES


def plan(failed, successors: set[str], now: float) -> RequeuePlan:
    """Sort failed run records that no run names as its parent or requeue origin (pure).

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
