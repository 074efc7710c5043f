from pipelines.contracts import Order
from conflux.core.declarations import EventDataset
from conflux.event.offsets import (TickState, dump_state, parse_state, Range, advance, dump_cursor, next_batch, parse_cursor, plan_ranges,
                                  run_key)

DS = EventDataset(name="orders", contract=Order, key=("o_orderkey",), event_time="o_orderdate",
                  topics=("tpch.orders", "tpch.orders.eu"), max_records_per_run=100)


def test_ranges_start_at_the_cursor_and_cover_up_to_the_end_without_gaps():
    ranges = plan_ranges(DS, {"tpch.orders": {0: 10, 1: 0}},
                         {"tpch.orders": {0: 250, 1: 0, 2: 30}, "tpch.orders.eu": {0: 5}})
    assert ranges == [
        Range("tpch.orders", 0, 10, 110), Range("tpch.orders", 0, 110, 210),
        Range("tpch.orders", 0, 210, 250), Range("tpch.orders", 2, 0, 30),
        Range("tpch.orders.eu", 0, 0, 5),
    ]


def test_nothing_new_means_no_ranges():
    assert plan_ranges(DS, {"tpch.orders": {0: 5}}, {"tpch.orders": {0: 5}}) == []


def test_a_partition_added_later_is_read_from_its_start():
    cursor = {"tpch.orders": {0: 5, 1: 5}}
    assert plan_ranges(DS, cursor, {"tpch.orders": {0: 5, 1: 5, 2: 3}}) == [
        Range("tpch.orders", 2, 0, 3)]


def test_run_key_names_dataset_topic_partition_and_range_of_every_range():
    assert run_key("orders", [Range("tpch.orders", 2, 0, 30)]) == "orders|tpch.orders|2|0-30"
    assert run_key("orders", [Range("t", 0, 5, 9), Range("t", 1, 0, 3)]) == "orders|t|0|5-9;t|1|0-3"


def test_one_run_takes_the_first_pending_range_of_each_partition():
    ranges = plan_ranges(DS, {}, {"tpch.orders": {0: 250, 1: 40}})
    assert next_batch(ranges) == [Range("tpch.orders", 0, 0, 100), Range("tpch.orders", 1, 0, 40)]


def test_cursor_advances_exactly_to_the_requested_ends_and_round_trips():
    cursor = advance({"tpch.orders": {0: 10}}, [Range("tpch.orders", 0, 10, 110),
                                                Range("tpch.orders", 1, 0, 7)])
    assert cursor == {"tpch.orders": {0: 110, 1: 7}}
    assert parse_cursor(dump_cursor(cursor)) == cursor
    assert parse_cursor(None) == {}


def test_sensor_state_round_trips_and_reads_the_older_bare_cursor():
    state = TickState(offsets={"t": {0: 5, 2: 9}}, capped=True, caught_up_at=12.5, observed_at=3.0)
    assert parse_state(dump_state(state)) == state
    assert parse_cursor(dump_state(state)) == {"t": {0: 5, 2: 9}}
    # a cursor saved before the state held more than offsets
    assert parse_state(dump_cursor({"t": {1: 4}})) == TickState(offsets={"t": {1: 4}})
    assert parse_state(None) == TickState()
