"""Compile declarations into Dagster definitions.

``asset_specs`` is pure — it builds every asset's spec (key, deps, partitions, metadata, kinds,
tags, owners, group, code version, automation) from the catalog without running anything, so
tests can inspect the compiled graph. ``build_definitions`` adds the executable parts: batch
asset functions, event datasets as materializable assets and the operations jobs (replay,
dead-letter replay, reconcile, ledger rebuild: ``conflux.dagster.operations``), ingest jobs,
sensors and schedules, the lake maintenance jobs and schedules
(``conflux.dagster.maintenance``), and the resources — among them the lake IO
manager, the default one, through which any Dagster asset reads the datasets.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Iterable

import dagster as dg

from conflux.contracts.lineage import code_version
from conflux.core.declarations import (DEFAULT_START, BatchDataset, Dataset, EventDataset,
                                       validate_catalog)
from conflux.dagster.io_manager import EVENT_TIME, IO_MANAGER_KEY, LakeIOManager
from conflux.observe.freshness_checks import freshness_policy
from conflux.contracts.metadata import definition_metadata

EVENT_START_DATE = DEFAULT_START.isoformat()  # the default first partition (Dataset.start)
KIND_TAG = "conflux/mode"


def daily_partitions(start: dt.date | str = DEFAULT_START) -> dg.DailyPartitionsDefinition:
    """Daily event-time partitions from ``start`` (a dataset's first day) through tomorrow,
    shared by both paths: equal definitions map partitions one to one."""
    return dg.DailyPartitionsDefinition(start_date=str(start), end_offset=1)


def compute_function(ds: Dataset) -> Callable | None:
    """The Python function behind a dataset's ``compute`` (the decorated function of a Dagster
    asset ``compute``), e.g. for its code version."""
    compute = getattr(ds, "compute", None)
    if isinstance(compute, dg.AssetsDefinition):
        return inspect.unwrap(compute.op)
    return compute


def stale_partitions() -> dg.AutomationCondition:
    """Materialize exactly the partitions whose upstream partitions changed — late events in old
    partitions included (``eager()`` would only look at the latest day) — once every upstream
    partition they need exists and nothing of theirs is in progress."""
    cond = dg.AutomationCondition
    return (
        (cond.newly_missing() | cond.any_deps_updated())
        .since(cond.newly_requested() | cond.newly_updated())
        & ~cond.any_deps_missing()
        & ~cond.any_deps_in_progress()
        & ~cond.in_progress()
    ).with_label("stale partitions (new or late upstream data)")


def kinds_of(ds: Dataset) -> set[str]:
    """Kinds shown as badges in the UI: the mode first, then the technologies."""
    if isinstance(ds, EventDataset):
        return {"event", "kafka", "parquet"}
    if isinstance(ds, BatchDataset) and ds.source_table:
        return {"batch", "postgres", "parquet"}
    return {"batch", "pandas", "parquet"}


def asset_spec(ds: Dataset, catalog: dict[str, Dataset]) -> dg.AssetSpec:
    """The spec of one dataset's asset (pure); downstream assets load it through the default IO
    manager, the lake's (:class:`~conflux.dagster.io_manager.LakeIOManager`)."""
    compute = compute_function(ds)
    metadata = definition_metadata(ds, catalog)
    if ds.event_time:  # how the IO manager splits a Dagster asset compute's output into days
        metadata[EVENT_TIME] = ds.event_time
    automation = stale_partitions() if isinstance(ds, BatchDataset) and ds.automation else None
    return dg.AssetSpec(
        key=ds.name,
        deps=[dg.AssetDep(up) for up in getattr(ds, "upstream", ())],
        description=ds.description or None,
        group_name=ds.group,
        owners=[ds.owner],
        kinds=kinds_of(ds),
        tags={KIND_TAG: ds.mode, "conflux/contract": ds.subject},
        partitions_def=daily_partitions(ds.start) if ds.partitioned else None,
        metadata=metadata,
        code_version=code_version(ds.contract, compute),
        automation_condition=automation,
        freshness_policy=freshness_policy(ds),
    )


def asset_specs(datasets: Iterable[Dataset]) -> dict[str, dg.AssetSpec]:
    """Validate the catalog and build every asset spec, by dataset name (pure)."""
    catalog = validate_catalog(datasets)
    return {name: asset_spec(ds, catalog) for name, ds in catalog.items()}


def schedule_for(ds: BatchDataset, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """The declared schedule; a partitioned dataset gets its latest partition each day."""
    name = f"{ds.name}__schedule"
    if ds.partitioned:
        minute, hour = ds.schedule_cron.split()[:2]
        return dg.build_schedule_from_partitioned_job(
            job, name=name, minute_of_hour=int(minute), hour_of_day=int(hour),
            default_status=dg.DefaultScheduleStatus.STOPPED)
    return dg.ScheduleDefinition(name=name, job=job, cron_schedule=ds.schedule,
                                 default_status=dg.DefaultScheduleStatus.STOPPED)


def build_definitions(datasets: Iterable[Dataset], *, resources: dict | None = None,
                      extra: dg.Definitions | None = None) -> dg.Definitions:
    """Everything Dagster needs for a catalog: assets, jobs, sensors, schedules, resources.

    The project's own assets read the datasets through Dagster's input loading: a parameter
    named after a dataset gets the rows of the partitions it depends on, through the lake IO
    manager registered here as the default ``"io_manager"`` (``conflux.dagster.io_manager``).

    Args:
        datasets: the catalog's declarations.
        resources: the platform's resources (default :func:`platform_resources`, configured
            from the environment); a key given here replaces the default one (a ``lake`` given
            without an ``io_manager`` becomes the IO manager's lake too).
        extra: the project's own Dagster definitions (assets, sensors, jobs, ...), merged in.

    Returns:
        One ``Definitions`` object for the project's code location.

    Examples:
        >>> defs = build_definitions(DATASETS, extra=dg.Definitions(assets=[hot_devices],
        ...                                                         sensors=[my_sensor]))
    """
    from conflux.batch.asset import build_asset_compute, build_batch_asset
    from conflux.event.job import build_ingest_job
    from conflux.batch.fallback import build_fallback
    from conflux.observe.freshness_checks import build_freshness
    from conflux.dagster.resources import platform_resources
    from conflux.observe.dlq_monitor import build_dlq_monitor
    from conflux.observe.offset_gaps import build_gap_check
    from conflux.observe.notify import notification_sensors
    from conflux.observe.run_workers import build_run_worker_monitor
    from conflux.event.sensor import build_kafka_sensor
    from conflux.dagster.maintenance import maintenance_definitions
    from conflux.dagster.operations import build_event_asset, operations_definitions
    from conflux.dagster.automation import with_automation

    datasets = tuple(datasets)
    catalog = validate_catalog(datasets)
    specs = asset_specs(datasets)
    assets: list = []
    jobs: list = []
    sensors: list = []
    schedules: list = []
    checks: list = []
    for name, ds in catalog.items():
        if isinstance(ds, EventDataset):
            ingest = build_ingest_job(ds)
            assets.append(build_event_asset(ds, specs[name]))  # materialize = repair / replay
            jobs.append(ingest)
            sensors.append(build_kafka_sensor(ds, ingest))
            checks.append(build_gap_check(dataset=ds))
            if ds.fallback is not None:
                check, job, schedule = build_fallback(ds)
                checks.append(check)
                jobs.append(job)
                schedules.append(schedule)
        elif isinstance(ds, BatchDataset):
            assets.append(build_asset_compute(ds, specs[name]) if ds.asset_compute
                          else build_batch_asset(ds, specs[name], catalog))
            if ds.schedule:
                job = dg.define_asset_job(f"{ds.name}__job", selection=[name])
                jobs.append(job)
                schedules.append(schedule_for(ds, job))
    freshness_checks, freshness_sensor = build_freshness(catalog.values())
    checks += freshness_checks
    sensors += [freshness_sensor] if freshness_sensor else []
    dlq_checks, dlq_sensor = build_dlq_monitor(datasets=catalog.values())
    checks += dlq_checks
    sensors += [dlq_sensor] if dlq_sensor else []
    sensors += notification_sensors(catalog.values())  # none unless a webhook is configured
    sensors.append(build_run_worker_monitor())
    jobs += operations_definitions(catalog)
    maintenance_jobs, maintenance_schedules = maintenance_definitions(catalog.values())
    jobs += maintenance_jobs
    schedules += maintenance_schedules
    merged = {**platform_resources(), **(resources or {})}
    if "lake" in (resources or {}) and IO_MANAGER_KEY not in resources:
        merged[IO_MANAGER_KEY] = LakeIOManager(lake=resources["lake"])
    # in-process: a run is one step (a table load, a join, a reconciliation); a process per
    # step would add ~1.2 s to each
    platform = dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, sensors=sensors,
                              schedules=schedules, resources=merged,
                              executor=dg.in_process_executor)
    # declarative automation on by default (CONFLUX_AUTOMATION=off: its sensor starts STOPPED)
    return with_automation(dg.Definitions.merge(platform, extra) if extra is not None else platform)
