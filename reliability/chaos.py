"""Crash and outage harness: stream demo events while killing and stopping the platform's parts.

    python -m reliability.chaos --events 100000 --kills 20 --seed 7
    python -m reliability.chaos --events 20000 --kills 0 --outage postgres:30 --outage kafka:30
    CONFLUX_KAFKA_BROKERS=3 python -m reliability.chaos --events 20000 --kills 0 --outage broker:30

Against the running stack of ``CONFLUX_HOME`` (started if needed, through the project's own
tooling), it publishes orders, their lineitems and customer-ledger events with fresh keys, in
chunks. During each chunk it injects one fault, chosen and timed by a seeded random generator:

* ``kill -9`` of a **run worker** (the chunk is then a burst over the inline backlog limit,
  published while the lineitem sensor is paused, so that on resuming it hands the backlog to an
  ingest run; the worker is killed once it has reported its pid),
* ``kill -9`` of the **Dagster daemon**, the **Kafka broker** or **Postgres** — each restarted
  through ``Stack.up`` like an operator or a service manager would;
* an **outage**: the service stopped for N seconds while events flow, then started again.

Target ``broker`` (with a local Kafka cluster, ``CONFLUX_KAFKA_BROKERS`` ≥ 2) is the one node
leading the most partitions of the platform's topics, chosen when the fault strikes: an outage
stops it (SIGTERM: a controlled shutdown) while the other nodes serve on, a kill ``kill -9``s it;
either way it is started again and rejoins. Target ``kafka`` means every node.

Then it waits until every event dataset's sensor has caught up with its topic and no ingest run is
in flight, and compares the datasets with the ground truth computed from what was published:
every order, lineitem and ledger event present exactly once with exactly its values. It prints the
seed (a failure replays with ``--seed``), each fault, what the UI shows about it (failed or
skipped sensor ticks, failed runs and their automatic retries), and the figures. Exit code 1 when
anything was lost or counted twice, or when the platform did not recover within the timeout.
Loopback only: it talks to the stack of the environment, which binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from conflux.event import requeue
TARGETS = ("run-worker", "dagster-daemon", "kafka", "postgres")
TOPICS = {"orders": "tpch.orders", "lineitem": "tpch.lineitem", "customer_ledger": "ledger.customer"}
KEYS = {"orders": ["o_orderkey"], "lineitem": ["l_orderkey", "l_linenumber"],
        "customer_ledger": ["event_id"]}
# 3x EventDataset.inline_max_backlog (10,000), published at full speed: more than an inline
# tick applies while it arrives, so the next tick hands the rest to an ingest run
BURST_LINEITEMS = 30_000
# the inline sensor reads on while a tick lasts: a burst published more slowly than it drains
# (seen right after a Kafka restart) never forms a backlog, so its sensor is paused meanwhile
BURST_SENSOR = "lineitem__kafka"


def log(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# --- the workload and its ground truth -----------------------------------------------------------
@dataclass
class Chunk:
    orders: pd.DataFrame
    lineitem: pd.DataFrame
    ledger: pd.DataFrame

    @property
    def events(self) -> int:
        return len(self.orders) + len(self.lineitem) + len(self.ledger)


@dataclass
class Workload:
    """What the harness publishes, chunk by chunk; the ground truth is its concatenation."""

    tag: str
    chunks: list[Chunk]

    def truth(self, dataset: str) -> pd.DataFrame:
        frames = [getattr(c, "ledger" if dataset == "customer_ledger" else dataset)
                  for c in self.chunks]
        return pd.concat(frames, ignore_index=True)

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chunks)


def build_workload(events: int, chunks: int, seed: int, bursts: set[int], tag: str) -> Workload:
    """``events`` demo events in ``chunks`` chunks with fresh keys (one business day each, from
    2030-01-01); chunks in ``bursts`` carry at least ``BURST_LINEITEMS`` lineitems."""
    from pipelines.demo.producer import live_orders
    from pipelines.demo.tpch import TpchGenerator, ledger

    gen = TpchGenerator(0.001, seed=seed)
    customers = gen.customer()
    base_key = 10**10 + int(tag, 16) * 10**5  # 100,000 keys per second of start time
    per_chunk = max(events // max(chunks, 1), 7)
    out, key, ledger_id = [], base_key, 0
    for i in range(chunks):
        # ~4 lineitems per order and one ledger event per 2 orders: 5.5 events per order
        n_orders = max(1, int(per_chunk / 5.5))
        if i in bursts:
            n_orders = max(n_orders, int(BURST_LINEITEMS / 3.8))
        day = pd.Timestamp("2030-01-01") + pd.Timedelta(days=i)
        orders = live_orders(day, n_orders, key, seed=seed * 1000 + i,
                             scale=max(0.001, n_orders * 1.2 / 1_500_000))
        lines = gen.lineitem(orders)
        if i in bursts and len(lines) < BURST_LINEITEMS:
            raise AssertionError(f"burst chunk has {len(lines)} lineitems < {BURST_LINEITEMS}")
        events_ = ledger(customers, max(1, n_orders // 2) / len(customers), seed=seed * 1000 + i)
        events_["event_id"] = [f"chaos-{tag}-{ledger_id + j}" for j in range(len(events_))]
        ledger_id += len(events_)
        key += n_orders
        out.append(Chunk(orders.reset_index(drop=True), lines.reset_index(drop=True),
                         events_.reset_index(drop=True)))
    return Workload(tag, out)


# --- publishing, through broker crashes ------------------------------------------------------------
class Publisher:
    """Publishes chunks with acks=all, re-sending whatever was not acknowledged (a broker that
    is down or restarting): at least once — the platform's consumers are idempotent."""

    def __init__(self, kafka, refs: dict[str, str]):
        self.kafka = kafka
        self.refs = refs
        self.sent = 0
        self.resent = 0

    def records(self, chunk: Chunk, seed: int) -> list:
        from pipelines.demo.producer import build_stream

        recs = (build_stream("tpch.orders", chunk.orders, self.refs["orders"])
                + build_stream("tpch.lineitem", chunk.lineitem, self.refs["lineitem"])
                + build_stream("ledger.customer", chunk.ledger, self.refs["customer_ledger"]))
        random.Random(seed).shuffle(recs)
        return recs

    def publish(self, records: list, *, rate: float, deadline: float) -> None:
        started = time.monotonic()
        pending = list(records)
        batch = 500
        producer = None
        done = 0
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} records still unacknowledged at the deadline")
            try:
                producer = producer or self.kafka.producer(linger_ms=20)
                head, pending = pending[:batch], pending[batch:]
                futures = [producer.send(r.topic, key=r.key, value=r.value, headers=r.headers)
                           for r in head]
                producer.flush(timeout=15)
                failed = [r for r, f in zip(head, futures) if not f.succeeded()]
            except Exception as exc:  # broker down: metadata/buffer timeouts raise on send
                failed = head
                log(f"publish: {type(exc).__name__}: {str(exc)[:120]}; retrying")
            if failed:
                self.resent += len(failed)
                pending = failed + pending
                if producer is not None:
                    try:
                        producer.close(timeout=2)
                    except Exception:  # what it still held is re-sent: at least once
                        pass
                    producer = None
                time.sleep(1.0)
                continue
            done += len(head)
            self.sent += len(head)
            if rate > 0:
                ahead = started + done / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        if producer is not None:
            producer.close(timeout=5)


# --- faults -----------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str          # "kill" | "outage"
    target: str        # one of TARGETS or "broker" (outage: postgres, kafka, broker or
    #                    dagster-daemon)
    delay_s: float     # into the chunk
    seconds: float = 0.0
    detail: str = ""
    started: float = 0.0  # wall clock
    ended: float = 0.0
    missed: bool = False  # nothing was killed (no ingest run to kill, or it ended first)


def plan_faults(rng: random.Random, kills: int, outages: list[tuple[str, float]],
                targets: tuple[str, ...] = TARGETS) -> list[Fault]:
    """``kills`` kill points covering every target at least once (when kills allow), in a
    seeded order, then the outages; each at a seeded delay into its chunk."""
    order: list[str] = []
    while len(order) < kills:
        round_ = list(targets)
        rng.shuffle(round_)
        order += round_
    faults = [Fault("kill", t, round(rng.uniform(0.5, 3.0), 2)) for t in order[:kills]]
    faults += [Fault("outage", t, round(rng.uniform(0.5, 2.0), 2), seconds=s) for t, s in outages]
    return faults


class Injector:
    """Kills and stops services of the stack by PID, and restarts them through ``Stack.up``."""

    run_wait_s = 120.0  # how long a run-worker kill waits for an ingest run to start

    def __init__(self, stack, instance, rng: random.Random):
        self.stack = stack
        self.instance = instance
        self.rng = rng

    def run_worker_pid(self, timeout: float) -> tuple[str, int]:
        """The pid of a started ingest run's worker (waits for one)."""
        import dagster as dg

        from conflux.observe.run_workers import worker_pid

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.instance.get_run_records(
                dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=20)
            for rec in records:
                if rec.dagster_run.job_name.endswith("__ingest_job"):
                    pid, _ = worker_pid(self.instance, rec.dagster_run.run_id)
                    if pid:
                        return rec.dagster_run.run_id, pid
            time.sleep(0.2)
        raise TimeoutError(f"no ingest run started within {timeout:.0f}s")

    def apply(self, fault: Fault) -> None:
        import os
        import signal

        fault.started = time.time()
        if fault.kind == "kill" and fault.target == "run-worker":
            try:
                run_id, pid = self.run_worker_pid(timeout=self.run_wait_s)
            except TimeoutError as exc:  # the sensor drained the burst inline, tick by tick
                fault.missed, fault.detail = True, f"nothing killed: {exc}"
                fault.ended = time.time()
                return
            time.sleep(self.rng.uniform(0.0, 1.0))
            try:
                os.kill(pid, signal.SIGKILL)
                fault.detail = f"killed run worker pid {pid} of run {run_id[:8]}"
            except ProcessLookupError:
                fault.missed = True
                fault.detail = f"nothing killed: run {run_id[:8]} ended before the kill (pid {pid})"
        elif fault.kind == "kill":
            name, which = self.resolve(fault.target)
            pid = self.stack.services[name].kill()
            took = time.monotonic()
            self.up(name)
            fault.detail = f"killed {which}pid {pid}; restarted in {time.monotonic() - took:.1f}s"
        else:
            name, which = self.resolve(fault.target)
            self.stack.down([name], report=lambda line: None)
            log(f"{name} stopped for {fault.seconds:g}s")
            time.sleep(fault.seconds)
            took = time.monotonic()
            self.up(name)
            fault.detail = (f"{which}down {fault.seconds:g}s; started again in "
                            f"{time.monotonic() - took:.1f}s")
        fault.ended = time.time()

    def resolve(self, target: str) -> tuple[str, str]:
        """The service a fault's target names, and words for the report: ``broker`` is the
        Kafka node leading the most partitions of the platform's topics right now."""
        if target != "broker":
            return target, ""
        from conflux.stack.kafka import node_name
        from conflux.io.kafka import KafkaResource

        replicas = KafkaResource.from_env(self.stack.settings).partition_replicas(
            list(TOPICS.values()))
        leaders = Counter(r["leader"] for r in replicas.values() if r["leader"] >= 0)
        node, led = leaders.most_common(1)[0]
        name = node_name(node)
        return name, f"{name} (leader of {led}/{len(replicas)} partitions) "

    def up(self, name: str) -> None:
        for attempt in range(3):
            try:
                self.stack.up([name], report=lambda line: log(line))
                return
            except Exception as exc:  # e.g. a port still held for a moment after a crash
                if attempt == 2:
                    raise
                log(f"restart of {name} failed ({exc}); retrying")
                time.sleep(3)


# --- waiting for the platform, and judging it ---------------------------------------------------------
def sensor_states(instance, names: list[str]) -> dict:
    from dagster._core.scheduler.instigation import InstigatorType

    found = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name in names:
            found[state.name] = state
    return found


def set_sensor(instance, name: str, *, running: bool, settle_s: float = 4.0) -> None:
    """Stop or resume sensor ``name`` as the UI's switch does, its cursor kept. A tick under way
    when it is stopped writes its state back when it ends: set it until it stays."""
    from dagster._core.scheduler.instigation import InstigatorStatus

    want = InstigatorStatus.DECLARED_IN_CODE if running else InstigatorStatus.STOPPED
    for _ in range(6):
        state = sensor_states(instance, [name])[name]
        if state.status == want:
            time.sleep(settle_s)
            if sensor_states(instance, [name])[name].status == want:
                return
            continue
        instance.update_instigator_state(state.with_status(want))
    raise RuntimeError(f"sensor {name} did not stay {want.value}")


def lag_of(instance, kafka, datasets: list[str]) -> dict[str, int]:
    from conflux.event.offsets import parse_cursor

    states = sensor_states(instance, [f"{d}__kafka" for d in datasets])
    lag = {}
    for ds in datasets:
        state = states.get(f"{ds}__kafka")
        data = state.instigator_data if state else None
        cursor = parse_cursor(getattr(data, "cursor", None)).get(TOPICS[ds], {})
        ends = kafka.end_offsets(TOPICS[ds]) or {}
        lag[ds] = sum(max(end - cursor.get(p, 0), 0) for p, end in ends.items())
    return lag


INFLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")


def ingest_runs(instance, since: float) -> list:
    import dagster as dg

    created = dt.datetime.fromtimestamp(since, dt.timezone.utc)
    return [r for r in instance.get_run_records(dg.RunsFilter(created_after=created))
            if r.dagster_run.job_name.endswith("__ingest_job")]


def awaiting_retry(runs, now: float | None = None) -> list:
    """Failed runs nothing has succeeded yet — neither Dagster's retry nor the sensor's requeue
    (``conflux.event.requeue``) — and that the sensor has not given up on: their ranges are still to
    be applied. A run given up on shows in the ground-truth comparison."""
    successors = {r.dagster_run.tags.get(tag) for r in runs
                  for tag in (requeue.PARENT, requeue.REQUEUED_FROM)}
    failed = [r for r in runs if r.dagster_run.status.value == "FAILURE"]
    p = requeue.plan(failed, successors, time.time() if now is None else now)
    pending = {run.run_id for run in p.requeue + p.waiting}
    return [r for r in failed if r.dagster_run.run_id in pending]


def wait_caught_up(instance, kafka, datasets: list[str], since: float, timeout: float) -> float:
    """Seconds until no lag, no ingest run in flight and no failed run without a retry."""
    started = time.monotonic()
    last = ""
    while True:
        try:
            lag = lag_of(instance, kafka, datasets)
            runs = ingest_runs(instance, since)
            inflight = [r for r in runs if r.dagster_run.status.value in INFLIGHT]
            unretried = [r.dagster_run.run_id[:8] for r in awaiting_retry(runs)]
            state = (f"lag {sum(lag.values())} {lag}, {len(inflight)} run(s) in flight, "
                     f"{len(unretried)} failed run(s) awaiting retry {unretried}")
            if not any(lag.values()) and not inflight and not unretried:
                return time.monotonic() - started
        except Exception as exc:  # a service still restarting
            state = f"not answering yet: {type(exc).__name__}: {str(exc)[:100]}"
        if state != last:
            log(f"waiting: {state}")
            last = state
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not caught up after {timeout:.0f}s: {state}")
        time.sleep(1.0)


def compare(truth: pd.DataFrame, stored: pd.DataFrame, key: list[str]) -> dict[str, int]:
    """Missing, extra (not published), duplicated and changed rows of ``stored`` (pure)."""
    columns = list(truth.columns)
    stored = stored[[c for c in columns if c in stored.columns]].copy()
    dup = int(stored.duplicated(key).sum())
    t = truth.set_index(key).sort_index()
    s = stored.drop_duplicates(key).set_index(key).sort_index()
    missing = t.index.difference(s.index)
    extra = s.index.difference(t.index)
    common = t.index.intersection(s.index)
    a, b = t.loc[common], s.loc[common, t.columns]
    changed = pd.Series(False, index=a.index)
    for col in t.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x):
            diff = (x.astype(float) - y.astype(float)).abs() > 1e-9
        else:
            diff = x.astype(str) != y.astype(str)
        if diff.any():
            log(f"column {col} differs, e.g. {x[diff].iloc[0]!r} published, {y[diff].iloc[0]!r} stored")
        changed |= diff
    return {"expected": len(truth), "stored": len(stored), "missing": len(missing),
            "extra": len(extra), "duplicated": dup, "changed": int(changed.sum())}


def stored_rows(lake, dataset: str, workload: Workload) -> pd.DataFrame:
    """The rows of ``dataset`` with the workload's keys (its own partitions only)."""
    truth = workload.truth(dataset)
    if dataset == "customer_ledger":
        frame = lake.read(dataset)
        ids = set(truth["event_id"])
        return frame[frame["event_id"].isin(ids)] if frame is not None else truth.iloc[0:0]
    days = sorted({str(d) for d in truth["o_orderdate"]})
    key = "o_orderkey" if dataset == "orders" else "l_orderkey"
    lo, hi = truth[key].min(), truth[key].max()
    frames = []
    for day in days:
        part = lake.read(dataset, day) if day in set(lake.partitions(dataset)) else None
        if part is not None:
            frames.append(part[(part[key] >= lo) & (part[key] <= hi)])
    return pd.concat(frames, ignore_index=True) if frames else truth.iloc[0:0]


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if col.endswith("date"):
            out[col] = pd.to_datetime(out[col]).dt.date.astype(str)
        elif col == "occurred_at":
            out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(None).astype(str)
    return out


def what_the_ui_shows(instance, datasets: list[str], since: float) -> dict:
    """Failed and skipped sensor ticks, failed runs and their retries, since ``since``: what an
    operator sees on the sensor's tick history and the Runs page."""
    from dagster import DagsterEventType
    from dagster._core.scheduler.instigation import TickStatus

    ticks = Counter()
    reasons = Counter()
    for name, state in sensor_states(instance, [f"{d}__kafka" for d in datasets]).items():
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id,
                                       after=since, limit=5000):
            ticks[tick.status.value] += 1
            if tick.status == TickStatus.FAILURE and tick.error:
                error = tick.error
                while error.cause is not None:  # the root cause, not Dagster's wrapper
                    error = error.cause
                reasons[f"{name} FAILURE: {error.message.strip().splitlines()[0][:100]}"] += 1
            skipped = tick.skip_reason or ""  # may carry both notes: resumed, then unavailable
            if tick.status == TickStatus.SKIPPED and "unavailable" in skipped:
                reasons[f"{name} SKIPPED: Kafka unavailable"] += 1
            if "resumed after" in skipped:
                reasons[f"{name}: {skipped.split(';')[0]}"] += 1
    runs = ingest_runs(instance, since)
    by_status = Counter(r.dagster_run.status.value for r in runs)
    retries = sum(1 for r in runs if r.dagster_run.tags.get("dagster/parent_run_id"))
    requeues = sum(1 for r in runs if r.dagster_run.tags.get(requeue.REQUEUED_FROM))
    not_retried = len(requeue.plan([r for r in runs if r.dagster_run.status.value == "FAILURE"],
                                    {r.dagster_run.tags.get(t) for r in runs
                                     for t in (requeue.PARENT, requeue.REQUEUED_FROM)},
                                    time.time()).given_up)
    step_retries = sum(len(instance.get_records_for_run(
        r.dagster_run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY, limit=100).records)
        for r in runs)
    return {"ticks": dict(ticks), "tick_reasons": dict(reasons.most_common(20)),
            "runs": dict(by_status), "retries": retries, "requeues": requeues,
            "not_retried": not_retried,
            "step_retries": step_retries}


# --- the whole scenario ---------------------------------------------------------------------------
@dataclass
class Result:
    seed: int
    events: int
    published: int
    resent: int
    faults: list[Fault]
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    ui: dict = field(default_factory=dict)
    recovered_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        return sum(d["missing"] for d in self.datasets.values())

    @property
    def twice(self) -> int:
        return sum(d["duplicated"] + d["extra"] for d in self.datasets.values())

    @property
    def changed(self) -> int:
        return sum(d["changed"] for d in self.datasets.values())

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.twice == 0 and self.changed == 0 and bool(self.datasets)

    def lines(self) -> list[str]:
        kills = [f for f in self.faults if f.kind == "kill" and not f.missed]
        missed = [f for f in self.faults if f.missed]
        outages = [f for f in self.faults if f.kind == "outage"]
        out = [f"seed {self.seed} (replay: --seed {self.seed})",
               f"events published: {self.published:,} (+{self.resent:,} re-sent after broker "
               f"errors), {self.events:,} distinct",
               f"kill points survived: {len(kills)} "
               f"({dict(Counter(f.target for f in kills))})"
               + (f"; {len(missed)} planned kill(s) found nothing to kill" if missed else ""),
               f"outages survived: {len(outages)} "
               f"({', '.join(f'{f.target} {f.seconds:g}s' for f in outages) or 'none'})"]
        for f in self.faults:
            out.append(f"  {f.kind} {f.target} at +{f.delay_s:g}s: {f.detail}")
        for name, d in self.datasets.items():
            out.append(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in d.items()))
        out.append(f"records lost: {self.lost}, counted twice: {self.twice}, "
                   f"changed: {self.changed}")
        out.append(f"UI: sensor ticks {self.ui.get('ticks')}; runs {self.ui.get('runs')}, "
                   f"{self.ui.get('retries', 0)} automatic run retries, "
                   f"{self.ui.get('requeues', 0)} requeued by the sensor, "
                   f"{self.ui.get('not_retried', 0)} failed run(s) given up, "
                   f"{self.ui.get('step_retries', 0)} step retries inside runs")
        for reason, n in (self.ui.get("tick_reasons") or {}).items():
            out.append(f"  {n} × {reason}")
        out.append(f"caught up {self.recovered_s:.0f}s after the last chunk; "
                   f"{self.elapsed_s:.0f}s in all")
        return out


def run(*, events: int, kills: int, outages: list[tuple[str, float]], seed: int,
        rate: float = 1000.0, catch_up_timeout: float = 600.0,
        targets: tuple[str, ...] = TARGETS, progress: Callable[[str], None] = log,
        settings=None) -> Result:
    """The scenario against the stack of ``settings`` (default: of the environment; see the
    module docstring)."""
    import dagster as dg

    from conflux.core.errors import ConfigError
    from conflux.stack.platform import register_contracts
    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.io.kafka import KafkaResource
    from conflux.io.lake import LakeResource

    started = time.monotonic()
    since = time.time()
    rng = random.Random(seed)
    settings = settings or Settings.from_env()
    os.environ.update(settings.client_env())  # the instance's dagster.yaml reads DAGSTER_PG_URL
    stack = Stack(settings)
    stack.up(["postgres", "kafka", "dagster-daemon"], report=progress)
    datasets = list(TOPICS)
    kafka = KafkaResource.from_env(settings)
    refs = register_contracts(settings, report=lambda line: None)
    faults = plan_faults(rng, kills, outages, targets)
    if settings.kafka_brokers < 2 and any(f.target == "broker" for f in faults):
        raise ConfigError("a 'broker' fault stops one node of a local Kafka cluster: set "
                          "CONFLUX_KAFKA_BROKERS=3 (the stack has a single broker)")
    if settings.external_pg_url and any(f.target == "postgres" for f in faults):
        raise ConfigError("CONFLUX_POSTGRES_URL points at a Postgres server the tooling did not "
                          "start: the harness kills and stops only its own services (unset it, "
                          "or leave postgres out of the faults)")
    bursts = {i for i, f in enumerate(faults) if f.target == "run-worker"}
    # fresh keys on every run, replayed or not: keys and ledger ids derive from the start time
    tag = f"{int(since):x}"
    workload = build_workload(events, len(faults) + 1, seed, bursts, tag)
    publisher = Publisher(kafka, refs)
    progress(f"seed {seed}: {workload.events:,} events in {len(workload.chunks)} chunks, "
             f"{len(faults)} faults: " + ", ".join(f"{f.kind} {f.target}" for f in faults))
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        stopped = [n for n, s in sensor_states(instance, [f"{d}__kafka" for d in datasets]).items()
                   if s.status.value == "STOPPED"]
        if stopped:
            raise RuntimeError(f"sensor(s) {', '.join(stopped)} are stopped; start them in the UI")
        injector = Injector(stack, instance, rng)
        deadline = time.monotonic() + catch_up_timeout + 60 * len(workload.chunks)
        for i, chunk in enumerate(workload.chunks):
            fault = faults[i] if i < len(faults) else None
            records = publisher.records(chunk, seed * 1000 + i)
            # bursts go out at full speed (a backlog for a run); an outage's chunk is spread over
            # the outage and a little after it (events flow all along); others at the rate
            pace = 0.0 if i in bursts else rate
            if fault is not None and fault.kind == "outage":
                pace = min(rate, chunk.events / (fault.delay_s + fault.seconds + 10))
            errors: list[BaseException] = []

            def produce(recs=records, pace=pace) -> None:
                try:
                    publisher.publish(recs, rate=pace, deadline=deadline)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            thread = threading.Thread(target=produce, name=f"publish-{i}", daemon=True)
            if i in bursts:  # a backlog builds behind the paused sensor, then goes to a run
                set_sensor(instance, BURST_SENSOR, running=False)
            thread.start()
            if fault is not None:
                time.sleep(fault.delay_s)
                progress(f"chunk {i + 1}/{len(workload.chunks)} ({chunk.events:,} events): "
                         f"{fault.kind} {fault.target}")
                if i in bursts:
                    try:
                        thread.join(max(deadline - time.monotonic(), 1))
                    finally:
                        set_sensor(instance, BURST_SENSOR, running=True)
                injector.apply(fault)
                progress(f"  {fault.detail}")
            thread.join(max(deadline - time.monotonic(), 1))
            if errors:
                raise errors[0]
            if thread.is_alive():
                raise TimeoutError(f"chunk {i + 1} still publishing at the deadline")
        progress(f"published {publisher.sent:,} records; waiting for the platform to catch up")
        recovered = wait_caught_up(instance, kafka, datasets, since, catch_up_timeout)
        result = Result(seed, workload.events, publisher.sent, publisher.resent, faults,
                        recovered_s=recovered)
        lake = LakeResource.for_stack(settings)
        for ds in datasets:
            truth = normalise(workload.truth(ds))
            stored = normalise(stored_rows(lake, ds, workload))
            result.datasets[ds] = compare(truth, stored, KEYS[ds])
        result.ui = what_the_ui_shows(instance, datasets, since)
    result.elapsed_s = time.monotonic() - started
    return result


def parse_outage(text: str) -> tuple[str, float]:
    target, _, seconds = text.partition(":")
    if target not in ("postgres", "kafka", "broker", "dagster-daemon") \
            or not seconds.replace(".", "").isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected postgres|kafka|broker|dagster-daemon:SECONDS")
    return target, float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to publish (100000)")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 points (20)")
    parser.add_argument("--outage", type=parse_outage, action="append", default=[],
                        metavar="SERVICE:SECONDS", help="stop a service while events flow "
                        "(repeatable), e.g. postgres:30 kafka:30; broker:30 stops one node of a "
                        "local Kafka cluster")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s between bursts")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed to catch up after the last chunk (600)")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    if args.events < 100 or args.kills < 0:
        parser.error("--events must be >= 100 and --kills >= 0")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}", flush=True)
    result = run(events=args.events, kills=args.kills, outages=args.outage, seed=seed,
                 rate=args.rate, catch_up_timeout=args.timeout)
    for line in result.lines():
        print(line)
    if args.json:
        print(json.dumps({"seed": seed, "ok": result.ok, "lost": result.lost,
                          "twice": result.twice, "datasets": result.datasets, "ui": result.ui,
                          "faults": [f.__dict__ for f in result.faults]}, default=str))
    missed = sum(f.missed for f in result.faults)
    if not result.ok:
        print("FAILED", flush=True)
    elif missed:  # the data is right, but fewer kill points were exercised than asked
        print(f"INCOMPLETE: nothing lost, nothing counted twice, but {missed} of {args.kills} "
              "kill point(s) found nothing to kill; replay with another --seed", flush=True)
    else:
        print("OK: nothing lost, nothing counted twice", flush=True)
    return 0 if result.ok and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
