"""Produce and consume with kafka-python against the real broker started by the tooling."""

import json

from pipelines.demo.producer import event_headers


def test_read_range_returns_exactly_the_requested_offsets(kafka, topic):
    rows = [(b"k%d" % i, {"n": i}, event_headers()) for i in range(30)]
    assert kafka.send_json(topic, rows) == 30
    ends = kafka.end_offsets(topic)
    assert sum(ends.values()) == 30
    partition = max(ends, key=ends.get)
    got = list(kafka.read_range(topic, partition, 1, ends[partition] - 1))
    assert [r.offset for r in got] == list(range(1, ends[partition] - 1))
    assert all(r.partition == partition and r.topic == topic for r in got)
    first = got[0]
    assert json.loads(first.value)["n"] in range(30)
    assert first.header("correlation_id") and first.header("traceparent").startswith(b"00-")


def test_missing_topic_has_no_end_offsets(kafka):
    assert kafka.end_offsets("test.does-not-exist") is None


def test_auto_topic_creation_is_off(kafka):
    """The platform creates its topics; a typo must not silently create one."""
    consumer = kafka.consumer()
    try:
        assert "test.typo-topic" not in (consumer.topics() or set())
    finally:
        consumer.close()
    assert kafka.end_offsets("test.typo-topic") is None


def test_platform_topics_exist_with_explicit_partitions(kafka):
    assert len(kafka.end_offsets("tpch.orders")) == 3
    assert len(kafka.end_offsets("tpch.orders.dlq")) == 1


def test_the_event_sourced_ledger_topic_keeps_every_record(kafka):
    """customer_ledger is append-only: its projection is rebuilt from offset zero, so its topic
    must never lose records to retention (the others keep the broker's default)."""
    modified = kafka.topic_configs(["ledger.customer", "tpch.orders"])  # non-default settings
    assert modified["ledger.customer"]["retention.ms"] == "-1"
    assert "retention.ms" not in modified["tpch.orders"]
