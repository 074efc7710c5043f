"""Notifications on the live test platform: a failed run is posted to the configured webhook (a
receiver on loopback) with a link to the run. Failing checks and a Kafka sensor that stops
catching up are posted too: tests/integration/test_freshness.py."""

import time

from conflux.cli import dagster_api as api


def test_a_failed_run_is_posted_with_a_link_to_it(webserver, webhook):
    url = webserver.settings.dagster_url
    run_id = api.launch_run(url, "lake_vacuum", {"ops": {"vacuum_tables": {"config": {
        "datasets": ["no_such_dataset"]}}}})
    deadline = time.monotonic() + 120
    while (status := api.run_status(url, run_id)) not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    assert status == "FAILURE"
    text = webhook.wait_for("Run failed: lake_vacuum", f"<{url}/runs/{run_id}|open in Dagster>")
    assert "no_such_dataset" in text
