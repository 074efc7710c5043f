"""Batch computations: pure functions of the upstream datasets' rows (pandas)."""

from __future__ import annotations

import pandas as pd


def daily_temperature(inputs: dict) -> pd.DataFrame:
    """Readings per device and day, with their mean and maximum temperature."""
    readings = inputs["readings"]
    if not isinstance(readings, pd.DataFrame):
        readings = readings.to_pandas()
    if readings.empty:
        return pd.DataFrame({"day": pd.Series(dtype=object), "device_id": pd.Series(dtype=object),
                             "readings": pd.Series(dtype="int64"),
                             "mean_c": pd.Series(dtype="float64"),
                             "max_c": pd.Series(dtype="float64")})
    grouped = readings.groupby(["day", "device_id"], as_index=False)["temperature_c"]
    return grouped.agg(readings="count", mean_c="mean", max_c="max")
