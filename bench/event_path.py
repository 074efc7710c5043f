"""Event-path benchmark (a script, not a test): prints figures and ratios measured in one run.

1. produce → materialized-and-visible-in-Dagster latency (p50 / p95 / max) for Conflux's sensor
   and for the naive baseline (a plain sensor at its default interval, one run per poll, default
   executor and launcher — ``bench/naive_definitions.py``), at each rate, with the Dagster
   process tree's CPU (cores) and the runs launched;
2. sustained records/s through decode → validate → route → upsert, against raw kafka-python
   consumption of the same records.

It starts its own stack (state in ``.conflux/bench``, ports 26092 / 26093 / 26432), loopback
only, and stops it at the end. Usage::

    .venv/bin/python -m bench.event_path [--duration 120] [--rates 1,1000] [--no-naive]
                                         [--throughput-records 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Figures, record_results, use_bench_stack


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """utime+stime (s) of ``root`` and every descendant, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in cpu:
            out[pid] = cpu[pid]
        todo += children.get(pid, [])
    return out


class CpuSampler(threading.Thread):
    """Samples a process tree every 0.25 s; short-lived children are counted up to their last
    sample (so figures are a slight underestimate)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.first: dict[int, float] = tree_cpu_seconds(root)
        self.last: dict[int, float] = dict(self.first)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.25):
            for pid, value in tree_cpu_seconds(self.root).items():
                self.first.setdefault(pid, 0.0 if pid not in self.last else self.first[pid])
                self.last[pid] = value

    def used(self) -> float:
        return sum(self.last[p] - self.first.get(p, 0.0) for p in self.last)


def produce_live(kafka, topic: str, subject_ref: str, rate: float, duration: float,
                 first_key: int) -> list[tuple[int, int, float]]:
    """Live orders at ``rate``/s for ``duration`` s; returns (partition, offset, sent_at)."""
    from pipelines.demo.producer import Outgoing, build_stream, live_orders

    import pandas as pd

    producer = kafka.producer(linger_ms=0 if rate < 50 else 5)
    sent: list[tuple[object, float]] = []
    start = time.monotonic()
    n_total = int(rate * duration)
    day = pd.Timestamp("1996-01-01")
    batch_size = max(1, int(rate))  # one business day per second of wall time
    i = 0
    while i < n_total:
        orders = live_orders(day, min(batch_size, n_total - i), first_key + i, seed=i)
        for rec in build_stream("tpch.orders", orders, subject_ref):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out = Outgoing(topic, rec.key, rec.value, rec.headers)
            sent.append((producer.send(out.topic, key=out.key, value=out.value,
                                       headers=out.headers), time.time()))
            i += 1
        day += pd.Timedelta(days=1)
    producer.flush()
    result = []
    for fut, at in sent:
        meta = fut.get(timeout=30)
        result.append((meta.partition, meta.offset, at))
    producer.close()
    return result


def materialized_at(instance, asset: str, since: float) -> dict[tuple[int, int], float]:
    """For each (partition, offset) covered by a materialization after ``since``: the earliest
    time such a materialization was stored in Dagster's event log."""
    import dagster as dg

    ranges: list[tuple[int, int, int, float]] = []
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetKey(asset), limit=5000, cursor=cursor,
                                               ascending=False)
        stop = False
        for rec in page.records:
            if rec.timestamp < since:
                stop = True
                break
            meta = rec.asset_materialization.metadata.get("conflux/source_ranges")
            for r in (meta.value if meta else []):
                ranges.append((r["partition"], r["start"], r["end"], rec.timestamp))
        if stop or not page.has_more:
            break
        cursor = page.cursor
    return ranges


def latencies(sent: list[tuple[int, int, float]], ranges) -> tuple[list[float], int]:
    """Per produced record: earliest materialization covering its offset minus its send time."""
    import numpy as np

    out, missing = [], 0
    for part in {p for p, _, _ in sent}:
        offsets = np.array([o for p, o, _ in sent if p == part])
        sent_at = np.array([t for p, _, t in sent if p == part])
        base, top = int(offsets.min()), int(offsets.max()) + 1
        seen = np.full(top - base, np.inf)
        for p, start, end, ts in ranges:
            if p == part and end > base and start < top:
                lo, hi = max(start, base) - base, min(end, top) - base
                seen[lo:hi] = np.minimum(seen[lo:hi], ts)
        when = seen[offsets - base]
        missing += int(np.isinf(when).sum())
        out += list((when - sent_at)[~np.isinf(when)])
    return out, missing


def wait_covered(instance, asset, sent, since, timeout) -> tuple[list[float], int]:
    deadline = time.monotonic() + timeout
    while True:
        lat, missing = latencies(sent, materialized_at(instance, asset, since))
        if missing == 0 or time.monotonic() > deadline:
            return lat, missing
        time.sleep(2)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values or [0])[0]


def tick_report(postgres_url: str, sensor: str, since: float) -> dict:
    """Durations of the sensor's ticks since ``since`` and the slowest tick's own account."""
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT tick_body FROM job_ticks WHERE timestamp >= to_timestamp(%s)",
                            (since,)).fetchall()
    ticks = []
    for (body,) in rows:
        data = json.loads(body)
        if data.get("job_name") == sensor and data.get("end_timestamp"):
            ticks.append((data["end_timestamp"] - data["timestamp"], data["timestamp"],
                          data.get("skip_reason") or ""))
    if not ticks:
        return {"ticks": 0}
    ticks.sort(key=lambda t: t[1])
    gaps = [b[1] - a[1] for a, b in zip(ticks, ticks[1:])]
    slowest = max(ticks)
    return {"ticks": len(ticks), "duration_p50": pct([t[0] for t in ticks], 50),
            "duration_max": slowest[0], "gap_max": max(gaps or [0]), "slowest": slowest[2]}


def phase(label, *, stack, kafka, instance, topic, asset, job, ref, rate, duration, key, timeout):
    import dagster as dg

    daemon = stack.services["dagster-daemon"].pidfile.live_pid()
    sampler = CpuSampler(daemon)
    sampler.start()
    since = time.time()
    runs_before = instance.get_runs_count(dg.RunsFilter(job_name=job))
    t0 = time.monotonic()
    print(f"  {label}: producing {rate:g} events/s for {duration:g}s ...", file=sys.stderr)
    sent = produce_live(kafka, topic, ref, rate, duration, key)
    lat, missing = wait_covered(instance, asset, sent, since - 1, timeout)
    wall = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    runs = instance.get_runs_count(dg.RunsFilter(job_name=job)) - runs_before
    if label == "conflux":
        ticks = tick_report(os.environ["CONFLUX_POSTGRES_URL"], f"{asset}__kafka", since)
        print(f"  {label} @ {rate:g}/s ticks: {json.dumps(ticks)}", file=sys.stderr)
    return {"label": label, "rate": rate, "events": len(sent), "missing": missing,
            "p50": pct(lat, 50), "p95": pct(lat, 95), "max": max(lat or [0]),
            "cores": sampler.used() / wall, "runs": runs}


def throughput(kafka, registry_url: str, n: int) -> dict:
    """Raw kafka-python consumption vs Conflux's decode → validate → route → upsert."""
    from pipelines.demo.producer import build_stream, live_orders
    from kafka import KafkaConsumer, TopicPartition
    import pandas as pd

    from pipelines.catalog import ORDERS
    from conflux.event.ingest import apply_records, resolver_for
    from conflux.io.lake import LakeResource
    from conflux.io.registry import SchemaRegistryResource

    topic = f"bench.throughput.{int(time.time())}"
    kafka.ensure_topic(topic, 3)
    producer = kafka.producer(linger_ms=20, batch_size=512 * 1024)
    per_day = 5000
    for start in range(0, n, per_day):
        orders = live_orders(pd.Timestamp("1997-01-01") + pd.Timedelta(days=start // per_day),
                             min(per_day, n - start), 1 + start, seed=start, scale=0.01)
        for rec in build_stream("tpch.orders", orders, None):
            producer.send(topic, key=rec.key, value=rec.value, headers=rec.headers)
    producer.flush()
    producer.close()
    ends = kafka.end_offsets(topic)

    def raw() -> float:
        consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None,
                                 enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        t, count = time.perf_counter(), 0
        while count < n:
            for msgs in consumer.poll(timeout_ms=1000, max_records=10000).values():
                count += len(msgs)
        took = time.perf_counter() - t
        consumer.close()
        return count / took

    def ours() -> float:
        ds = __import__("dataclasses").replace(ORDERS, topics=(topic,), dlq_topic=f"{topic}.dlq")
        lake = LakeResource(path=tempfile.mkdtemp(prefix="conflux-bench-lake-"))
        resolver = resolver_for(ds, SchemaRegistryResource(url=registry_url))
        # what one ingest run does with one range per partition (``next_batch``)
        sources = [{"topic": topic, "partition": p, "start": 0, "end": end}
                   for p, end in ends.items()]
        t = time.perf_counter()
        report = apply_records(ds, kafka.read_ranges([(topic, p, 0, end) for p, end in ends.items()]),
                               kafka=kafka, lake=lake, resolver=resolver, origin="bench",
                               sources=sources)
        return report.rows_in / (time.perf_counter() - t)

    raw_rate = max(raw(), raw())
    our_rate = max(ours(), ours())
    return {"records": n, "raw": raw_rate, "ours": our_rate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--rates", default="1,1000", help="events/s, comma-separated")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--throughput-records", type=int, default=200_000)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    use_bench_stack("bench.naive_definitions", "naive")

    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.contracts.lineage import contract_schema
    from conflux.io.schema_registry import SchemaRegistry
    from pipelines.catalog import ORDERS
    from conflux.io.kafka import KafkaResource

    settings = Settings.from_env()
    stack = Stack(settings)
    stack.reset(report=lambda line: None)
    started = stack.up(["postgres", "kafka", "dagster-daemon"], report=lambda l: print(l, file=sys.stderr))
    os.environ.update(settings.client_env())
    # the load generator must not starve the platform it measures on this 2-core machine
    # (after the stack is up, so the services keep their normal priority)
    os.nice(5)
    import dagster as dg

    results = []
    try:
        kafka = KafkaResource.from_env(settings)
        kafka.ensure_topic("bench.naive.orders", 3)
        kafka.ensure_topic("bench.naive.orders.dlq", 1)
        registry = SchemaRegistry(settings.postgres_url)
        ref = registry.register("orders", contract_schema(ORDERS.contract)).version.ref
        registry.register("naive_orders", contract_schema(ORDERS.contract))
        time.sleep(10)  # let the daemon load both code locations and start ticking
        with dg.DagsterInstance.get() as instance:
            key = 100_000_000
            for rate in rates:
                results.append(phase("conflux", stack=stack, kafka=kafka, instance=instance,
                                     topic="tpch.orders", asset="orders", job="orders__ingest_job",
                                     ref=ref, rate=rate, duration=args.duration, key=key,
                                     timeout=120))
                key += 10_000_000
                if not args.no_naive:
                    results.append(phase("naive", stack=stack, kafka=kafka, instance=instance,
                                         topic="bench.naive.orders", asset="naive_orders",
                                         job="naive_ingest_job", ref=ref.replace("orders", "naive_orders"),
                                         rate=rate, duration=args.duration, key=key, timeout=300))
                    key += 10_000_000
        tput = throughput(kafka, settings.postgres_url, args.throughput_records)
    finally:
        stack.down(started, report=lambda line: None)

    out = Figures()  # printed as before, and recorded in docs/benchmark-results.md
    out("\nproduce → materialized in Dagster (seconds), Dagster process tree CPU, runs")
    out(f"{'path':<9}{'rate/s':>8}{'events':>9}{'p50':>8}{'p95':>8}{'max':>8}{'cores':>7}"
        f"{'runs':>6}{'missing':>9}")
    for r in results:
        out(f"{r['label']:<9}{r['rate']:>8g}{r['events']:>9}{r['p50']:>8.2f}{r['p95']:>8.2f}"
            f"{r['max']:>8.2f}{r['cores']:>7.2f}{r['runs']:>6}{r['missing']:>9}")
    for rate in rates:
        ours = next(r for r in results if r["label"] == "conflux" and r["rate"] == rate)
        naive = next((r for r in results if r["label"] == "naive" and r["rate"] == rate), None)
        if naive and ours["p95"] > 0:
            out(f"at {rate:g}/s: naive p95 / conflux p95 = {naive['p95'] / ours['p95']:.1f}x; "
                f"CPU naive / conflux = {naive['cores'] / max(ours['cores'], 1e-9):.1f}x")
    out(f"\nthroughput over {tput['records']:,} records: raw kafka-python {tput['raw']:,.0f}/s, "
        f"decode → validate → route → upsert {tput['ours']:,.0f}/s "
        f"= {100 * tput['ours'] / tput['raw']:.0f} % of raw")
    record_results("event_path", out.lines)
    print(json.dumps({"latency": results, "throughput": tput}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
