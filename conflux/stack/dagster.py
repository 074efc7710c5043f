"""Dagster webserver and daemon, as two processes, on a Postgres-backed ``DAGSTER_HOME``.

The tooling writes ``$DAGSTER_HOME/dagster.yaml``: run, event-log and schedule storage in
Postgres (dagster-postgres; the URL comes from ``DAGSTER_PG_URL`` at run time, never
written to disk), the queued run coordinator, Dagster's own ``DefaultRunLauncher``, telemetry off.
Run monitoring fails runs stuck starting or cancelling; a worker killed mid-run fails its run
through the ``conflux_run_workers`` sensor (``CONFLUX_RUN_WORKERS=local``, set here for every
Dagster process); run retries re-execute a failed run up to 3 times — every Conflux run is
idempotent, so a retry re-applies, never doubles.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from conflux.core.errors import StackError
from conflux.core.settings import Settings
from conflux.stack.procs import port_open
from conflux.stack.service import Service


def render_dagster_yaml(settings: Settings) -> str:
    """The instance config (pure: tested without starting anything)."""
    return f"""\
# written by conflux stack; edits are overwritten on the next start
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    dequeue_interval_seconds: 1
run_launcher:
  module: dagster
  class: DefaultRunLauncher
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  start_timeout_seconds: 90
  max_resume_run_attempts: 0
run_retries:
  enabled: true
  max_retries: 3
sensors:
  use_threads: true
  num_workers: 4
schedules:
  use_threads: true
  num_workers: 2
local_artifact_storage:
  module: dagster.core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {settings.dagster_home / "storage"}
telemetry:
  enabled: false
"""


def dagster_env(settings: Settings) -> dict[str, str]:
    """The environment every Dagster process of the stack runs with."""
    env = dict(os.environ)  # OPENLINEAGE_* settings reach sensors and runs this way
    env.pop("CONFLUX_KAFKA_ADMIN_PASSWORD", None)  # the stack's own: sensors and runs never use it
    env.update(settings.client_env())
    env["DAGSTER_HOME"] = str(settings.dagster_home)
    env["CONFLUX_RUN_WORKERS"] = "local"  # run workers are this machine's processes
    # phase markers of sensor ticks and ingest runs (conflux/event/phases.py), which the
    # reliability harness reads to kill a writer in its write phase
    env.setdefault("CONFLUX_PHASE_DIR", str(settings.home / "phases"))
    # A full-history backfill run covers ~2,400 partitions. Dagster writes its per-partition
    # events one statement (and, on Postgres, one new connection) each: ~80 s of "planned"
    # events before the run even starts, as long again for the materializations. One planned
    # event for the run's partition subset (trade-off: if that run fails, its partitions are
    # not marked failed one by one — the run is) and batched materialization writes fix both.
    env.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    env.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    return env


def write_instance(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(render_dagster_yaml(settings))
    return path


def ensure_storage(settings: Settings) -> None:
    """Create (or upgrade) Dagster's tables in Postgres once, before any Dagster process starts.

    Left to the processes, the webserver, the daemon and its liveness check race to create the
    same tables on a fresh database ("type snapshots already exists"). A marker per database and
    Dagster version skips the ~3 s ``dagster instance migrate`` on later starts.
    """
    import hashlib
    import subprocess
    from importlib.metadata import version

    write_instance(settings)
    ensure_workspace(settings)
    tag = hashlib.sha256(f"{settings.postgres_url}|{version('dagster')}".encode()).hexdigest()[:16]
    marker = settings.dagster_home / f".storage-{tag}"
    if marker.exists():
        return
    res = subprocess.run([_script("dagster"), "instance", "migrate"], env=dagster_env(settings),
                         cwd=settings.project_root, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        from conflux.stack.procs import reason_in

        raise StackError(f"dagster instance migrate failed (exit {res.returncode}): "
                         f"{reason_in((res.stderr or res.stdout)[-4000:])}")
    marker.touch()


def ensure_workspace(settings: Settings) -> None:
    """A project without a ``workspace.yaml`` of its own gets one in the state folder, loading
    its ``[tool.dagster] module_name`` from the project folder."""
    from conflux.core.project import Project

    if settings.workspace.exists() or settings.workspace.parent != settings.home:
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.workspace.write_text(Project.load(settings.project_root).workspace_yaml())


def _script(name: str) -> str:
    """A console script installed beside the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class _DagsterService(Service):
    """A Dagster process: its code servers (and their run workers) are its children, in its
    process group, and outlive it when it is killed; a restart ends them."""

    def owns_leftover(self, pid: int) -> bool:
        from conflux.stack.procs import environ_has

        return environ_has(pid, f"DAGSTER_HOME={self.settings.dagster_home}")


class DagsterWebserver(_DagsterService):
    name = "dagster-webserver"
    start_timeout = 120.0

    @property
    def port(self) -> int:
        return self.settings.dagster_port

    def marker(self) -> str:
        return f"dagster-webserver {self.settings.workspace} --port {self.port}"

    def prepare(self) -> None:
        ensure_storage(self.settings)

    def command(self) -> list[str]:
        return [_script("dagster-webserver"), "-w", str(self.settings.workspace),
                "--host", self.settings.bind_host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return dagster_env(self.settings)

    def cwd(self) -> Path:
        return self.settings.project_root

    def healthy(self) -> bool:
        if not port_open(self.settings.bind_host, self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.settings.dagster_url}/server_info", timeout=3) as r:
                return r.status == 200
        except OSError:
            return False

    def describe(self) -> str:
        return self.settings.dagster_url


class DagsterDaemon(_DagsterService):
    name = "dagster-daemon"
    start_timeout = 120.0

    def marker(self) -> str:
        return f"dagster-daemon run -w {self.settings.workspace}"

    def prepare(self) -> None:
        ensure_storage(self.settings)

    def command(self) -> list[str]:
        return [_script("dagster-daemon"), "run", "-w", str(self.settings.workspace)]

    def env(self) -> dict[str, str]:
        return dagster_env(self.settings)

    def cwd(self) -> Path:
        return self.settings.project_root

    def healthy(self) -> bool:
        # heartbeats land in Postgres once every daemon loop is up
        import subprocess

        res = subprocess.run([_script("dagster-daemon"), "liveness-check"], env=self.env(),
                             cwd=self.settings.project_root, capture_output=True, timeout=60)
        return res.returncode == 0

    def describe(self) -> str:
        return "sensors, schedules, backfills, run queue"
