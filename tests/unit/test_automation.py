"""Declarative automation is on by default, through a sensor of the code location's own
(``conflux_automation``); ``CONFLUX_AUTOMATION=off`` makes it start STOPPED."""

from __future__ import annotations

import dagster as dg
import pytest

from conflux.core.errors import ConfigError
from conflux.core.settings import Automation, Settings
from conflux.dagster.automation import AUTOMATION_SENSOR, automation_sensor
from conflux.dagster.compile import build_definitions
from pipelines.catalog import DATASETS


@pytest.fixture(autouse=True)
def default_env(monkeypatch):
    # tests/conftest.py turns automation off for the shared test stack; these test the default
    for name in ("CONFLUX_AUTOMATION", "CONFLUX_AUTOMATION_INTERVAL_SECONDS"):
        monkeypatch.delenv(name, raising=False)


def sensor_of(defs: dg.Definitions) -> dg.AutomationConditionSensorDefinition:
    [sensor] = [s for s in defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    return sensor


def automated(defs: dg.Definitions, sensor: dg.SensorDefinition) -> set[str]:
    graph = defs.get_repository_def().asset_graph
    return {k.to_user_string() for k in sensor.asset_selection.resolve(graph)
            if graph.get(k).automation_condition is not None}


def test_the_platform_evaluates_automation_by_default():
    defs = build_definitions(DATASETS)
    sensor = sensor_of(defs)
    assert sensor.name == AUTOMATION_SENSOR
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    # every dataset declared with automation: the joins, and the demo's dimension loads
    assert automated(defs, sensor) == {"revenue_by_nation", "customer_balance", "customer",
                                       "supplier", "nation", "region", "part", "partsupp"}
    # Dagster adds no default_automation_condition_sensor (STOPPED) beside it
    names = [s.name for s in defs.get_repository_def().sensor_defs]
    assert "default_automation_condition_sensor" not in names and AUTOMATION_SENSOR in names


def test_automation_off_makes_the_sensor_start_stopped(monkeypatch):
    monkeypatch.setenv("CONFLUX_AUTOMATION", "off")
    monkeypatch.setenv("CONFLUX_AUTOMATION_INTERVAL_SECONDS", "120")
    sensor = sensor_of(build_definitions(DATASETS))
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED  # can be turned on in the UI
    assert sensor.minimum_interval_seconds == 120


def test_a_projects_own_automation_sensor_keeps_its_assets():
    @dg.asset(automation_condition=dg.AutomationCondition.eager())
    def mine():
        return 1

    theirs = dg.AutomationConditionSensorDefinition("theirs", target=[mine])
    defs = build_definitions(DATASETS, extra=dg.Definitions(assets=[mine], sensors=[theirs]))
    ours = sensor_of(dg.Definitions(sensors=[s for s in defs.sensors if s.name != "theirs"]))
    assert "mine" not in automated(defs, ours) and "revenue_by_nation" in automated(defs, ours)
    defs.get_repository_def()  # Dagster accepts it: no asset targeted by two sensors


def test_settings():
    assert Automation.from_env({}) == Automation(enabled=True, interval_seconds=30)
    env = {"CONFLUX_AUTOMATION": "OFF", "CONFLUX_AUTOMATION_INTERVAL_SECONDS": "60"}
    assert Settings.from_env(env).automation == Automation(False, 60)
    assert automation_sensor(settings=Automation(False, 45)).minimum_interval_seconds == 45


@pytest.mark.parametrize("env, message", [
    ({"CONFLUX_AUTOMATION": "maybe"}, "must be 'on' or 'off'"),
    ({"CONFLUX_AUTOMATION_INTERVAL_SECONDS": "2"}, "at least 5"),
    ({"CONFLUX_AUTOMATION_INTERVAL_SECONDS": "half a minute"}, "whole number of seconds"),
])
def test_bad_settings_are_refused_with_the_variable_named(env, message):
    with pytest.raises(ConfigError, match=message) as error:
        Automation.from_env(env)
    assert next(iter(env)) in str(error.value)


def test_the_demo_streams_late_orders_go_to_one_earlier_day_of_the_demo():
    import pandas as pd

    from pipelines.demo.producer import DEMO_START, late_to_one_day, live_orders

    first = pd.Timestamp(DEMO_START)
    day = live_orders(first + pd.Timedelta(days=6), 150, 1, seed=3, late=0.0)
    moved = late_to_one_day(day, first, seed=3)
    dates = moved["o_orderdate"].value_counts()
    assert len(dates) == 2 and dates.iloc[0] == 147  # 2 % late, all to one day
    late = min(dates.index)
    assert first.date() <= late < (first + pd.Timedelta(days=6)).date()  # a day already streamed
    opening = live_orders(first, 150, 1, seed=3, late=0.0)
    assert late_to_one_day(opening, first, seed=3).equals(opening)
