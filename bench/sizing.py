"""Capacity figures for operators (a script, not a test): what the platform costs per event and
per run, measured against an idle baseline taken in the same run.

1. idle: every process's CPU over ``--idle`` seconds with nothing to do (sensors still tick);
2. events: ``--events`` live orders published at ``--rate``/s; the phase ends when every one is
   materialized in Dagster. CPU of each component net of its idle rate, per 1,000 events;
3. runs: ``--runs`` small batch runs (``region__job``: one Postgres table into the lake) launched
   at once through the webserver and drained by the queued coordinator (4 at a time, the local
   stack's limit): runs per minute and CPU per run, net of idle.

It starts its own stack (state in ``.conflux/bench``, ports 26092 / 26093 / 26432 / 26000),
loopback only, and stops it at the end. Usage::

    .venv/bin/python -m bench.sizing [--events 20000] [--rate 500] [--runs 24] [--idle 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.common import REPO, Figures, record_results, use_bench_stack
from bench.event_path import produce_live, wait_covered
from conflux.stack.sockets import descendants

COMPONENTS = ("dagster-daemon", "dagster-webserver", "kafka", "postgres")


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, plus what their exited and reaped
    children used (``cutime``/``cstime``): run workers live a few seconds, and a sampler
    would miss most of theirs."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in descendants(root):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile: its time is in its parent's cutime once reaped
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def cpu_now(stack) -> dict[str, float]:
    """CPU seconds used so far by each component's process tree (the daemon's includes its
    code servers and the run workers they start)."""
    out = {}
    for name in COMPONENTS:
        pid = stack.services[name].pidfile.live_pid()
        out[name] = tree_cpu(pid) if pid else 0.0
    return out


def measure(stack, work) -> tuple[float, dict[str, float], object]:
    """(wall seconds, CPU seconds per component, work's result) of ``work()``."""
    before, t0 = cpu_now(stack), time.monotonic()
    result = work()
    wall, after = time.monotonic() - t0, cpu_now(stack)
    return wall, {n: after[n] - before[n] for n in COMPONENTS}, result


def net(cpu: dict[str, float], idle_rate: dict[str, float], wall: float) -> dict[str, float]:
    """CPU above what the component burns idle over the same time."""
    return {n: max(cpu[n] - idle_rate[n] * wall, 0.0) for n in COMPONENTS}


def launch_and_drain(url: str, job: str, count: int, timeout: float) -> list[str]:
    """Launch ``count`` runs of ``job`` at once; wait until none is queued or running."""
    from conflux.cli import dagster_api
    ids = [dagster_api.launch_run(url, job, {}, tags={"conflux/launched_by": "bench"})
           for _ in range(count)]
    deadline = time.monotonic() + timeout
    while True:
        states = [dagster_api.run_status(url, i) for i in ids]
        if all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in states):
            bad = [i for i, s in zip(ids, states) if s != "SUCCESS"]
            if bad:
                raise RuntimeError(f"{len(bad)} bench run(s) did not succeed: {bad[:3]}")
            return ids
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs still in flight after {timeout:.0f}s: {states}")
        time.sleep(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="live orders to publish")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s while publishing")
    parser.add_argument("--runs", type=int, default=24, help="batch runs to launch at once")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle baseline")
    args = parser.parse_args(argv)
    if args.events < 1000 or args.runs < 4 or args.rate <= 0 or args.idle < 10:
        parser.error("need --events >= 1000, --runs >= 4, --rate > 0 and --idle >= 10")

    use_bench_stack("bench.naive_definitions", "naive")
    os.environ["CONFLUX_WORKSPACE"] = str(REPO / "workspace.yaml")  # Conflux alone, as deployed

    from pipelines.demo.producer import load_ops, tpch_tables
    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.contracts.lineage import contract_schema
    from conflux.io.schema_registry import SchemaRegistry
    from pipelines.catalog import ORDERS
    from conflux.io.kafka import KafkaResource

    settings = Settings.from_env()
    stack = Stack(settings)
    stack.reset(report=lambda line: None)
    started = stack.up(report=lambda line: print(line, file=sys.stderr))
    os.environ.update(settings.client_env())
    os.nice(5)  # the load generator must not starve what it measures (2-core machine)
    import dagster as dg

    try:
        load_ops(settings.postgres_url, tpch_tables(0.0005, seed=5))
        ref = SchemaRegistry(settings.postgres_url).register(
            "orders", contract_schema(ORDERS.contract)).version.ref
        kafka = KafkaResource.from_env(settings)
        print("warming up: the daemon loads its code locations ...", file=sys.stderr)
        time.sleep(15)

        print(f"idle baseline: {args.idle:g}s ...", file=sys.stderr)
        idle_wall, idle_cpu, _ = measure(stack, lambda: time.sleep(args.idle))
        idle_rate = {n: idle_cpu[n] / idle_wall for n in COMPONENTS}

        print(f"events: {args.events:,} orders at {args.rate:g}/s ...", file=sys.stderr)
        with dg.DagsterInstance.get() as instance:
            since = time.time()

            def events():
                sent = produce_live(kafka, "tpch.orders", ref, args.rate,
                                    args.events / args.rate, 300_000_000)
                return sent, wait_covered(instance, "orders", sent, since - 1, timeout=600)

            ev_wall, ev_cpu, (sent, (latency, missing)) = measure(stack, events)
            ingest_runs = instance.get_runs_count(dg.RunsFilter(job_name="orders__ingest_job"))
        if missing:
            raise RuntimeError(f"{missing} published event(s) never materialized")
        ev_net = net(ev_cpu, idle_rate, ev_wall)

        print(f"runs: {args.runs} x region__job launched at once ...", file=sys.stderr)
        run_wall, run_cpu, _ = measure(
            stack, lambda: launch_and_drain(settings.dagster_url, "region__job", args.runs, 900))
        run_net = net(run_cpu, idle_rate, run_wall)
    finally:
        stack.down(started, report=lambda line: None)

    per_k = {n: 1000 * ev_net[n] / len(sent) for n in COMPONENTS}
    per_run = {n: run_net[n] / args.runs for n in COMPONENTS}
    out = Figures()  # printed as before, and recorded in docs/benchmark-results.md
    out(f"\n{os.cpu_count()} cores; CPU seconds by component (process tree), net of idle")
    out(f"{'component':<20}{'idle cores':>11}{'per 1,000 events':>18}{'per run':>10}")
    for n in COMPONENTS:
        out(f"{n:<20}{idle_rate[n]:>11.3f}{per_k[n]:>18.2f}{per_run[n]:>10.2f}")
    total_k, total_run = sum(per_k.values()), sum(per_run.values())
    total_idle = sum(idle_rate.values())
    out(f"{'total':<20}{total_idle:>11.3f}{total_k:>18.2f}{total_run:>10.2f}")
    ev_cores, run_cores = sum(ev_cpu.values()) / ev_wall, sum(run_cpu.values()) / run_wall
    out(f"\nevents: {len(sent):,} in {ev_wall:.1f}s ({len(sent) / ev_wall:,.0f}/s sustained, "
        f"{ingest_runs} ingest runs), all materialized; {total_k:.2f} CPU-s per 1,000 events; "
        f"the platform used {ev_cores:.2f} cores vs {total_idle:.2f} idle "
        f"({ev_cores / max(total_idle, 1e-9):.1f}x the idle baseline)")
    out(f"runs: {args.runs} in {run_wall:.1f}s = {60 * args.runs / run_wall:.1f} runs/min at "
        f"4 concurrent; {total_run:.2f} CPU-s per run; the platform used {run_cores:.2f} cores "
        f"({run_cores / max(total_idle, 1e-9):.1f}x the idle baseline)")
    record_results("sizing", out.lines)
    print(json.dumps({"idle_cores": idle_rate, "per_1000_events": per_k, "per_run": per_run,
                      "events": len(sent), "events_wall": ev_wall, "ingest_runs": ingest_runs,
                      "runs": args.runs, "runs_wall": run_wall}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
