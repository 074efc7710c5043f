"""Operations as an operator runs them in the Dagster UI, each changing the stored data as it
says (read from the lake before and after):

* from the launchpad of ``orders__reconcile_job``, ``orders__replay_job`` and
  ``orders__dlq_replay_job``: the scaffold (every default filled in) with the fields to change
  set in the config editor, *Launch Run*, the run's page showing Success — a lost day repaired
  from ``ops.orders``; a lost day replayed from Kafka since a time; dead letters re-driven
  after their contract was registered, landing in the lake;
* *Materialize…* on a partition of the event dataset ``orders`` (its asset page): the day is
  repaired from its batch source;
* *Execute* on the ``matches_batch_source`` check of a divergent ``orders``: the check fails in
  the Checks tab, with the counts, and the Delta table is unchanged (no commit, same rows).

Screenshots: ``$CONFLUX_HOME/screenshots/<test>-<outcome>.png`` (``conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import re
import time

import dagster as dg
import pandas as pd
import psycopg
import pytest

from conflux.batch.fallback import CHECK_NAME
from conflux.cli import dagster_api as api, main
from conflux.cli.jobs import JobRun, follow
from conflux.io.kafka import KafkaResource
from pipelines.catalog import ORDERS
from pipelines.demo.producer import build_stream
from tests import platform_data
from tests.browser.test_backfill import materialize_dialog
from tests.browser.test_checks import checks_tab
from tests.delta import read_delta
from tests.integration.test_operations import (TIMEOUT, _dead_letters, keys_on, order_days,
                                               source_keys)

pytestmark = pytest.mark.timeout(600)
RUN_DONE = {"Success", "Failure", "Canceled"}


@pytest.fixture(scope="module")
def data(webserver):
    """The small TPC-H data in ``ops`` and in the lake (``tests/platform_data.py``), without
    reporting it to Dagster: these tests materialize what they look at."""
    yield platform_data.load(webserver.settings, materialized=False)
    platform_data.clear(webserver.settings)


def free_days(data, n: int) -> list[str]:
    """``n`` days without orders in the data (the tests' own orders go there)."""
    taken = set(order_days(data))
    days = (str(dt.date(1992, 2, 1) + dt.timedelta(days=i)) for i in range(3000))
    return [day for day in days if day not in taken][:n]


def send_orders(data, day: str, first_key: int, n: int, contract: str | None = None) -> list[int]:
    """``n`` orders of ``day`` (the data's first, new keys) published to ``tpch.orders`` with
    ``contract`` in their header; returns their keys."""
    keys = list(range(first_key, first_key + n))
    df = data["tables"]["orders"].head(n).assign(o_orderkey=keys,
                                                 o_orderdate=dt.date.fromisoformat(day))
    records = [(r.key, r.value, r.headers) for r in build_stream("tpch.orders", df, contract)]
    KafkaResource.from_env(data["settings"]).send_raw("tpch.orders", records)
    return keys


def lose_a_day(data, i: int) -> tuple[str, list[int]]:
    """The ``i``-th day of orders lost from the lake; returns it and the keys ops.orders holds
    for it."""
    day = order_days(data)[i]
    data["lake"].rewrite("orders", day, lambda current: None)
    assert keys_on(data["lake"], day) == []
    return day, source_keys(data, day)


def wait_for_keys(lake, day: str, keys: list[int], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not set(keys) <= set(keys_on(lake, day)):
        assert time.monotonic() < deadline, f"{what}: {day} of orders lacks {keys} after {timeout}s"
        time.sleep(1)


def launch_from_launchpad(page, job: str, values: dict[str, str]) -> tuple[str, str]:
    """The job's launchpad: its scaffold has every default filled in; the lines of ``values``'
    fields are changed (the YAML after ``field:``) and the config pasted into the editor, then
    *Launch Run*. Returns the run id (the run's page opens) and the scaffold."""
    page.goto(f"/locations/conflux/jobs/{job}/playground")
    page.locator(".CodeMirror").first.wait_for()
    page.get_by_text("No errors", exact=True).wait_for()
    scaffold = page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")
    config = scaffold
    for name, value in values.items():
        config, found = re.subn(rf"(?m)^(\s+{name}): .*$", rf"\g<1>: {value}", config, count=1)
        assert found, f"no field {name} in the scaffold of {job}:\n{scaffold}"
    page.locator(".CodeMirror").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(config)
    page.get_by_text("No errors", exact=True).wait_for()
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1], scaffold


def run_shown(page, url: str, run_id: str, search: str, *logged: str) -> JobRun:
    """Follow the run (into Dagster's retry, if it failed before it started) to its end; its
    page shows Success after its short id and, its events filtered by ``search``, each line of
    ``logged``. Returns the run, its op's log lines read."""
    run = follow(url, JobRun(run_id), timeout=TIMEOUT, report=lambda line: None)
    page.goto(f"/runs/{run.run_id}")
    deadline = time.monotonic() + 30
    while (status := run_header_status(page, run.run_id)) not in RUN_DONE:
        assert time.monotonic() < deadline, f"the page of run {run.run_id} shows {status!r}"
        time.sleep(0.5)
    assert (status, run.status) == ("Success", "SUCCESS"), (run.failures, run.lines)
    page.locator("input[placeholder^='Filter']").fill(search)
    for line in logged:
        assert line in run.lines, (line, run.lines)
        page.get_by_text(line, exact=True).wait_for()
    return run


def run_header_status(page, run_id: str) -> str:
    lines = [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]
    short = run_id[:8]
    return lines[lines.index(short) + 1] if short in lines[:-1] else ""


def compared_line(days: int, missing: int, extra: int = 0, repaired: int = 0) -> str:
    """What a reconcile of ``orders`` logs (no row changed)."""
    return (f"orders: {days} partition(s) compared, {{'missing': {missing}, 'extra': {extra}, "
            f"'changed': 0}}; repaired {repaired} partition(s)")


def launched_run(page) -> str:
    """The run id in the toast the UI shows after launching ("Launched run <id> View")."""
    link = page.locator("a[href^='/runs/']", has_text="View").first
    link.wait_for()
    return link.get_attribute("href").rsplit("/", 1)[1]


def test_the_reconcile_job_launched_from_the_launchpad_repairs_a_lost_day(data, page):
    lake, url = data["lake"], data["url"]
    day, expected = lose_a_day(data, 3)

    run_id, scaffold = launch_from_launchpad(page, "orders__reconcile_job",
                                             {"start": f"'{day}'", "end": f"'{day}'"})
    for default in ("start: ''", "end: ''", "dry_run: false", "remove_extra: true"):
        assert default in scaffold, scaffold
    run_shown(page, url, run_id, "compared", compared_line(1, len(expected), repaired=1))
    assert keys_on(lake, day) == expected


def test_a_replay_launched_from_the_launchpad_restores_a_lost_day_from_kafka(data, page):
    lake, url = data["lake"], data["url"]
    day = free_days(data, 1)[0]
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    keys = send_orders(data, day, 94_000_001, 12)
    wait_for_keys(lake, day, keys, "the live sensor")
    lake.rewrite("orders", day, lambda current: None)  # lost, after it had arrived
    assert keys_on(lake, day) == []

    run_id, scaffold = launch_from_launchpad(
        page, "orders__replay_job", {"since": f"'{since.isoformat(timespec='seconds')}'"})
    assert "since: 1h" in scaffold and "dry_run: false" in scaffold, scaffold
    n = len(keys)
    run = run_shown(page, url, run_id, "applied",
                    f"orders: applied {n} record(s): {n} valid, 0 dead-lettered")
    assert (run.report["records"], run.report["gaps"]) == (n, []), run.report
    assert keys_on(lake, day) == keys


def test_dead_letters_replayed_from_the_launchpad_land_once_their_contract_is_known(data, page):
    """A producer publishes with contract ``orders@1`` before the registry holds it: the sensor
    dead-letters the records (UNKNOWN_SCHEMA). The fix — the contracts registered — then a
    dead-letter replay by reason from the launchpad: the sensor lands them in the lake."""
    lake, url, settings = data["lake"], data["url"], data["settings"]
    kafka = KafkaResource.from_env(settings)
    day = free_days(data, 2)[1]
    since_ms = int(time.time() * 1000) - 1000
    with psycopg.connect(settings.postgres_url) as conn:
        conn.execute("delete from registry.versions where subject = %s", (ORDERS.subject,))
    try:
        # a tick reads the registry when it starts: one started before the delete would still
        # apply the records; publish once a tick has started since
        wait_for_tick_after(url, time.time())
        keys = send_orders(data, day, 95_000_001, 3, contract=f"{ORDERS.subject}@1")
        deadline = time.monotonic() + 150
        while len(letters := _dead_letters(kafka, since_ms)) < len(keys):
            assert time.monotonic() < deadline, (
                f"the sensor did not dead-letter the records in 150 s; {len(letters)} dead "
                f"letters, {keys_on(lake, day)} landed, {sensor_story(url)}")
            time.sleep(1)
        assert {x.code for x in letters} == {"UNKNOWN_SCHEMA"}, letters
        assert keys_on(lake, day) == []
    finally:
        assert main(["contracts", "register"]) == 0  # the fix (and the stack as it was)

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_ms / 1000))
    run_id, scaffold = launch_from_launchpad(
        page, "orders__dlq_replay_job", {"reasons": "[UNKNOWN_SCHEMA]", "since": f"'{since}'"})
    assert "reasons: []" in scaffold and "again: false" in scaffold, scaffold
    run = run_shown(page, url, run_id, "re-published", "  UNKNOWN_SCHEMA: selected 3, already "
                    "replayed 0, unroutable 0, re-published 3")
    assert (run.report["selected"], run.report["published"]) == (3, 3), run.report
    wait_for_keys(lake, day, keys, "the replayed dead letters")
    assert keys_on(lake, day) == keys


TICKS = """
query($sel: SensorSelector!) {
  sensorOrError(sensorSelector: $sel) {
    ... on Sensor { sensorState { status ticks(limit: 3) { status timestamp cursor
                                                            error { message } } } }
  }
}"""


def _ticks(url: str, name: str) -> dict:
    sel = api._selector("sensor", name, api.LOCATION, url)
    return api.graphql(url, TICKS, sel)["sensorOrError"]["sensorState"]


def wait_for_tick_after(url: str, since: float, name: str = "orders__kafka",
                        timeout: float = 60) -> None:
    """Until a tick of sensor ``name`` has started after ``since`` (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while not any(t["timestamp"] > since for t in _ticks(url, name)["ticks"]):
        assert time.monotonic() < deadline, f"no tick of {name} within {timeout}s"
        time.sleep(0.5)


def sensor_story(url: str, name: str = "orders__kafka") -> str:
    """The sensor's status and last ticks, for a failure message."""
    try:
        state = _ticks(url, name)
    except Exception as exc:  # a diagnostic must not hide the failure it explains
        return f"sensor state unavailable ({exc})"
    ticks = [(t["status"], time.strftime("%H:%M:%S", time.gmtime(t["timestamp"])),
              (t["error"] or {}).get("message", "")[:300]) for t in state["ticks"]]
    return f"sensor {name} {state['status']}, last ticks {ticks}"


def test_materializing_a_partition_from_the_asset_page_repairs_it(data, page):
    lake, url = data["lake"], data["url"]
    day, expected = lose_a_day(data, 4)

    dialog = materialize_dialog(page, "orders", day)
    dialog.get_by_text("1 partition", exact=True).wait_for()
    dialog.get_by_role("button", name="Launch 1 run").click()
    # one run: the day repaired, then the asset's check in the same run compares that day only
    run = run_shown(page, url, launched_run(page), "compared",
                    compared_line(1, len(expected), repaired=1), compared_line(1, 0))

    assert keys_on(lake, day) == expected
    with dg.DagsterInstance.get() as instance:
        [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("orders"), asset_partitions=[day]), limit=1).records
    assert record.run_id == run.run_id
    meta = record.asset_materialization.metadata
    assert meta["conflux/materialized_by"].value == "repair from the batch source"
    assert meta["conflux/missing"].value == len(expected)


def test_executing_the_check_on_a_divergent_dataset_fails_and_changes_nothing(data, page):
    lake, url = data["lake"], data["url"]
    lose_a_day(data, 5)  # orders diverges from ops.orders
    version = lake.version("orders")
    before = read_delta(lake.uri("orders")).to_pandas()
    # what differs, from the rows: the lost day's, and those of days only Kafka brought
    stored, source = set(before.o_orderkey), set(data["tables"]["orders"].o_orderkey)
    missing, extra = len(source - stored), len(stored - source)
    days = set(order_days(data)) | set(lake.partitions("orders"))
    assert missing > 0

    page.goto(f"/assets/orders?view=checks&checkDetail={CHECK_NAME}")
    page.get_by_text("Read-only: executing it never writes").first.wait_for()
    page.locator("button").filter(has_text=re.compile(r"^Execute$")).click()
    # the run succeeds (the verdict is the check's), comparing every day, repairing none
    run_shown(page, url, launched_run(page), "compared",
              compared_line(len(days), missing, extra))

    shown = checks_tab(page, "orders", CHECK_NAME)
    assert (shown["status"], shown["result"]) == ("Failed", "Failed"), shown
    lines = shown["text"].splitlines()
    for label, value in (("conflux/missing", missing), ("conflux/extra", extra),
                         ("conflux/repaired", "false")):
        assert lines[lines.index(label) + 1] == str(value), shown["text"]

    # nothing was written: no commit since but the lake's own compaction (its hourly schedule
    # may run meanwhile), and the same rows
    commits = [c for c in lake.history("orders") if c["version"] > version]
    assert all(c["operation"] == "OPTIMIZE" for c in commits), commits
    after = read_delta(lake.uri("orders")).to_pandas()
    key = ["o_orderkey"]
    pd.testing.assert_frame_equal(after.sort_values(key, ignore_index=True),
                                  before.sort_values(key, ignore_index=True))
