"""Offset gaps on the test stack's Kafka: records removed by ``delete_records`` before the sensor
read them, a topic deleted and recreated, and a range an ingest run finds removed are recorded
(``dlq.offset_gaps``), fail the ``offset_gaps`` check naming the missing offsets, show in
``conflux lag`` and ``conflux dlq gaps``, and are acknowledged with ``conflux dlq ack-gaps``;
offsets without records (transaction markers) are no gap.

The Kafka sensor of ``orders`` is evaluated in-process on a topic of the test's own, with the
test's cursor (as in test_unsettled_ranges.py); its rows get keys and days of their own, since the
stack's ``orders`` table is shared. Each test acknowledges the gaps it made, so ``orders``'s
check passes again for the tests after it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

import dagster as dg
import pytest
from kafka import KafkaProducer

from conflux.cli import main
from conflux.event.job import build_ingest_job
from conflux.event.offsets import OFFSET_GAP, TOPIC_RECREATED, parse_state
from conflux.event.sensor import build_kafka_sensor
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.observe import offset_gaps
from conflux.observe.offset_gaps import CHECK_NAME, GapLedger
from pipelines.catalog import ORDERS
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from tests.live import tick

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def setup(webserver, kafka):
    """``orders`` on a one-partition topic of its own, the stack's resources, the gap ledger, and
    a publisher of orders with this test's keys and days; the test's gaps are acknowledged
    after it."""
    topic = f"test.gaps.{uuid.uuid4().hex[:10]}"
    assert kafka.ensure_topic(topic, partitions=1)
    ds = dataclasses.replace(ORDERS, topics=(topic,), fallback=None, tick_budget_s=1.0,
                             max_records_per_run=10**6)
    settings = webserver.settings
    resources = {"kafka": kafka, "lake": LakeResource.for_stack(settings),
                 "registry": SchemaRegistryResource(url=settings.postgres_url)}
    ledger = GapLedger(settings.postgres_url)
    year = 2040 + uuid.uuid4().int % 50
    base = 2 * 10**10 + uuid.uuid4().int % 10**6 * 10**4
    frame = list(json_rows(TpchGenerator(0.001, seed=3).orders().head(200)))

    def rows(first: int, n: int) -> list[dict]:
        return [{**frame[i % len(frame)], "o_orderkey": base + i,
                 "o_orderdate": f"{year}-05-{1 + i % 3:02d}"} for i in range(first, first + n)]

    def publish(first: int, n: int) -> list[int]:
        sent = rows(first, n)
        kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers())
                                for r in sent])
        return [r["o_orderkey"] for r in sent]

    def stored() -> set[int]:
        keys: set[int] = set()
        for day in (1, 2, 3):
            found = resources["lake"].read("orders", f"{year}-05-{day:02d}")
            keys |= set() if found is None else set(found["o_orderkey"]) & set(
                range(base, base + 10**4))
        return keys

    yield dict(ds=ds, topic=topic, resources=resources, ledger=ledger, publish=publish,
               rows=rows, stored=stored)
    ours = [r.id for r in ledger.gaps(["orders"]) if r.gap.topic == topic]
    if ours:
        ledger.acknowledge("orders", ours, note="test_offset_gaps cleanup", by="tests")


def check_of(result) -> dg.AssetCheckEvaluation:
    [found] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert found.check_name == CHECK_NAME
    return found


def gaps_of(ledger, topic, open_only=True):
    return [r for r in ledger.gaps(["orders"], open_only=open_only) if r.gap.topic == topic]


def cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_records_deleted_before_the_sensor_read_them_are_a_recorded_gap_until_acknowledged(
        setup, instance, capsys, monkeypatch):
    ds, topic, ledger, resources = setup["ds"], setup["topic"], setup["ledger"], setup["resources"]
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    first = setup["publish"](0, 30)
    read = tick(sensor, instance, resources, None)
    assert parse_state(read.cursor).offsets == {topic: {0: 30}}
    later = setup["publish"](30, 50)  # offsets 30..79
    setup["resources"]["kafka"].delete_records(topic, {0: 60})  # 30..59 gone, never read

    found = tick(sensor, instance, resources, read.cursor)
    assert parse_state(found.cursor).offsets == {topic: {0: 80}}
    assert setup["stored"]() == set(first) | set(later[30:])  # what remained, applied
    assert f"offset gap recorded: {topic} partition 0: offsets 30–59 (30 record(s)) removed " \
           f"before they were read (retention or delete_records)" in \
        found.skip_reason.skip_message
    [gap] = gaps_of(ledger, topic)
    assert (gap.gap.reason, gap.gap.first, gap.gap.last, gap.detected_by) == (
        OFFSET_GAP, 30, 59, "sensor:orders__kafka")
    failing = check_of(found)
    assert not failing.passed and failing.severity == dg.AssetCheckSeverity.ERROR
    assert f"#{gap.id} {topic} partition 0: offsets 30–59" in failing.description
    stored_check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("orders"), CHECK_NAME))
    assert stored_check is not None and not stored_check.event.dagster_event \
        .event_specific_data.passed

    # the next tick does not record it again: the cursor moved past it
    again = tick(sensor, instance, resources, found.cursor)
    assert len(gaps_of(ledger, topic)) == 1
    assert "offset gap" not in again.skip_reason.skip_message

    [row] = [r for r in json.loads(cli(capsys, "lag", "orders", "--json")[1])]
    [shown] = [g for g in row["gaps"] if g["topic"] == topic]
    assert (shown["recorded"], shown["id"], shown["first"], shown["last"]) == (True, gap.id, 30, 59)
    code, text = cli(capsys, "lag", "orders")
    assert code == 0 and f"offset gap #{gap.id} (found by sensor:orders__kafka at " in text
    assert f"{topic} partition 0: offsets 30–59 (30 record(s)) removed" in text
    code, text = cli(capsys, "dlq", "gaps", "tpch.orders")
    assert code == 0 and f"#{gap.id}  OFFSET_GAP" in text and "offsets 30–59" in text

    with pytest.raises(SystemExit) as usage:  # a note is required
        main(["dlq", "ack-gaps", "tpch.orders", str(gap.id)])
    assert usage.value.code == 2
    assert main(["dlq", "ack-gaps", "tpch.orders", "999999999", "--note", "x"]) == 2
    assert "no open offset gap of orders with id 999999999" in capsys.readouterr().err
    code, text = cli(capsys, "dlq", "ack-gaps", "tpch.orders", str(gap.id), "--note",
                     "days repaired from ops.orders")
    assert code == 0 and f"acknowledged #{gap.id}: {topic} partition 0" in text
    assert gaps_of(ledger, topic) == []
    [done] = gaps_of(ledger, topic, open_only=False)
    assert done.note == "days repaired from ops.orders" and done.acknowledged_at is not None
    assert all(g["topic"] != topic for g in
               json.loads(cli(capsys, "lag", "orders", "--json")[1])[0]["gaps"])
    # the sensor's next evaluation of the check follows the ledger
    monkeypatch.setattr(offset_gaps, "CHECK_EVERY_S", 0.0)
    after = tick(sensor, instance, resources, again.cursor)
    evaluation = check_of(after)
    assert f"{topic} partition 0" not in evaluation.description
    assert evaluation.passed == (not GapLedger(ledger.url).gaps(["orders"]))


def recreate(kafka, topic: str) -> None:
    """Delete ``topic`` and create it again (one partition), waiting out the deletion."""
    admin = kafka.admin()
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            if kafka.ensure_topic(topic, partitions=1):
                return
        except Exception:  # noqa: BLE001 - the deletion is still under way
            pass
        assert time.monotonic() < deadline, f"{topic} was not created again"
        time.sleep(0.5)


def test_a_recreated_topic_is_a_recorded_gap_and_its_new_records_land(setup, instance, kafka):
    ds, topic, ledger, resources = setup["ds"], setup["topic"], setup["ledger"], setup["resources"]
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    old = setup["publish"](0, 40)
    read = tick(sensor, instance, resources, None)
    assert parse_state(read.cursor).offsets == {topic: {0: 40}}
    recreate(kafka, topic)
    # more records than the cursor knew: the offsets alone would not tell, the topic id does
    new = setup["publish"](1000, 50)

    found = tick(sensor, instance, resources, read.cursor)
    [gap] = gaps_of(ledger, topic)
    assert (gap.gap.reason, gap.gap.first, gap.gap.last, gap.gap.resume_at) == (
        TOPIC_RECREATED, 40, None, 0)
    assert "topic id" in gap.gap.why
    assert f"{topic} partition 0: topic deleted and recreated" in check_of(found).description
    assert parse_state(found.cursor).offsets == {topic: {0: 50}}
    assert setup["stored"]() == set(old) | set(new)  # the new topic read from its start


def test_an_ingest_run_records_the_part_of_its_range_removed_before_it_read_it(setup, instance,
                                                                              kafka):
    ds = dataclasses.replace(setup["ds"], ingest="runs")
    topic, ledger, resources = setup["topic"], setup["ledger"], setup["resources"]
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    keys = setup["publish"](0, 100)
    planned = tick(sensor, instance, resources, None)
    [request] = planned.run_requests
    assert request.run_config["ops"]["orders__ingest"]["config"]["ranges"] == [
        {"topic": topic, "partition": 0, "start": 0, "end": 100}]
    kafka.delete_records(topic, {0: 60})  # while the run waits in the queue

    result = build_ingest_job(ds).execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources, tags=request.tags)
    assert result.success
    [gap] = gaps_of(ledger, topic)
    assert (gap.gap.reason, gap.gap.first, gap.gap.last, gap.detected_by) == (
        OFFSET_GAP, 0, 59, result.run_id)
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING and "offset gap" in e.user_message]
    assert any("offsets 0–59 (60 record(s)) removed" in w for w in warnings), warnings
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("orders"), CHECK_NAME)).event.dagster_event
    assert f"#{gap.id} {topic} partition 0: offsets 0–59" in \
        check.event_specific_data.description
    assert setup["stored"]() == set(keys[60:])

    # the sensor settles the applied range and finds nothing more to record
    settled = tick(sensor, instance, resources, planned.cursor)
    assert parse_state(settled.cursor).pending == () and not settled.run_requests
    assert len(gaps_of(ledger, topic)) == 1


def test_transaction_markers_are_no_gap(setup, instance, kafka):
    topic, ledger = setup["topic"], setup["ledger"]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers,
                             transactional_id=f"tx-{topic}")
    try:
        producer.init_transactions()
        for batch in range(3):  # 5 records and a commit marker each: offsets 5, 11, 17 hold none
            producer.begin_transaction()
            for row in setup["rows"](batch * 5, 5):
                producer.send(topic, key=str(row["o_orderkey"]).encode(),
                              value=json.dumps(row).encode())
            producer.commit_transaction()
    finally:
        producer.close()
    jumps = []
    started = time.monotonic()
    records = list(kafka.read_ranges([(topic, 0, 0, 18)], idle_timeout_s=20,
                                     on_gap=lambda *a: jumps.append(a)))
    assert [r.offset for r in records] == [o for o in range(18) if o not in (5, 11, 17)]
    assert jumps == [] and time.monotonic() - started < 15  # ends at the last marker, no wait
    sensor = build_kafka_sensor(setup["ds"], build_ingest_job(setup["ds"]))
    first = tick(sensor, instance, setup["resources"], None)
    second = tick(sensor, instance, setup["resources"], first.cursor)
    assert len(setup["stored"]()) == 15 and gaps_of(ledger, topic) == []
    assert "offset gap" not in second.skip_reason.skip_message
