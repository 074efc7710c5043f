"""A batch fallback schedule, and a table load's schedule, turned on from the Dagster UI: each
schedule's page shows it stopped, its switch turns it on, the daemon runs it at the next minute
(the test stack's probe location declares them ``* * * * *``), the page's run history shows the
run succeeded, the switch turns it off again — and the lake holds what the sources hold."""

from __future__ import annotations

import re
import time

import pandas as pd
import psycopg
import pytest

from conflux.cli import dagster_api as api
from pipelines.demo.producer import load_ops, tpch_tables
from conflux.io.lake import LakeResource
from conflux.io.postgres import replace_table
from tests.fixtures.minutely import PROBE_NATION, PROBE_ORDERS

PROBE = "conflux_minutely"
SCHEDULES = [f"{PROBE_ORDERS.name}__fallback", f"{PROBE_NATION.name}__schedule"]


def schedule_page(page, name: str):
    """Open ``name``'s page; returns its on/off switch: the checkbox in the "Running" row, drawn
    as a switch by the label around it."""
    page.goto(f"/locations/{PROBE}/schedules/{name}")
    running = page.locator("tr").filter(has=page.get_by_text("Running", exact=True))
    switch = running.locator("label").filter(has=page.locator("input[type=checkbox]"))
    switch.wait_for()
    page.get_by_text("Latest tick").first.wait_for()
    return switch


def is_on(switch) -> bool:
    return switch.locator("input[type=checkbox]").is_checked()


def toggle(page, switch, url: str, name: str, want: str) -> None:
    """Click the switch, then wait until the request behind it is done (the switch is shown
    on, and disabled, while ``startSchedule`` is in flight) and the schedule is ``want``."""
    switch.click()
    checkbox = switch.locator("input[type=checkbox]")
    deadline = time.monotonic() + 30
    while (status := api.schedule_state(url, name, location=PROBE).status) != want:
        assert time.monotonic() < deadline, f"{name} is {status}, not {want}, 30 s after the click"
        time.sleep(0.5)
    page.wait_for_function("([el, on]) => !el.disabled && el.checked === on",
                           arg=[checkbox.element_handle(), want == "RUNNING"])


def run_statuses(page, short_id: str) -> list[str]:
    """The statuses (Success, Failure, ...) in the run history row of ``short_id``: the lines
    of the page after the id, up to the next row's id."""
    lines = [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]
    row = []
    for line in lines[lines.index(short_id) + 1:]:
        if re.fullmatch(r"[0-9a-f]{8}", line):
            break
        row.append(line)
    return [c for c in row if c in {"Success", "Failure", "Canceled", "Started", "Queued"}]


@pytest.fixture
def sources(webserver):
    """The probe's sources: the 25 nations in ops.nation, a table of orders of its own."""
    tables = tpch_tables(0.0004, seed=17)
    pg_url = webserver.settings.postgres_url
    load_ops(pg_url, {"nation": tables["nation"]})
    with psycopg.connect(pg_url) as conn, conn.transaction():
        replace_table(conn, "ops", "probe_orders", tables["orders"], ["o_orderkey"])
    return tables


@pytest.mark.timeout(480)
def test_schedules_turned_on_in_the_ui_run_and_load_their_sources(sources, page, webserver):
    url = webserver.settings.dagster_url
    try:
        for name in SCHEDULES:
            switch = schedule_page(page, name)
            assert not is_on(switch), f"{name} starts stopped"
            toggle(page, switch, url, name, "RUNNING")

        ran: dict[str, str] = {}

        def poll() -> tuple[bool, str]:
            for name in SCHEDULES:
                ticks = api.schedule_state(url, name, location=PROBE).ticks
                runs = [r for t in ticks if t["status"] == "SUCCESS" for r in t["runIds"]]
                if runs and api.run_status(url, runs[0]) in api.DONE_RUN:  # newest first
                    ran[name] = runs[0]
            return len(ran) == len(SCHEDULES), f"{len(ran)}/{len(SCHEDULES)} schedule(s) ran"

        api.wait(poll, timeout=360, every=3, report=lambda line: None)  # next minute + a run

        for name, run_id in ran.items():
            switch = schedule_page(page, name)
            page.get_by_text(run_id[:8], exact=True).first.wait_for()  # in the tick history
            page.get_by_text("Run history", exact=True).click()
            page.get_by_text(run_id[:8], exact=True).first.wait_for()
            assert run_statuses(page, run_id[:8]) == ["Success"], name
            toggle(page, switch, url, name, "STOPPED")  # off again, from the UI
    finally:
        for name in SCHEDULES:
            api.reset_schedule(url, name, location=PROBE)

    lake = LakeResource.for_stack(webserver.settings)
    nation = lake.read(PROBE_NATION.name)
    assert sorted(nation.n_nationkey) == sorted(sources["nation"].n_nationkey)
    with psycopg.connect(webserver.settings.postgres_url) as conn:
        source = pd.DataFrame(conn.execute("select o_orderkey, o_totalprice from ops.probe_orders")
                              .fetchall(), columns=["o_orderkey", "o_totalprice"])
    stored = lake.read_partitions(PROBE_ORDERS.name, None, ["o_orderkey", "o_totalprice"])
    stored = stored.to_pandas().sort_values("o_orderkey", ignore_index=True)
    pd.testing.assert_frame_equal(stored, source.sort_values("o_orderkey", ignore_index=True),
                                  check_dtype=False)
