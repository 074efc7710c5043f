"""Helpers for tests that operate the live test stack: sensors, lag, check evaluations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from conflux.cli import dagster_api as api
from conflux.cli import main


def stop_sensor(url: str, name: str) -> None:
    """Stop sensor ``name`` as the UI's toggle does. A tick under way when it is stopped (up to
    a few seconds) saves its state when it ends and can turn it back on: stop until it stays."""
    for _ in range(5):
        assert api.stop_sensor(url, name) == "STOPPED"
        time.sleep(5)
        if api.sensor_state(url, name).status == "STOPPED":
            return
    pytest.fail(f"the sensor {name} did not stay stopped")


def tick(sensor, instance, resources: dict, cursor: str | None):
    """One in-process evaluation of ``sensor`` with ``cursor``, its asset events stored as the
    daemon stores them."""
    import dagster as dg

    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        result = sensor(ctx)
    for event in getattr(result, "asset_events", None) or []:
        instance.report_runless_asset_event(event)
    return result


def lag_of(capsys, name: str) -> dict:
    """``conflux lag NAME --json``: records waiting behind the sensor's cursor, its status."""
    assert main(["lag", name, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    return row


def wait_for_lag(capsys, name: str, expected: int = 0, timeout: float = 120) -> dict:
    """Poll ``conflux lag`` until ``name``'s lag is ``expected``; returns that row."""
    deadline = time.monotonic() + timeout
    while (row := lag_of(capsys, name))["lag"] != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"{name} lag is {row['lag']}, not {expected}, after {timeout:g}s")
        time.sleep(1)
    return row


def evaluation_after(url: str, asset: str, check: str, after: float,
                     want: Callable[[dict], bool], what: str, timeout: float = 180) -> dict:
    """The newest evaluation of ``asset``'s ``check`` stored after ``after`` for which
    ``want(evaluation)`` holds (polled through the webserver's API)."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while time.monotonic() < deadline:
        seen = [e["evaluation"] for e in api.check_executions(url, asset, check, limit=5)
                if e["evaluation"] and e["evaluation"]["timestamp"] > after]
        if match := [e for e in seen if want(e)]:
            return match[0]
        time.sleep(2)
    pytest.fail(f"no evaluation of {asset}'s {check} {what} within {timeout:g}s; "
                f"seen: {seen[:3]}")
