"""A backfill of the batch join over a date range, as an operator launches it in the Dagster UI:
Materialize… on ``revenue_by_nation``, a partition range typed in, Launch backfill; the
backfill's page follows it to Succeeded, and the asset's partitions show the results — equal to
DuckDB's answer over the same stored inputs."""

from __future__ import annotations

import datetime as dt
import re
import time

import dagster as dg
import pytest

from tests.platform_data import assert_same, duckdb_revenue, stored_revenue

ASSET = "revenue_by_nation"
FIRST, LAST = "1995-01-01", "1995-06-30"  # half a year of the small TPC-H data: 14 result rows


def days(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [str(start + dt.timedelta(days=i)) for i in range((end - start).days + 1)]


def field(page, label: str, count: int = 1):
    """The value shown after ``label`` on the backfill page (label and values on lines of their
    own); ``count`` > 1: that many values, as a list."""
    lines = [line.strip() for line in page.inner_text("body").splitlines()]
    values = lines[lines.index(label) + 1:][:count] if label in lines else [""]
    return values if count > 1 else values[0]


def materialize_dialog(page, asset: str, selection: str):
    """Materialize… on ``asset``'s page, all partitions shown, ``selection`` typed in Dagster's
    partition syntax (``[first...last]``, or a key); returns the dialog."""
    page.goto(f"/assets/{asset}")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Show all partitions").click()  # the dialog opens on the last 90 days
    box = dialog.locator("input").first
    box.fill(selection)
    box.press("Enter")
    return dialog


def launch_backfill(page, first: str, last: str) -> str:
    """Materialize… → all partitions → the range → Launch backfill; returns the backfill id of
    the toast."""
    dialog = materialize_dialog(page, ASSET, f"[{first}...{last}]")
    dialog.get_by_text(f"{len(days(first, last))} partitions", exact=True).first.wait_for()
    assert dialog.get_by_text("in a single run").first.is_visible()  # BackfillPolicy.single_run
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+")).first
    toast.wait_for()
    return re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)


@pytest.mark.timeout(600)
def test_a_backfill_launched_from_the_ui_completes_and_its_partitions_show_the_results(
        platform_data, page):
    lake = platform_data["lake"]
    expected = duckdb_revenue(lake, FIRST, LAST)
    assert len(expected) > 0, "the range holds revenue to compute"

    backfill_id = launch_backfill(page, FIRST, LAST)
    page.locator(f'a[href$="/runs/b/{backfill_id}"]').first.click()  # the toast's "View"
    page.wait_for_url(f"**/runs/b/{backfill_id}**")
    page.get_by_text("Partition selection").first.wait_for()
    assert field(page, "Partition selection") == f"{FIRST}...{LAST}"
    deadline = time.monotonic() + 300
    while (status := field(page, "Status")) in {"", "Requested", "In progress"}:
        assert time.monotonic() < deadline, f"backfill {backfill_id} still {status!r} after 300 s"
        time.sleep(3)
        page.reload()
        page.get_by_text("Partition selection").first.wait_for()
    assert status == "Succeeded", page.inner_text("body")
    # the asset's row: progress, then partitions targeted / in progress / succeeded / failed
    n = str(len(days(FIRST, LAST)))
    page.get_by_text("100% completed").first.wait_for()  # the asset table loads on its own
    assert field(page, "100% completed", 4) == [n, "0", n, "0"]

    # the results: every partition of the range materialized, equal to DuckDB's answer
    per_day = expected.o_orderdate.value_counts()
    with dg.DagsterInstance.get() as instance:
        materialized = instance.get_materialized_partitions(dg.AssetKey(ASSET))
        runs = {r.run_id for r in instance.get_runs(
            dg.RunsFilter(tags={"dagster/backfill": backfill_id}))}
        records = [r for r in instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(ASSET), asset_partitions=days(FIRST, LAST)), limit=2000).records
            if r.run_id in runs]
    assert len(runs) == 1  # BackfillPolicy.single_run
    assert_same(stored_revenue(lake, FIRST, LAST), expected)
    # the backfill's run materialized each day once, each with its own rows
    assert sorted(r.partition_key for r in records) == days(FIRST, LAST)
    rows = {r.partition_key: r.asset_materialization.metadata["dagster/row_count"].value
            for r in records}
    assert rows == {day: int(per_day.get(day, 0)) for day in days(FIRST, LAST)}

    # ... and in the asset's Partitions tab: the count, and the busiest day's rows
    page.goto(f"/assets/{ASSET}?view=partitions")
    page.get_by_text(f"Materialized ({len(materialized)})").first.wait_for()
    busiest = per_day.idxmax()
    page.goto(f"/assets/{ASSET}?view=partitions&partition={busiest}")
    row = page.locator("tr").filter(has=page.get_by_text("dagster/row_count", exact=True)).first
    assert row.inner_text().split()[-1] == str(per_day[busiest]) != str(len(expected))
