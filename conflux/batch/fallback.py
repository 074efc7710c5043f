"""Dagster wiring of an event dataset's batch fallback: an asset check that reconciles the
dataset with its batch source (and repairs it), a job to run it by hand for a date range, and a
schedule (off by default) to run it on the declared cadence."""


import datetime as dt

import dagster as dg
from pydantic import Field

from conflux.observe import openlineage
from conflux.core.declarations import EventDataset
from conflux.batch.reconcile import reconcile
from conflux.contracts.metadata import materialization_metadata
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource

CHECK_NAME = "matches_batch_source"


class FallbackConfig(dg.Config):
    start: str = Field(default="", description="First event day to reconcile (YYYY-MM-DD); "
                                               "empty: the beginning")
    end: str = Field(default="", description="Last event day to reconcile (YYYY-MM-DD); "
                                             "empty: the end")
    repair: bool = Field(default=True, description="Repair the differences found")
    remove_extra: bool = Field(default=True, description="Remove rows the source does not have")


def _day(text: str, what: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise dg.Failure(f"{what} {text!r} is not a date (YYYY-MM-DD)") from exc


def build_fallback(ds: EventDataset) -> "tuple[dg.AssetChecksDefinition, " \
                                        "dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]":
    """The reconciliation check, its job ``<dataset>__fallback_job`` and its schedule
    ``<dataset>__fallback`` (stopped until turned on).

    Args:
        ds: an event dataset declaring ``fallback``.

    Returns:
        (asset check ``matches_batch_source``, job, schedule).

    Examples:
        >>> check, job, schedule = build_fallback(ORDERS)
        >>> job.name, schedule.name
        ('orders__fallback_job', 'orders__fallback')
    """
    assert ds.fallback is not None, f"{ds.name} declares no batch fallback"
    source = ds.fallback.source_table
    spec = dg.AssetCheckSpec(
        CHECK_NAME, asset=ds.name, blocking=False,
        description=f"{ds.name} has exactly the rows of its batch source {source} "
                    f"(missing / extra / changed keys); repairs differences when run")

    @dg.multi_asset_check(specs=[spec], name=f"{ds.name}__reconcile",
                          description=f"Reconcile {ds.name} with {source} and repair it")
    def _check(context: dg.AssetCheckExecutionContext, config: FallbackConfig,
               postgres: PostgresResource, lake: LakeResource):
        start, end = _day(config.start, "start"), _day(config.end, "end")
        if start and end and start > end:
            raise dg.Failure(f"start {start} is after end {end}")
        span = f"{start or 'beginning'} .. {end or 'end'}"
        context.log.info(f"{ds.name}: reconciling with {source} over {span}")
        # OpenLineage START, then COMPLETE or FAIL, around the work (nothing when lineage is off)
        with openlineage.lineage_run(
                lambda: openlineage.fallback_io(ds, lake_path=lake.path, postgres_url=postgres.url,
                                                repair=config.repair),
                parent=openlineage.dagster_parent(context)):
            result = reconcile(ds, postgres=postgres, lake=lake, start=start, end=end,
                               repair=config.repair, remove_extra=config.remove_extra)
        counts = result.diff.counts()
        examples = result.diff.examples(list(ds.key))
        context.log.info(f"{ds.name}: {result.partitions_compared} partition(s) compared, "
                         f"{counts}; repaired {len(result.partitions_repaired)} partition(s)")
        for p in result.partitions_repaired:
            context.op_execution_context.log_event(dg.AssetMaterialization(
                asset_key=ds.name, partition=p or None,
                metadata={**materialization_metadata(
                    ds, rows=0, with_schema=False, repaired_from=source,
                    repaired_by=context.op_execution_context.run_id,
                    **{f"{k}_repaired": v for k, v in counts.items()}),
                    **(c.metadata() if (c := result.commits.get(p)) else {})}))
        yield dg.AssetCheckResult(
            asset_key=ds.name, check_name=CHECK_NAME, passed=result.diff.clean,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "conflux/source_table": source,
                "conflux/range": span,
                "conflux/partitions_compared": result.partitions_compared,
                "conflux/source_rows": result.source_rows,
                "conflux/stored_rows": result.stored_rows,
                "conflux/missing": counts["missing"],
                "conflux/extra": counts["extra"],
                "conflux/changed": counts["changed"],
                "conflux/examples": dg.MetadataValue.json(examples),
                "conflux/repaired_partitions": len(result.partitions_repaired),
                "conflux/repaired": config.repair,
            })

    job = dg.define_asset_job(
        f"{ds.name}__fallback_job", selection=dg.AssetSelection.checks(_check),
        description=f"Reconcile {ds.name} with {source} for a date range and repair it "
                    f"(config: start, end, repair, remove_extra)")
    schedule = dg.ScheduleDefinition(
        name=f"{ds.name}__fallback", job=job, cron_schedule=ds.fallback.cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Batch fallback: reconcile and repair {ds.name} from {source}")
    return _check, job, schedule
