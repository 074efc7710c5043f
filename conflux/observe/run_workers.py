"""Dead run workers on one machine: a run whose worker process is gone is marked failed.

Dagster's ``DefaultRunLauncher`` (the local stack's) starts each run as a child process of a code
server but cannot tell whether that process still lives: a worker killed with ``kill -9`` (or by
the OOM killer) leaves its run ``STARTED`` for ever. Dagster's run monitoring can only ask a
launcher built on its internal health-check types, and Conflux uses Dagster's public API only, so
the sensor ``conflux_run_workers`` watches instead: a started run's worker pid is in its own
"Started process for run" engine event; a pid that is gone (or reused by a process started
later) is a dead worker, and the run is reported failed — Dagster's run retries (``run_retries``
in ``dagster.yaml``) re-execute it, and the Kafka sensor requests an ingest batch whose runs all
failed again (``conflux.event.requeue``).

It needs the workers on the machine the sensor runs on: the local stack says so by setting
``CONFLUX_RUN_WORKERS=local`` for its Dagster processes; anywhere else the sensor only skips
(Docker and Kubernetes run launchers check their workers themselves).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

SENSOR_NAME = "conflux_run_workers"
ENV = "CONFLUX_RUN_WORKERS"
PID_EVENT_PREFIX = "Started process for run"
CHECK_EVERY_S = 5


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_started_at(pid: int) -> float | None:
    """Wall-clock start time of a live, non-zombie ``pid``; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    # field 22 of /proc/pid/stat (index 19 after the command) is the start time in clock ticks
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int | None, reported_at: float, *, slack_s: float = 5.0) -> bool:
    """False when ``pid`` is gone or belongs to a process started after it was reported; True
    otherwise, and without a pid (none reported yet: Dagster's start timeout covers runs that
    never reach their first event). Pure but for ``/proc`` (unit-tested on live pids)."""
    if pid is None:
        return True
    started = process_started_at(pid)
    return started is not None and started <= reported_at + slack_s


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int | None, float]:
    """The newest worker pid the run reported and when (a resumed run reports one per worker)."""
    for record in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        event = record.dagster_event
        if event is not None and (event.message or "").startswith(PID_EVENT_PREFIX):
            entry = event.engine_event_data.metadata.get("pid")
            text = getattr(entry, "value", entry)
            if text is not None and str(text).isdigit():
                return int(text), record.timestamp
    return None, time.time()


def fail_dead_workers(instance: dg.DagsterInstance) -> tuple[int, list[str]]:
    """Report failed every started run whose worker is gone; returns (runs checked, ids failed)."""
    started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=200)
    failed = []
    for run in started:
        pid, reported_at = worker_pid(instance, run.run_id)
        if worker_alive(pid, reported_at):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is not None and current.status == dg.DagsterRunStatus.STARTED:
            instance.report_run_failed(current, f"run worker pid {pid} is gone (killed or "
                                                "crashed before the run finished)")
            failed.append(run.run_id)
    return len(started), failed


def build_run_worker_monitor() -> dg.SensorDefinition:
    """The sensor failing started runs whose worker is gone.

    Returns:
        ``conflux_run_workers``, running by default, checking every ``CHECK_EVERY_S`` seconds;
        it only skips unless ``CONFLUX_RUN_WORKERS=local``.

    Examples:
        >>> build_run_worker_monitor().name
        'conflux_run_workers'
    """

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=CHECK_EVERY_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Marks a started run failed when its worker process is gone (killed), "
                           f"so run retries re-execute it; only with {ENV}=local (the local stack)")
    def _sensor(context: dg.SensorEvaluationContext):
        if os.environ.get(ENV) != "local":
            return dg.SkipReason(f"{ENV} is not 'local': run workers are not this machine's")
        checked, failed = fail_dead_workers(context.instance)
        if failed:
            return dg.SkipReason(f"marked {len(failed)} run(s) failed, their workers gone: "
                                 + ", ".join(failed))
        return dg.SkipReason(f"{checked} started run(s), every worker alive")

    return _sensor
