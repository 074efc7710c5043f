"""Dagster's default run launcher, plus a run-worker health check for one machine.

``DefaultRunLauncher`` starts each run as a child process of the code server but cannot tell
whether that process still lives: a run worker killed with ``kill -9`` (or by the OOM killer)
stays ``STARTED`` for ever, and the ranges its ingest run held are never applied. This launcher
answers Dagster's run monitoring: the worker's pid is in the run's own "Started process for run"
engine event; a pid that is gone (or reused by a process started later) is a failed worker, so
run monitoring marks the run failed and run retries (``run_retries`` in ``dagster.yaml``)
re-execute it — idempotently, as every Conflux run is.

It assumes what the local stack guarantees: the daemon and the code servers share one machine.
On several machines use Dagster's Docker or Kubernetes run launcher, which check their workers
themselves (see the README's "Running at scale").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster._core.events import DagsterEventType
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRun

PID_EVENT_PREFIX = "Started process for run"


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


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
    return _boot_time() + int(fields[19]) / _clock_ticks()


def worker_status(pid: int | None, reported_at: float, *, slack_s: float = 5.0) -> WorkerStatus:
    """RUNNING while the pid lives and started before it was reported; FAILED otherwise.

    Without a pid (none reported yet) the answer is RUNNING: Dagster's start timeout covers runs
    that never reach their first event. Pure but for ``/proc`` (unit-tested on live pids).
    """
    if pid is None:
        return WorkerStatus.RUNNING
    started = process_started_at(pid)
    if started is None or started > reported_at + slack_s:
        return WorkerStatus.FAILED  # gone, or the pid now belongs to a newer process
    return WorkerStatus.RUNNING


class LocalRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers run monitoring can check (single machine)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid, reported_at = self._worker_pid(run.run_id)
        status = worker_status(pid, reported_at)
        if status == WorkerStatus.FAILED:
            return CheckRunHealthResult(status, f"run worker pid {pid} is gone (killed or "
                                                "crashed before the run finished)")
        return CheckRunHealthResult(status, f"run worker pid {pid} is alive" if pid else
                                    "no run worker pid reported yet")

    def _worker_pid(self, run_id: str) -> tuple[int | None, float]:
        """The newest worker pid the run reported (a resumed run reports one per worker)."""
        events = self._instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        for record in reversed(events):
            event = record.dagster_event
            if event is not None and (event.message or "").startswith(PID_EVENT_PREFIX):
                entry = event.engine_event_data.metadata.get("pid")
                text = getattr(entry, "value", entry)
                if text is not None and str(text).isdigit():
                    return int(text), record.timestamp
        return None, time.time()
