"""Dead-letter monitoring in Dagster: a ``dead_letters`` asset check per event dataset, and the
``dlq_monitor`` sensor that evaluates every one of them on its declared cadence.

The check compares, over the dataset's trailing ``dlq.window``, the dead letters written to its
DLQ topic with the records that arrived on its topics — both from Kafka offsets
(``offsets_for_times``), nothing is consumed but the newest few hundred dead letters for the
reason histogram — and fails with WARN or ERROR by the thresholds of its
:class:`~conflux.core.declarations.DeadLetterPolicy`.

Nobody has to click: the sensor (running by default) measures each dataset every ``dlq.every``
and hands the results to the daemon as runless ``AssetCheckEvaluation`` events
(``SensorResult(asset_events=...)``), which the UI shows on the asset's *Checks* tab with their
metadata — no run is launched (a run costs seconds and ~4 CPU-seconds; measured here, one
evaluation costs ~0.3 s and under 0.1 CPU-second per dataset, once a minute). The check can
still be executed from the UI, which runs the same measurement in a run.
"""


import json
import time
from collections.abc import Iterable

import dagster as dg

from conflux.core.errors import DeadLetterError
from conflux.core.declarations import DeadLetterPolicy, EventDataset
from conflux.observe.dlq import Verdict, WindowCounts, evaluate, top_reasons, window_label
from conflux.observe.dlq_replay import window_counts
from conflux.io.kafka import KafkaResource

CHECK_NAME = "dead_letters"
SENSOR_NAME = "dlq_monitor"


def thresholds_text(policy: DeadLetterPolicy) -> str:
    """``WARN at 1% or 10 letters, ERROR at 5% over 1h (rates over >= 100 records)``."""
    def level(name: str) -> str | None:
        rate, count = getattr(policy, f"{name}_rate"), getattr(policy, f"{name}_count")
        parts = [f"{rate:.2%}".replace(".00%", "%")] if rate is not None else []
        parts += [f"{count} letter(s)"] if count is not None else []
        return f"{name.upper()} at {' or '.join(parts)}" if parts else None

    levels = [t for t in (level("warn"), level("error")) if t] or ["no thresholds"]
    return (f"{', '.join(levels)} over {window_label(policy.window.total_seconds())} "
            f"(rates over >= {policy.min_records} records)")


def check_spec(ds: EventDataset) -> dg.AssetCheckSpec:
    """The ``dead_letters`` check of ``ds`` (pure)."""
    return dg.AssetCheckSpec(
        CHECK_NAME, asset=ds.name, blocking=False,
        description=f"Dead letters on {ds.dlq_topic} vs records on {', '.join(ds.topics)}: "
                    f"{thresholds_text(ds.dlq)}. Evaluated every "
                    f"{window_label(ds.dlq.every.total_seconds())} by the {SENSOR_NAME} sensor; "
                    f"inspect with `conflux dlq list {ds.topic}`, re-drive after a fix with "
                    f"`conflux dlq replay {ds.topic}`.")


def check_metadata(ds: EventDataset, counts: WindowCounts, verdict: Verdict,
                   evaluated_by: str) -> dict:
    policy = ds.dlq
    meta = {
        "conflux/dlq_topic": ds.dlq_topic,
        "conflux/window": window_label(counts.window_s),
        "conflux/records_in": counts.records_in,
        "conflux/dead_lettered": counts.dead,
        "conflux/dead_letter_rate": dg.MetadataValue.float(round(verdict.rate or 0.0, 6)),
        "conflux/judged_rate": dg.MetadataValue.float(round(verdict.judged_rate, 6)),
        "conflux/verdict": verdict.summary,
        "conflux/thresholds": dg.MetadataValue.json({
            "warn_rate": policy.warn_rate, "error_rate": policy.error_rate,
            "warn_count": policy.warn_count, "error_count": policy.error_count,
            "min_records": policy.min_records,
            "window_s": int(policy.window.total_seconds())}),
        "conflux/top_reasons": dg.MetadataValue.json(dict(top_reasons(counts.reasons))),
        "conflux/reasons_sampled": counts.sampled,
        **({"conflux/reasons_partial": counts.sample_error} if counts.sample_error else {}),
        "conflux/dlq_retained": counts.dlq_retained,
        "conflux/evaluated_by": evaluated_by,
    }
    if counts.missing:
        meta["conflux/missing_topics"] = ", ".join(counts.missing)
    return meta


def _description(ds: EventDataset, counts: WindowCounts, verdict: Verdict) -> str:
    head = (f"{counts.dead} dead letter(s) / {counts.records_in} record(s) in the last "
            f"{window_label(counts.window_s)}")
    return f"{head}: {verdict.summary}"


def _severity(verdict: Verdict) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if verdict.severity == "ERROR" else dg.AssetCheckSeverity.WARN


def check_evaluation(ds: EventDataset, counts: WindowCounts, *,
                     evaluated_by: str) -> dg.AssetCheckEvaluation:
    """The runless evaluation the monitor reports for ``ds`` (pure)."""
    verdict = evaluate(counts, ds.dlq)
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(ds.name), check_name=CHECK_NAME, passed=verdict.passed,
        severity=_severity(verdict), description=_description(ds, counts, verdict),
        metadata=check_metadata(ds, counts, verdict, evaluated_by))


def build_dlq_check(*, dataset: EventDataset) -> dg.AssetChecksDefinition:
    """The ``dead_letters`` check of ``dataset``, executable from the UI (it measures now, in a
    run).

    Args:
        dataset: an event dataset.

    Returns:
        An asset checks definition named ``<dataset>__dead_letters``.

    Examples:
        >>> build_dlq_check(dataset=ORDERS).check_keys
        {AssetCheckKey(asset_key=AssetKey(['orders']), name='dead_letters')}
    """
    ds = dataset

    @dg.multi_asset_check(specs=[check_spec(ds)], name=f"{ds.name}__dead_letters",
                          description=f"Dead letters of {ds.name} over its window")
    def _check(context: dg.AssetCheckExecutionContext, kafka: KafkaResource):
        counts = window_counts(ds, kafka)
        verdict = evaluate(counts, ds.dlq)
        context.log.info(f"{ds.name}: {_description(ds, counts, verdict)}")
        yield dg.AssetCheckResult(
            asset_key=ds.name, check_name=CHECK_NAME, passed=verdict.passed,
            severity=_severity(verdict), description=_description(ds, counts, verdict),
            metadata=check_metadata(ds, counts, verdict,
                                    evaluated_by=context.op_execution_context.run_id))

    return _check


def build_dlq_sensor(*, datasets: Iterable[EventDataset]) -> dg.SensorDefinition:
    """The ``dlq_monitor`` sensor: evaluates each dataset's ``dead_letters`` check every
    ``dlq.every`` and reports it as a runless asset check evaluation.

    Args:
        datasets: the event datasets to watch (at least one).

    Returns:
        A running-by-default sensor named ``dlq_monitor``.

    Examples:
        >>> build_dlq_sensor(datasets=[ORDERS, LINEITEM]).name
        'dlq_monitor'
    """
    datasets = list(datasets)
    every = min(ds.dlq.every.total_seconds() for ds in datasets)

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=int(every),
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Evaluates the dead_letters check of "
                           f"{', '.join(ds.name for ds in datasets)} from Kafka offsets "
                           f"(runless: no run is launched)")
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
        due_at = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        events, lines = [], []
        for ds in datasets:
            # the daemon ticks on a 5 s grid: allow for it, or every other tick would be missed
            if now - due_at.get(ds.name, 0.0) < ds.dlq.every.total_seconds() - 5:
                continue
            started = time.perf_counter()
            try:
                counts = window_counts(ds, kafka, now_ms=int(now * 1000))
            except DeadLetterError as exc:  # broker down: say so, keep the last result
                lines.append(f"{ds.name}: not measured: {exc}")
                continue
            event = check_evaluation(ds, counts, evaluated_by=f"sensor:{SENSOR_NAME}")
            events.append(event)
            due_at[ds.name] = now
            lines.append(f"{ds.name}: {event.description} "
                         f"({time.perf_counter() - started:.2f} s)")
        return dg.SensorResult(asset_events=events, cursor=json.dumps(due_at),
                               skip_reason="; ".join(lines) or "no dataset due")

    return _sensor


def build_dlq_monitor(*, datasets: Iterable) -> tuple[list[dg.AssetChecksDefinition],
                                                      dg.SensorDefinition | None]:
    """Dead-letter monitoring of a catalog.

    Args:
        datasets: declarations of any mode; the event datasets among them are monitored.

    Returns:
        (the ``dead_letters`` check of every event dataset, the ``dlq_monitor`` sensor — None
        when there is no event dataset).

    Examples:
        >>> checks, sensor = build_dlq_monitor(datasets=DATASETS)
        >>> len(checks), sensor.name
        (3, 'dlq_monitor')
    """
    events = [ds for ds in datasets if isinstance(ds, EventDataset)]
    if not events:
        return [], None
    return [build_dlq_check(dataset=ds) for ds in events], build_dlq_sensor(datasets=events)
