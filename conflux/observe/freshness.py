"""Freshness expectations derived from declarations (pure: no Dagster).

* an **event** dataset is fresh while everything that reached its topics more than ``freshness``
  ago (30 s by default) has been applied. The Kafka sensor records how current the dataset is:
  each materialization carries the time of the newest record it applied, and an observation every
  few seconds says "caught up as of this tick" (or, when behind, only the lag);
* a **batch** dataset that declares ``freshness`` must have been updated within it of now;
* otherwise a scheduled batch dataset must, at each tick of its schedule, have been updated
  during the period before it (the run of the previous tick counts);
* a batch dataset with neither has no expectation.

``conflux/observe/freshness_checks.py`` turns these into Dagster's own freshness checks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from conflux.core.declarations import BatchDataset, Dataset, EventDataset, _fail

@dataclass(frozen=True)
class Expectation:
    """Updated no earlier than ``lower_bound`` before the deadline: the latest tick of
    ``deadline_cron`` (or the time of evaluation when None)."""

    lower_bound: dt.timedelta
    deadline_cron: str | None
    derived_from: str  # "declaration" or "schedule"


def cron_period(cron: str) -> dt.timedelta:
    """The interval between ticks of the regular cron shapes schedules use.

    Supported: ``* * * * *``, ``*/N * * * *``, ``M * * * *``, ``M */N * * *``, ``M H * * *``
    and ``M H * * D`` (weekly). Raises ``ValueError`` for other shapes.

    Examples:
        >>> cron_period("*/15 * * * *")
        datetime.timedelta(seconds=900)
    """
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron {cron!r} does not have 5 fields")
    minute, hour, dom, month, dow = fields

    def step(field: str) -> int | None:
        if field == "*":
            return 1
        if field.startswith("*/") and field[2:].isdigit() and int(field[2:]) > 0:
            return int(field[2:])
        return None

    if (dom, month) == ("*", "*"):
        if dow == "*":
            if hour == "*" and step(minute):
                return dt.timedelta(minutes=step(minute))
            if minute.isdigit() and step(hour):
                return dt.timedelta(hours=step(hour))
            if minute.isdigit() and hour.isdigit():
                return dt.timedelta(days=1)
        elif dow.isdigit() and minute.isdigit() and hour.isdigit():
            return dt.timedelta(weeks=1)
    raise ValueError(f"cron {cron!r} is not a regular every-N-minutes/hours, daily or weekly "
                     f"schedule")


def expectation(ds: Dataset) -> Expectation | None:
    """The freshness expectation of a dataset, or None when it has none.

    Raises:
        DeclarationError: a schedule whose period cannot be derived and no declared freshness.
    """
    if isinstance(ds, EventDataset):
        return Expectation(ds.freshness, None, "declaration")
    if ds.freshness is not None:
        return Expectation(ds.freshness, None, "declaration")
    cron = ds.schedule_cron if isinstance(ds, BatchDataset) else None
    if cron is None:
        return None
    try:
        period = cron_period(cron)
    except ValueError as exc:
        _fail(ds.name, f"{exc}; declare freshness= to say how old it may get")
    return Expectation(period, cron, "schedule")
