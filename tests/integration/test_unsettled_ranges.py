"""Ranges an ingest run was requested for stay owed until a run applies them, on the test stack:
a STARTED run terminated through the webserver's GraphQL API ends CANCELED and stops writing, a
deleted run's range is requested again, every produced record lands in the lake, and the
dataset's freshness check fails while a range is unsettled.

The Kafka sensor of ``orders`` (in ``runs`` mode, on a topic of the test's own) is evaluated here
with the test's cursor, as the daemon would — and its run requests are launched through the
webserver like the daemon's, so the runs are the code location's own ``orders__ingest_job``, in
run workers of Dagster's ``DefaultRunLauncher``. The daemon's ``orders__kafka`` sensor is turned
off meanwhile: its caught-up observations would make ``orders`` fresh whatever this test does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid

import dagster as dg
import pytest

from conflux.cli import dagster_api as api
from conflux.event import requeue
from conflux.event.job import build_ingest_job
from conflux.event.offsets import parse_state
from conflux.event.sensor import build_kafka_sensor
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.observe.freshness_checks import evaluate, last_updated
from pipelines.catalog import ORDERS
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from tests.live import stop_sensor, tick

pytestmark = pytest.mark.timeout(600)
DAYS = 20
TERMINATE = """
mutation($id: String!) {
  terminateRun(runId: $id) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}"""
DELETE = """
mutation($id: String!) {
  deletePipelineRun(runId: $id) { __typename ... on PythonError { message } }
}"""


@pytest.fixture
def url(webserver):
    """The webserver's URL, the daemon's ``orders__kafka`` sensor off meanwhile."""
    url = webserver.settings.dagster_url
    api.stop_sensor(url, "orders__kafka")
    yield url
    api.start_sensor(url, "orders__kafka")


@pytest.fixture
def setup(kafka, webserver, topic):
    """``orders`` in runs mode on ``topic`` with a 10 s freshness window, the stack's resources,
    and the rows published: keys and days of their own (the stack's ``orders`` table is shared)."""
    ds = dataclasses.replace(ORDERS, topics=(topic,), ingest="runs", max_records_per_run=10**6,
                             freshness=dt.timedelta(seconds=10), fallback=None)
    year = 2040 + uuid.uuid4().int % 50  # this test's own days
    base = 10**10 + uuid.uuid4().int % 10**6 * 10**4
    frame = TpchGenerator(0.05, seed=5).orders().head(60_000)
    rows = [{**r, "o_orderkey": base + i, "o_orderdate": f"{year}-03-{1 + i % DAYS:02d}"}
            for i, r in enumerate(json_rows(frame))]
    kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers()) for r in rows])
    resources = {"kafka": kafka, "lake": LakeResource.for_stack(webserver.settings),
                 "registry": SchemaRegistryResource(url=webserver.settings.postgres_url)}
    return ds, resources, rows, [f"{year}-03-{d:02d}" for d in range(1, DAYS + 1)]


def launch(url, request) -> str:
    """Launch a sensor's run request through the webserver (what the daemon does with it)."""
    return api.launch_run(url, "orders__ingest_job", request.run_config, request.tags)


def wait_status(url, run_id, wanted, timeout=300.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := api.run_status(url, run_id)) not in wanted:
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(0.1)
    return status


def wait_applied(instance, request, timeout=420.0) -> None:
    """Until a run of the request's batch succeeded: the run launched for it or one of Dagster's
    retries of it (a loaded machine can time a launch out: run retries are on in the stack)."""
    batch = request.tags[requeue.BATCH]
    done = dg.RunsFilter(tags={requeue.BATCH: batch}, statuses=[dg.DagsterRunStatus.SUCCESS])
    deadline = time.monotonic() + timeout
    while not instance.get_runs_count(done):
        runs = instance.get_runs(dg.RunsFilter(tags={requeue.BATCH: batch}))
        assert time.monotonic() < deadline, [(r.run_id, r.status.value) for r in runs]
        time.sleep(0.5)


def stored(lake, days) -> set[int]:
    keys: set[int] = set()
    for day in days:
        frame = lake.read("orders", day)
        keys |= set() if frame is None else set(frame["o_orderkey"].tolist())
    return keys


def fresh(instance, ds) -> bool:
    return evaluate(ds, last_updated(instance, ds.name), time.time()).passed


@pytest.fixture
def own_freshness(url):
    """The daemon's own orders__kafka sensor stopped meanwhile: its caught-up observations of
    ``orders`` would make the dataset look fresh whatever this test's in-process ticks owe."""
    stop_sensor(url, "orders__kafka")
    yield
    assert api.start_sensor(url, "orders__kafka") == "RUNNING"


def test_a_terminated_run_ends_canceled_and_its_range_is_applied_again(url, setup, instance,
                                                                       monkeypatch,
                                                                       own_freshness):
    ds, resources, rows, days = setup
    lake = resources["lake"]
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    first = tick(sensor, instance, resources, None)
    [request] = first.run_requests
    [owed] = parse_state(first.cursor).pending
    assert owed.key == request.run_key and request.tags[requeue.BATCH] == owed.batch

    run_id = launch(url, request)
    wait_status(url, run_id, {"STARTED"})
    answer = api.graphql(url, TERMINATE, {"id": run_id})["terminateRun"]
    assert answer["__typename"] == "TerminateRunSuccess", answer
    assert wait_status(url, run_id, {"SUCCESS", "FAILURE", "CANCELED"}) == "CANCELED"
    steps = {r.dagster_event.event_type_value for r in instance.all_logs(run_id)
             if r.dagster_event is not None}
    assert "STEP_SUCCESS" not in steps and "STEP_UP_FOR_RETRY" not in steps, steps
    after_cancel = stored(lake, days)
    time.sleep(3)
    assert stored(lake, days) == after_cancel  # it stopped writing
    assert len(after_cancel) < len(rows)  # (some of it may have landed: applied again, harmless)

    # unsettled: no caught-up observation, so the freshness check fails once its window passed
    time.sleep(ds.freshness.total_seconds() + 1)
    monkeypatch.setattr(requeue, "GRACE_S", 0.0)
    again = tick(sensor, instance, resources, first.cursor)
    [retry] = again.run_requests
    assert retry.run_key == f"{owed.key}#1" and retry.tags[requeue.REQUEUED_FROM] == run_id
    assert retry.run_config == request.run_config
    assert not fresh(instance, ds)
    monkeypatch.setattr(requeue, "GRACE_S", 60.0)
    waiting = tick(sensor, instance, resources, again.cursor)  # its run not created yet
    assert not waiting.run_requests and not fresh(instance, ds)

    launch(url, retry)
    wait_applied(instance, retry)
    assert stored(lake, days) == {r["o_orderkey"] for r in rows}  # every produced record
    cursor, deadline = waiting.cursor, time.monotonic() + 30
    while not fresh(instance, ds):  # caught up again: the next lag observation says so
        assert time.monotonic() < deadline, "never fresh again"
        settled = tick(sensor, instance, resources, cursor)
        assert parse_state(settled.cursor).pending == () and not settled.run_requests
        cursor = settled.cursor
        time.sleep(1)


def test_a_deleted_run_has_its_range_requested_again(url, setup, instance, monkeypatch):
    ds, resources, rows, days = setup
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    first = tick(sensor, instance, resources, None)
    [request] = first.run_requests
    run_id = launch(url, request)
    wait_status(url, run_id, {"STARTED"})
    api.graphql(url, TERMINATE, {"id": run_id})
    wait_status(url, run_id, {"SUCCESS", "FAILURE", "CANCELED"})
    answer = api.graphql(url, DELETE, {"id": run_id})["deletePipelineRun"]
    assert answer["__typename"] == "DeletePipelineRunSuccess", answer
    assert instance.get_run_by_id(run_id) is None

    monkeypatch.setattr(requeue, "GRACE_S", 3600.0)  # however slow this machine was so far
    in_grace = tick(sensor, instance, resources, first.cursor)
    assert not in_grace.run_requests  # within GRACE_S a missing run may still be being created
    monkeypatch.setattr(requeue, "GRACE_S", 0.0)
    again = tick(sensor, instance, resources, first.cursor)
    [retry] = again.run_requests
    assert retry.tags[requeue.REQUEUED_FROM] == requeue.MISSING
    assert retry.run_config == request.run_config
    launch(url, retry)
    wait_applied(instance, retry)
    assert stored(resources["lake"], days) == {r["o_orderkey"] for r in rows}
    settled = tick(sensor, instance, resources, again.cursor)
    assert parse_state(settled.cursor).pending == ()
