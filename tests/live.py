"""Helpers for tests that operate the live test stack's sensors."""

from __future__ import annotations

import time

import pytest

from conflux import dagster_api as api


def stop_sensor(url: str, name: str) -> None:
    """Stop sensor ``name`` as the UI's toggle does. A tick under way when it is stopped (up to
    a few seconds) saves its state when it ends and can turn it back on: stop until it stays."""
    for _ in range(5):
        assert api.stop_sensor(url, name) == "STOPPED"
        time.sleep(5)
        if api.sensor_state(url, name).status == "STOPPED":
            return
    pytest.fail(f"the sensor {name} did not stay stopped")
