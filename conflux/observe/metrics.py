"""Prometheus metrics of the event datasets, computed at scrape time (docs/metrics.md).

``python -m conflux.observe.metrics --port N`` serves ``/metrics`` (the ``conflux-metrics``
service of the local stack). Every figure is read when scraped from where it is kept: the
sensors' cursors, ticks, check evaluations and runs in the Dagster instance; end offsets and
dead letters in Kafka. A source that cannot be reached is reported by ``conflux_up{source}``.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

log = logging.getLogger("conflux.metrics")

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TICKS_WINDOW = 200   # newest ticks per sensor behind the duration histograms
RUNS_WINDOW = 1000   # newest runs behind conflux_runs and the ingest-run micro-batches
KAFKA_BUDGET_S = 2.0  # dead letters read per scrape, at most
_APPLIED = re.compile(r"applied (\d+) records inline in (\d+) micro-batch")
_SECONDS = re.compile(r"(\w+) (\d+(?:\.\d+)?)")
# the parts of a tick's "seconds:" figures spent applying micro-batches (conflux/event/sensor.py)
_BATCH_PARTS = ("decode", "dlq", "lake", "events")


def buckets(values: Iterable[float], bounds: Sequence[float] = BUCKETS) -> tuple[list, float]:
    """Cumulative ``[(le, count), ..., ("+Inf", n)]`` and the sum of ``values``."""
    values = list(values)
    out = [(str(b), sum(1 for v in values if v <= b)) for b in bounds]
    return out + [("+Inf", len(values))], float(sum(values))


def inline_batches(text: str | None) -> list[float]:
    """Micro-batch durations of an inline tick, from its text: its B micro-batches, each at the
    tick's mean time applying one (decode, dead letters, lake, Dagster events)."""
    found = _APPLIED.search(text or "")
    if not found or "seconds: " not in text or int(found.group(2)) == 0:
        return []
    parts = dict((k, float(v)) for k, v in _SECONDS.findall(text.split("seconds: ", 1)[1]))
    n = int(found.group(2))
    return [sum(parts.get(k, 0.0) for k in _BATCH_PARTS) / n] * n


class DeadLetters:
    """Dead letters counted by dataset and reason, read forward from each DLQ partition's log
    start (so the counts cover what the topics retained when the exporter started, and all
    after)."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.counts: Counter = Counter()

    def add(self, dataset: str, records: Iterable) -> None:
        from conflux.observe.dlq import Letter

        for rec in records:
            self.counts[(dataset, Letter.from_record(rec).code)] += 1
            self.positions[(rec.topic, rec.partition)] = rec.offset + 1


class ConfluxCollector(Collector):
    """Computes the metric families at each scrape (one scrape at a time)."""

    def __init__(self, datasets: Sequence, kafka, instance=None):
        self.datasets = [ds for ds in datasets if hasattr(ds, "topics")]
        self.kafka = kafka
        self._instance = instance
        self._consumer = None
        self.dead = DeadLetters()
        self._lock = threading.Lock()

    @property
    def instance(self):
        if self._instance is None:
            import dagster as dg

            self._instance = dg.DagsterInstance.get()
        return self._instance

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            up = GaugeMetricFamily("conflux_up", "Whether the source answered this scrape",
                                   labels=["source"])
            took = GaugeMetricFamily("conflux_scrape_duration_seconds",
                                     "Time spent reading each source for this scrape",
                                     labels=["source"])
            states: dict = {}
            for source, read in (("dagster", self._dagster), ("kafka", self._kafka)):
                started = time.monotonic()
                try:
                    families = list(read(states))
                    ok = 1
                except Exception as exc:  # unreachable or failing: say so, serve the rest
                    log.warning("metrics: %s not read: %s", source, exc)
                    families, ok = [], 0
                    if source == "kafka":
                        self._close()
                up.add_metric([source], ok)
                took.add_metric([source], time.monotonic() - started)
                yield from families
            yield up
            yield took

    # --- Dagster -------------------------------------------------------------------------------
    def _dagster(self, states: dict) -> Iterator[Metric]:
        import dagster as dg

        from conflux.event.offsets import parse_state, unsettled_records
        from conflux.observe.notify import WATCHED_CHECKS, _check_state

        instance, now = self.instance, time.time()
        wanted = {f"{ds.name}__kafka" for ds in self.datasets}
        by_name = {s.instigator_name: s for s in instance.all_instigator_state()
                   if s.instigator_name in wanted}
        applied = CounterMetricFamily("conflux_records_applied",
                                      "Kafka records applied by the dataset's sensor (its cursor's "
                                      "offsets summed; dead-lettered records included)",
                                      labels=["dataset"])
        running = GaugeMetricFamily("conflux_sensor_running",
                                    "1 when the dataset's Kafka sensor is running", labels=["dataset"])
        unsettled = GaugeMetricFamily("conflux_unsettled_records",
                                      "Records requested from ingest runs that no run has "
                                      "applied yet (runs mode; not in the consumer lag)",
                                      labels=["dataset"])
        since = GaugeMetricFamily("conflux_seconds_since_caught_up",
                                  "Seconds since the start of the sensor's last tick that ended "
                                  "caught up", labels=["dataset"])
        checks = GaugeMetricFamily("conflux_check_passed",
                                   "1 when the latest evaluation of the asset check passed, 0 "
                                   "when it failed", labels=["dataset", "check"])
        ticks = HistogramMetricFamily("conflux_sensor_tick_duration_seconds",
                                      f"Durations of the sensor's newest {TICKS_WINDOW} ticks",
                                      labels=["dataset"])
        batches = HistogramMetricFamily(
            "conflux_microbatch_duration_seconds",
            f"Micro-batches of the newest {TICKS_WINDOW} ticks (inline) and {RUNS_WINDOW} runs "
            "(ingest runs)", labels=["dataset"])
        runs = GaugeMetricFamily("conflux_runs", f"The newest {RUNS_WINDOW} runs by job and status",
                                 labels=["job", "status"])
        records = instance.get_run_records(limit=RUNS_WINDOW)
        outcomes = Counter((r.dagster_run.job_name, r.dagster_run.status.value) for r in records)
        for (job, status), n in sorted(outcomes.items()):
            runs.add_metric([job, status], n)
        for ds in self.datasets:
            state = by_name.get(f"{ds.name}__kafka")
            data = getattr(state, "instigator_data", None) if state else None
            tick = parse_state(getattr(data, "cursor", None))
            states[ds.name] = tick
            applied.add_metric([ds.name], sum(o for parts in tick.offsets.values()
                                              for o in parts.values()))
            running.add_metric([ds.name], int(bool(state) and state.is_running))
            unsettled.add_metric([ds.name], unsettled_records(tick))
            if tick.caught_up_at:
                since.add_metric([ds.name], max(now - tick.caught_up_at, 0.0))
            for check in WATCHED_CHECKS:
                found = _check_state(instance, dg.AssetCheckKey(dg.AssetKey(ds.name), check))
                if found is not None:
                    checks.add_metric([ds.name, check], int(found[1]))
            recent = (instance.get_ticks(state.instigator_origin_id, state.selector_id,
                                         limit=TICKS_WINDOW) if state else [])
            durations = [t.end_timestamp - t.timestamp for t in recent if t.end_timestamp]
            ticks.add_metric([ds.name], *buckets(durations))
            micro = [d for t in recent for d in inline_batches(t.skip_reason)]
            micro += [r.end_time - r.start_time for r in records
                      if r.dagster_run.job_name == f"{ds.name}__ingest_job"
                      and r.start_time and r.end_time
                      and r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
            batches.add_metric([ds.name], *buckets(micro))
        yield from (applied, running, unsettled, since, checks, ticks, batches, runs)

    # --- Kafka ---------------------------------------------------------------------------------
    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:
                pass
            self._consumer = None

    def _kafka(self, states: dict) -> Iterator[Metric]:
        from kafka import TopicPartition

        from conflux.event.offsets import TickState, find_gaps, lag_by_partition
        from conflux.io.kafka import Record, TopicBounds

        if self._consumer is None:
            self._consumer = self.kafka.consumer(auto_offset_reset="earliest")
        consumer, timeout = self._consumer, self.kafka.request_timeout_ms
        lag = GaugeMetricFamily("conflux_consumer_lag_records",
                                "Records on the partition past the sensor's cursor",
                                labels=["dataset", "topic", "partition"])
        dead = CounterMetricFamily("conflux_dead_letters",
                                   "Dead letters written to the dataset's DLQ topic, by reason",
                                   labels=["dataset", "reason"])
        dlq: dict[TopicPartition, str] = {}
        ends_of: dict[TopicPartition, int] = {}
        for ds in self.datasets:
            tick = states.get(ds.name, TickState())
            bounds = {}
            for topic in ds.topics:
                tps = [TopicPartition(topic, p)
                       for p in sorted(consumer.partitions_for_topic(topic) or ())]
                if tps:
                    begins = consumer.beginning_offsets(tps, timeout_ms=timeout)
                    ends = consumer.end_offsets(tps, timeout_ms=timeout)
                    bounds[topic] = TopicBounds(None, {tp.partition: o for tp, o in begins.items()},
                                                {tp.partition: o for tp, o in ends.items()})
            # counted from past offset gaps, as the sensor will read (and `conflux lag` shows)
            _, cursor = find_gaps(tick.offsets, bounds, {})
            ends = {t: b.ends for t, b in bounds.items()}
            behind = lag_by_partition(cursor, ends)
            for topic, found in sorted(ends.items()):
                for p in sorted(found):
                    lag.add_metric([ds.name, topic, str(p)], behind[f"{topic}[{p}]"])
            tps = [TopicPartition(ds.dlq_topic, p)
                   for p in sorted(consumer.partitions_for_topic(ds.dlq_topic) or ())]
            if tps:
                ends_of.update(consumer.end_offsets(tps, timeout_ms=timeout))
                dlq.update({tp: ds.name for tp in tps})
        self._read_dead_letters(consumer, dlq, ends_of, Record)
        for (name, reason), n in sorted(self.dead.counts.items()):
            dead.add_metric([name, reason], n)
        yield lag
        yield dead

    def _read_dead_letters(self, consumer, dlq: dict, ends: dict, record) -> None:
        positions = self.dead.positions
        todo = [tp for tp in dlq if positions.get((tp.topic, tp.partition), 0) < ends[tp]]
        if not todo:
            return
        if set(consumer.assignment()) != set(dlq):
            consumer.assign(list(dlq))
        for tp in dlq:
            if (tp.topic, tp.partition) in positions:
                consumer.seek(tp, positions[(tp.topic, tp.partition)])
            else:
                consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + KAFKA_BUDGET_S
        while time.monotonic() < deadline and any(
                positions.get((tp.topic, tp.partition), 0) < ends[tp] for tp in todo):
            polled = consumer.poll(timeout_ms=100, max_records=5000)
            for tp, msgs in polled.items():
                self.dead.add(dlq[tp], [record(m.topic, m.partition, m.offset, m.timestamp, m.key,
                                               m.value, tuple(m.headers or ())) for m in msgs])
                positions[(tp.topic, tp.partition)] = consumer.position(tp)


def registry(collector: ConfluxCollector):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def main(argv: list[str] | None = None) -> int:
    """Serve ``/metrics`` until terminated."""
    import signal

    from prometheus_client import start_http_server

    from conflux.core.project import catalog_by_name
    from conflux.core.settings import Settings
    from conflux.io.kafka import KafkaResource

    parser = argparse.ArgumentParser(prog="python -m conflux.observe.metrics")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env()
    kafka = KafkaResource.from_env(settings, request_timeout_ms=3000)
    collector = ConfluxCollector(list(catalog_by_name().values()), kafka)
    server, _ = start_http_server(args.port, addr=args.host, registry=registry(collector))
    log.info("serving http://%s:%d/metrics", args.host, args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
