"""Dagster webserver and daemon, as two processes, on a Postgres-backed ``DAGSTER_HOME``.

The tooling writes ``$DAGSTER_HOME/dagster.yaml``: run, event-log and schedule storage in
Postgres (dagster-postgres; the URL comes from ``DAGSTER_PG_URL`` at run time, never
written to disk), the queued run coordinator, telemetry off.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from conflux.settings import REPO_ROOT, Settings
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
  module: dagster.core.launcher
  class: DefaultRunLauncher
run_monitoring:
  enabled: true
  poll_interval_seconds: 10
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
    env = dict(os.environ)
    env.update(settings.client_env())
    env["DAGSTER_HOME"] = str(settings.dagster_home)
    return env


def write_instance(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(render_dagster_yaml(settings))
    return path


def _script(name: str) -> str:
    """A console script installed beside the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class DagsterWebserver(Service):
    name = "dagster-webserver"
    start_timeout = 120.0

    @property
    def port(self) -> int:
        return self.settings.dagster_port

    def marker(self) -> str:
        return f"dagster-webserver {self.settings.workspace} --port {self.port}"

    def prepare(self) -> None:
        write_instance(self.settings)

    def command(self) -> list[str]:
        return [_script("dagster-webserver"), "-w", str(self.settings.workspace),
                "--host", self.settings.bind_host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return dagster_env(self.settings)

    def cwd(self) -> Path:
        return REPO_ROOT

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


class DagsterDaemon(Service):
    name = "dagster-daemon"
    start_timeout = 120.0

    def marker(self) -> str:
        return f"dagster-daemon run -w {self.settings.workspace}"

    def prepare(self) -> None:
        write_instance(self.settings)

    def command(self) -> list[str]:
        return [_script("dagster-daemon"), "run", "-w", str(self.settings.workspace)]

    def env(self) -> dict[str, str]:
        return dagster_env(self.settings)

    def cwd(self) -> Path:
        return REPO_ROOT

    def healthy(self) -> bool:
        # heartbeats land in Postgres once every daemon loop is up
        import subprocess

        res = subprocess.run([_script("dagster-daemon"), "liveness-check"], env=self.env(),
                             cwd=REPO_ROOT, capture_output=True, timeout=60)
        return res.returncode == 0

    def describe(self) -> str:
        return "sensors, schedules, backfills, run queue"
