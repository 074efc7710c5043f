"""Operations as Dagster jobs and assets, launchable from the UI's launchpad (typed config, every
default filled in, every field described) and from the CLI through the webserver — so an
operation started in one shows in the other.

Per event dataset:

* the **asset** itself is materializable: *Materialize* (or a backfill, one run for the whole
  range: ``BackfillPolicy.single_run``) on days reconciles those days with the batch source and
  repairs them; without a batch source it replays every retained Kafka record whose event day is
  in the range. The Kafka sensor and the ingest runs keep reporting the event path's own
  materializations of the same asset;
* ``<dataset>__replay_job`` (:class:`~conflux.core.opconfig.ReplayConfig`) re-applies what the
  topics received since a point in time, in one run; over a retention gap it rebuilds from the
  batch source instead (or fails, naming the gap, when there is none);
* ``<dataset>__dlq_replay_job`` (:class:`~conflux.core.opconfig.DeadLetterReplayConfig`)
  re-publishes dead letters (by reason, since) to their source topic, each at most once;
* ``<dataset>__reconcile_job`` (batch source only, ``conflux.batch.fallback``).

Per ledger projection: ``<projection>__ledger_rebuild_job``
(:class:`~conflux.core.opconfig.LedgerRebuildConfig`) folds the ledger from offset zero and
compares it with the stored projection (the run fails listing the differences) or replaces it.

Each op logs its report as lines (what the CLI prints after the run) and one ``report: {json}``
line (what ``--json`` prints).
"""


import datetime as dt
import io
import json

import dagster as dg

from conflux.batch.fallback import diff_metadata, repair_materialization, repair_range
from conflux.contracts.metadata import materialization_metadata
from conflux.core.declarations import Dataset, EventDataset
from conflux.core.opconfig import DeadLetterReplayConfig, LedgerRebuildConfig, ReplayConfig
from conflux.event import decode
from conflux.event.ingest import resolver_for
from conflux.event.replay import apply_plan, describe_plan, offsets_since, plan_days, plan_replay
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource

REPORT_PREFIX = "report: "
REASON_CODES = (decode.NULL_VALUE, decode.OVERSIZE, decode.UNDECODABLE, decode.INVALID_JSON,
                decode.CONTRACT_VIOLATION, decode.UNKNOWN_SCHEMA, decode.UNSUPPORTED_VERSION,
                decode.MISSING_KEY, decode.BAD_FRAMING, decode.UNKNOWN_SCHEMA_ID,
                decode.CONTRACT_CONFLICT)


def replay_job_name(ds: EventDataset) -> str:
    return f"{ds.name}__replay_job"


def dlq_replay_job_name(ds: EventDataset) -> str:
    return f"{ds.name}__dlq_replay_job"


def ledger_rebuild_job_name(projection: Dataset) -> str:
    return f"{projection.name}__ledger_rebuild_job"


def log_report(context, lines: list[str], report: dict) -> None:
    """The report as readable lines, then as one JSON line (for ``--json``)."""
    for line in lines:
        context.log.info(line)
    context.log.info(REPORT_PREFIX + json.dumps(report, default=str))


def _days(context: dg.AssetExecutionContext) -> tuple[dt.date | None, dt.date | None]:
    """The event days a run materializes (None, None: an unpartitioned dataset). A run of one
    partition (the UI's Materialize on a day) carries its key, a backfill's run a range."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None, None
    keys = context.partition_key_range
    return dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)


def one_op_job(name: str, op: dg.OpDefinition, *, dataset: str, operation: str,
               description: str) -> dg.JobDefinition:
    """A job of one op, tagged with the dataset and the operation (the UI filters runs by
    tag)."""
    @dg.job(name=name, tags={"conflux/dataset": dataset, "conflux/operation": operation},
            description=description)
    def job():
        op()

    return job


# --- the event dataset as an asset ----------------------------------------------------------------
def build_event_asset(ds: EventDataset, spec: dg.AssetSpec) -> dg.AssetsDefinition:
    """The event dataset as a materializable asset: materializing days repairs them from the
    batch source, or replays them from Kafka when there is none (see the module docstring).

    Args:
        ds: the event dataset; spec: its compiled spec (``asset_spec``).

    Returns:
        A ``multi_asset`` of one asset, op ``<dataset>__materialize``, backfilled in one run.
    """
    how = (f"reconcile with {ds.fallback.source_table} and repair" if ds.fallback is not None
           else f"replay from {', '.join(ds.topics)} (every retained record of those days)")

    # the asset page says what Materialize does
    spec = spec.replace_attributes(description=f"{spec.description or ds.name}\n\n"
                                               f"Materialize (or backfill) days: {how}.")

    @dg.multi_asset(specs=[spec], name=f"{ds.name}__materialize",
                    backfill_policy=dg.BackfillPolicy.single_run() if ds.partitioned else None,
                    description=f"Materialize = {how}")
    def _materialize(context: dg.AssetExecutionContext, kafka: KafkaResource,
                     lake: LakeResource, postgres: PostgresResource,
                     registry: SchemaRegistryResource) -> dg.MaterializeResult:
        first, last = _days(context)
        if ds.fallback is not None:
            result = repair_range(context, ds, postgres=postgres, lake=lake, start=first,
                                  end=last)
            span = f"{first or 'beginning'} .. {last or 'end'}"
            commit = next(iter(result.commits.values()), None)
            return dg.MaterializeResult(metadata={
                **materialization_metadata(ds, rows=result.source_rows, with_schema=False,
                                           materialized_by="repair from the batch source"),
                **diff_metadata(ds, result, span, repaired=True),
                **(commit.metadata() if commit is not None else {})})
        plan = plan_days(ds, kafka)
        if plan.gaps:
            context.log.warning(f"{ds.name}: retention removed older records of "
                                f"{', '.join(plan.gaps)}: those days may stay incomplete")
        # no dead letters written again: bad records were dead-lettered when they arrived
        keep = (first or dt.date.min, last or dt.date.max)
        reports = apply_plan(ds, plan, kafka=kafka, lake=lake,
                             resolver=resolver_for(ds, registry), origin=context.run_id,
                             keep_days=keep)
        rows = sum(r.rows_valid for r in reports)
        for lost in plan.lost:
            context.log.warning(f"{ds.name}: removed while replaying: {lost.describe()}")
        context.log.info(f"{ds.name}: replayed {plan.records} retained record(s), "
                         f"{rows} row(s) of {first or 'any day'} .. {last or ''} applied")
        return dg.MaterializeResult(metadata=materialization_metadata(
            ds, rows=rows, with_schema=False, materialized_by="replay from Kafka",
            records_read=plan.records, retention_gaps=", ".join(plan.gaps)))

    return _materialize


# --- replay from a point in time ------------------------------------------------------------------
def build_replay_job(ds: EventDataset) -> dg.JobDefinition:
    """``<dataset>__replay_job``: re-apply what the topics received since ``since``, in one
    run; over a retention gap, rebuild from the batch source instead (or fail without one)."""

    @dg.op(name=f"{ds.name}__replay", tags={"conflux/dataset": ds.name})
    def _replay(context: dg.OpExecutionContext, config: ReplayConfig, kafka: KafkaResource,
                lake: LakeResource, postgres: PostgresResource,
                registry: SchemaRegistryResource) -> None:
        when = config.when
        offsets = offsets_since(ds, kafka, when)
        plan = plan_replay(ds, offsets)
        lines = describe_plan(ds, plan, offsets, when)
        report = {"dataset": ds.name, "since": when.isoformat(), "records": plan.records,
                  "batches": len(plan.runs), "gaps": plan.gaps, "dry_run": config.dry_run}
        if plan.gaps:
            if ds.fallback is None:
                raise dg.Failure(f"{ds.name}: retention removed records that may fall in the "
                                 f"window ({', '.join(plan.gaps)}) and it has no batch source "
                                 f"to rebuild them from; replaying what Kafka still holds would "
                                 f"leave gaps")
            lines.append(f"{ds.name}: rebuilding from the batch source "
                         f"{ds.fallback.source_table} instead")
            if not config.dry_run:
                result = repair_range(context, ds, postgres=postgres, lake=lake, start=None,
                                      end=None)
                for p in result.partitions_repaired:
                    context.log_event(repair_materialization(ds, result, p, context.run_id))
                report["rebuilt_from"] = ds.fallback.source_table
                report["repaired_partitions"] = len(result.partitions_repaired)
            log_report(context, lines, report)
            return
        if not config.dry_run:
            def applied(ingest, batch) -> None:
                for materialization in ingest.materializations:
                    context.log_event(materialization)

            reports = apply_plan(ds, plan, kafka=kafka, lake=lake,
                                 resolver=resolver_for(ds, registry), origin=context.run_id,
                                 on_batch=applied)
            report["rows_valid"] = sum(r.rows_valid for r in reports)
            report["dead_lettered"] = sum(r.dead_lettered for r in reports)
            report["removed_while_replaying"] = [g.describe() for g in plan.lost]
            lines += [f"{ds.name}: removed while replaying: {g.describe()}" for g in plan.lost]
            lines.append(f"{ds.name}: applied {plan.records} record(s): {report['rows_valid']} "
                         f"valid, {report['dead_lettered']} dead-lettered")
        log_report(context, lines, report)

    return one_op_job(replay_job_name(ds), _replay, dataset=ds.name, operation="replay",
                      description=f"Replay {ds.name} from Kafka since a point in time (arrival "
                                  f"time, offsets_for_times), in one run; idempotent")


# --- dead-letter replay -------------------------------------------------------------------------
def build_dlq_replay_job(ds: EventDataset) -> dg.JobDefinition:
    """``<dataset>__dlq_replay_job``: re-publish the chosen dead letters of ``ds`` to their source
    topic (``conflux.observe.dlq_replay.replay``), each at most once unless ``again``."""

    @dg.op(name=f"{ds.name}__dlq_replay", tags={"conflux/dataset": ds.name})
    def _dlq_replay(context: dg.OpExecutionContext, config: DeadLetterReplayConfig,
                    kafka: KafkaResource, postgres: PostgresResource) -> None:
        from conflux.core.errors import ConfigError
        from conflux.observe.dlq import Selection, check_reasons, new_replay_id, parse_since
        from conflux.observe.dlq_replay import ReplayLedger, replay

        try:
            reasons = check_reasons(config.reasons, REASON_CODES)
        except ConfigError as exc:
            raise dg.Failure(str(exc)) from None
        if config.source_topic and config.source_topic not in ds.topics:
            raise dg.Failure(f"source_topic {config.source_topic!r} is not a topic of {ds.name} "
                             f"({', '.join(ds.topics)})")
        since = parse_since(config.since) if config.since else None
        selection = Selection(since_ms=int(since.timestamp() * 1000) if since else None,
                              reasons=reasons, source_topic=config.source_topic or None,
                              again=config.again, limit=config.limit or None)
        result = replay(ds, kafka=kafka, ledger=ReplayLedger(postgres.url), selection=selection,
                        replay_id=new_replay_id(), dry_run=config.dry_run)
        lines = [f"{ds.name}: {'dry run of ' if config.dry_run else ''}replay "
                 f"{result.replay_id} of {ds.dlq_topic} ({selection.describe()}): "
                 f"{result.scanned} read, {sum(result.selected.values())} selected, "
                 f"{sum(result.skipped.values())} already replayed, "
                 f"{sum(result.published.values())} "
                 f"{'would be ' if config.dry_run else ''}re-published"]
        lines += [f"  {code}: selected {sel}, already replayed {skip}, unroutable {unr}, "
                  f"re-published {pub}" for code, sel, skip, unr, pub in result.rows()]
        log_report(context, lines, result.as_dict())

    return one_op_job(dlq_replay_job_name(ds), _dlq_replay, dataset=ds.name,
                      operation="dlq_replay",
                      description=f"Re-publish dead letters of {ds.name} ({ds.dlq_topic}) to "
                                  f"their source topic after a fix, by reason and time; each at "
                                  f"most once")


# --- ledger rebuild -------------------------------------------------------------------------------
def ledger_projections(catalog: dict[str, Dataset]) -> dict[str, tuple]:
    """``{projection name: (ledger, projection, opening name)}`` of the catalog's datasets
    computed by ``ledger_projection``."""
    found = {}
    for name, ds in catalog.items():
        spec = getattr(getattr(ds, "compute", None), "projection", None)
        if spec is not None:
            found[name] = (catalog[spec.ledger], ds, spec.opening)
    return found


def build_ledger_rebuild_job(ledger: EventDataset, projection: Dataset,
                             opening: str) -> dg.JobDefinition:
    """``<projection>__ledger_rebuild_job``: fold ``ledger`` from offset zero; compare with the
    stored projection (the run fails unless identical) or, with ``replace``, replace it."""

    @dg.op(name=f"{projection.name}__ledger_rebuild", tags={"conflux/dataset": projection.name})
    def _rebuild(context: dg.OpExecutionContext, config: LedgerRebuildConfig,
                 kafka: KafkaResource, lake: LakeResource,
                 registry: SchemaRegistryResource) -> None:
        from conflux.ledger.report import run_rebuild

        common = dict(ledger=ledger, projection=projection, opening=opening, kafka=kafka,
                      lake=lake, resolver=resolver_for(ledger, registry), registry=registry,
                      check=not config.replace, log_event=context.log_event)
        text = io.StringIO()
        code = run_rebuild(**common, out=text)
        lines = text.getvalue().rstrip().splitlines()
        if code == 0:
            log_report(context, lines, {"projection": projection.name,
                                        "replaced" if config.replace else "identical": True})
        else:
            for line in lines:
                context.log.info(line)
            raise dg.Failure(f"{projection.name} differs from the rebuild of {ledger.name} from "
                             f"offset zero (replace: true replaces it)",
                             metadata={"differences": "\n".join(lines)})

    return one_op_job(ledger_rebuild_job_name(projection), _rebuild, dataset=projection.name,
                      operation="ledger_rebuild",
                      description=f"Fold {ledger.name} from offset zero and compare it with "
                                  f"{projection.name} (fails listing the differences) or, with "
                                  f"replace, replace it")


def operations_definitions(catalog: dict[str, Dataset]) -> list[dg.JobDefinition]:
    """Every event dataset's replay and dead-letter replay jobs, and every ledger projection's
    rebuild job (the reconcile jobs come with the batch fallback)."""
    jobs: list[dg.JobDefinition] = []
    for ds in catalog.values():
        if isinstance(ds, EventDataset):
            jobs += [build_replay_job(ds), build_dlq_replay_job(ds)]
    for ledger, projection, opening in ledger_projections(catalog).values():
        jobs.append(build_ledger_rebuild_job(ledger, projection, opening))
    return jobs
