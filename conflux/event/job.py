"""Event path, run side: the ingest job of an event dataset.

A run reads exactly its ``[start, end)`` ranges and applies them with the same code as the
sensor's inline micro-batches (``conflux.event.ingest``): decode and validate in batches against the
contract version each record declares, dead-letter bad records with their reason, upsert good
rows by key into the event-time partitions they belong to, one materialization per partition.
Offsets of its ranges that no longer exist when it reads them (removed by retention or
``delete_records`` after the range was planned, or a recreated topic) are recorded as offset
gaps (``conflux.observe.offset_gaps``) before the run succeeds, and logged as a warning.
"""


import dagster as dg

from conflux.observe import offset_gaps, openlineage
from conflux.core.declarations import EventDataset
from conflux.event.ingest import apply_records, range_lag, resolver_for, summarize
from conflux.event.offsets import Gap, gap_at
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource


# A step that fails on a transient outage (Kafka or Postgres restarting: reading a range gives up
# after 30 s without records) is retried inside its run, after 2, 4, 8, 16, 32 s (+/- jitter):
# ranges are idempotent, and a run that still fails is re-executed by Dagster's run retries.
# The op raises ``RetryRequested`` itself for exceptions only. Given as the op's ``retry_policy``,
# Dagster would also retry the interrupt that terminating the run delivers: a run terminated from
# the UI re-executed its step and ended SUCCESS.
INGEST_RETRY = dg.RetryPolicy(max_retries=5, delay=2, backoff=dg.Backoff.EXPONENTIAL,
                              jitter=dg.Jitter.PLUS_MINUS)


def retry_on_error(context: dg.OpExecutionContext) -> dg.RetryRequested:
    """``INGEST_RETRY``'s next attempt, for an exception (an interrupt is never one)."""
    attempt = context.retry_number + 1
    return dg.RetryRequested(max_retries=INGEST_RETRY.max_retries,
                             seconds_to_wait=INGEST_RETRY.calculate_delay(attempt))


class RangeConfig(dg.Config):
    topic: str
    partition: int
    start: int
    end: int


class IngestConfig(dg.Config):
    ranges: list[RangeConfig]


def build_ingest_job(ds: EventDataset, *, executor: dg.ExecutorDefinition = dg.in_process_executor,
                     name: str | None = None) -> dg.JobDefinition:
    """A one-op job applying its ranges to ``ds`` (in-process executor by default: a separate
    process per step would add ~1.2 s to every run).

    Args:
        ds: the event dataset.
        executor: the job's executor (benchmarks pass Dagster's default multiprocess one).
        name: job name (default ``<dataset>__ingest_job``).

    Returns:
        The job ``<dataset>__ingest_job``; its op ``<dataset>__ingest`` takes ``IngestConfig``.
    """

    @dg.op(name=f"{ds.name}__ingest", tags={"conflux/dataset": ds.name})
    def ingest(context: dg.OpExecutionContext, config: IngestConfig, kafka: KafkaResource,
               lake: LakeResource, registry: SchemaRegistryResource) -> None:
        try:
            apply(context, config, kafka, lake, registry)
        except (dg.Failure, dg.DagsterError):
            raise  # Dagster's own control flow, as with a retry_policy
        except Exception as exc:  # not an interrupt (BaseException): a terminated run stops
            raise retry_on_error(context) from exc

    def apply(context: dg.OpExecutionContext, config: IngestConfig, kafka: KafkaResource,
              lake: LakeResource, registry: SchemaRegistryResource) -> None:
        sources = [r.model_dump() for r in config.ranges]
        # OpenLineage START, then COMPLETE or FAIL, around the work (nothing when lineage is off)
        with openlineage.lineage_run(
                lambda: openlineage.ingest_io(ds, lake_path=lake.path,
                                              bootstrap_servers=kafka.bootstrap_servers,
                                              job_name=f"{ds.name}__ingest"),
                parent=openlineage.dagster_parent(context)) as run:
            gaps: list[Gap] = []
            records = kafka.read_ranges([(r.topic, r.partition, r.start, r.end)
                                         for r in config.ranges],
                                        on_gap=lambda jump, end: gaps.append(gap_at(jump, end)))
            report = apply_records(ds, records, kafka=kafka, lake=lake,
                                   resolver=resolver_for(ds, registry), origin=context.run_id,
                                   sources=sources, lag=range_lag(kafka, sources))
            run.add_rows(openlineage.DATA, report.rows_valid)
            run.add_rows(openlineage.DLQ, report.dead_lettered)
        if gaps:  # recorded before the run succeeds (the sensor then settles its ranges)
            for g in gaps:
                context.log.warning(f"{ds.name}: offset gap: {g.describe()}")
            # the ledger is in the platform database, the registry's
            events, _ = offset_gaps.track(ds, offset_gaps.GapLedger(registry.url), gaps,
                                          detected_by=context.run_id)
            for event in events:
                context.instance.report_runless_asset_event(event)
        for materialization in report.materializations:
            context.log_event(materialization)
        if report.correlation_ids or report.traceparents:
            context.instance.add_run_tags(context.run_id, {
                "conflux/correlation_id": (report.correlation_ids or [""])[0][:63],
                "conflux/correlation_ids": str(report.distinct_correlation_ids),
                "conflux/traceparent": (report.traceparents or [""])[0][:63],
            })
        spans = ", ".join(f"{r.topic}[{r.partition}] [{r.start}, {r.end})" for r in config.ranges)
        context.log.info(summarize(ds, report, spans))

    @dg.job(name=name or f"{ds.name}__ingest_job", tags={"conflux/path": "event"},
            executor_def=executor,
            description=f"Applies offset ranges of {', '.join(ds.topics)} to {ds.name}")
    def ingest_job():
        ingest()

    return ingest_job
