"""Failed ingest runs are requested again by their sensor: the pure plan, then the sensor itself
on an ephemeral Dagster instance (the requeue step needs no broker: it runs before the sensor
reads Kafka, so the Kafka resource here points at a closed loopback port)."""

import datetime as dt
import time
from types import SimpleNamespace

import dagster as dg
import pytest

from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.event import requeue
from conflux.event.sensor import build_kafka_sensor

NOW = 1_800_000_000.0
CONFIG = {"ops": {"orders__ingest": {"config": {"ranges": [
    {"topic": "tpch.orders", "partition": 0, "start": 10, "end": 20}]}}}}


def record(run_id: str, age_s: float, **tags) -> SimpleNamespace:
    run = SimpleNamespace(run_id=run_id, tags=tags, run_config={"x": run_id})
    updated = dt.datetime.fromtimestamp(NOW - age_s, dt.timezone.utc)
    return SimpleNamespace(dagster_run=run, update_timestamp=updated)


def ids(runs) -> list[str]:
    return [r.run_id for r in runs]


def test_a_failure_dagster_will_not_retry_is_requeued_at_once():
    p = requeue.plan([record("a", 1, **{requeue.WILL_RETRY: "false"})], set(), NOW)
    assert ids(p.requeue) == ["a"] and p.unsettled == 1


def test_a_failure_dagster_may_retry_waits_for_the_grace_period_then_is_requeued():
    fresh = record("a", requeue.GRACE_S - 1, **{requeue.WILL_RETRY: "true"})
    stale = record("b", requeue.GRACE_S + 1, **{requeue.WILL_RETRY: "true"})
    untagged = record("c", 5)
    p = requeue.plan([fresh, stale, untagged], set(), NOW)
    assert ids(p.waiting) == ["a", "c"] and ids(p.requeue) == ["b"]


def test_a_failure_with_a_successor_is_settled():
    p = requeue.plan([record("a", 500), record("b", 500)], {"a"}, NOW)
    assert ids(p.requeue) == ["b"] and p.unsettled == 1


def test_requeues_stop_at_the_bound_and_say_so():
    p = requeue.plan([record("a", 500, **{requeue.REQUEUE_DEPTH: str(requeue.MAX_REQUEUES)}),
                      record("b", 500, **{requeue.REQUEUE_DEPTH: "1"})], set(), NOW)
    assert ids(p.given_up) == ["a"] and ids(p.requeue) == ["b"]
    assert "given up (a)" in requeue.describe(p) and "conflux replay" in requeue.describe(p)


def test_the_request_repeats_the_config_under_a_per_failure_run_key():
    run = record("abc", 500, **{"conflux/dataset": "orders", "conflux/records": "7",
                                "dagster/sensor_name": "x", requeue.REQUEUE_DEPTH: "2"}).dagster_run
    req = requeue.requeue_request(run)
    assert req.run_key == "requeue:abc" and req.run_config == {"x": "abc"}
    assert req.tags == {"conflux/dataset": "orders", "conflux/records": "7",
                        requeue.REQUEUED_FROM: "abc", requeue.REQUEUE_DEPTH: "3"}


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def failed_run(instance, job, config, **tags):
    run = instance.create_run_for_job(job_def=job, run_config=config,
                                      tags={"conflux/dataset": ORDERS.name, **tags})
    instance.report_run_failed(run)
    return instance.get_run_by_id(run.run_id)


def evaluate(sensor, instance, tmp_path):
    context = dg.build_sensor_context(instance=instance, resources={
        "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000),
        "lake": LakeResource(path=str(tmp_path)),
        "registry": SchemaRegistryResource(url="postgresql://127.0.0.1:1/none")})
    return sensor.evaluate_tick(context)


def test_the_sensor_requests_its_failed_run_again_and_only_once(instance, tmp_path):
    job = build_ingest_job(ORDERS)
    sensor = build_kafka_sensor(ORDERS, job)
    config = CONFIG
    failed = failed_run(instance, job, config, **{requeue.WILL_RETRY: "false"})
    # a run of another dataset's job, failed too, is not this sensor's business
    other = failed_run(instance, job, config, **{"conflux/dataset": "lineitem",
                                                 requeue.WILL_RETRY: "false"})

    result = evaluate(sensor, instance, tmp_path)
    assert [r.run_key for r in result.run_requests] == [f"requeue:{failed.run_id}"]
    request = result.run_requests[0]
    assert request.run_config == config and request.tags[requeue.REQUEUED_FROM] == failed.run_id
    assert result.cursor is None  # the cursor is untouched by a requeue tick
    assert other.run_id not in str(result.run_requests)

    # once the requeued run exists, the failure is settled: nothing is requested again
    instance.create_run_for_job(job_def=job, run_config=config, tags=request.tags)
    plan = requeue.failed_runs_plan(instance, job.name, ORDERS.name, time.time())
    assert plan.unsettled == 0
    again = evaluate(sensor, instance, tmp_path)
    assert not again.run_requests and "Kafka unavailable" in again.skip_message


def test_a_dagster_retry_settles_a_failure_too(instance):
    job = build_ingest_job(ORDERS)
    failed = failed_run(instance, job, CONFIG, **{requeue.WILL_RETRY: "true"})
    old = requeue.failed_runs_plan(instance, job.name, ORDERS.name, time.time() + 3600)
    assert ids(old.requeue) == [failed.run_id]  # an hour on, with no retry: requeue
    instance.create_run_for_job(job_def=job, run_config=CONFIG, tags={
        "conflux/dataset": ORDERS.name, requeue.PARENT: failed.run_id})
    assert requeue.failed_runs_plan(instance, job.name, ORDERS.name, time.time() + 3600).unsettled == 0
