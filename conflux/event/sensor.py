"""The Kafka sensor of an event dataset: the cursor is the commit.

Each tick reads the end offset of every partition of the dataset's topics (manual assignment,
no consumer group, a timeout on every call) and compares them with the cursor — the next offset
to apply per partition, stored by Dagster in Postgres. Then, by the dataset's ``ingest`` mode:

* **inline** (default; a backlog of at most ``inline_max_backlog`` records): the tick itself
  reads forward for up to ``tick_budget_s`` seconds and applies micro-batches as they arrive
  (every ``linger_ms``), reporting each partition's materialization to Dagster at once. The
  cursor is saved when the tick returns; a tick that dies midway is simply re-applied by the next
  one, which the idempotent upsert makes harmless. No run is launched: seconds-fresh data at a
  fraction of the CPU (a launched run costs seconds and ~4 CPU-seconds).
* **runs** (mode ``runs``, or a large backlog): one ingest run per tick takes the first pending
  ``[start, end)`` range of every partition, each at most ``max_records_per_run`` long. Its
  ``run_key`` names dataset / topic / partition / range of every range, so Dagster drops a
  request a retried tick makes again — no range is launched twice — and the cursor moves in the
  same tick result as the request — none is skipped. While ``max_inflight_runs`` runs are queued
  or running, ticks wait and records accumulate into bigger ranges (backpressure). The requested
  ranges stay in the cursor until a run applies them: a run that fails for good, is terminated
  from the UI, deleted or never created is requested again by a later tick
  (``conflux.event.requeue``), and until then the dataset is not caught up (its freshness check
  cannot pass).

Offsets that were never applied and no longer exist — removed by retention or
``delete_records`` first, or a recreated topic — are never passed over silently: the tick
compares the cursor with each partition's log start and end and the topic's id, and a read the
broker refuses says where; each gap is recorded (``conflux.observe.offset_gaps``) before the
cursor moves past it, and the dataset's ``offset_gaps`` check fails until it is acknowledged.

Each tick also mirrors the cursor it starts from (the saved one) into the consumer group
``conflux.<dataset>``, for Kafka's own lag tools (``conflux.event.group_mirror``).
"""

import time
from collections import Counter

import dagster as dg

from conflux.observe import offset_gaps, openlineage
from conflux.core.declarations import EventDataset
from conflux.core.errors import OffsetGapError
from conflux.event.report import prepare_instance, report_materializations
from conflux.event.ingest import apply_records, resolver_for
from conflux.contracts.metadata import LAST_UPDATED
from conflux.io.kafka import KafkaResource, OutOfRange, Record, TopicBounds
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.event import requeue
from conflux.event.group_mirror import mirror_cursor
from conflux.event.offsets import (Cursor, Gap, Pending, Range, TickState, advance,
                                   batch_ranges, dump_state, find_gaps, gap_at,
                                   lag_by_partition, next_batch, observe_every_s, parse_state,
                                   plan_ranges, run_key, tick_gap, unsettled_records)

INFLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def topic_bounds(ds: EventDataset, kafka: KafkaResource
                 ) -> tuple[dict[str, TopicBounds], list[str]]:
    """Id, log start and end offsets of every topic of ``ds``; the topics that do not exist."""
    bounds: dict[str, TopicBounds] = {}
    missing = []
    for topic in ds.topics:
        found = kafka.log_bounds(topic)
        if found is None:
            missing.append(topic)
        else:
            bounds[topic] = found
    return bounds, missing


def track_gaps(ds: EventDataset, registry: SchemaRegistryResource, state: TickState,
               found: list[Gap], now: float) -> tuple[list, TickState, str]:
    """Record ``found`` gaps and, after that or every ``CHECK_EVERY_S``, evaluate the
    ``offset_gaps`` check from the ledger (in the platform database, the registry's); returns
    the evaluation to report when it changed, the state, and a note for the tick."""
    if not found and 0 <= now - state.gaps_checked_at < offset_gaps.CHECK_EVERY_S:
        return [], state, ""
    ledger = offset_gaps.GapLedger(registry.url)
    try:
        events, ids = offset_gaps.track(ds, ledger, found, detected_by=f"sensor:{ds.name}__kafka",
                                        last_open=state.gaps_open)
    except OffsetGapError as exc:
        if found:  # the cursor must not pass a gap that is not recorded: retry next tick
            raise
        return [], state, f"offset gaps not evaluated: {exc}; "
    note = "".join(f"offset gap recorded: {g.describe()}; " for g in found)
    return events, state.with_(gaps_checked_at=now, gaps_open=ids), note


def lag_observation(ds: EventDataset, lag: dict[str, int], caught_up_as_of: float | None,
                    state: TickState, now: float, *, force: bool = False,
                    ) -> tuple[list[dg.AssetObservation], TickState]:
    """At most one observation per ``observe_every_s``: consumer lag, and — when caught up —
    ``dagster/last_updated_timestamp``, the time up to which everything that arrived is applied
    (what Dagster's freshness check reads; an idle topic stays fresh, a stuck sensor does not).
    Returns the observations and the state recording when this one was made."""
    if not force and 0 <= now - state.observed_at < observe_every_s(ds):
        return [], state
    meta = {"conflux/lag_records": sum(lag.values()),
            "conflux/lag_by_partition": dg.MetadataValue.json(lag),
            "conflux/unsettled_records": unsettled_records(state)}
    if caught_up_as_of is not None:
        meta[LAST_UPDATED] = dg.MetadataValue.timestamp(caught_up_as_of)
    return [dg.AssetObservation(asset_key=ds.name, metadata=meta)], state.with_(observed_at=now)


def apply_inline(context: dg.SensorEvaluationContext, ds: EventDataset, cursor: Cursor,
                 ends: Cursor, kafka: KafkaResource, lake: LakeResource,
                 registry: SchemaRegistryResource, deadline: float,
                 current_as_of: float = 0.0) -> tuple[Cursor, dict]:
    """Read forward from the cursor until ``deadline``, applying micro-batches as they arrive."""
    setup_started = time.monotonic()
    resolver = resolver_for(ds, registry)
    instance = context.instance
    prepare_instance(instance)  # pooled connections for the tick's event writes
    positions = {(t, p): cursor.get(t, {}).get(p, 0) for t, parts in ends.items() for p in parts}
    stats = {"records": 0, "batches": 0, "dead": 0, "partitions": set(), "seconds": Counter(),
             "capped": 0, "dropped": 0, "gaps": []}
    jumps: list[OutOfRange] = []  # reads the broker refused (records removed meanwhile)
    buffer: list[Record] = []
    first_at = 0.0
    linger = ds.linger_ms / 1000
    origin = f"sensor:{ds.name}__kafka"
    # a tick that applies records is one OpenLineage run (OFF, doing nothing, when lineage is off)
    lineage = openlineage.open_run(
        lambda: openlineage.ingest_io(ds, lake_path=lake.path,
                                      bootstrap_servers=kafka.bootstrap_servers,
                                      job_name=f"{ds.name}__kafka", job_type="MICRO_BATCH"),
        flush_timeout=None)  # the code server lives on: events leave in the background

    last_flush = 0.0
    stats["seconds"]["setup"] = time.monotonic() - setup_started

    def flush() -> None:
        nonlocal cursor, buffer, linger, last_flush
        flush_started = time.monotonic()
        lineage.start()  # START once, at the tick's first micro-batch
        start = cursor
        report = apply_records(
            ds, buffer, kafka=kafka, lake=lake, resolver=resolver, origin=origin,
            sources=lambda recs: [r.as_config() for r in batch_ranges(start, recs)],
            max_partitions=ds.inline_max_partitions,
            current_as_of=current_as_of)
        applied, rest = buffer[:report.consumed], buffer[report.consumed:]
        ranges = batch_ranges(cursor, applied)
        lineage.add_rows(openlineage.DATA, report.rows_valid)
        lineage.add_rows(openlineage.DLQ, report.dead_lettered)
        events_started = time.perf_counter()
        report_materializations(instance, report.materializations)
        stats["seconds"].update(report.seconds)
        stats["seconds"]["events"] += time.perf_counter() - events_started
        cursor = advance(cursor, ranges)
        stats["records"] += len(applied)
        stats["batches"] += 1
        stats["dead"] += report.dead_lettered
        stats["partitions"].update(report.partitions)
        stats["capped"] += bool(rest)
        buffer = rest
        # adaptive linger: when applying takes long (many partitions touched), gather more per
        # micro-batch — the per-partition work, not the record count, is what costs
        last_flush = time.monotonic() - flush_started
        stats["seconds"]["flush_max"] = max(stats["seconds"]["flush_max"], last_flush)
        linger = max(ds.linger_ms / 1000, min(2 * last_flush, 1.5))

    try:
        for polled in kafka.poll_from(positions, deadline=deadline, max_records=ds.flush_records,
                                      on_gap=jumps.append):
            if jumps:  # apply what was read before the gap, then go on past it
                while buffer and time.monotonic() + last_flush < deadline:
                    flush()
                if buffer:  # not applied: the cursor stays before the gap; the next tick
                    stats["dropped"] += len(buffer)  # finds it when it plans
                    buffer = []
                    break
                for jump in jumps:  # above the log end (recreated): left to the next plan
                    if jump.offset < jump.log_start:
                        stats["gaps"].append(gap_at(jump))
                        cursor = advance(cursor, [Range(jump.topic, jump.partition, jump.offset,
                                                        jump.log_start)])
                jumps.clear()
            if buffer and time.monotonic() + last_flush >= deadline:
                break  # the final flush must end within the budget, or the daemon skips a tick
            if polled and not buffer:
                first_at = time.monotonic()
            buffer += polled
            if buffer and (len(buffer) >= ds.flush_records
                           or time.monotonic() - first_at >= linger):
                flush()
                # a micro-batch capped at inline_max_partitions leaves the rest of the buffer:
                # apply it while the budget lasts; what is left is re-read by the next tick
                while buffer and time.monotonic() + last_flush < deadline:
                    flush()
                if buffer:
                    stats["dropped"] += len(buffer)
                    buffer = []  # not applied: the cursor stays before it
                    break
                first_at = time.monotonic()
        if buffer:
            flush()
        while buffer and time.monotonic() + last_flush < deadline:  # capped: the rest, in time
            flush()
        stats["dropped"] += len(buffer)  # left when the budget ran out: re-read next tick
    except Exception as exc:
        lineage.fail(exc)
        raise
    except BaseException:
        lineage.abort()
        raise
    lineage.complete()  # COMPLETE with the rows applied, if the tick applied any
    return cursor, stats


def build_kafka_sensor(ds: EventDataset, job: dg.JobDefinition) -> dg.SensorDefinition:
    """The sensor applying new records of ``ds.topics`` inline or through runs of ``job``.

    Args:
        ds: the event dataset.
        job: its ingest job (used in ``runs`` mode and for large backlogs).

    Returns:
        A running-by-default sensor named ``<dataset>__kafka``.

    Examples:
        >>> build_kafka_sensor(ORDERS, build_ingest_job(ORDERS)).name
        'orders__kafka'
    """

    @dg.sensor(name=f"{ds.name}__kafka", job=job, minimum_interval_seconds=1,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"New records on {', '.join(ds.topics)} → {ds.name} "
                           f"({ds.ingest} ingest; large backlogs go to {job.name} runs)")
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource,
                registry: SchemaRegistryResource):
        started = time.monotonic()
        as_of = time.time()  # everything acknowledged before this is below the end offsets
        state = parse_state(context.cursor)
        cursor = state.offsets
        gap = tick_gap(context.last_tick_completion_time, as_of)
        failures = requeue.settle(state.pending,
                                  requeue.pending_runs(context.instance, state.pending), as_of)
        state = state.with_(pending=failures.still_pending(as_of))
        if failures.requeue:  # this tick only re-requests; the next one goes on reading
            for p, last in failures.requeue:
                context.log.info(f"requesting {p.key} again after run {last} "
                                 f"(requeue {p.attempts + 1}/{requeue.MAX_REQUEUES})")
            return dg.SensorResult(
                run_requests=[requeue.request(ds.name, p, requeued_from=last)
                              for p, last in failures.requeue],
                cursor=dump_state(state))
        unsettled = requeue.describe(failures)  # empty when only runs in flight are unsettled
        gap += f"{unsettled}; " if unsettled else ""
        try:
            bounds, missing = topic_bounds(ds, kafka)
        except Exception as exc:  # broker down: say so, keep the cursor, try next tick
            return dg.SkipReason(f"{gap}Kafka unavailable for {', '.join(ds.topics)}: {exc}")
        mirror_cursor(ds.name, state, kafka, context.log)  # the saved cursor, for Kafka's tools
        if not bounds:
            return dg.SkipReason(f"topic(s) {', '.join(missing)} do not exist yet")
        # offsets removed before they were read, or a recreated topic: recorded, then passed
        found, cursor = find_gaps(cursor, bounds, state.topic_ids)
        state = state.with_(offsets=cursor, topic_ids={**state.topic_ids, **{
            t: b.topic_id for t, b in bounds.items() if b.topic_id}})
        checked, state, note = track_gaps(ds, registry, state, found, as_of)
        gap += note
        ends = {t: b.ends for t, b in bounds.items()}
        ranges = plan_ranges(ds, cursor, ends)
        pending = sum(r.end - r.start for r in ranges)
        # a backlog whose event times spread over many partitions capped the last tick's
        # micro-batches: one run applies it far faster than capped micro-batches would
        wide = state.capped and pending > 4 * ds.inline_max_partitions
        if ds.ingest == "inline" and pending <= ds.inline_max_backlog and not wide:
            new_cursor, stats = apply_inline(context, ds, cursor, ends, kafka, lake, registry,
                                             deadline=started + ds.tick_budget_s,
                                             current_as_of=state.caught_up_at)
            if stats["gaps"]:
                more, state, note = track_gaps(ds, registry, state, stats["gaps"], as_of)
                checked, gap = more or checked, gap + note
            text = (f"applied {stats['records']} records inline in {stats['batches']} "
                    f"micro-batch(es), {stats['dead']} dead-lettered, "
                    f"{len(stats['partitions'])} partition(s) materialized"
                    + (f" ({stats['capped']} micro-batch(es) capped at "
                       f"{ds.inline_max_partitions} partitions)" if stats["capped"] else "")
                    + "; seconds: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in sorted(stats["seconds"].items()))
                    if stats["records"] else f"no new records on {', '.join(ds.topics)}")
            if missing:
                text += f"; topic(s) {', '.join(missing)} do not exist yet"
            lag = lag_by_partition(new_cursor, ends)
            caught_up = not any(lag.values()) and not failures.unsettled
            state = state.with_(offsets=new_cursor, capped=stats["dropped"] > 0,
                                caught_up_at=as_of if caught_up else state.caught_up_at)
            observed, state = lag_observation(ds, lag, as_of if caught_up else None, state, as_of)
            return dg.SensorResult(cursor=dump_state(state), skip_reason=gap + text,
                                   asset_events=checked + observed)
        inflight = context.instance.get_runs_count(dg.RunsFilter(job_name=job.name,
                                                                 statuses=INFLIGHT))
        state = state.with_(capped=False)  # one run takes the wide backlog; then inline again
        if not ranges:
            # runs mode: caught up once nothing is pending, no ingest run is in flight and no
            # failed one lacks a successor (its range would be missing)
            caught_up = not inflight and not failures.unsettled
            if caught_up:
                state = state.with_(caught_up_at=as_of)
            observed, state = lag_observation(ds, lag_by_partition(cursor, ends),
                                              as_of if caught_up else None, state, as_of)
            return dg.SensorResult(skip_reason=f"{gap}no new records on {', '.join(ds.topics)}",
                                   cursor=dump_state(state), asset_events=checked + observed)
        if inflight >= ds.max_inflight_runs:
            observed, state = lag_observation(ds, lag_by_partition(cursor, ends), None, state,
                                              as_of)
            return dg.SensorResult(
                skip_reason=f"{gap}{inflight} ingest runs in flight; {pending} records wait "
                            f"(backpressure, max_inflight_runs={ds.max_inflight_runs})",
                cursor=dump_state(state), asset_events=checked + observed)
        batch = next_batch(ranges)
        owed = Pending(key=run_key(ds.name, batch), ranges=tuple(batch), requested_at=as_of)
        return dg.SensorResult(run_requests=[requeue.request(ds.name, owed)],
                               cursor=dump_state(state.with_(offsets=advance(cursor, batch),
                                                             pending=state.pending + (owed,))),
                               asset_events=checked)

    return _sensor
