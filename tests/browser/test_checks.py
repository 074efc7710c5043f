"""The dead-letter and freshness checks in the asset's Checks tab, as the live sensors evaluate
them: one passing and one failing each, and what the UI shows equals what the data says —
dead letters and records counted from Kafka offsets, freshness from the Kafka sensor's state."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from conflux.cli import dagster_api as api
from pipelines.demo.producer import event_headers, json_rows, tpch_tables
from pipelines.demo.tpch import ledger
from pipelines.catalog import CUSTOMER_LEDGER, LINEITEM
from conflux.observe.dlq import evaluate
from conflux.observe.dlq_replay import window_counts
from tests.live import evaluation_after, lag_of, stop_sensor, wait_for_lag

DLQ_CHECK, FRESHNESS_CHECK = "dead_letters", "freshness_check"
LIST_STATUSES = {"Succeeded", "Failed", "Not evaluated", "Not Evaluated", "In progress",
                 "Skipped", "Execution failed"}


def metadata(evaluation: dict) -> dict:
    return {m["label"]: m.get("intValue", m.get("floatValue", m.get("timestamp")))
            for m in evaluation["metadataEntries"]}


def checks_tab(page, asset: str, check: str) -> dict[str, str]:
    """The Checks tab of ``asset`` with ``check`` selected: the check's status in the list,
    its latest evaluation's result and description, and the panel's text."""
    page.goto(f"/assets/{asset}?view=checks&checkDetail={check}")
    page.get_by_text("Evaluation result").first.wait_for()
    deadline = time.monotonic() + 30
    while True:  # the list and the evaluation's description render a moment after the result
        lines = [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]
        listed = [lines[i + 1] for i in range(len(lines) - 1)
                  if lines[i] == check and lines[i + 1] in LIST_STATUSES]
        described = lines[lines.index("Latest execution") + 1] != "Evaluation result"
        if (listed and described) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"status": listed[0] if listed else "",  # the list: the check's name, its status
            "result": lines[lines.index("Evaluation result") + 1],
            "description": lines[lines.index("Latest execution") + 1],
            "text": "\n".join(lines[lines.index("Latest execution"):])}


def ledger_events(n: int, first_id: int) -> list[dict]:
    tables = tpch_tables(0.0005, seed=29)
    return list(json_rows(ledger(tables["customer"], seed=29, start_id=first_id).head(n)))


def applied(capsys, name: str, timeout: float = 120) -> float:
    """Wait until the live sensor has applied everything on ``name``'s topics (lag 0); returns
    the time of its newest materialization. The Checks tab shows the latest evaluation only
    when it is newer than that (Dagster ties runless evaluations to the latest
    materialization)."""
    wait_for_lag(capsys, name, 0, timeout)
    with dg.DagsterInstance.get() as instance:
        [newest] = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
    return newest.timestamp


@pytest.mark.timeout(600)
def test_dead_letter_checks_pass_and_fail_as_the_dead_letters_say(page, webserver, kafka, capsys):
    url = webserver.settings.dagster_url
    before = {ds.name: window_counts(ds, kafka) for ds in (CUSTOMER_LEDGER, LINEITEM)}
    lines = tpch_tables(0.0005, seed=43)["lineitem"].head(10).copy()
    lines["l_orderkey"] += 43_000_000
    assert kafka.send_json("tpch.lineitem", [
        (f"{r['l_orderkey']}-{r['l_linenumber']}".encode(), r, event_headers())
        for r in json_rows(lines)]) == 10
    # the audit-critical ledger errors at its first dead letter (error_count=1)
    kafka.send_raw("ledger.customer", [(b"bad-ledger", b'{"event_id": ', event_headers())])
    assert kafka.send_json("ledger.customer", [
        (e["event_id"].encode(), e, event_headers()) for e in ledger_events(5, 43_000)]) == 5
    sent = {CUSTOMER_LEDGER.name: (6, 1), LINEITEM.name: (10, 0)}  # records, bad ones

    for ds, passed in ((CUSTOMER_LEDGER, False), (LINEITEM, True)):
        since = applied(capsys, ds.name)
        evaluation = evaluation_after(url, ds.name, DLQ_CHECK, since, lambda e: True,
                                      "after its records were applied")
        # the data: offsets of the topic and of its DLQ, grown by exactly what was sent
        counts = window_counts(ds, kafka)
        assert (counts.records_in - before[ds.name].records_in,
                counts.dead - before[ds.name].dead) == sent[ds.name], ds.name
        verdict = evaluate(counts, ds.dlq)
        assert verdict.passed is passed, (ds.name, counts)
        assert evaluation["success"] is passed
        assert passed or evaluation["severity"] == "ERROR"  # the ledger's error_count=1
        meta = metadata(evaluation)
        assert (meta["conflux/dead_lettered"], meta["conflux/records_in"]) == \
            (counts.dead, counts.records_in)
        shown = checks_tab(page, ds.name, DLQ_CHECK)
        assert shown["description"] == (f"{counts.dead} dead letter(s) / {counts.records_in} "
                                        f"record(s) in the last 1h: {verdict.summary}"), shown
        assert (shown["status"], shown["result"]) == (
            ("Succeeded", "Passed") if passed else ("Failed", "Failed")), shown


@pytest.mark.timeout(600)
def test_freshness_checks_pass_and_fail_as_the_sensors_state_says(page, webserver, kafka, capsys):
    url = webserver.settings.dagster_url
    sensor = f"{CUSTOMER_LEDGER.name}__kafka"
    try:
        stopped = time.time()
        stop_sensor(url, sensor)
        assert kafka.send_json("ledger.customer", [
            (e["event_id"].encode(), e, event_headers()) for e in ledger_events(3, 44_000)]) == 3
        window = CUSTOMER_LEDGER.freshness.total_seconds()
        stale = evaluation_after(url, CUSTOMER_LEDGER.name, FRESHNESS_CHECK, stopped,
                                 lambda e: not e["success"], "failing", timeout=window + 90)
        fresh = evaluation_after(url, "orders", FRESHNESS_CHECK, stale["timestamp"] - 10,
                                 lambda e: True, "after the ledger's")
        # the data: the ledger's records wait behind a stopped sensor; orders' wait for nothing
        lag = lag_of(capsys, CUSTOMER_LEDGER.name)
        assert lag["lag"] >= 3 and lag["sensor_status"] == "STOPPED"
        orders_lag = lag_of(capsys, "orders")
        assert orders_lag["lag"] == 0 and orders_lag["sensor_status"] == "RUNNING"
        assert fresh["success"] is True

        shown = checks_tab(page, CUSTOMER_LEDGER.name, FRESHNESS_CHECK)
        assert (shown["status"], shown["result"]) == ("Failed", "Failed"), shown
        assert "dagster/overdue_seconds" in shown["text"]
        overdue = metadata(stale)["dagster/overdue_seconds"]
        assert overdue > 0
        shown = checks_tab(page, "orders", FRESHNESS_CHECK)
        assert (shown["status"], shown["result"]) == ("Succeeded", "Passed"), shown
        assert "current as of" in shown["description"]
    finally:
        assert api.start_sensor(url, sensor) == "RUNNING"
