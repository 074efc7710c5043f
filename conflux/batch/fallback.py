"""Dagster wiring of an event dataset's batch fallback.

* the asset check ``matches_batch_source`` compares the dataset with its batch source and only
  **reports** (missing / extra / changed keys): executing it never writes;
* the job ``<dataset>__reconcile_job`` compares and **repairs** a date range (typed config:
  :class:`~conflux.core.opconfig.ReconcileConfig`), and the schedule ``<dataset>__fallback``
  (off by default) runs it on the declared cadence;
* :func:`repair_range` is the repair itself, shared with the event dataset's materialization
  (``conflux.dagster.operations``): *Materialize* on a partition repairs that day.
"""


import datetime as dt

import dagster as dg

from conflux.batch.reconcile import Reconciliation, reconcile
from conflux.contracts.metadata import materialization_metadata
from conflux.core.declarations import EventDataset
from conflux.core.opconfig import CheckRangeConfig, ReconcileConfig
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.observe import openlineage

CHECK_NAME = "matches_batch_source"


def reconcile_job_name(ds: EventDataset) -> str:
    return f"{ds.name}__reconcile_job"


def check_op_name(ds: EventDataset) -> str:
    return f"{ds.name}__matches_batch_source"


def diff_metadata(ds: EventDataset, result: Reconciliation, span: str, *,
                  repaired: bool) -> dict:
    """What a comparison found (the check's result, the repair's materialization)."""
    counts = result.diff.counts()
    return {
        "conflux/source_table": ds.fallback.source_table,
        "conflux/range": span,
        "conflux/partitions_compared": result.partitions_compared,
        "conflux/source_rows": result.source_rows,
        "conflux/stored_rows": result.stored_rows,
        "conflux/missing": counts["missing"],
        "conflux/extra": counts["extra"],
        "conflux/changed": counts["changed"],
        "conflux/examples": dg.MetadataValue.json(result.diff.examples(list(ds.key))),
        "conflux/repaired_partitions": len(result.partitions_repaired),
        "conflux/repaired": repaired,
    }


def repair_range(context, ds: EventDataset, *, postgres: PostgresResource, lake: LakeResource,
                 start: dt.date | None, end: dt.date | None, repair: bool = True,
                 remove_extra: bool = True) -> Reconciliation:
    """Reconcile ``ds`` with its batch source over ``start .. end`` and (``repair``) make it
    equal, inside an OpenLineage run; logs what it found."""
    span = f"{start or 'beginning'} .. {end or 'end'}"
    source = ds.fallback.source_table
    context.log.info(f"{ds.name}: reconciling with {source} over {span}"
                     + ("" if repair else " (report only)"))
    # OpenLineage START, then COMPLETE or FAIL, around the work (nothing when lineage is off)
    with openlineage.lineage_run(
            lambda: openlineage.fallback_io(ds, lake_path=lake.path, postgres_url=postgres.url,
                                            repair=repair),
            parent=openlineage.dagster_parent(context)):
        result = reconcile(ds, postgres=postgres, lake=lake, start=start, end=end,
                           repair=repair, remove_extra=remove_extra)
    context.log.info(f"{ds.name}: {result.partitions_compared} partition(s) compared, "
                     f"{result.diff.counts()}; repaired {len(result.partitions_repaired)} "
                     f"partition(s)")
    return result


def repair_materialization(ds: EventDataset, result: Reconciliation, partition: str,
                           run_id: str) -> dg.AssetMaterialization:
    """The materialization of one repaired partition."""
    counts = result.diff.counts()
    commit = result.commits.get(partition)
    return dg.AssetMaterialization(
        asset_key=ds.name, partition=partition or None,
        metadata={**materialization_metadata(
            ds, rows=result.written.get(partition, 0), with_schema=False,
            repaired_from=ds.fallback.source_table, repaired_by=run_id,
            **{f"{k}_repaired": v for k, v in counts.items()}),
            **(commit.metadata() if commit else {})})


def _check_range(context: dg.AssetCheckExecutionContext,
                 config: CheckRangeConfig) -> tuple[dt.date | None, dt.date | None]:
    """The configured days; with none configured, the partitions of the run it executes in
    (materializing a day runs the check on that day), else everything."""
    if config.start or config.end:
        return config.first, config.last
    op = context.op_execution_context
    if op.has_partition_key or op.has_partition_key_range:  # one day, or a backfill's range
        keys = op.partition_key_range
        return dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)
    return None, None


def build_fallback(ds: EventDataset) -> "tuple[dg.AssetChecksDefinition, dg.JobDefinition, " \
                                        "dg.ScheduleDefinition]":
    """The read-only check ``matches_batch_source``, the repair job ``<dataset>__reconcile_job``
    and its schedule ``<dataset>__fallback`` (stopped until turned on).

    Args:
        ds: an event dataset declaring ``fallback``.

    Returns:
        (asset check, job, schedule).

    Examples:
        >>> check, job, schedule = build_fallback(ORDERS)
        >>> job.name, schedule.name
        ('orders__reconcile_job', 'orders__fallback')
    """
    assert ds.fallback is not None, f"{ds.name} declares no batch fallback"
    source = ds.fallback.source_table
    spec = dg.AssetCheckSpec(
        CHECK_NAME, asset=ds.name, blocking=False,
        description=f"{ds.name} has exactly the rows of its batch source {source} (missing / "
                    f"extra / changed keys). Read-only: executing it never writes; repair with "
                    f"the job {reconcile_job_name(ds)} or by materializing the days")

    @dg.multi_asset_check(specs=[spec], name=check_op_name(ds),
                          description=f"Compare {ds.name} with {source} (read-only)")
    def _check(context: dg.AssetCheckExecutionContext, config: CheckRangeConfig,
               postgres: PostgresResource, lake: LakeResource):
        start, end = _check_range(context, config)
        result = repair_range(context, ds, postgres=postgres, lake=lake, start=start, end=end,
                              repair=False)
        span = f"{start or 'beginning'} .. {end or 'end'}"
        yield dg.AssetCheckResult(
            asset_key=ds.name, check_name=CHECK_NAME, passed=result.diff.clean,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=diff_metadata(ds, result, span, repaired=False))

    @dg.op(name=f"{ds.name}__reconcile", tags={"conflux/dataset": ds.name},
           description=f"Compare {ds.name} with {source} over the days and repair it")
    def _reconcile(context: dg.OpExecutionContext, config: ReconcileConfig,
                   postgres: PostgresResource, lake: LakeResource) -> None:
        result = repair_range(context, ds, postgres=postgres, lake=lake, start=config.first,
                              end=config.last, repair=not config.dry_run,
                              remove_extra=config.remove_extra)
        for p in result.partitions_repaired:
            context.log_event(repair_materialization(ds, result, p, context.run_id))
        meta = diff_metadata(ds, result, config.describe(), repaired=not config.dry_run)
        context.log.info("result: " + ", ".join(
            f"{k.removeprefix('conflux/')}={getattr(v, 'value', v)}" for k, v in meta.items()))

    @dg.job(name=reconcile_job_name(ds), tags={"conflux/dataset": ds.name,
                                               "conflux/operation": "reconcile"},
            description=f"Reconcile {ds.name} with its batch source {source} over a range of "
                        f"event days and repair it (missing and changed rows written, extra rows "
                        f"removed); dry_run only reports")
    def job():
        _reconcile()

    schedule = dg.ScheduleDefinition(
        name=f"{ds.name}__fallback", job=job, cron_schedule=ds.fallback.cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Batch fallback: reconcile and repair {ds.name} from {source}")
    return _check, job, schedule
