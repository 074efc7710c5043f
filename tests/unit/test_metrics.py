"""The metrics endpoint's pure parts, and a scrape with both sources unreachable."""

from __future__ import annotations

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
