"""Freshness and consumer lag on the live test platform: while orders flow, Dagster's freshness
check on ``orders`` passes and lag is 0; with the Kafka sensor stopped, `conflux lag` shows the
records waiting and the check fails once the 30 s window passes; turned back on, the sensor
catches up and the check passes again — all evaluated by Dagster's freshness-check sensor."""

import json
import time

import dagster as dg
import pytest

from conflux import dagster_api as api
from conflux.cli import main
from conflux.demo.producer import event_headers, json_rows
from conflux.demo.tpch import TpchGenerator
from pipelines.freshness_path import CHECK_NAME
from tests.live import stop_sensor

SENSOR = "orders__kafka"


def publish_orders(kafka, first_key: int, n: int) -> None:
    df = TpchGenerator(0.001, seed=8).orders().head(n).assign(
        o_orderkey=range(first_key, first_key + n))
    kafka.send_json("tpch.orders", [(str(r["o_orderkey"]).encode(), r, event_headers())
                                    for r in json_rows(df)])


def wait_for_check(url: str, *, after: float, success: bool, timeout: float = 180) -> dict:
    """The first freshness evaluation of orders newer than ``after`` with the given outcome."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen = [e for e in api.check_executions(url, "orders", CHECK_NAME)
                if e["evaluation"] and e["evaluation"]["timestamp"] > after]
        match = [e for e in seen if e["evaluation"]["success"] is success]
        if match:
            return match[0]
        time.sleep(2)
    pytest.fail(f"no freshness evaluation of orders with success={success} after {after} "
                f"within {timeout:g}s; seen: {seen[:3]}")


def lag_of_orders(capsys) -> dict:
    assert main(["lag", "orders", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    return row


def wait_for_lag(capsys, expected: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (row := lag_of_orders(capsys))["lag"] != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"orders lag is {row['lag']}, not {expected}, after {timeout:g}s")
        time.sleep(1)
    assert row["sensor_status"] == "RUNNING"


def test_freshness_and_lag_follow_the_kafka_sensor(webserver, kafka, instance, capsys):
    url = webserver.settings.dagster_url
    publish_orders(kafka, 94_000_001, 20)
    wait_for_lag(capsys, 0)
    applied = time.time()
    flowing = wait_for_check(url, after=applied, success=True)
    assert flowing["evaluation"]["severity"] == "WARN"
    [obs] = instance.fetch_observations(dg.AssetKey("orders"), limit=1).records
    assert "conflux/lag_records" in obs.asset_observation.metadata, "the sensor records lag"

    try:
        stopped = time.time()
        stop_sensor(url, SENSOR)
        publish_orders(kafka, 94_000_101, 30)
        row = lag_of_orders(capsys)
        assert (row["lag"], row["sensor_status"]) == (30, "STOPPED")
        assert sum(p["end"] - p["cursor"] for p in row["partitions"]) == 30
        wait_for_check(url, after=stopped, success=False)
    finally:
        assert api.start_sensor(url, SENSOR) == "RUNNING"
    wait_for_lag(capsys, 0)
    wait_for_check(url, after=time.time(), success=True)
