"""Consumer lag in Kafka's own tools: the ``orders`` sensor, evaluated in-process on a topic of the
test's own, mirrors its saved cursor into the consumer group ``conflux.orders``, and Kafka's
``kafka-consumer-groups --describe`` (``ConsumerGroupCommand``, run with ``java`` from the jars the
stack fetched) shows the group's committed offsets at the cursor, with the lag it has."""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid

import pytest

from conflux.event import group_mirror
from conflux.event.job import build_ingest_job
from conflux.event.offsets import consumer_group, parse_state
from conflux.event.sensor import build_kafka_sensor
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.stack.kafka import CONSUMER_GROUPS, Kafka
from pipelines.catalog import ORDERS
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from tests.live import tick

pytestmark = pytest.mark.timeout(300)


def describe(stack, group: str, topic: str) -> dict[int, dict[str, str]]:
    """``kafka-consumer-groups --describe --group GROUP``: its rows of ``topic`` by partition."""
    command = Kafka(stack.settings).tool(
        CONSUMER_GROUPS, "--bootstrap-server", stack.settings.kafka_bootstrap,
        "--describe", "--group", group)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    headers = [line for line in lines if line[:2] == ["GROUP", "TOPIC"]]
    assert len(headers) == 1, done.stdout + done.stderr  # the group exists, with offsets
    header = headers[0]
    rows = [dict(zip(header, line)) for line in lines if line[0] == group and len(line) == len(header)]
    return {int(r["PARTITION"]): r for r in rows if r["TOPIC"] == topic}


def test_kafka_consumer_groups_shows_the_sensor_cursor_and_its_lag(stack, kafka, instance):
    started = time.monotonic()
    topic = f"test.group.{uuid.uuid4().hex[:10]}"
    assert kafka.ensure_topic(topic, partitions=2)
    ds = dataclasses.replace(ORDERS, topics=(topic,), fallback=None, tick_budget_s=1.0)
    resources = {"kafka": kafka, "lake": LakeResource.for_stack(stack.settings),
                 "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    year = 2040 + uuid.uuid4().int % 50  # days of the test's own: the stack's orders are shared
    base = 3 * 10**10 + uuid.uuid4().int % 10**6 * 10**4
    frame = list(json_rows(TpchGenerator(0.001, seed=5).orders().head(50)))

    def publish(first: int, n: int) -> None:
        kafka.send_json(topic, [(str(base + i).encode(),
                                 {**frame[i % len(frame)], "o_orderkey": base + i,
                                  "o_orderdate": f"{year}-07-{1 + i % 3:02d}"}, event_headers())
                                for i in range(first, first + n)])

    publish(0, 40)
    cursor = None
    for _ in range(10):  # until every record is applied
        cursor = tick(sensor, instance, resources, cursor).cursor
        if sum(parse_state(cursor).offsets.get(topic, {}).values()) == 40:
            break
    applied = parse_state(cursor).offsets[topic]
    assert sum(applied.values()) == 40 and all(applied.values())  # both partitions got records
    group = consumer_group(ds.name)
    assert group == "conflux.orders"
    cursor = tick(sensor, instance, resources, cursor).cursor  # mirrors the saved cursor
    # unchanged since: the next tick commits nothing (this process remembers the last commit)
    assert group_mirror.mirror_cursor(ds.name, parse_state(cursor), kafka) is False

    shown = describe(stack, group, topic)
    assert {p: (int(r["CURRENT-OFFSET"]), int(r["LOG-END-OFFSET"]), int(r["LAG"]))
            for p, r in shown.items()} == {p: (o, o, 0) for p, o in applied.items()}

    publish(40, 7)  # not read yet: the group lags by them
    shown = describe(stack, group, topic)
    assert {p: int(r["CURRENT-OFFSET"]) for p, r in shown.items()} == applied
    assert sum(int(r["LAG"]) for r in shown.values()) == 7
    assert time.monotonic() - started < 60
