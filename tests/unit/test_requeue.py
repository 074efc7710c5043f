"""Requested ranges stay owed until a run applies them: the pure settlement, then the sensor on
an ephemeral Dagster instance (the settlement needs no broker: it runs before the sensor reads
Kafka, so the Kafka resource here points at a closed loopback port)."""

import dataclasses
import datetime as dt
from types import SimpleNamespace

import dagster as dg
import pytest

from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.event.offsets import Pending, Range, TickState, dump_state, parse_state
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.event import requeue
from conflux.event.sensor import build_kafka_sensor

NOW = 1_800_000_000.0
RANGES = (Range("tpch.orders", 0, 10, 20), Range("tpch.orders", 1, 5, 9))
YEAR = 365 * 86400.0


def owed(key="k", age_s=500.0, attempts=0) -> Pending:
    return Pending(key=key, ranges=RANGES, requested_at=NOW - age_s, attempts=attempts)


def record(run_id: str, age_s: float, status: str = "FAILURE", created_s: float | None = None,
           **tags) -> SimpleNamespace:
    run = SimpleNamespace(run_id=run_id, tags=tags, run_config={"x": run_id},
                          status=SimpleNamespace(value=status))
    stamp = lambda s: dt.datetime.fromtimestamp(NOW - s, dt.timezone.utc)  # noqa: E731
    return SimpleNamespace(dagster_run=run, update_timestamp=stamp(age_s),
                           create_timestamp=stamp(age_s if created_s is None else created_s))


def ids(runs) -> list[str]:
    return [r.run_id for r in runs]


def keys(batches) -> list[str]:
    return [p.key for p in batches]


def test_a_batch_is_applied_once_any_of_its_runs_succeeded():
    p = owed()
    s = requeue.settle([p], {p.batch: [record("a", 9), record("b", 5, "SUCCESS")]}, NOW)
    assert keys(s.applied) == ["k"] and s.unsettled == 0 and s.still_pending(NOW) == ()


def test_a_cancelled_run_is_requested_again_at_once_with_its_ranges():
    p = owed()
    s = requeue.settle([p], {p.batch: [record("a", 1, "CANCELED")]}, NOW)
    [(again, last)] = s.requeue
    assert again == p and last == "a" and s.unsettled == 1
    [kept] = s.still_pending(NOW)
    assert kept.attempts == 1 and kept.requested_at == NOW and kept.ranges == RANGES
    req = requeue.request("orders", p, requeued_from=last)
    assert req.run_key == "k#1" and req.tags[requeue.BATCH] == p.batch
    assert req.tags[requeue.REQUEUED_FROM] == "a" and req.tags[requeue.REQUEUE_DEPTH] == "1"
    assert req.run_config["ops"]["orders__ingest"]["config"]["ranges"] == [
        r.as_config() for r in RANGES]


def test_a_deleted_or_never_created_run_is_requested_again_after_the_grace_period():
    fresh, old = owed("fresh", requeue.GRACE_S - 1), owed("old", requeue.GRACE_S + 1)
    s = requeue.settle([fresh, old], {}, NOW)
    assert keys(s.in_flight) == ["fresh"]  # the daemon creates it right after the tick
    assert [(p.key, last) for p, last in s.requeue] == [("old", requeue.MISSING)]


def test_a_request_just_made_waits_for_its_run_whatever_the_older_runs_say():
    p = owed(age_s=5, attempts=1)  # requested again 5 s ago, after "a" was cancelled
    s = requeue.settle([p], {p.batch: [record("a", 100, "CANCELED", created_s=200)]}, NOW)
    assert keys(s.in_flight) == ["k"]
    s = requeue.settle([p], {p.batch: [record("a", 100, "CANCELED", created_s=200),
                                       record("b", 1, "CANCELED", created_s=3)]}, NOW)
    assert [(q.key, last) for q, last in s.requeue] == [("k", "b")]


def test_nothing_is_forgotten_with_time():
    ancient = owed("ancient", YEAR)
    s = requeue.settle([ancient], {ancient.batch: [record("a", YEAR, "CANCELED")]}, NOW)
    assert keys(p for p, _ in s.requeue) == ["ancient"]
    given_up = owed("g", YEAR, attempts=requeue.MAX_REQUEUES)
    s = requeue.settle([given_up], {given_up.batch: [record("a", YEAR)]}, NOW)
    assert keys(s.given_up) == ["g"] and s.unsettled == 1 and s.still_pending(NOW) == (given_up,)
    assert "given up (tpch.orders[0] [10, 20); tpch.orders[1] [5, 9))" in requeue.describe(s)


def test_a_run_in_flight_or_a_failure_dagster_may_retry_waits():
    a, b, c, d = owed("a"), owed("b"), owed("c"), owed("d")
    s = requeue.settle([a, b, c, d], {
        a.batch: [record("a1", 500, "CANCELED", created_s=600), record("a2", 1, "STARTED")],
        b.batch: [record("b1", 1, "CANCELING")],
        c.batch: [record("c1", requeue.GRACE_S - 1, **{requeue.WILL_RETRY: "true"})],
        d.batch: [record("d1", 1, **{requeue.WILL_RETRY: "false"})]}, NOW)
    assert keys(s.in_flight) == ["a", "b"] and keys(s.waiting) == ["c"]
    assert [(p.key, last) for p, last in s.requeue] == [("d", "d1")]
    assert "1 failed ingest run(s) awaiting Dagster's retry" in requeue.describe(s)


def test_the_newest_run_decides():
    p = owed()
    s = requeue.settle([p], {p.batch: [
        record("retry", 1, created_s=10, **{requeue.WILL_RETRY: "true"}),
        record("first", 500, created_s=600, **{requeue.WILL_RETRY: "false"})]}, NOW)
    assert keys(s.waiting) == ["k"]


def test_pending_batches_survive_the_cursor():
    state = TickState(offsets={"t": {0: 20}}, pending=(owed(attempts=2),))
    assert parse_state(dump_state(state)) == state
    assert parse_state('{"offsets": {"t": {"0": 3}}}').pending == ()  # older cursors


# failed runs without a successor: what the reliability harness counts (reliability/chaos.py)

def test_a_failure_dagster_will_not_retry_is_requeued_at_once():
    p = requeue.plan([record("a", 1, **{requeue.WILL_RETRY: "false"})], set(), NOW)
    assert ids(p.requeue) == ["a"]


def test_a_failure_dagster_may_retry_waits_for_the_grace_period_then_is_requeued():
    fresh = record("a", requeue.GRACE_S - 1, **{requeue.WILL_RETRY: "true"})
    stale = record("b", requeue.GRACE_S + 1, **{requeue.WILL_RETRY: "true"})
    untagged = record("c", 5)
    p = requeue.plan([fresh, stale, untagged], set(), NOW)
    assert ids(p.waiting) == ["a", "c"] and ids(p.requeue) == ["b"]


def test_a_failure_with_a_successor_is_settled():
    p = requeue.plan([record("a", 500), record("b", 500)], {"a"}, NOW)
    assert ids(p.requeue) == ["b"]


def test_requeues_stop_at_the_bound_and_say_so():
    p = requeue.plan([record("a", 500, **{requeue.REQUEUE_DEPTH: str(requeue.MAX_REQUEUES)}),
                      record("b", 500, **{requeue.REQUEUE_DEPTH: "1"})], set(), NOW)
    assert ids(p.given_up) == ["a"] and ids(p.requeue) == ["b"]


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def evaluate(sensor, instance, tmp_path, state: TickState):
    context = dg.build_sensor_context(instance=instance, cursor=dump_state(state), resources={
        "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000),
        "lake": LakeResource(path=str(tmp_path)),
        "registry": SchemaRegistryResource(url="postgresql://127.0.0.1:1/none")})
    return sensor.evaluate_tick(context)


def run_of(instance, job, request, status=None, **tags):
    return instance.create_run_for_job(job_def=job, run_config=request.run_config,
                                       tags={**request.tags, **tags}, status=status)


def test_the_sensor_requests_a_cancelled_batch_again_and_only_once(instance, tmp_path):
    job = build_ingest_job(ORDERS)
    sensor = build_kafka_sensor(ORDERS, job)
    p = Pending(key="orders|tpch.orders|0|10-20", ranges=RANGES[:1], requested_at=0.0)
    first = requeue.request(ORDERS.name, p)
    cancelled = run_of(instance, job, first)
    instance.report_run_canceled(cancelled)  # terminated from the UI, long ago
    # another batch's failed run is not this batch's business
    run_of(instance, job, first, status=dg.DagsterRunStatus.FAILURE,
           **{requeue.BATCH: "other", requeue.WILL_RETRY: "false"})

    result = evaluate(sensor, instance, tmp_path, TickState(pending=(p,)))
    [request] = result.run_requests
    assert request.run_key == f"{p.key}#1" and request.run_config == first.run_config
    assert request.tags[requeue.REQUEUED_FROM] == cancelled.run_id
    [kept] = parse_state(result.cursor).pending  # still owed, until a run applies it
    assert kept.key == p.key and kept.attempts == 1

    # its run exists now: in flight, nothing requested again; once it succeeds, settled
    again = run_of(instance, job, request)
    tick = evaluate(sensor, instance, tmp_path, parse_state(result.cursor))
    assert not tick.run_requests and "Kafka unavailable" in tick.skip_message
    instance.report_run_canceled(instance.get_run_by_id(again.run_id))
    instance.delete_run(again.run_id)
    instance.delete_run(cancelled.run_id)  # every run of the batch deleted: requested again
    state = parse_state(result.cursor).with_(pending=(dataclasses.replace(kept, requested_at=0.0),))
    deleted = evaluate(sensor, instance, tmp_path, state)
    [request] = deleted.run_requests
    assert request.run_key == f"{p.key}#2" and request.tags[requeue.REQUEUED_FROM] == requeue.MISSING
    run_of(instance, job, request, status=dg.DagsterRunStatus.SUCCESS)
    assert requeue.settle(parse_state(deleted.cursor).pending, requeue.pending_runs(
        instance, parse_state(deleted.cursor).pending), 0.0).unsettled == 0
