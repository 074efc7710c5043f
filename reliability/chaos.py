"""Crash and outage harness: stream demo events while killing and stopping the platform's parts.

    python -m reliability.chaos --events 100000 --kills 20 --seed 7
    python -m reliability.chaos --events 20000 --kills 0 --outage postgres:30 --outage kafka:30
    CONFLUX_KAFKA_BROKERS=3 python -m reliability.chaos --events 20000 --kills 0 --outage broker:30

Against the running stack of ``CONFLUX_HOME`` (started if needed, through the project's own
tooling), it publishes in chunks new orders with their lineitems, customer-ledger events and
updates of earlier orders — some with a producer timestamp older than the key's current version
(they must lose), some re-dated to another day — each record with an explicit producer
timestamp. During each chunk it injects one fault, chosen and timed by a seeded random generator:

* ``kill -9`` of a **run worker** (the chunk is then a burst over the inline backlog limit,
  published while the lineitem sensor is paused, so that on resuming it hands the backlog to an
  ingest run), of the **code server** running the sensors' inline micro-batches, or of the
  **Dagster daemon with its code server** — each writer killed in its write phase when one comes
  within a bounded wait, by its phase markers (``conflux/event/phases.py``), and the phase it died
  in read back from the marker it left;
* ``kill -9`` of the **Kafka broker** or **Postgres** — each restarted through ``Stack.up`` like
  an operator or a service manager would (a killed code server is replaced by the daemon);
* an **outage**: the service stopped for N seconds while events flow, then started again.

Target ``broker`` (with a local Kafka cluster, ``CONFLUX_KAFKA_BROKERS`` ≥ 2) is the one node
leading the most partitions of the platform's topics, chosen when the fault strikes: an outage
stops it (SIGTERM: a controlled shutdown) while the other nodes serve on, a kill ``kill -9``s it;
either way it is started again and rejoins. Target ``kafka`` means every node.

Then it waits until every event dataset's sensor has caught up with its topic and no ingest run is
in flight, and judges by an independent route (``reliability/oracle.py``): the truth is the winner
of each key among the acknowledged records (newest by producer timestamp, then offset), the
stored rows are read with DuckDB's ``delta_scan``, and ``customer_balance`` (materialized before
and after) must have moved by exactly the fold of the run's ledger events. It prints the seed (a
failure replays with ``--seed``), each fault, the kills by phase, what the UI shows about them
(failed or skipped sensor ticks, failed runs and their automatic retries), and the figures. Exit
code 1 when anything was lost, counted twice or changed, a balance is wrong, the platform did not
recover within the timeout, or fewer than a third of the kills hit a write phase (INCOMPLETE).
Loopback only: it talks to the stack of the environment, which binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from conflux.event import requeue
from reliability import oracle

TARGETS = ("run-worker", "code-server", "dagster-daemon", "kafka", "postgres")
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


# --- the workload -------------------------------------------------------------------------------
STEP_MS = 10_000     # producer timestamps: chunk i's new records at base + i * STEP_MS
UPDATE_SHARE = 0.1   # updates of earlier keys, as a share of a chunk's new orders
OUT_OF_ORDER = 0.4   # of the updates: a producer timestamp older than the key's winner (loses)
REDATED = 0.3        # of the updates: the order moves to another day (its partition)
# a code-server or daemon kill's chunk: ~4,000 events spread over 12 s; a trickle of a few
# records per micro-batch writes too briefly to be caught (a 60 s wait found none at 20/s)
STEADY_ORDERS = 700


@dataclass
class Chunk:
    """Rows to publish; ``__ts`` is each record's producer timestamp (ms)."""

    orders: pd.DataFrame
    lineitem: pd.DataFrame
    ledger: pd.DataFrame

    @property
    def events(self) -> int:
        return len(self.orders) + len(self.lineitem) + len(self.ledger)


@dataclass
class Workload:
    """What the harness publishes, chunk by chunk, and what the updates among it are."""

    tag: str
    chunks: list[Chunk]
    updates: Counter = field(default_factory=Counter)  # in_order / out_of_order / redated ...

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chunks)

    def key_range(self, dataset: str) -> tuple[int, int]:
        col = "o_orderkey" if dataset == "orders" else "l_orderkey"
        keys = pd.concat([getattr(c, dataset)[col] for c in self.chunks])
        return int(keys.min()), int(keys.max())


def build_workload(events: int, chunks: int, seed: int, bursts: set[int], tag: str, *,
                   base_ms: int, customers: pd.DataFrame, steady: set[int] = frozenset()
                   ) -> Workload:
    """``events`` demo events in ``chunks`` chunks (one business day each, from 2030-01-01):
    new orders with their lineitems, ledger events of ``customers``, and from the second chunk
    on updates of earlier orders — some with a producer timestamp older than the key's current
    winner (they must lose), some re-dated to another day. Chunks in ``bursts`` carry at least
    ``BURST_LINEITEMS`` lineitems; chunks in ``steady`` at least ``STEADY_ORDERS`` orders (a
    stream of micro-batches big enough to be caught writing while a kill waits)."""
    from pipelines.demo.producer import live_orders
    from pipelines.demo.tpch import TpchGenerator, ledger

    gen = TpchGenerator(0.001, seed=seed)
    rng = np.random.default_rng([seed, 20])
    base_key = 10**10 + int(tag, 16) * 10**5  # 100,000 keys per second of start time
    per_chunk = max(events // max(chunks, 1), 7)
    out, key, ledger_id = [], base_key, 0
    winner: dict[int, tuple[int, dict]] = {}  # order key -> (timestamp, row) of its winner
    stamps: dict[int, set[int]] = {}           # order key -> every timestamp it was sent with
    updates = Counter()
    for i in range(chunks):
        ts = base_ms + i * STEP_MS
        # ~4 lineitems per order and one ledger event per 2 orders: 5.5 events per order
        n_orders = max(1, int(per_chunk / 5.5))
        if i in bursts:
            n_orders = max(n_orders, int(BURST_LINEITEMS / 3.8))
        if i in steady:
            n_orders = max(n_orders, STEADY_ORDERS)
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
        orders = orders.assign(__ts=ts).reset_index(drop=True)
        changed = []
        earlier = list(winner)
        for k in rng.choice(earlier, size=min(len(earlier), int(len(orders) * UPDATE_SHARE)),
                            replace=False) if earlier else []:
            k = int(k)
            when, row = winner[k]
            row = {**row, "o_totalprice": round(float(rng.uniform(1000, 500000)), 2),
                   "o_orderstatus": str(rng.choice(["O", "F", "P"])),
                   "o_comment": f"update {i} of {k}"}
            if rng.random() < REDATED:
                shift = int(rng.choice([-3, -2, -1, 1, 2, 3]))
                row["o_orderdate"] = pd.Timestamp(row["o_orderdate"]) + pd.Timedelta(days=shift)
                row["o_orderdate"] = row["o_orderdate"].date()
                updates["redated"] += 1
            if rng.random() < OUT_OF_ORDER:  # older than the stored winner: must lose
                stamp = when - 1 - int(rng.integers(0, 5000))
                while stamp in stamps[k]:
                    stamp -= 1
                updates["out_of_order"] += 1
            else:
                stamp = ts + 1 + len(changed)  # newer than any earlier version
                winner[k] = (stamp, row)
                updates["in_order"] += 1
            stamps[k].add(stamp)
            changed.append({**row, "__ts": stamp})
        for row in orders.to_dict("records"):
            winner[int(row["o_orderkey"])] = (ts, row)
            stamps[int(row["o_orderkey"])] = {ts}
        if changed:
            orders = pd.concat([orders, pd.DataFrame(changed)], ignore_index=True)
        out.append(Chunk(orders, lines.assign(__ts=ts).reset_index(drop=True),
                         events_.assign(__ts=ts).reset_index(drop=True)))
    updates["updates"] = updates["in_order"] + updates["out_of_order"]
    return Workload(tag, out, updates)


# --- publishing, through broker crashes ------------------------------------------------------------
@dataclass
class Sent:
    """A record of the workload: its producer timestamp is part of it (re-sent as it is)."""

    topic: str
    key: bytes
    value: bytes
    headers: list
    timestamp_ms: int


class Publisher:
    """Publishes chunks with acks=all, re-sending whatever was not acknowledged (a broker that
    is down or restarting): at least once — the platform's consumers are idempotent. It keeps
    every acknowledgement (record, partition, offset): the ground truth is computed from them."""

    def __init__(self, kafka, refs: dict[str, str]):
        self.kafka = kafka
        self.refs = refs
        self.records: list[Sent] = []
        self.acks: list[tuple[int, int, int]] = []  # record index, partition, offset
        self.attempts = 0  # sends, re-sends included

    @property
    def distinct(self) -> int:
        """Distinct records the broker acknowledged (a record acknowledged twice counts once)."""
        return len({i for i, _, _ in self.acks})

    @property
    def resent(self) -> int:
        return self.attempts - self.distinct

    def add(self, chunk: Chunk, seed: int) -> list[int]:
        """The chunk's records, shuffled; returns their indexes."""
        from pipelines.demo.producer import build_stream

        recs = []
        for topic, df, ref in (("tpch.orders", chunk.orders, "orders"),
                               ("tpch.lineitem", chunk.lineitem, "lineitem"),
                               ("ledger.customer", chunk.ledger, "customer_ledger")):
            built = build_stream(topic, df.drop(columns="__ts"), self.refs[ref])
            recs += [Sent(r.topic, r.key, r.value, r.headers, int(t))
                     for r, t in zip(built, df["__ts"])]
        random.Random(seed).shuffle(recs)
        first = len(self.records)
        self.records += recs
        return list(range(first, len(self.records)))

    def publish(self, indexes: list[int], *, rate: float, deadline: float) -> None:
        started = time.monotonic()
        pending = list(indexes)
        batch = 500
        producer = None
        done = 0
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} records still unacknowledged at the deadline")
            if producer is None:
                try:
                    producer = self.kafka.producer(linger_ms=20)
                except Exception as exc:  # broker down: nothing was sent
                    log(f"publish: {type(exc).__name__}: {str(exc)[:120]}; retrying")
                    time.sleep(1.0)
                    continue
            head, sent = pending[:batch], []
            try:
                for i in head:
                    r = self.records[i]
                    sent.append((i, producer.send(r.topic, key=r.key, value=r.value,
                                                  headers=r.headers, timestamp_ms=r.timestamp_ms)))
                producer.flush(timeout=15)
            except Exception as exc:  # broker down: metadata/buffer timeouts raise on send
                log(f"publish: {type(exc).__name__}: {str(exc)[:120]}; retrying")
            self.attempts += len(sent)
            failed = [i for i, f in sent if not (f.is_done and f.succeeded())]
            self.acks += [(i, f.value.partition, f.value.offset) for i, f in sent
                          if f.is_done and f.succeeded()]
            failed += head[len(sent):]
            pending = failed + pending[len(head):]
            if failed:
                try:
                    producer.close(timeout=2)
                except Exception:  # what it still held is re-sent: at least once
                    pass
                producer = None
                time.sleep(1.0)
                continue
            done += len(head)
            if rate > 0:
                ahead = started + done / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        if producer is not None:
            producer.close(timeout=5)

    def produced(self, topic: str) -> pd.DataFrame:
        """Every acknowledged copy of the records of ``topic``: its fields, ``__ts`` and
        ``__offset`` (a copy acknowledged twice appears twice, at its two offsets)."""
        rows = []
        for i, partition, offset in self.acks:
            r = self.records[i]
            if r.topic == topic:
                rows.append({**json.loads(r.value), "__ts": r.timestamp_ms,
                             "__partition": partition, "__offset": offset})
        return pd.DataFrame(rows)


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
    phase: str = ""       # what the killed writer was doing, from its own marker ("service":
    #                       a Kafka or Postgres kill, no writer killed)


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


class Phases:
    """The phase markers of the stack's writers (``conflux/event/phases.py``): one file per
    process and thread, ``<phase> <dataset> <origin>``; origin ``sensor:...`` is an inline
    micro-batch in the code server, anything else an ingest run's worker."""

    def __init__(self, directory, dagster_home):
        self.dir = directory
        self.owner = f"DAGSTER_HOME={dagster_home}"
        self.ours: dict[int, bool] = {}

    def read(self) -> dict[int, list[list[str]]]:
        """Live processes of this stack -> the marker lines of their threads."""
        from conflux.stack.procs import environ_has, pid_alive

        found: dict[int, list[list[str]]] = {}
        for path in self.dir.glob("*-*"):
            if path.suffix == ".tmp":
                continue
            pid = int(path.name.split("-")[0])
            if not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            if pid not in self.ours:  # the stack's own processes only (pid reuse, other stacks)
                self.ours[pid] = environ_has(pid, self.owner)
            try:
                words = path.read_text().split()
            except OSError:
                continue
            if self.ours[pid] and len(words) == 3:
                found.setdefault(pid, []).append(words)
        return found

    def wait(self, sensor: bool, timeout: float) -> tuple[int, list[str]] | None:
        """A writer (an inline micro-batch's process when ``sensor``, else a run worker) in its
        write phase, polled every 5 ms for up to ``timeout`` s; failing that, the last such
        process seen in any phase; None when there was none."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            for pid, lines in self.read().items():
                for words in lines:
                    if words[2].startswith("sensor:") == sensor:
                        if words[0] == "write":
                            return pid, words
                        seen = (pid, words)
            if time.monotonic() > deadline:
                return seen
            time.sleep(0.005)

    def left_by(self, pid: int) -> str:
        """The phase a killed process was in, from the markers it left ("write" if any of its
        threads was writing)."""
        phases = []
        for path in self.dir.glob(f"{pid}-*"):
            if path.suffix != ".tmp":
                words = path.read_text().split()
                phases.append(words[0] if words else "?")
                path.unlink(missing_ok=True)
        return "write" if "write" in phases else (",".join(sorted(set(phases))) or "none")


class Injector:
    """Kills and stops services of the stack by PID, and restarts them through ``Stack.up``.
    Writers (run workers, the code server) are killed in their write phase when one comes within
    the wait; the phase each kill hit is read from the victim's own marker."""

    run_wait_s = 300.0    # how long a run-worker kill waits for an ingest run to write
    inline_wait_s = 60.0  # how long a code-server or daemon kill waits for an inline write

    def __init__(self, stack, instance, rng: random.Random, phases: Phases):
        self.stack = stack
        self.instance = instance
        self.rng = rng
        self.phases = phases

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

    def kill_writer(self, fault: Fault, *, sensor: bool, timeout: float) -> int | None:
        """SIGKILL a writer, in its write phase if one comes within ``timeout``; records the
        phase it died in. Returns its pid (None: no writer was found)."""
        from conflux.stack.procs import pid_alive

        found = self.phases.wait(sensor, timeout)
        if found is None:
            return None
        pid, (phase, dataset, origin) = found
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        for _ in range(100):  # until it is gone: its markers are final then
            if not pid_alive(pid):
                break
            time.sleep(0.02)
        fault.phase = self.phases.left_by(pid)
        who = "code server" if sensor else f"run worker of run {origin[:8]}"
        fault.detail = f"killed {who} pid {pid} in phase {fault.phase} ({dataset})"
        return pid

    def apply(self, fault: Fault) -> None:
        fault.started = time.time()
        if fault.kind == "kill" and fault.target == "run-worker":
            if self.kill_writer(fault, sensor=False, timeout=self.run_wait_s) is None:
                self.kill_starting_worker(fault)
        elif fault.kind == "kill" and fault.target == "code-server":
            if self.kill_writer(fault, sensor=True, timeout=self.inline_wait_s) is None:
                fault.missed, fault.detail = True, "nothing killed: no inline micro-batch seen"
            else:  # the daemon replaces its code server when it reloads the workspace
                took = self.await_code_server(timeout=150)
                fault.detail += (f"; the daemon started a new code server within {took:.0f}s"
                                 if took is not None else "; no new code server within 150s")
        elif fault.kind == "kill" and fault.target == "dagster-daemon":
            # the daemon with its code server, which runs the inline micro-batches
            daemon = self.stack.services["dagster-daemon"]
            if self.kill_writer(fault, sensor=True, timeout=self.inline_wait_s) is None:
                servers = code_servers(daemon.pidfile.live_pid())
                for server in servers:
                    os.kill(server, signal.SIGKILL)
                fault.phase = "none"
                fault.detail = f"killed code server pid(s) {servers} (no micro-batch seen)"
            pid = daemon.kill()
            took = time.monotonic()
            self.up("dagster-daemon")
            fault.detail = (f"killed daemon pid {pid} and its {fault.detail[len('killed '):]}; "
                            f"restarted in {time.monotonic() - took:.1f}s")
        elif fault.kind == "kill":
            name, which = self.resolve(fault.target)
            pid = self.stack.services[name].kill()
            fault.phase = "service"
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

    def kill_starting_worker(self, fault: Fault) -> None:
        """No run worker reached a marker: kill a started ingest run's worker as it is."""
        try:
            run_id, pid = self.run_worker_pid(timeout=min(10.0, self.run_wait_s))
        except TimeoutError as exc:  # the sensor drained the burst inline, tick by tick
            fault.missed, fault.detail = True, f"nothing killed: {exc}"
            return
        try:
            os.kill(pid, signal.SIGKILL)
            fault.phase = "start"
            fault.detail = f"killed run worker pid {pid} of run {run_id[:8]} before it read"
        except ProcessLookupError:
            fault.missed = True
            fault.detail = f"nothing killed: run {run_id[:8]} ended before the kill (pid {pid})"

    def await_code_server(self, timeout: float) -> float | None:
        """Seconds until an inline micro-batch runs again: a sensor's marker written after now
        by a live process of the stack (a new code server)."""
        started, since = time.monotonic(), time.time()
        while time.monotonic() - started < timeout:
            for pid, lines in self.phases.read().items():
                try:
                    newest = max(p.stat().st_mtime for p in self.phases.dir.glob(f"{pid}-*"))
                except (OSError, ValueError):  # pruned meanwhile
                    continue
                if newest > since and any(w[2].startswith("sensor:") for w in lines):
                    return time.monotonic() - started
            time.sleep(0.5)
        return None

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


def code_servers(daemon: int | None) -> list[int]:
    """The code server processes the daemon ``daemon`` started (its group's ``api grpc``)."""
    from pathlib import Path

    from conflux.stack.procs import group_members

    found = []
    for pid in group_members(daemon) if daemon else []:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"api" in argv and b"grpc" in argv:
            found.append(pid)
    return found


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


def duckdb_lake():
    """DuckDB with the ``delta`` extension of its PyPI wheel: the independent reader."""
    from bench.common import duckdb_delta

    return duckdb_delta()


def stored_rows(con, uri: str, dataset: str, workload: Workload) -> pd.DataFrame:
    """Every current row of the workload's keys in the Delta table at ``uri``, read by DuckDB's
    ``delta_scan`` (``__day`` included): a key stored twice comes back twice."""
    if dataset == "customer_ledger":
        where = f"event_id LIKE 'chaos-{workload.tag}-%'"
    else:
        col = "o_orderkey" if dataset == "orders" else "l_orderkey"
        lo, hi = workload.key_range(dataset)
        where = f"{col} BETWEEN {lo} AND {hi}"
    return con.sql(f"SELECT * FROM delta_scan('{uri}') WHERE {where}").df()


def check_dataset(con, uri: str, dataset: str, produced: pd.DataFrame,
                  workload: Workload) -> dict[str, int]:
    """The stored rows of ``dataset`` against the winners of what was produced."""
    from pipelines.catalog import CATALOG

    ds = CATALOG[dataset]
    key = list(KEYS[dataset])
    expected = oracle.winners(produced, key, append_only=ds.append_only)
    columns = [c for c in ds.contract.model_fields if c not in key]
    stored = stored_rows(con, uri, dataset, workload)
    return oracle.judge(expected, stored, key, columns, day_of=ds.event_time)


class Balances:
    """``customer_balance`` before and after the run's ledger events, materialized through
    Dagster (in process, on the stack's instance) and read back with DuckDB."""

    def __init__(self, settings, instance, lake, con):
        self.settings = settings
        self.instance = instance
        self.lake = lake
        self.con = con

    def customers(self, seed: int) -> pd.DataFrame:
        """The customers of ``ops.customer`` (loaded from the demo generator when empty): the
        ledger events are theirs, so the projection holds every account they move."""
        import psycopg

        from pipelines.demo.producer import load_ops
        from pipelines.demo.tpch import TpchGenerator

        with psycopg.connect(self.settings.postgres_url) as conn:
            exists = conn.execute("select to_regclass('ops.customer')").fetchone()[0]
            rows = conn.execute("select c_custkey from ops.customer").fetchall() if exists else []
        if not rows:
            load_ops(self.settings.postgres_url, {"customer": TpchGenerator(0.001, seed).customer()})
            return self.customers(seed)
        return pd.DataFrame({"c_custkey": sorted(r[0] for r in rows)})

    def snapshot(self) -> pd.DataFrame:
        """Materialize ``customer`` and ``customer_balance``, then read the projection."""
        import dagster as dg

        from conflux.io.postgres import PostgresResource
        from conflux.io.registry import SchemaRegistryResource
        from pipelines.definitions import defs

        logging.getLogger("dagster").setLevel(logging.WARNING)  # its step-by-step log
        result = dg.materialize(
            [defs.get_assets_def("customer"), defs.get_assets_def("customer_balance")],
            instance=self.instance,
            resources={"lake": self.lake,
                       "postgres": PostgresResource(url=self.settings.postgres_url),
                       "registry": SchemaRegistryResource(url=self.settings.postgres_url)})
        if not result.success:
            raise RuntimeError("materializing customer_balance failed")
        return self.con.sql(
            "SELECT c_custkey, balance, events_applied, opening_balance, ledger_total "
            f"FROM delta_scan('{self.lake.uri('customer_balance')}')").df()

    @staticmethod
    def judge(before: pd.DataFrame, after: pd.DataFrame, events: pd.DataFrame) -> dict:
        """``after`` against ``before`` plus the fold of the run's distinct ledger events."""
        from pipelines.catalog import CUSTOMER_BALANCE

        signs = CUSTOMER_BALANCE.compute.projection.columns.sign
        folded = oracle.fold(events, signs, "c_custkey")
        return oracle.judge_balances(before, after, folded, "c_custkey")


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
    published: int  # distinct records the broker acknowledged
    resent: int     # sends beyond those (re-sent after broker errors)
    faults: list[Fault]
    updates: dict = field(default_factory=dict)
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
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
    def wrong_balance(self) -> int:
        return self.balances.get("wrong", 0) + self.balances.get("missing", 0)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.twice == 0 and self.changed == 0
                and self.wrong_balance == 0 and bool(self.datasets) and bool(self.balances))

    @property
    def kills(self) -> list[Fault]:
        return [f for f in self.faults if f.kind == "kill" and not f.missed]

    @property
    def write_kills(self) -> int:
        return sum(f.phase == "write" for f in self.kills)

    @property
    def complete(self) -> bool:
        """Every planned kill killed something, and at least a third hit a write phase."""
        planned = sum(f.kind == "kill" for f in self.faults)
        return len(self.kills) == planned and 3 * self.write_kills >= planned

    def lines(self) -> list[str]:
        kills = self.kills
        missed = [f for f in self.faults if f.missed]
        outages = [f for f in self.faults if f.kind == "outage"]
        out = [f"seed {self.seed} (replay: --seed {self.seed})",
               f"events published: {self.published:,} distinct records acknowledged "
               f"(+{self.resent:,} re-sent after broker errors)",
               "updates of earlier orders: " + ", ".join(f"{k} {v:,}" for k, v in
                                                         self.updates.items()),
               f"kill points survived: {len(kills)} "
               f"({dict(Counter(f.target for f in kills))})"
               + (f"; {len(missed)} planned kill(s) found nothing to kill" if missed else ""),
               f"kills in a write phase: {self.write_kills} of {len(kills)}",
               f"outages survived: {len(outages)} "
               f"({', '.join(f'{f.target} {f.seconds:g}s' for f in outages) or 'none'})"]
        table = Counter((f.target, f.phase) for f in kills)
        out.append("kills by phase (from the victim's marker):")
        for phase in sorted({p for _, p in table}):
            row = {t: n for (t, p), n in table.items() if p == phase}
            out.append(f"  {phase:<8} {sum(row.values()):>3}  {row}")
        for f in self.faults:
            out.append(f"  {f.kind} {f.target} at +{f.delay_s:g}s: {f.detail}")
        for name, d in self.datasets.items():
            out.append(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in d.items()))
        out.append("customer_balance: " + ", ".join(f"{k} {v:,}" for k, v in
                                                   self.balances.items()))
        out.append(f"records lost: {self.lost}, counted twice: {self.twice}, "
                   f"changed: {self.changed}, wrong balances: {self.wrong_balance}")
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


def ensure_markers(stack, settings, progress) -> "Phases":
    """The phase markers' directory; a daemon started without it is restarted with it."""
    from pathlib import Path

    from conflux.event.phases import ENV
    from conflux.stack.procs import environ_has

    directory = Path(os.environ.setdefault(ENV, str(settings.home / "phases")))
    directory.mkdir(parents=True, exist_ok=True)
    daemon = stack.services["dagster-daemon"]
    pid = daemon.pidfile.live_pid()
    if pid is not None and not environ_has(pid, f"{ENV}={directory}"):
        progress("restarting the daemon with phase markers on")
        stack.down(["dagster-daemon"], report=progress)
        stack.up(["dagster-daemon"], report=progress)
    return Phases(directory, settings.dagster_home)


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
    phases = ensure_markers(stack, settings, progress)
    datasets = list(TOPICS)
    kafka = KafkaResource.from_env(settings)
    lake = LakeResource.for_stack(settings)
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
    con = duckdb_lake()
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        stopped = [n for n, s in sensor_states(instance, [f"{d}__kafka" for d in datasets]).items()
                   if s.status.value == "STOPPED"]
        if stopped:
            raise RuntimeError(f"sensor(s) {', '.join(stopped)} are stopped; start them in the UI")
        balances = Balances(settings, instance, lake, con)
        customers = balances.customers(seed)
        wait_caught_up(instance, kafka, datasets, since, catch_up_timeout)  # earlier runs' events
        before = balances.snapshot()
        # fresh keys on every run, replayed or not: keys and ledger ids derive from the start
        # time; producer timestamps start an hour back, so an update can be older than its key
        tag = f"{int(since):x}"
        steady = {i for i, f in enumerate(faults) if f.target in ("code-server", "dagster-daemon")}
        workload = build_workload(events, len(faults) + 1, seed, bursts, tag,
                                  base_ms=int(since * 1000) - 3_600_000, customers=customers,
                                  steady=steady)
        publisher = Publisher(kafka, refs)
        progress(f"seed {seed}: {workload.events:,} events in {len(workload.chunks)} chunks "
                 f"({dict(workload.updates)}), {len(faults)} faults: "
                 + ", ".join(f"{f.kind} {f.target}" for f in faults))
        injector = Injector(stack, instance, rng, phases)
        deadline = time.monotonic() + catch_up_timeout + 60 * len(workload.chunks)
        for i, chunk in enumerate(workload.chunks):
            fault = faults[i] if i < len(faults) else None
            records = publisher.add(chunk, seed * 1000 + i)
            # bursts go out at full speed (a backlog for a run); an outage's chunk is spread over
            # the outage and a little after it (events flow all along); others at the rate
            pace = 0.0 if i in bursts else rate
            if fault is not None and fault.kind == "outage":
                pace = min(rate, chunk.events / (fault.delay_s + fault.seconds + 10))
            elif fault is not None and fault.target in ("code-server", "dagster-daemon"):
                # events flow while the kill waits for an inline micro-batch to write
                pace = min(rate, chunk.events / (fault.delay_s + 12))
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
                        set_sensor(instance, BURST_SENSOR, running=True, settle_s=0.5)
                injector.apply(fault)
                progress(f"  {fault.detail}")
            thread.join(max(deadline - time.monotonic(), 1))
            if errors:
                raise errors[0]
            if thread.is_alive():
                raise TimeoutError(f"chunk {i + 1} still publishing at the deadline")
        progress(f"published {publisher.distinct:,} records; waiting for the platform to catch up")
        recovered = wait_caught_up(instance, kafka, datasets, since, catch_up_timeout)
        result = Result(seed, workload.events, publisher.distinct, publisher.resent, faults,
                        updates=dict(workload.updates), recovered_s=recovered)
        for ds in datasets:
            produced = publisher.produced(TOPICS[ds])
            result.datasets[ds] = check_dataset(con, lake.uri(ds), ds, produced, workload)
        ledger = oracle.winners(publisher.produced(TOPICS["customer_ledger"]), ["event_id"],
                                append_only=True)
        result.balances = balances.judge(before, balances.snapshot(), ledger)
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
    parser.add_argument("--record", action="store_true",
                        help="write the figures of a passing, complete run to "
                             "docs/benchmark-results.md (section reliability_chaos)")
    args = parser.parse_args(argv)
    if args.events < 100 or args.kills < 0:
        parser.error("--events must be >= 100 and --kills >= 0")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}", flush=True)
    result = run(events=args.events, kills=args.kills, outages=args.outage, seed=seed,
                 rate=args.rate, catch_up_timeout=args.timeout)
    lines = result.lines()
    if not result.ok:
        lines.append("FAILED")
    elif not result.complete:  # the data is right, but the kills did not prove enough
        lines.append(f"INCOMPLETE: nothing lost, twice, changed or wrong, but "
                     f"{len(result.kills)} of {args.kills} planned kills killed something and "
                     f"{result.write_kills} hit a write phase (at least a third must); "
                     "replay with another --seed")
    else:
        lines.append("OK: nothing lost, nothing counted twice, nothing changed, every balance "
                     f"exact; {result.write_kills} of {len(result.kills)} kills in a write phase")
    for line in lines:
        print(line, flush=True)
    if args.json:
        print(json.dumps({"seed": seed, "ok": result.ok, "complete": result.complete,
                          "lost": result.lost, "twice": result.twice, "changed": result.changed,
                          "wrong_balance": result.wrong_balance, "updates": result.updates,
                          "datasets": result.datasets, "balances": result.balances,
                          "ui": result.ui, "faults": [f.__dict__ for f in result.faults]},
                         default=str))
    if args.record and result.ok and result.complete:
        from bench.common import record_results

        given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--record"]
        replay = [] if args.seed is not None else ["--seed", str(seed)]
        command = " ".join(["python -m reliability.chaos", *given, *replay])
        print(f"recorded in {record_results('reliability_chaos', lines, command=command)}")
    return 0 if result.ok and result.complete else 1


if __name__ == "__main__":
    sys.exit(main())
