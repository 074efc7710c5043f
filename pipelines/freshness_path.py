"""Dagster wiring of freshness: Dagster's own last-update freshness checks, one per dataset with
an expectation (``pipelines/freshness.py``), and Dagster's freshness-check sensor to evaluate
them (it launches a check run only when a result can have changed).

Dagster's ``FreshnessPolicy`` needs no runs, but its windows cannot be shorter than a minute and
it looks at materializations only; the checks accept sub-minute windows and read the
``dagster/last_updated_timestamp`` of materializations *and* observations, which is how the Kafka
sensor tells Dagster how current an event dataset is (``sensors/kafka_sensor.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import dagster as dg

from pipelines.datasets import Dataset
from pipelines.freshness import expectation

SENSOR_NAME = "conflux_freshness"
CHECK_NAME = "freshness_check"  # the name Dagster gives last-update freshness checks
EVALUATE_EVERY_S = 15


def build_freshness(datasets: Iterable[Dataset]) -> tuple[list[dg.AssetChecksDefinition],
                                                          dg.SensorDefinition | None]:
    """A last-update freshness check per dataset with an expectation, and the sensor running them.

    Args:
        datasets: the catalog.

    Returns:
        (checks, sensor ``conflux_freshness``, running by default) — no sensor without checks.

    Examples:
        >>> checks, sensor = build_freshness(DATASETS)
        >>> sensor.name
        'conflux_freshness'
    """
    with warnings.catch_warnings():  # superseded by FreshnessPolicy, which cannot do the above
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        return _build(datasets)


def _build(datasets: Iterable[Dataset]) -> tuple[list[dg.AssetChecksDefinition],
                                                 dg.SensorDefinition | None]:
    checks: list[dg.AssetChecksDefinition] = []
    for ds in datasets:
        exp = expectation(ds)
        if exp is None:
            continue
        checks.extend(dg.build_last_update_freshness_checks(
            assets=[ds.name], lower_bound_delta=exp.lower_bound, deadline_cron=exp.deadline_cron,
            severity=dg.AssetCheckSeverity.WARN))
    if not checks:
        return [], None
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks, minimum_interval_seconds=EVALUATE_EVERY_S, name=SENSOR_NAME,
        default_status=dg.DefaultSensorStatus.RUNNING,
        tags={"conflux/purpose": "freshness"})
    return checks, sensor
