"""The event path on the real broker, Postgres and Dagster instance of the test stack: the
cursor is the commit, ranges are never launched twice nor skipped, replays and duplicates
change nothing, bad records are dead-lettered with their reason, late events land where they
belong, new partitions are picked up, a dead broker never stalls a tick."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from kafka.errors import KafkaError

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry
from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.io.kafka import KafkaResource
from conflux.io.registry import SchemaRegistryResource
from conflux.event.offsets import parse_cursor, parse_state
from conflux.event.sensor import build_kafka_sensor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_ds(kafka, topic, stack):
    """An orders-like event dataset on this test's own topic, its contract registered."""

    def make(**overrides):
        ds = dataclasses.replace(ORDERS, name=f"orders_{topic[-12:]}", topics=(topic,),
                                 dlq_topic=f"{topic}.dlq", fallback=None, **overrides)
        kafka.ensure_topic(ds.dlq_topic, 1)
        reg = SchemaRegistry(stack.settings.postgres_url)
        reg.ensure_schema()
        reg.register(ds.subject, contract_schema(ds.contract))
        return ds

    return make


@pytest.fixture
def resources(kafka, lake, stack):
    return {"kafka": kafka, "lake": lake,
            "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}


def orders(n, seed=1, **changes) -> list[dict]:
    df = TpchGenerator(0.001, seed=seed).orders().head(n)
    return [{**row, **changes} for row in json_rows(df)]


def publish(kafka, topic, rows, partition=None):
    if partition is None:
        return kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers())
                                       for r in rows])
    producer = kafka.producer()
    for r in rows:
        producer.send(topic, key=str(r["o_orderkey"]).encode(), value=json.dumps(r).encode(),
                      headers=event_headers(), partition=partition)
    producer.flush()
    producer.close()
    return len(rows)


def tick(sensor, instance, resources, cursor):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        return sensor(ctx)


def snapshot(lake, ds) -> pd.DataFrame:
    """Every stored row of ``ds`` (contract columns), sorted: what "unchanged" compares."""
    frames = [lake.read(ds.name, p) for p in lake.partitions(ds.name)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)[list(ds.fields)]
    return df.sort_values(list(ds.key)).reset_index(drop=True)


def drain_inline(sensor, instance, resources, cursor=None, ticks=5):
    for _ in range(ticks):
        result = tick(sensor, instance, resources, cursor)
        if result.cursor == cursor:
            break
        cursor = result.cursor
    return cursor


def test_inline_ticks_apply_records_and_the_cursor_is_the_commit(kafka, topic, instance,
                                                                 resources, make_ds, lake):
    ds = make_ds(tick_budget_s=1.0)
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    rows = orders(60)
    publish(kafka, topic, rows)
    cursor = drain_inline(sensor, instance, resources)
    assert parse_cursor(cursor)[topic] == kafka.end_offsets(topic)
    stored = snapshot(lake, ds)
    assert sorted(stored["o_orderkey"]) == sorted(r["o_orderkey"] for r in rows)
    materialized = instance.get_materialized_partitions(dg.AssetKey(ds.name))
    assert materialized == {r["o_orderdate"] for r in rows}
    event = instance.get_latest_materialization_event(dg.AssetKey(ds.name)).asset_materialization
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["conflux/contract_version"] == f"{ds.subject}@1"
    assert meta["conflux/source_ranges"][0]["topic"] == topic
    assert meta["conflux/correlation_ids"] >= 1 and meta["conflux/correlation_id_examples"]

    # the same tick again (daemon killed before the cursor was saved): nothing changes
    before = snapshot(lake, ds)
    replayed = tick(sensor, instance, resources, None)
    assert parse_cursor(replayed.cursor)[topic] == kafka.end_offsets(topic)
    pd.testing.assert_frame_equal(snapshot(lake, ds), before)
    # an idle tick applies nothing: the offsets (the commit) stay; only the time up to which
    # the dataset is known current moves on
    idle = tick(sensor, instance, resources, cursor)
    assert parse_cursor(idle.cursor) == parse_cursor(cursor)
    assert "no new records" in idle.skip_reason.skip_message
    assert parse_state(idle.cursor).caught_up_at >= parse_state(cursor).caught_up_at > 0


def test_runs_mode_launches_each_range_once_and_reruns_are_identical(kafka, topic, instance,
                                                                    resources, make_ds, lake):
    ds = make_ds(ingest="runs", max_records_per_run=15)
    job = build_ingest_job(ds)
    sensor = build_kafka_sensor(ds, job)
    rows = orders(70, seed=2)
    publish(kafka, topic, rows)
    ends = kafka.end_offsets(topic)
    cursor, requests = None, []
    for _ in range(20):
        result = tick(sensor, instance, resources, cursor)
        if isinstance(result, dg.SkipReason) or not result.run_requests:
            break
        requests += result.run_requests
        cursor = result.cursor
    keys = [r.run_key for r in requests]
    assert len(keys) == len(set(keys)) == max(-(-e // 15) for e in ends.values())
    covered = {}
    for r in requests:
        for rng in r.run_config["ops"][f"{ds.name}__ingest"]["config"]["ranges"]:
            assert rng["end"] - rng["start"] <= 15
            assert covered.get(rng["partition"], 0) == rng["start"], "no gap, no overlap"
            covered[rng["partition"]] = rng["end"]
    assert covered == ends

    for r in requests:
        assert job.execute_in_process(run_config=r.run_config, instance=instance,
                                      resources=resources, tags=r.tags).success
    once = snapshot(lake, ds)
    assert sorted(once["o_orderkey"]) == sorted(r["o_orderkey"] for r in rows)
    # re-running any range (a killed run retried, a replay) leaves the dataset identical
    for r in requests[::2]:
        assert job.execute_in_process(run_config=r.run_config, instance=instance,
                                      resources=resources).success
    pd.testing.assert_frame_equal(snapshot(lake, ds), once)


def test_a_run_killed_midway_reruns_to_the_same_result(kafka, topic, instance, resources,
                                                      make_ds, lake, tmp_path):
    ds = make_ds(ingest="runs")
    rows = orders(3000, seed=4)
    for i, row in enumerate(rows):  # 30 days, so the run spends its time writing partitions
        row["o_orderdate"] = f"1995-06-{1 + i % 30:02d}"
    publish(kafka, topic, rows)
    config = {"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
        {"topic": topic, "partition": p, "start": 0, "end": e}
        for p, e in kafka.end_offsets(topic).items()]}}}}
    script = tmp_path / "run.py"
    script.write_text(f"""
import dataclasses, dagster as dg
from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.io.lake import LakeResource
from conflux.io.kafka import KafkaResource
from conflux.io.registry import SchemaRegistryResource
ds = dataclasses.replace(ORDERS, name={ds.name!r}, topics=({topic!r},), dlq_topic={ds.dlq_topic!r},
                         fallback=None, ingest="runs")
build_ingest_job(ds).execute_in_process(run_config={config!r}, resources={{
    "kafka": KafkaResource.from_env(),
    "lake": LakeResource(path={lake.path!r}),
    "registry": SchemaRegistryResource(url={resources["registry"].url!r})}})
""")
    markers = tmp_path / "phases"  # the run's phase markers (conflux/event/phases.py)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO,
                            env={**os.environ, "CONFLUX_PHASE_DIR": str(markers),
                                 "PYTHONPATH": str(REPO)})  # it failed on its imports before
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not any(
            m.read_text().startswith("write ") for m in markers.glob(f"{proc.pid}-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # in the write phase: the lake's MERGE under way
    proc.wait()
    left = [m.read_text().split()[0] for m in markers.glob(f"{proc.pid}-*")]
    assert left == ["write"], left  # the kill landed where data moves, by the run's own marker
    # one Delta commit or none: the killed run left all its rows or nothing, never a part
    assert len(snapshot(lake, ds)) in (0, len(rows))
    assert build_ingest_job(ds).execute_in_process(run_config=config, instance=instance,
                                                   resources=resources).success
    stored = snapshot(lake, ds)
    assert len(stored) == len(rows) and stored["o_orderkey"].is_unique
    assert set(stored["o_orderkey"]) == {r["o_orderkey"] for r in rows}
    assert all(p.count("-") == 2 for p in lake.partitions(ds.name))


_FAILED_READS: list[str] = []


class KafkaDownOnce(KafkaResource):
    """The real broker, except that the first range read of a run fails as an outage does."""

    def read_ranges(self, ranges, idle_timeout_s: float = 30.0, on_gap=None):
        if not _FAILED_READS:
            _FAILED_READS.append("outage")
            raise KafkaError("no records for 30s (injected outage)")
        return super().read_ranges(ranges, idle_timeout_s, on_gap)


def test_a_step_failing_on_an_outage_is_retried_within_its_run(kafka, topic, instance, resources,
                                                               make_ds, lake):
    ds = make_ds(ingest="runs")
    rows = orders(40, seed=8)
    publish(kafka, topic, rows)
    config = {"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
        {"topic": topic, "partition": p, "start": 0, "end": e}
        for p, e in kafka.end_offsets(topic).items()]}}}}
    _FAILED_READS.clear()
    flaky = KafkaDownOnce(**kafka.model_dump())
    result = build_ingest_job(ds).execute_in_process(
        run_config=config, instance=instance, resources={**resources, "kafka": flaky})
    assert result.success and _FAILED_READS == ["outage"]
    retried = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retried) == 1
    stored = snapshot(lake, ds)
    assert sorted(stored["o_orderkey"]) == sorted(r["o_orderkey"] for r in rows)


def test_duplicate_events_and_replayed_ranges_change_nothing(kafka, topic, instance, resources,
                                                            make_ds, lake):
    ds = make_ds(tick_budget_s=1.0)
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    rows = orders(25, seed=5)
    publish(kafka, topic, rows)
    cursor = drain_inline(sensor, instance, resources)
    once = snapshot(lake, ds)
    publish(kafka, topic, rows)  # the producer retried: every event arrives a second time
    drain_inline(sensor, instance, resources, cursor)
    pd.testing.assert_frame_equal(snapshot(lake, ds), once)
    assert len(once) == 25


def test_every_kind_of_bad_record_is_dead_lettered_and_good_ones_are_kept(kafka, topic, instance,
                                                                         resources, make_ds, lake):
    ds = make_ds(tick_budget_s=1.0)
    good = orders(6, seed=6)
    bad_values = {
        b"undecodable": b"\xff\xfe\x00 not utf-8",
        b"invalid-json": b'{"o_orderkey": 12,',
        b"wrong-type": json.dumps({**good[0], "o_totalprice": "a lot"}).encode(),
        b"extra-field": json.dumps({**good[0], "o_surprise": 1}).encode(),
        b"missing-field": json.dumps({k: v for k, v in good[0].items() if k != "o_custkey"}).encode(),
        b"oversize": json.dumps({**good[0], "o_comment": "x" * 1_100_000}).encode(),
    }
    producer = kafka.producer(max_request_size=4_000_000)
    sent = []
    for i, row in enumerate(good[:3]):
        producer.send(topic, key=b"g%d" % i, value=json.dumps(row).encode(), partition=0,
                      headers=event_headers())
    for key, value in bad_values.items():
        producer.send(topic, key=key, value=value, partition=0, headers=event_headers())
    producer.send(topic, key=b"unknown-version", value=json.dumps(good[3]).encode(), partition=0,
                  headers=event_headers(contract=f"{ds.subject}@42"))
    producer.send(topic, key=b"null-value", value=None, partition=0)
    for i, row in enumerate(good[4:]):
        sent.append(producer.send(topic, key=b"h%d" % i, value=json.dumps(row).encode(),
                                  partition=0))
    producer.flush()
    assert all(f.get(timeout=10) for f in sent), "the broker accepted every record"
    producer.close()

    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    drain_inline(sensor, instance, resources)
    stored = snapshot(lake, ds)
    assert set(stored["o_orderkey"]) == {r["o_orderkey"] for r in good[:3] + good[4:]}

    dlq_end = kafka.end_offsets(ds.dlq_topic)[0]
    dead = {d.key: d for d in kafka.read_range(ds.dlq_topic, 0, 0, dlq_end)}
    expected = {b"undecodable": "UNDECODABLE_BYTES", b"invalid-json": "INVALID_JSON",
                b"wrong-type": "CONTRACT_VIOLATION", b"extra-field": "CONTRACT_VIOLATION",
                b"missing-field": "CONTRACT_VIOLATION", b"oversize": "OVERSIZE",
                b"unknown-version": "UNKNOWN_SCHEMA", b"null-value": "NULL_VALUE"}
    assert {k: d.header("conflux.error.code").decode() for k, d in dead.items()} == expected
    for key, d in dead.items():
        assert d.header("conflux.error.topic") == topic.encode()
        assert d.header("conflux.error.partition") == b"0"
        assert int(d.header("conflux.error.offset")) >= 0
        assert d.header("conflux.error.dataset") == ds.name.encode()
        assert d.header("conflux.error.run_id").startswith(b"sensor:")
        assert d.header("conflux.error.message")
        assert d.value == bad_values.get(key, d.value), "the original value is kept"
    assert b"o_totalprice" in dead[b"wrong-type"].header("conflux.error.message")
    assert dead[b"unknown-version"].header("conflux.error.contract") == f"{ds.subject}@42".encode()


def test_late_events_update_exactly_their_partition(kafka, topic, instance, resources, make_ds, lake):
    ds = make_ds(tick_budget_s=1.0)
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    rows = orders(10, seed=7, o_orderdate="1998-08-01")
    publish(kafka, topic, rows)
    cursor = drain_inline(sensor, instance, resources)
    late = orders(3, seed=8, o_orderdate="1993-02-14")
    for i, order in enumerate(late):  # new orders (a stored key re-dated would move its row)
        order["o_orderkey"] = rows[0]["o_orderkey"] + 10_000_000 + i
    publish(kafka, topic, late)
    records_before = instance.fetch_materializations(dg.AssetKey(ds.name), limit=1000).records
    drain_inline(sensor, instance, resources, cursor)
    new = [r for r in instance.fetch_materializations(dg.AssetKey(ds.name), limit=1000).records
           if r.storage_id > max(x.storage_id for x in records_before)]
    assert {r.partition_key for r in new} == {"1993-02-14"}
    assert set(lake.read(ds.name, "1993-02-14")["o_orderkey"]) == {r["o_orderkey"] for r in late}
    assert len(lake.read(ds.name, "1998-08-01")) == 10


def test_partitions_added_to_a_topic_are_picked_up(kafka, topic, instance, resources, make_ds, lake):
    ds = make_ds(tick_budget_s=1.0)
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    publish(kafka, topic, orders(5, seed=9))
    cursor = drain_inline(sensor, instance, resources)
    assert set(parse_cursor(cursor)[topic]) == {0, 1, 2}
    kafka.ensure_topic(topic, partitions=5)
    extra = orders(4, seed=10)
    publish(kafka, topic, extra, partition=4)
    cursor = drain_inline(sensor, instance, resources, cursor)
    assert parse_cursor(cursor)[topic][4] == 4
    assert {r["o_orderkey"] for r in extra} <= set(snapshot(lake, ds)["o_orderkey"])


def test_missing_topic_is_a_clear_skip(instance, resources, make_ds):
    ds = dataclasses.replace(make_ds(), topics=("test.not-created-yet",), dlq_topic="x.dlq")
    result = tick(build_kafka_sensor(ds, build_ingest_job(ds)), instance, resources, None)
    assert "test.not-created-yet do not exist yet" in result.skip_message


def test_the_sensor_stays_within_its_time_bound_when_the_broker_is_down(stack, instance,
                                                                         resources, make_ds):
    ds = make_ds()
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    stack.down(["kafka"], report=lambda line: None)
    try:
        started = time.monotonic()
        result = tick(sensor, instance, resources, None)
        took = time.monotonic() - started
        assert "Kafka unavailable" in result.skip_message
        assert took < 15, f"tick took {took:.1f}s with the broker down"
    finally:
        stack.up(["kafka"], report=lambda line: None)


def test_a_failed_run_whose_retry_never_launched_is_requested_again(kafka, topic, instance,
                                                                    resources, make_ds, lake,
                                                                    monkeypatch):
    """What the crash test once hit: run monitoring failed a killed run, Dagster marked it for
    retry, but the retry could not be launched (Postgres was down) and is never tried again.
    The cursor already moved past its range; the sensor's next tick requests it again."""
    from conflux.event import requeue
    ds = make_ds(ingest="runs", max_records_per_run=100)
    job = build_ingest_job(ds)
    sensor = build_kafka_sensor(ds, job)
    rows = orders(30, seed=4)
    publish(kafka, topic, rows)
    first = tick(sensor, instance, resources, None)
    [request] = first.run_requests
    # the run is created, its worker dies, it fails; Dagster says it will retry — and does not
    run = instance.create_run_for_job(job_def=job, run_config=request.run_config,
                                      tags={**request.tags, "dagster/sensor_name": sensor.name})
    instance.report_run_failed(run)
    instance.add_run_tags(run.run_id, {requeue.WILL_RETRY: "true"})
    waiting = tick(sensor, instance, resources, first.cursor)
    assert not waiting.run_requests and "awaiting Dagster's retry" in waiting.skip_reason.skip_message

    monkeypatch.setattr(requeue, "GRACE_S", 0.0)  # the grace period is over
    again = tick(sensor, instance, resources, first.cursor)
    [requeued] = again.run_requests
    assert requeued.run_key == f"{request.run_key}#1"
    assert requeued.tags[requeue.REQUEUED_FROM] == run.run_id
    assert requeued.run_config == request.run_config
    assert parse_state(again.cursor).offsets == parse_state(first.cursor).offsets
    assert snapshot(lake, ds).empty  # nothing applied so far: without the requeue, lost
    assert job.execute_in_process(run_config=requeued.run_config, instance=instance,
                                  resources=resources, tags=requeued.tags).success
    assert sorted(snapshot(lake, ds)["o_orderkey"]) == sorted(r["o_orderkey"] for r in rows)
    settled = tick(sensor, instance, resources, again.cursor)
    assert not settled.run_requests and parse_state(settled.cursor).pending == ()
