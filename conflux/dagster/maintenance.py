"""Lake maintenance as ordinary Dagster run jobs, on schedules: compaction, vacuum, checkpoints.

Every dataset of the catalog is a Delta table (``conflux.io.lake``). Small appends (each ingest
run adds a file per day it touches) make many small files, and every commit adds a log entry;
three jobs keep the tables fast to read and the storage bounded:

* ``lake_optimize`` — ``optimize.compact`` of each table (bin-packing of small files, per
  ``__day`` partition when the run names days); schedule ``lake_optimize_schedule``, hourly at
  minute 17.
* ``lake_vacuum`` — deletes files no version newer than the retention references (default
  ``CONFLUX_LAKE_VACUUM_RETENTION_HOURS``, 168 h: time travel a week back keeps working);
  schedule ``lake_vacuum_schedule``, daily at 03:30.
* ``lake_checkpoint`` — a Delta log checkpoint of each table (delta-rs also writes one every 100
  commits by itself); schedule ``lake_checkpoint_schedule``, hourly at minute 47.

Schedules run in UTC and start RUNNING, or STOPPED with ``CONFLUX_LAKE_MAINTENANCE=off``. Each
job is one op over the tables, run as an ordinary run (never inside a sensor tick): it logs what
it did per dataset and reports a table of figures (files added/removed, bytes, version) as its
output metadata. A table that fails does not stop the others; the run fails at the end, naming
every failed dataset. Runs carry the tag ``conflux/maintenance`` (``optimize``, ``vacuum`` or
``checkpoint``) for the run queue's ``tag_concurrency_limits``. See ``docs/lake-maintenance.md``.
"""

# no `from __future__ import annotations`: Dagster reads an op's config class from its
# annotation, and the vacuum config class is made per catalog (its default comes from settings)

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import dagster as dg
from pydantic import Field

from conflux.core.declarations import Dataset
from conflux.core.errors import ConfigError
from conflux.core.settings import LakeMaintenance, vacuum_retention_hours
from conflux.io.lake import LakeResource

MAINTENANCE_TAG = "conflux/maintenance"
OPTIMIZE_JOB = "lake_optimize"
VACUUM_JOB = "lake_vacuum"
CHECKPOINT_JOB = "lake_checkpoint"
TIMEZONE = "UTC"


@dataclass(frozen=True)
class MaintenanceSchedule:
    """One maintenance job's schedule (pure data: tests inspect it without running anything)."""

    job: str
    cron: str
    running: bool

    @property
    def name(self) -> str:
        return f"{self.job}_schedule"

    @property
    def status(self) -> dg.DefaultScheduleStatus:
        return dg.DefaultScheduleStatus.RUNNING if self.running else dg.DefaultScheduleStatus.STOPPED


def maintenance_schedules(settings: LakeMaintenance) -> list[MaintenanceSchedule]:
    """The three schedules: optimize hourly at :17, checkpoint hourly at :47, vacuum daily at
    03:30 (UTC); RUNNING unless ``CONFLUX_LAKE_MAINTENANCE=off``."""
    on = settings.enabled
    return [MaintenanceSchedule(OPTIMIZE_JOB, "17 * * * *", on),
            MaintenanceSchedule(CHECKPOINT_JOB, "47 * * * *", on),
            MaintenanceSchedule(VACUUM_JOB, "30 3 * * *", on)]


# --- run config (shown, with these descriptions and defaults, in the UI's launchpad) -----------

class LakeOptimizeConfig(dg.Config):
    datasets: list[str] = Field(
        default=[], description="Datasets to compact (names from the catalog); empty: all of them")
    partitions: list[str] = Field(
        default=[], description="Only these days (YYYY-MM-DD, the __day partitions) of "
                                "partitioned datasets; empty: see last_days")
    last_days: int = Field(
        default=0, description="Only the N most recent days (today UTC and the N-1 before) of "
                               "partitioned datasets; 0 (and no partitions): whole tables. "
                               "Unpartitioned datasets are always compacted whole")


class LakeCheckpointConfig(dg.Config):
    datasets: list[str] = Field(
        default=[], description="Datasets to checkpoint (names from the catalog); empty: all")


def vacuum_config_class(default_hours: int) -> type[dg.Config]:
    """The vacuum run config, its retention defaulting to ``default_hours`` (the setting)."""

    class LakeVacuumConfig(dg.Config):
        datasets: list[str] = Field(
            default=[], description="Datasets to vacuum (names from the catalog); empty: all")
        retention_hours: int = Field(
            default=default_hours,
            description="Delete files that no table version of the last retention_hours "
                        "references; time travel then reaches back this far and no further. "
                        "At least 1; the default is CONFLUX_LAKE_VACUUM_RETENTION_HOURS "
                        "(168 = 7 days when unset)")

    return LakeVacuumConfig


# --- one action over many tables -----------------------------------------------------------------

@dataclass
class TableResult:
    """What a maintenance op did to one dataset's table."""

    dataset: str
    status: str  # "done", "skipped" (no table yet) or "failed"
    figures: dict[str, int] = field(default_factory=dict)
    error: str = ""


def selected(requested: list[str], catalog: list[str]) -> list[str]:
    """The datasets a run acts on: ``requested`` (checked against the catalog), else all."""
    if not requested:
        return list(catalog)
    unknown = [name for name in requested if name not in catalog]
    if unknown:
        raise dg.Failure(description=f"unknown dataset(s) {', '.join(map(repr, unknown))}: the "
                                     f"catalog has {', '.join(catalog)}")
    return list(dict.fromkeys(requested))


def days_to_compact(partitions: list[str], last_days: int,
                    today: dt.date | None = None) -> list[str] | None:
    """The ``__day`` partitions an optimize run is restricted to, or None for whole tables."""
    if partitions and last_days:
        raise dg.Failure(description="set partitions or last_days, not both")
    if last_days < 0:
        raise dg.Failure(description=f"last_days={last_days} must be 0 (whole tables) or more")
    for day in partitions:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise dg.Failure(description=f"partition {day!r} is not a day (YYYY-MM-DD)") from None
    if partitions:
        return sorted(set(partitions))
    if last_days:
        today = today or dt.datetime.now(dt.timezone.utc).date()
        return [(today - dt.timedelta(days=n)).isoformat() for n in range(last_days - 1, -1, -1)]
    return None


def run_tables(context: dg.OpExecutionContext, lake: LakeResource, names: list[str],
               verb: str, action: Callable[[str], dict[str, int]]) -> list[TableResult]:
    """``action`` on each dataset's table, one after the other; a dataset without a table yet is
    skipped, one that fails is logged and recorded, and the others go on."""
    results = []
    for name in names:
        try:
            if not lake.exists_table(name):
                context.log.info(f"{verb} {name}: skipped, no Delta table yet")
                results.append(TableResult(name, "skipped"))
                continue
            figures = action(name)
        except Exception as exc:  # noqa: BLE001 — reported below, and the run fails at the end
            context.log.error(f"{verb} {name}: FAILED: {type(exc).__name__}: {exc}")
            results.append(TableResult(name, "failed", error=f"{type(exc).__name__}: {exc}"))
            continue
        context.log.info(f"{verb} {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        results.append(TableResult(name, "done", figures))
    return results


def report(job: str, results: list[TableResult], columns: list[str],
           extra: dict | None = None) -> Iterator[dg.Output]:
    """The op's output: a table of figures per dataset (and totals) as metadata; then, when any
    dataset failed, a ``dg.Failure`` naming each of them."""
    schema = dg.TableSchema(columns=[dg.TableColumn("dataset", "string"),
                                     dg.TableColumn("status", "string"),
                                     *(dg.TableColumn(c, "int") for c in columns),
                                     dg.TableColumn("error", "string")])
    records = [dg.TableRecord({"dataset": r.dataset, "status": r.status,
                               **{c: r.figures.get(c) for c in columns}, "error": r.error})
               for r in results]
    failed = [r for r in results if r.status == "failed"]
    metadata = {
        "tables": dg.MetadataValue.table(records, schema=schema),
        "datasets_done": sum(r.status == "done" for r in results),
        "datasets_skipped": sum(r.status == "skipped" for r in results),
        "datasets_failed": len(failed),
        **{f"total_{c}": sum(r.figures.get(c, 0) for r in results)
           for c in columns if c != "version"},
        **(extra or {}),
    }
    yield dg.Output(None, metadata=metadata)
    if failed:
        raise dg.Failure(
            description=f"{job} failed for {len(failed)} of {len(results)} dataset(s): "
                        + "; ".join(f"{r.dataset} ({r.error})" for r in failed),
            metadata={"failed_datasets": ", ".join(r.dataset for r in failed)})


def _size(stats) -> int:
    """``totalSize`` of delta-rs's ``filesAdded``/``filesRemoved`` (a JSON string or a dict)."""
    if isinstance(stats, str):
        stats = json.loads(stats) if stats else {}
    return int((stats or {}).get("totalSize") or 0)


def optimize_figures(metrics: Iterable[dict]) -> dict[str, int]:
    """delta-rs compaction metrics (one per optimize call) summed into the reported figures."""
    figures = {"files_added": 0, "files_removed": 0, "bytes_added": 0, "bytes_removed": 0,
               "partitions_optimized": 0}
    for m in metrics:
        figures["files_added"] += int(m.get("numFilesAdded") or 0)
        figures["files_removed"] += int(m.get("numFilesRemoved") or 0)
        figures["bytes_added"] += _size(m.get("filesAdded"))
        figures["bytes_removed"] += _size(m.get("filesRemoved"))
        figures["partitions_optimized"] += int(m.get("partitionsOptimized") or 0)
    return figures


# --- the jobs and schedules ------------------------------------------------------------------------

def maintenance_definitions(
        datasets: Iterable[Dataset], *, settings: LakeMaintenance | None = None,
) -> tuple[list[dg.JobDefinition], list[dg.ScheduleDefinition]]:
    """The lake maintenance jobs over a catalog, and their schedules.

    Args:
        datasets: the catalog's declarations (each one's Delta table is maintained).
        settings: ``CONFLUX_LAKE_MAINTENANCE`` and ``CONFLUX_LAKE_VACUUM_RETENTION_HOURS``
            (default: read from the environment now).

    Returns:
        (jobs ``lake_optimize``, ``lake_vacuum``, ``lake_checkpoint``; their schedules
        ``<job>_schedule``). The jobs need the ``lake`` resource.

    Examples:
        >>> jobs, schedules = maintenance_definitions(DATASETS)
        >>> sorted(s.cron_schedule for s in schedules)
        ['17 * * * *', '30 3 * * *', '47 * * * *']
    """
    settings = settings or LakeMaintenance.from_env()
    datasets = list(datasets)
    catalog = [ds.name for ds in datasets]
    partitioned = {ds.name for ds in datasets if ds.partitioned}
    VacuumConfig = vacuum_config_class(settings.vacuum_retention_hours)

    @dg.op(name="optimize_tables", out=dg.Out(dg.Nothing), tags={MAINTENANCE_TAG: "optimize"})
    def optimize_tables(context: dg.OpExecutionContext, config: LakeOptimizeConfig,
                        lake: LakeResource):
        names = selected(config.datasets, catalog)
        days = days_to_compact(config.partitions, config.last_days)
        if days is not None:
            context.log.info(f"compacting days {days[0]}..{days[-1]} ({len(days)}) of the "
                             "partitioned datasets; unpartitioned ones whole")

        def compact(name: str) -> dict[str, int]:
            if days is None or name not in partitioned:
                metrics = [lake.optimize(name)]
            else:
                metrics = [lake.optimize(name, day) for day in days]
            return {**optimize_figures(metrics), "version": lake.version(name)}

        results = run_tables(context, lake, names, "optimize", compact)
        yield from report(OPTIMIZE_JOB, results,
                          ["files_added", "files_removed", "bytes_added", "bytes_removed",
                           "partitions_optimized", "version"],
                          {"days": ", ".join(days) if days else "all"})

    @dg.op(name="vacuum_tables", out=dg.Out(dg.Nothing), tags={MAINTENANCE_TAG: "vacuum"})
    def vacuum_tables(context: dg.OpExecutionContext, config: VacuumConfig, lake: LakeResource):
        try:
            hours = vacuum_retention_hours(config.retention_hours, "retention_hours")
        except ConfigError as exc:
            raise dg.Failure(description=str(exc)) from None
        names = selected(config.datasets, catalog)
        context.log.info(f"vacuum retention {hours} h: files unreferenced for longer are deleted")

        def vacuum(name: str) -> dict[str, int]:
            removed = lake.vacuum(name, retention_hours=hours)
            for path in removed[:20]:
                context.log.debug(f"vacuum {name}: deleted {path}")
            return {"files_removed": len(removed), "version": lake.version(name)}

        results = run_tables(context, lake, names, "vacuum", vacuum)
        yield from report(VACUUM_JOB, results, ["files_removed", "version"],
                          {"retention_hours": hours})

    @dg.op(name="checkpoint_tables", out=dg.Out(dg.Nothing), tags={MAINTENANCE_TAG: "checkpoint"})
    def checkpoint_tables(context: dg.OpExecutionContext, config: LakeCheckpointConfig,
                          lake: LakeResource):
        names = selected(config.datasets, catalog)
        results = run_tables(context, lake, names, "checkpoint",
                             lambda name: {"version": lake.create_checkpoint(name)})
        yield from report(CHECKPOINT_JOB, results, ["version"])

    def job(name: str, kind: str, op: dg.OpDefinition, description: str) -> dg.JobDefinition:
        @dg.job(name=name, tags={MAINTENANCE_TAG: kind}, executor_def=dg.in_process_executor,
                description=description)
        def maintenance_job():
            op()

        return maintenance_job

    jobs = [
        job(OPTIMIZE_JOB, "optimize", optimize_tables,
            "Compacts the small files of every dataset's Delta table (optimize.compact)"),
        job(VACUUM_JOB, "vacuum", vacuum_tables,
            "Deletes files no table version within the retention references (Delta vacuum)"),
        job(CHECKPOINT_JOB, "checkpoint", checkpoint_tables,
            "Writes a Delta log checkpoint of every dataset's table"),
    ]
    by_name = {j.name: j for j in jobs}
    schedules = [dg.ScheduleDefinition(name=s.name, job=by_name[s.job], cron_schedule=s.cron,
                                       execution_timezone=TIMEZONE, default_status=s.status)
                 for s in maintenance_schedules(settings)]
    return jobs, schedules
