"""The metrics endpoint of the test stack (``conflux-metrics``), scraped and parsed with
prometheus-client's own parser while orders flow: applied records and dead letters by reason
go up, lag returns to 0, tick and micro-batch histograms fill, check states and run outcomes
are there."""

import time
import urllib.request

import dagster as dg
from prometheus_client.parser import text_string_to_metric_families

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator


def scrape(url: str) -> dict:
    """{family name: {(sample name, sorted labels): value}}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)}


def value(found: dict, family: str, sample: str, **labels) -> float | None:
    return found.get(family, {}).get((sample, tuple(sorted(labels.items()))))


def test_metrics_follow_the_events(stack, kafka, instance):
    url = stack.settings.metrics_url
    before = scrape(url)
    assert value(before, "conflux_up", "conflux_up", source="dagster") == 1
    assert value(before, "conflux_up", "conflux_up", source="kafka") == 1
    applied0 = value(before, "conflux_records_applied", "conflux_records_applied_total",
                     dataset="orders")
    dead0 = value(before, "conflux_dead_letters", "conflux_dead_letters_total",
                  dataset="orders", reason="INVALID_JSON") or 0
    batches0 = value(before, "conflux_microbatch_duration_seconds",
                     "conflux_microbatch_duration_seconds_count", dataset="orders")
    assert applied0 is not None and batches0 is not None

    # a run recorded in the instance, as every launched run is
    @dg.op
    def probe():
        return 1

    @dg.job(name="metrics_probe_job")
    def probe_job():
        probe()

    assert probe_job.execute_in_process(instance=instance).success

    df = TpchGenerator(0.001, seed=21).orders().head(25).assign(
        o_orderkey=range(95_000_001, 95_000_026))
    kafka.send_json("tpch.orders", [(str(r["o_orderkey"]).encode(), r, event_headers())
                                    for r in json_rows(df)])
    kafka.send_raw("tpch.orders", [(b"95000099", b"{not json", [])])

    deadline, seen = time.monotonic() + 60, []
    while True:
        now = scrape(url)
        applied = value(now, "conflux_records_applied", "conflux_records_applied_total",
                        dataset="orders")
        dead = value(now, "conflux_dead_letters", "conflux_dead_letters_total",
                     dataset="orders", reason="INVALID_JSON") or 0
        lag = sum(v for (_, labels), v in now["conflux_consumer_lag_records"].items()
                  if ("dataset", "orders") in labels)
        seen.append((applied, dead, lag))
        if applied >= applied0 + 26 and dead >= dead0 + 1 and lag == 0:
            break
        assert time.monotonic() < deadline, f"(applied, dead, lag) over time: {seen}"
        time.sleep(1)

    assert len(now["conflux_consumer_lag_records"]) >= 3 * 3  # 3 datasets × 3 partitions
    assert 0 <= value(now, "conflux_seconds_since_caught_up", "conflux_seconds_since_caught_up",
                      dataset="orders") < 60
    assert value(now, "conflux_sensor_running", "conflux_sensor_running", dataset="orders") == 1
    for name in ("orders", "lineitem", "customer_ledger"):  # 0 unless a run owes a range
        assert value(now, "conflux_unsettled_records", "conflux_unsettled_records",
                     dataset=name) >= 0
    ticks = now["conflux_sensor_tick_duration_seconds"]
    count = ticks[("conflux_sensor_tick_duration_seconds_count", (("dataset", "orders"),))]
    assert count > 0
    assert ticks[("conflux_sensor_tick_duration_seconds_bucket",
                  (("dataset", "orders"), ("le", "+Inf")))] == count
    assert value(now, "conflux_microbatch_duration_seconds",
                 "conflux_microbatch_duration_seconds_count", dataset="orders") > batches0
    assert value(now, "conflux_runs", "conflux_runs", job="metrics_probe_job",
                 status="SUCCESS") >= 1
    # the freshness check is evaluated by its sensor every few seconds
    while value(now, "conflux_check_passed", "conflux_check_passed", dataset="orders",
                check="freshness_check") is None:
        assert time.monotonic() < deadline + 30, "no freshness_check state for orders"
        time.sleep(2)
        now = scrape(url)
    assert value(now, "conflux_check_passed", "conflux_check_passed", dataset="orders",
                 check="freshness_check") in (0, 1)
