"""The contracts: one pydantic model per dataset, registered in the schema registry."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class Reading(BaseModel):
    """One temperature reading, as a device publishes it."""

    reading_id: str = Field(description="unique per reading: the idempotency key")
    device_id: str
    day: dt.date = Field(description="the day the reading was taken (event time)")
    temperature_c: float


class DailyTemperature(BaseModel):
    """Per device and day: how many readings, their mean and maximum."""

    day: dt.date
    device_id: str
    readings: int
    mean_c: float
    max_c: float
