"""Schedules compiled from declarations: visible in the UI with their cadence, stopped until
someone turns them on, and then run by the Dagster daemon — a table load and a batch fallback,
both declared with a minutely cron in the test stack's probe location."""


import pandas as pd
import psycopg
import pytest

from conflux import dagster_api as api
from conflux.demo.producer import load_ops, tpch_tables
from pipelines.catalog import DATASETS
from pipelines.datasets import BatchDataset, EventDataset
from pipelines.definitions import defs
from resources.lake import LakeResource
from resources.postgres import replace_table
from tests.fixtures.minutely import PROBE_NATION, PROBE_ORDERS

PROBE = "conflux_minutely"


def declared_schedules() -> dict[str, str]:
    """Schedule name -> cron, for every schedule the demo declarations ask for."""
    names = [f"{d.name}__schedule" for d in DATASETS if isinstance(d, BatchDataset) and d.schedule]
    names += [f"{d.name}__fallback" for d in DATASETS
              if isinstance(d, EventDataset) and d.fallback is not None]
    repo = defs.get_repository_def()
    return {n: repo.get_schedule_def(n).cron_schedule for n in names}


def test_every_declared_schedule_shows_in_the_ui_with_its_cron_and_starts_stopped(webserver):
    url = webserver.settings.dagster_url
    expected = declared_schedules()
    assert {"orders__fallback", "lineitem__fallback", "customer__schedule",
            "revenue_by_nation__schedule", "customer_balance__schedule"} <= set(expected)
    for name, cron in expected.items():
        state = api.schedule_state(url, name)
        assert (state.cron, state.status) == (cron, "STOPPED"), name


@pytest.mark.timeout(480)
def test_the_daemon_runs_declared_schedules_once_turned_on(webserver):
    url = webserver.settings.dagster_url
    pg_url = webserver.settings.postgres_url
    tables = tpch_tables(0.0004, seed=17)
    load_ops(pg_url, {"nation": tables["nation"]})  # the same 25 nations every time
    with psycopg.connect(pg_url) as conn, conn.transaction():  # the probe's own source table
        replace_table(conn, "ops", "probe_orders", tables["orders"], ["o_orderkey"])
    names = [f"{PROBE_NATION.name}__schedule", f"{PROBE_ORDERS.name}__fallback"]
    for name in names:
        assert api.start_schedule(url, name, location=PROBE) == "RUNNING"
    ran: dict[str, list[str]] = {}
    try:
        def poll() -> tuple[bool, str]:
            for name in names:
                ticks = api.schedule_state(url, name, location=PROBE).ticks
                runs = [r for t in ticks if t["status"] == "SUCCESS" for r in t["runIds"]]
                if runs and api.run_status(url, runs[-1]) in api.DONE_RUN:
                    ran[name] = runs
            return len(ran) == len(names), f"{len(ran)}/{len(names)} schedule(s) ran"

        api.wait(poll, timeout=360, every=3, report=lambda line: None)  # next minute + a run
    finally:
        for name in names:
            api.reset_schedule(url, name, location=PROBE)
    for name, runs in ran.items():
        assert api.run_status(url, runs[-1]) == "SUCCESS", name
    assert api.schedule_state(url, names[0], location=PROBE).status == "STOPPED"

    lake = LakeResource(path=str(webserver.settings.lake_path))
    nation = lake.read(PROBE_NATION.name)
    assert sorted(nation.n_nationkey) == sorted(tables["nation"].n_nationkey)
    with psycopg.connect(pg_url) as conn:
        source = pd.DataFrame(conn.execute("select o_orderkey, o_totalprice from ops.probe_orders")
                              .fetchall(), columns=["o_orderkey", "o_totalprice"])
    stored = lake.read_partitions(PROBE_ORDERS.name, None, ["o_orderkey", "o_totalprice"])
    stored = stored.to_pandas().sort_values("o_orderkey", ignore_index=True)
    pd.testing.assert_frame_equal(stored, source.sort_values("o_orderkey", ignore_index=True),
                                  check_dtype=False)
