"""The metrics endpoint's pure parts, and a scrape with both sources unreachable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conflux.io.kafka import KafkaResource, Record
from conflux.observe.metrics import (ConfluxCollector, DeadLetters, buckets, inline_batches,
                                     registry)


def test_buckets_are_cumulative():
    found, total = buckets([0.01, 0.3, 0.3, 7, 100], bounds=(0.1, 1.0, 10.0))
    assert found == [("0.1", 1), ("1.0", 3), ("10.0", 4), ("+Inf", 5)]
    assert total == 107.61


def test_inline_batches_from_the_tick_text():
    text = ("applied 120 records inline in 3 micro-batch(es), 2 dead-lettered, 2 partition(s) "
            "materialized; seconds: decode 0.30, dlq 0.06, events 0.24, flush_max 0.40, "
            "lake 0.60, setup 0.50")
    assert inline_batches(text) == pytest.approx([0.4, 0.4, 0.4])
    assert inline_batches("no new records on orders") == []
    assert inline_batches(None) == []


def test_dead_letters_count_by_reason_and_move_on():
    dead = DeadLetters()
    rec = lambda offset, code: Record("orders.dlq", 0, offset, 0, None, b"x",  # noqa: E731
                                      (("conflux.error.code", code.encode()),))
    dead.add("orders", [rec(0, "INVALID_JSON"), rec(1, "SCHEMA_VIOLATION"), rec(2, "INVALID_JSON")])
    assert dead.counts == {("orders", "INVALID_JSON"): 2, ("orders", "SCHEMA_VIOLATION"): 1}
    assert dead.positions == {("orders.dlq", 0): 3}


class _Down:
    def __getattr__(self, name):
        raise ConnectionError("postgres down")


def test_unreachable_sources_are_a_gauge_not_an_error():
    from pipelines.catalog import DATASETS

    kafka = KafkaResource(bootstrap_servers="127.0.0.1:1", request_timeout_ms=300)
    text = generate_latest(registry(ConfluxCollector(DATASETS, kafka, instance=_Down()))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["source"]: s.value for s in families["conflux_up"].samples}
    assert up == {"dagster": 0.0, "kafka": 0.0}


class _Instance:
    """An instance holding one Kafka sensor's state and nothing else."""

    def __init__(self, name: str, cursor: str):
        self.state = SimpleNamespace(instigator_name=name, is_running=True,
                                     instigator_data=SimpleNamespace(cursor=cursor),
                                     instigator_origin_id="origin", selector_id="selector")

    def all_instigator_state(self):
        return [self.state]

    def get_run_records(self, limit):
        return []

    def get_ticks(self, origin_id, selector_id, limit):
        return []

    def get_latest_asset_check_evaluation_record(self, key):
        return None


def test_unsettled_records_are_the_ranges_runs_owe():
    from conflux.event.offsets import Pending, Range, TickState, dump_state
    from pipelines.catalog import ORDERS

    state = TickState(offsets={"tpch.orders": {0: 500}},
                      pending=(Pending("k", (Range("tpch.orders", 0, 100, 400),), 1.0),))
    collector = ConfluxCollector([ORDERS], kafka=None,
                                 instance=_Instance("orders__kafka", dump_state(state)))
    families = {f.name: f for f in collector._dagster({})}
    [sample] = families["conflux_unsettled_records"].samples
    assert (sample.labels, sample.value) == ({"dataset": "orders"}, 300)
    [applied] = families["conflux_records_applied"].samples
    assert applied.value == 500
