"""Schedules compiled from declarations: visible in the UI with their cadence and stopped until
someone turns them on (turned on from the UI and run by the daemon: tests/browser/
test_schedules.py)."""

from conflux.cli import dagster_api as api
from pipelines.catalog import DATASETS
from conflux.core.declarations import BatchDataset, EventDataset
from pipelines.definitions import defs


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
