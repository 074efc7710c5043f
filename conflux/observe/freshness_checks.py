"""Dagster wiring of freshness (expectations from ``conflux/observe/freshness.py``).

* **batch** datasets get Dagster's ``FreshnessPolicy`` — ``cron`` (deadline = their schedule's
  ticks) or ``time_window`` (a declared freshness, no schedule) — evaluated by Dagster's
  freshness daemon without any run, shown as the asset's freshness in the UI;
* **event** datasets need windows under a minute (``FreshnessPolicy`` allows none below 60 s)
  and must count the Kafka sensor's "caught up" observations, which ``FreshnessPolicy`` ignores.
  Each gets Dagster's last-update freshness check ``freshness_check`` (so *Execute* in the UI
  runs Dagster's own evaluation), and the ``conflux_freshness`` sensor evaluates the same rule
  every few seconds *without a run*: the newest ``dagster/last_updated_timestamp`` of the latest
  materialization or observation must be within the window. Results go to Dagster as runless
  ``AssetCheckEvaluation``s when the verdict changes, and at least every ``REPORT_EVERY_S``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable

import dagster as dg

from conflux.core.errors import DeclarationError
from conflux.core.declarations import BatchDataset, Dataset, EventDataset
from conflux.observe.freshness import expectation
from conflux.contracts.metadata import LAST_UPDATED

SENSOR_NAME = "conflux_freshness"
CHECK_NAME = "freshness_check"  # the name Dagster gives last-update freshness checks
EVALUATE_EVERY_S = 5
REPORT_EVERY_S = 60


def freshness_policy(ds: Dataset) -> dg.FreshnessPolicy | None:
    """Dagster's freshness policy of a batch dataset, or None (event datasets: checks)."""
    exp = expectation(ds) if isinstance(ds, BatchDataset) else None
    if exp is None:
        return None
    if exp.deadline_cron:
        return dg.FreshnessPolicy.cron(deadline_cron=exp.deadline_cron,
                                       lower_bound_delta=exp.lower_bound)
    if exp.lower_bound.total_seconds() < 60:
        raise DeclarationError(f"dataset {ds.name!r}: freshness of a batch dataset must be at "
                               f"least a minute (Dagster's freshness policies), got "
                               f"{exp.lower_bound}")
    return dg.FreshnessPolicy.time_window(fail_window=exp.lower_bound)


def last_updated(instance: dg.DagsterInstance, asset: str) -> float | None:
    """How current ``asset`` is by Dagster's last-update rule: the newer of its latest
    materialization (its ``dagster/last_updated_timestamp``, else when it was stored) and its
    latest observation carrying that timestamp."""
    key = dg.AssetKey(asset)
    found = []
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        records = fetch(key, limit=1).records
        if not records:
            continue
        rec = records[0]
        meta = (rec.asset_materialization or rec.asset_observation).metadata
        value = meta.get(LAST_UPDATED)
        if value is not None:
            found.append(value.value)
        elif rec.asset_materialization is not None:
            found.append(rec.timestamp)
    return max(found) if found else None


def evaluate(ds: EventDataset, updated: float | None, now: float) -> dg.AssetCheckEvaluation:
    """The verdict of ``freshness_check`` on ``ds`` at ``now`` (pure)."""
    window = ds.freshness.total_seconds()
    passed = updated is not None and now - updated <= window
    meta = {"dagster/freshness_params": dg.MetadataValue.json({"lower_bound_delta_seconds": window}),
            "dagster/freshness_lower_bound_timestamp": dg.MetadataValue.timestamp(now - window),
            "conflux/evaluated_by": SENSOR_NAME}
    if updated is not None:
        meta[LAST_UPDATED] = dg.MetadataValue.timestamp(updated)
        if not passed:
            meta["dagster/overdue_seconds"] = round(now - updated - window, 3)
    age = "never updated" if updated is None else f"current as of {now - updated:.0f}s ago"
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(ds.name), check_name=CHECK_NAME, passed=passed,
        severity=dg.AssetCheckSeverity.WARN, metadata=meta,
        description=f"{ds.name}: {age} (window {window:g}s)")


def build_freshness(datasets: Iterable[Dataset]) -> tuple[list[dg.AssetChecksDefinition],
                                                          dg.SensorDefinition | None]:
    """Dagster's last-update freshness check per event dataset, and the sensor evaluating them.

    Args:
        datasets: the catalog (batch datasets are left to ``freshness_policy``).

    Returns:
        (checks, sensor ``conflux_freshness``, running by default) — no sensor without checks.

    Examples:
        >>> checks, sensor = build_freshness(DATASETS)
        >>> sensor.name
        'conflux_freshness'
    """
    events = [ds for ds in datasets if isinstance(ds, EventDataset)]
    if not events:
        return [], None
    with warnings.catch_warnings():  # superseded by FreshnessPolicy, which cannot do this
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        checks = [c for ds in events for c in dg.build_last_update_freshness_checks(
            assets=[ds.name], lower_bound_delta=ds.freshness,
            severity=dg.AssetCheckSeverity.WARN)]

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=EVALUATE_EVERY_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Evaluates each event dataset's freshness_check without a run: the "
                           "Kafka sensor's materializations and caught-up observations say how "
                           "current it is")
    def _sensor(context: dg.SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        out = []
        for ds in events:
            result = evaluate(ds, last_updated(context.instance, ds.name), now)
            passed, reported = state.get(ds.name, (None, 0.0))
            if result.passed != passed or now - reported >= REPORT_EVERY_S:
                out.append(result)
                state[ds.name] = (result.passed, now)
        verdicts = ", ".join(f"{n} {'fresh' if p else 'STALE'}" for n, (p, _) in sorted(state.items()))
        return dg.SensorResult(asset_events=out, cursor=json.dumps(state),
                               skip_reason=None if out else f"unchanged: {verdicts}")

    return checks, _sensor
