"""Planning a Kafka replay from offsets_for_times results (pure)."""

import dataclasses

import pytest

from conflux.cli.backfill import parse_time, plan_replay
from conflux.cli import main
from pipelines.catalog import ORDERS

DS = dataclasses.replace(ORDERS, max_records_per_run=100)


def test_ranges_start_at_the_offsets_of_the_time_and_are_cut_into_runs():
    plan = plan_replay(DS, {"tpch.orders": {0: (50, 0, 300), 1: (10, 0, 60), 2: (7, 0, 7)}})
    assert plan.gaps == []
    assert plan.records == 250 + 50
    # one range per partition per run; partition 0 needs three runs of at most 100 records
    assert [[(r.partition, r.start, r.end) for r in run] for run in plan.runs] == [
        [(0, 50, 150), (1, 10, 60)], [(0, 150, 250)], [(0, 250, 300)]]


def test_a_window_starting_before_the_earliest_retained_record_is_a_gap():
    plan = plan_replay(DS, {"tpch.orders": {0: (40, 40, 90), 1: (0, 0, 5)}})
    assert plan.gaps == ["tpch.orders[0] (earliest retained offset 40)"]


def test_times_are_utc_unless_a_zone_is_given():
    assert parse_time("2026-11-28T09:00:00").utcoffset().total_seconds() == 0
    assert parse_time("2026-11-28T09:00:00+01:00").utcoffset().total_seconds() == 3600


@pytest.mark.parametrize("argv, message", [
    (["replay", "customer", "--since", "2026-01-01"], "is a batch dataset"),
    (["replay", "orders", "--since", "soon"], "is neither an ISO date"),
    (["backfill", "orders", "--start", "1995-13-01", "--end", "1995-12-31"], "is not a date"),
])
def test_bad_input_is_refused_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
