"""The sensor's inline path when a backlog spreads over many days (fakes for Kafka and the
registry; a real lake and an ephemeral Dagster instance): micro-batches capped at
``inline_max_partitions`` apply every record exactly once, the cursor never passes a record that
was not applied, and records left when the budget runs out are simply re-read by the next tick."""

import dataclasses
import datetime as dt
import json
import time
from types import SimpleNamespace

import dagster as dg

from pipelines.catalog import ORDERS
from conflux.io.kafka import Record
from conflux.io.lake import LakeResource
from conflux.event.sensor import apply_inline

TOPIC = "cap.orders"
DS = dataclasses.replace(ORDERS, name="cap_orders", topics=(TOPIC,), inline_max_partitions=4,
                         linger_ms=0, flush_records=40)


def order(key: int) -> bytes:
    day = dt.date(1995, 1, 1) + dt.timedelta(days=key % 30)  # 30 days, interleaved
    return json.dumps({"o_orderkey": key, "o_custkey": 1, "o_orderstatus": "O",
                       "o_totalprice": 1.0, "o_orderdate": day.isoformat(),
                       "o_orderpriority": "1-URGENT", "o_clerk": "c", "o_shippriority": 0}).encode()


def key(partition: int, offset: int) -> int:
    return partition * 100 + offset + 1


class FakeKafka:
    """Three partitions of 40 records each, served from the positions asked for."""

    def __init__(self):
        self.log = {(TOPIC, p): [Record(TOPIC, p, o, 1_000, str(key(p, o)).encode(),
                                        order(key(p, o)), ()) for o in range(40)]
                    for p in range(3)}

    def poll_from(self, positions, *, deadline, max_records=5000, on_gap=None):
        for (t, p), start in sorted(positions.items()):
            yield self.log[(t, p)][start:start + 15]
            yield self.log[(t, p)][start + 15:]

    def send_raw(self, topic, rows):
        raise AssertionError(f"nothing should be dead-lettered, got {rows}")


class FakeRegistry:
    client = SimpleNamespace(versions=lambda subject, deleted=False: [])


def tick(kafka, lake, instance, cursor, budget):
    ends = {TOPIC: {p: 40 for p in range(3)}}
    context = dg.build_sensor_context(instance=instance)
    return apply_inline(context, DS, cursor, ends, kafka, lake, FakeRegistry(),
                        deadline=time.monotonic() + budget)


def stored_keys(lake):
    keys = []
    for p in lake.partitions(DS.name):
        keys += lake.read(DS.name, p).o_orderkey.tolist()
    return keys


def test_capped_micro_batches_apply_each_record_once_and_the_cursor_follows(tmp_path):
    kafka, lake = FakeKafka(), LakeResource(path=str(tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        cursor, stats = tick(kafka, lake, instance, {}, budget=60)
        assert stats["capped"] > 0 and stats["dropped"] == 0
        assert cursor == {TOPIC: {0: 40, 1: 40, 2: 40}}
        keys = stored_keys(lake)
        assert sorted(keys) == sorted(key(p, o) for p in range(3) for o in range(40))
        # the micro-batches' source ranges tile each partition exactly: no gap, no overlap
        mats = instance.fetch_materializations(dg.AssetKey(DS.name), limit=1000).records
        ranges = {(r["partition"], r["start"], r["end"]) for m in mats
                  for r in m.asset_materialization.metadata["conflux/source_ranges"].value}
        for p in range(3):
            spans = sorted((start, end) for part, start, end in ranges if part == p)
            assert spans[0][0] == 0 and spans[-1][1] == 40
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans


def test_records_left_when_the_budget_ends_are_not_passed_by_the_cursor(tmp_path):
    kafka, lake = FakeKafka(), LakeResource(path=str(tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        cursor, stats = tick(kafka, lake, instance, {}, budget=0.0001)  # one micro-batch at most
        applied = sum(cursor.get(TOPIC, {}).values())
        assert applied == stats["records"] and applied < 120
        assert sorted(stored_keys(lake)) == sorted(
            key(p, o) for p in range(3) for o in range(cursor.get(TOPIC, {}).get(p, 0)))
        while sum(cursor.get(TOPIC, {}).values()) < 120:  # the next ticks re-read the rest
            cursor, _ = tick(kafka, lake, instance, cursor, budget=60)
        keys = stored_keys(lake)
        assert len(keys) == len(set(keys)) == 120
