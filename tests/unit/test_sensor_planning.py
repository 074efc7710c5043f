from contracts.tpch import Order
from pipelines.datasets import EventDataset
from sensors.kafka_sensor import Range, parse_cursor, plan_ranges

DS = EventDataset(name="orders", contract=Order, key=("o_orderkey",), event_time="o_orderdate",
                  topic="tpch.orders", max_records_per_run=100)


def test_ranges_start_at_the_cursor_and_cover_up_to_the_end_without_gaps():
    ranges = plan_ranges(DS, {0: 10, 1: 0}, {0: 250, 1: 0, 2: 30})
    assert ranges == [
        Range("tpch.orders", 0, 10, 110), Range("tpch.orders", 0, 110, 210),
        Range("tpch.orders", 0, 210, 250), Range("tpch.orders", 2, 0, 30),
    ]


def test_nothing_new_means_no_ranges():
    assert plan_ranges(DS, {0: 5}, {0: 5}) == []


def test_run_key_names_dataset_topic_partition_and_range():
    assert Range("tpch.orders", 2, 0, 30).run_key("orders") == "orders|tpch.orders|2|0-30"


def test_cursor_round_trip():
    assert parse_cursor(None) == {}
    assert parse_cursor('{"0": 12, "3": 4}') == {0: 12, 3: 4}
