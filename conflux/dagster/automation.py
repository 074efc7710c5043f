"""Declarative automation, on by default: the sensor the Dagster daemon evaluates it with.

Batch datasets declared with ``automation=True`` carry an automation condition
(``conflux.dagster.compile.stale_partitions``): their partitions whose upstream partitions
changed — late events in old days included — are materialized again, exactly those. Dagster
evaluates automation conditions in a sensor run by the daemon; the one it makes up by itself,
``default_automation_condition_sensor``, starts STOPPED, so nothing would happen out of the box.
:func:`automation_sensor` defines ``conflux_automation`` instead, over every asset of the code
location that no automation sensor of the project's own targets:

* RUNNING by default, STOPPED with ``CONFLUX_AUTOMATION=off`` (then turned on from the UI's
  *Automation* page when wanted);
* evaluated at most every ``CONFLUX_AUTOMATION_INTERVAL_SECONDS`` (30 s): each evaluation
  requests, per stale asset, one run — or, for several partitions, one backfill, which runs each
  contiguous range of them as a single run (the datasets' ``BackfillPolicy``) — so a join is
  re-run at most about twice a minute however fast events arrive.

Runs it launches carry Dagster's tags ``dagster/from_automation_condition`` and
``dagster/asset_evaluation_id``; the UI shows each evaluation (why a partition was requested)
on the asset's *Automation* tab.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from conflux.core.settings import Automation

AUTOMATION_SENSOR = "conflux_automation"


@dataclass(frozen=True)
class AutomationSensorSpec:
    """What the automation sensor will be (pure data: tests inspect it without Dagster)."""

    name: str
    running: bool
    interval_seconds: int

    @property
    def status(self) -> dg.DefaultSensorStatus:
        return dg.DefaultSensorStatus.RUNNING if self.running else dg.DefaultSensorStatus.STOPPED


def automation_sensor_spec(settings: Automation) -> AutomationSensorSpec:
    """The sensor's name, default status and interval from the settings (pure)."""
    return AutomationSensorSpec(name=AUTOMATION_SENSOR, running=settings.enabled,
                                interval_seconds=settings.interval_seconds)


def automation_sensor(*, sensors: Iterable[dg.SensorDefinition] = (),
                      settings: Automation | None = None) -> dg.AutomationConditionSensorDefinition:
    """The code location's automation sensor, ``conflux_automation``.

    Args:
        sensors: the code location's other sensors; the assets an automation sensor among them
            targets stay that sensor's (Dagster refuses an asset targeted by two).
        settings: ``CONFLUX_AUTOMATION`` and ``CONFLUX_AUTOMATION_INTERVAL_SECONDS`` (default:
            read from the environment now).

    Returns:
        An ``AutomationConditionSensorDefinition`` over every other asset of the location,
        RUNNING unless automation is off.

    Examples:
        >>> sensor = automation_sensor(settings=Automation(enabled=False))
        >>> sensor.default_status
        <DefaultSensorStatus.STOPPED: 'STOPPED'>
    """
    settings = settings or Automation.from_env()
    own = [s for s in sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    spec = automation_sensor_spec(settings)
    target = dg.AssetSelection.all()
    for sensor in own:
        target = target - sensor.asset_selection
    return dg.AutomationConditionSensorDefinition(
        spec.name, target=target, default_status=spec.status,
        minimum_interval_seconds=spec.interval_seconds,
        description="Declarative automation of this code location: re-materializes exactly the "
                    "partitions of batch datasets whose upstream partitions changed (new and late "
                    "events), and loads datasets declared with automation that were never "
                    "materialized. RUNNING unless CONFLUX_AUTOMATION=off.")


def with_automation(defs: dg.Definitions, *, settings: Automation | None = None) -> dg.Definitions:
    """``defs`` plus :func:`automation_sensor` over its assets."""
    sensor = automation_sensor(sensors=defs.sensors or (), settings=settings)
    return dg.Definitions.merge(defs, dg.Definitions(sensors=[sensor]))
