"""Freshness and consumer lag on the live test platform: while orders flow, Dagster's freshness
check on ``orders`` passes and lag is 0; with the Kafka sensor stopped, `conflux lag` shows the
records waiting and the check fails once the 30 s window passes; turned back on, the sensor
catches up and the check passes again — all evaluated by Dagster's freshness-check sensor. Each
change is also posted to the configured webhook (a receiver on loopback), linking to the asset."""

import time

import dagster as dg

from conflux.cli import dagster_api as api
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from conflux.observe.freshness_checks import CHECK_NAME
from conflux.observe.notify import EVERY_S
from tests.live import evaluation_after, lag_of, stop_sensor, wait_for_lag

SENSOR = "orders__kafka"


def publish_orders(kafka, first_key: int, n: int) -> None:
    df = TpchGenerator(0.001, seed=8).orders().head(n).assign(
        o_orderkey=range(first_key, first_key + n))
    kafka.send_json("tpch.orders", [(str(r["o_orderkey"]).encode(), r, event_headers())
                                    for r in json_rows(df)])


def wait_for_check(url: str, *, after: float, success: bool) -> dict:
    """The first freshness evaluation of orders newer than ``after`` with the given outcome."""
    return evaluation_after(url, "orders", CHECK_NAME, after,
                            lambda e: e["success"] is success, f"with success={success}")


def test_freshness_and_lag_follow_the_kafka_sensor(webserver, kafka, instance, capsys, webhook):
    url = webserver.settings.dagster_url
    page = f"{url}/assets/orders"
    publish_orders(kafka, 94_000_001, 20)
    assert wait_for_lag(capsys, "orders")["sensor_status"] == "RUNNING"
    applied = time.time()
    flowing = wait_for_check(url, after=applied, success=True)
    assert flowing["severity"] == "WARN"
    [obs] = instance.fetch_observations(dg.AssetKey("orders"), limit=1).records
    assert "conflux/lag_records" in obs.asset_observation.metadata, "the sensor records lag"

    mark = webhook.mark(settle_s=2 * EVERY_S)  # notifications queued before this test are in
    try:
        stopped = time.time()
        stop_sensor(url, SENSOR)
        publish_orders(kafka, 94_000_101, 30)
        row = lag_of(capsys, "orders")
        assert (row["lag"], row["sensor_status"]) == (30, "STOPPED")
        assert sum(p["end"] - p["cursor"] for p in row["partitions"]) == 30
        wait_for_check(url, after=stopped, success=False)
        webhook.wait_for("Not catching up: orders", "no observation", page, after=mark)
        webhook.wait_for(f"Check failing: orders {CHECK_NAME}", f"{page}?view=checks", after=mark)
    finally:
        assert api.start_sensor(url, SENSOR) == "RUNNING"
    assert wait_for_lag(capsys, "orders")["sensor_status"] == "RUNNING"
    wait_for_check(url, after=time.time(), success=True)
    webhook.wait_for("Caught up again: orders", page, after=mark)
    webhook.wait_for(f"Check passing again: orders {CHECK_NAME}", page, after=mark)
