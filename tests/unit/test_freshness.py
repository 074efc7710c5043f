"""Freshness expectations derived from declarations, and their Dagster checks (no services)."""

import dataclasses
import datetime as dt

import dagster as dg
import pytest

from conflux.core.errors import DeclarationError
from pipelines.catalog import CUSTOMER, CUSTOMER_BALANCE, DATASETS, ORDERS, REVENUE_BY_NATION
from conflux.observe.freshness import cron_period, expectation
from conflux.observe.freshness_checks import SENSOR_NAME, build_freshness, evaluate, freshness_policy
from conflux.event.offsets import TickState, dump_state, lag_by_partition, observe_every_s, parse_state
from conflux.event.sensor import lag_observation

MIN = dt.timedelta(minutes=1)


@pytest.mark.parametrize("cron, period", [
    ("* * * * *", MIN), ("*/15 * * * *", 15 * MIN), ("30 * * * *", 60 * MIN),
    ("0 */6 * * *", 6 * 60 * MIN), ("0 2 * * *", dt.timedelta(days=1)),
    ("0 2 * * 1", dt.timedelta(weeks=1)),
])
def test_cron_periods_of_regular_schedules(cron, period):
    assert cron_period(cron) == period


@pytest.mark.parametrize("cron", ["0 2 1 * *", "0,30 * * * *", "* *", "0 2 * * 1-5"])
def test_irregular_crons_are_refused(cron):
    with pytest.raises(ValueError, match="cron"):
        cron_period(cron)


def test_event_datasets_are_sub_minute_by_default_and_evaluated_at_any_time():
    exp = expectation(ORDERS)
    assert exp.lower_bound == dt.timedelta(seconds=30) and exp.deadline_cron is None


def test_batch_datasets_derive_theirs_from_the_schedule_they_really_run_on():
    daily = expectation(CUSTOMER)  # "0 2 * * *": updated in the day before each 02:00
    assert (daily.deadline_cron, daily.lower_bound, daily.derived_from) == (
        "0 2 * * *", dt.timedelta(days=1), "schedule")
    # partitioned: the declared "30 * * * *" runs daily at 00:30 (the latest day's partition)
    assert expectation(REVENUE_BY_NATION).deadline_cron == "30 0 * * *"
    declared = expectation(CUSTOMER_BALANCE)  # declares 30 min: within 30 min of now
    assert (declared.lower_bound, declared.deadline_cron) == (30 * MIN, None)
    quarter = expectation(dataclasses.replace(CUSTOMER_BALANCE, freshness=None))
    assert (quarter.lower_bound, quarter.deadline_cron) == (15 * MIN, "*/15 * * * *")


def test_no_schedule_and_no_declaration_means_no_expectation_and_odd_crons_ask_for_one():
    assert expectation(dataclasses.replace(CUSTOMER, schedule=None)) is None
    with pytest.raises(DeclarationError, match="customer.*declare freshness="):
        expectation(dataclasses.replace(CUSTOMER, schedule="0 2 1 * *"))


def test_batch_datasets_get_dagsters_freshness_policy_event_datasets_a_runless_check():
    assert freshness_policy(CUSTOMER) == dg.FreshnessPolicy.cron(
        deadline_cron="0 2 * * *", lower_bound_delta=dt.timedelta(days=1))
    assert freshness_policy(CUSTOMER_BALANCE) == dg.FreshnessPolicy.time_window(
        fail_window=30 * MIN)
    assert freshness_policy(ORDERS) is None
    with pytest.raises(DeclarationError, match="at least a minute"):
        freshness_policy(dataclasses.replace(CUSTOMER, freshness=dt.timedelta(seconds=30)))
    checks, sensor = build_freshness(DATASETS)
    keys = {k.asset_key.to_user_string(): k.name for c in checks for k in c.check_keys}
    assert keys == {d.name: "freshness_check" for d in DATASETS if d.mode == "event"}
    assert sensor.name == SENSOR_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_an_event_dataset_is_fresh_while_its_last_update_is_within_the_window():
    fresh = evaluate(ORDERS, updated=1_000.0, now=1_029.0)
    assert fresh.passed and fresh.check_name == "freshness_check"
    assert fresh.metadata["dagster/last_updated_timestamp"].value == 1_000.0
    stale = evaluate(ORDERS, updated=1_000.0, now=1_045.0)
    assert not stale.passed and stale.metadata["dagster/overdue_seconds"].value == 15.0
    assert stale.severity == dg.AssetCheckSeverity.WARN
    assert not evaluate(ORDERS, updated=None, now=1_045.0).passed


def test_lag_is_what_lies_between_cursor_and_end_offsets():
    lag = lag_by_partition({"t": {0: 5, 1: 9}}, {"t": {0: 8, 1: 9, 2: 4}})
    assert lag == {"t[0]": 3, "t[1]": 0, "t[2]": 4}


def test_observations_say_how_current_only_when_caught_up_and_are_rate_limited():
    ds = dataclasses.replace(ORDERS, name="obs_probe")
    assert observe_every_s(ds) == 10.0
    now = 1_700_000_000.0
    [caught_up], state = lag_observation(ds, {"t[0]": 0}, now, TickState(), now)
    assert caught_up.metadata["dagster/last_updated_timestamp"].value == now
    assert caught_up.metadata["conflux/lag_records"].value == 0
    assert state.observed_at == now
    # within 10 s of the last: nothing, and the state is unchanged
    assert lag_observation(ds, {"t[0]": 0}, now + 1, state, now + 1) == ([], state)
    # the rate limit lives in the state (the sensor cursor), so it survives a restart
    assert lag_observation(ds, {"t[0]": 0}, now + 1, parse_state(dump_state(state)), now + 1)[0] == []
    [behind], _ = lag_observation(ds, {"t[0]": 7, "t[1]": 2}, None, state, now + 1, force=True)
    assert "dagster/last_updated_timestamp" not in behind.metadata
    assert behind.metadata["conflux/lag_records"].value == 9
    assert lag_observation(ds, {"t[0]": 0}, None, state, now + 11)[0] != []
