"""Test configuration: a stack of real services of its own, apart from the dev stack.

Integration tests (marked ``integration``) get a real Kafka broker, a real Postgres and a Dagster
daemon started by the project's own tooling on loopback ports of their own, wiped at the start of
the session and stopped at its end. A service that does not come up fails the tests; it never
skips them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the test stack lives apart from `conflux dev`'s (ports and state folder); override if needed
TEST_STACK_ENV = {
    "CONFLUX_HOME": str(REPO / ".conflux" / "test"),
    "CONFLUX_KAFKA_PORT": "19092",
    "CONFLUX_KAFKA_CONTROLLER_PORT": "19093",
    "CONFLUX_PG_PORT": "15433",
    "CONFLUX_DAGSTER_PORT": "13000",
    # the platform plus a probe location whose declared schedules tick every minute
    "CONFLUX_WORKSPACE": str(REPO / "tests" / "fixtures" / "workspace.yaml"),
    # tests of the shared stack launch the runs they assert on; the automation sensor (on by
    # default) would launch joins of its own meanwhile. Tests of automation bring their own
    # stack (tests/integration/test_demo.py)
    "CONFLUX_AUTOMATION": "off",
    # notifications go to a receiver the notification tests run on this port (tests/webhook.py);
    # undelivered ones wait in the notify sensor's cursor meanwhile
    "CONFLUX_NOTIFY_WEBHOOK_URL": "http://127.0.0.1:19098/hook",
    "CONFLUX_NOTIFY_STALL_SECONDS": "30",
}
for _name, _value in TEST_STACK_ENV.items():
    os.environ.setdefault(_name, _value)


def pytest_itemcollected(item):
    # `make test` runs two pytest processes at once: the integration tests of the shared stack
    # (marked here) in one, in the order below; the tests that bring a stack of their own
    # (3-broker cluster, ...) and the browser tests, on a second stack, in the other (Makefile)
    if "stack" in item.fixturenames:
        item.add_marker(pytest.mark.shared_stack)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath) or "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
    # tests that kill the shared stack's services, and fill its lake, run after all the others
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def stack():
    """The session's stack: Postgres, Kafka and the Dagster daemon, from a clean slate."""
    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.stack.dagster import write_instance

    settings = Settings.from_env()
    stack = Stack(settings)
    if not settings.external_pg_url:
        stack.reset(report=lambda line: None)
    started = stack.up(["postgres", "kafka", "dagster-daemon", "conflux-metrics",
                        "conflux-schema-registry"])
    write_instance(settings)
    os.environ.update(settings.client_env())
    yield stack
    stack.down(started)


@pytest.fixture(scope="session")
def webserver(stack):
    """The stack's Dagster webserver (started on first use, stopped with the session)."""
    started = stack.up(["dagster-webserver"])
    yield stack
    stack.down(started)


@pytest.fixture(scope="module")
def platform_data(webserver):
    """Small TPC-H data on the platform for a module's tests (``tests/platform_data.py``);
    the lake's datasets are removed after the module."""
    from tests import platform_data as data

    yield data.load(webserver.settings)
    data.clear(webserver.settings)


@pytest.fixture
def kafka(stack):
    from conflux.io.kafka import KafkaResource

    return KafkaResource.from_env(stack.settings)


@pytest.fixture
def topic(kafka):
    """A fresh topic with 3 partitions, unique to the test."""
    name = f"test.{uuid.uuid4().hex[:12]}"
    assert kafka.ensure_topic(name, partitions=3)
    return name


@pytest.fixture
def instance(stack):
    """The Postgres-backed Dagster instance of the test stack."""
    import dagster as dg

    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture
def registry(stack):
    """The schema registry in the test stack's Postgres, its tables created."""
    from conflux.io.schema_registry import SchemaRegistry

    reg = SchemaRegistry(stack.settings.postgres_url)
    reg.ensure_schema()
    return reg


@pytest.fixture
def fallback_ds(stack):
    """An orders-like event dataset whose batch fallback reads a fresh ops table of 60 orders;
    returns (dataset, the table's rows)."""
    import dataclasses

    import psycopg

    from pipelines.demo.tpch import TpchGenerator
    from pipelines.catalog import ORDERS
    from conflux.core.declarations import BatchFallback
    from conflux.io.postgres import replace_table

    tag = uuid.uuid4().hex[:8]
    source = TpchGenerator(0.001, seed=11).orders().head(60).reset_index(drop=True)
    with psycopg.connect(stack.settings.postgres_url) as conn:
        replace_table(conn, "ops", f"orders_{tag}", source, ["o_orderkey"])
    ds = dataclasses.replace(ORDERS, name=f"orders_fb_{tag}", topics=(f"t.fb.{tag}",),
                             fallback=BatchFallback(source_table=f"ops.orders_{tag}"))
    return ds, source


@pytest.fixture
def lake(stack, tmp_path):
    from conflux.io.lake import LakeResource

    return LakeResource(path=str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on a free loopback port for the session, with bucket ``conflux-test``;
    the AWS_* variables that point the lake at it are set for the session (and restored)."""
    from tests import s3

    proc, endpoint = s3.start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    env = pytest.MonkeyPatch()
    try:
        for name, value in {**s3.S3_TEST_ENV, "AWS_ENDPOINT_URL_S3": endpoint}.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        s3.create_bucket(endpoint, "conflux-test")
        yield endpoint
    finally:
        env.undo()
        s3.stop(proc)


@pytest.fixture
def s3_lake_url(s3_server):
    """A fresh prefix of the session's bucket."""
    return f"s3://conflux-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def webhook():
    """A receiver on the port the test stack's notifications are posted to."""
    from urllib.parse import urlsplit

    from tests.webhook import Receiver

    receiver = Receiver(urlsplit(os.environ["CONFLUX_NOTIFY_WEBHOOK_URL"]).port)
    yield receiver
    receiver.close()
