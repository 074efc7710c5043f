"""One managed local service: start it, check it, stop it by its PID.

Subclasses say how to prepare (download, format), which command runs the service and how to
tell it is healthy; this base does the pid-file, port and health bookkeeping the same way for all.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conflux.errors import StackError
from conflux.settings import Settings
from conflux.stack.procs import PidFile, port_open, spawn, stop_pid, wait_for


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    detail: str

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.running and self.pid else (
            "running" if self.running else "stopped")
        return f"{self.name:<18} {state:<22} {self.detail}"


class Service(ABC):
    """A process the tooling starts and owns."""

    name: str = "service"
    start_timeout: float = 60.0
    stop_signal: int = signal.SIGTERM
    user: str | None = None

    def __init__(self, settings: Settings):
        self.settings = settings

    # --- what subclasses define --------------------------------------------------------------
    @property
    def port(self) -> int | None:
        return None

    @abstractmethod
    def marker(self) -> str:
        """Words that appear in the service's command line (guards against pid reuse)."""

    def prepare(self) -> None:
        """Download, render config, format storage: whatever must exist before start."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the service in the foreground."""

    def env(self) -> dict[str, str] | None:
        return None

    def cwd(self) -> Path | None:
        return None

    def healthy(self) -> bool:
        return self.port is None or port_open(self.settings.bind_host, self.port)

    def after_start(self) -> None:
        """Work once healthy (create databases, ...)."""

    def describe(self) -> str:
        return f"{self.settings.bind_host}:{self.port}" if self.port else ""

    # --- shared bookkeeping ------------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    def pidfile(self) -> PidFile:
        return PidFile(self.settings.run_dir / f"{self.name}.pid", self.marker())

    def status(self) -> ServiceStatus:
        pid = self.pidfile.live_pid()
        if pid is None:
            return ServiceStatus(self.name, False, None, self.describe())
        detail = self.describe()
        if not self.healthy():
            detail += " (not answering)"
        return ServiceStatus(self.name, True, pid, detail)

    def up(self) -> str:
        """Start unless already running; returns a one-line report."""
        pid = self.pidfile.live_pid()
        if pid is not None:
            if self.healthy():
                return f"{self.name}: already running (pid {pid}) {self.describe()}"
            # ours but not answering: give it the rest of a start timeout, then fail clearly
            wait_for(self.healthy, service=self.name, log=self.log, timeout=self.start_timeout)
            return f"{self.name}: already running (pid {pid}) {self.describe()}"
        if self.port is not None and port_open(self.settings.bind_host, self.port):
            raise StackError(
                f"{self.name}: port {self.settings.bind_host}:{self.port} is in use by a process "
                f"that conflux did not start (no live pid file in {self.settings.run_dir}); stop it "
                f"or choose another port (see `conflux stack env` and conflux/settings.py)"
            )
        start = time.monotonic()
        self.prepare()
        proc = spawn(self.command(), log=self.log, env=self.env(), cwd=self.cwd(), user=self.user)
        self.pidfile.write(proc.pid)
        try:
            wait_for(self.healthy, service=self.name, log=self.log,
                     timeout=self.start_timeout, proc=proc)
            self.after_start()
        except BaseException:
            stop_pid(proc.pid, sig=self.stop_signal)
            self.pidfile.clear()
            raise
        took = time.monotonic() - start
        return f"{self.name}: started (pid {proc.pid}) {self.describe()} in {took:.1f}s; log {self.log}"

    def down(self) -> str:
        pid = self.pidfile.live_pid()
        if pid is None:
            return f"{self.name}: not running"
        how = stop_pid(pid, sig=self.stop_signal)
        self.pidfile.clear()
        return f"{self.name}: {how} (pid {pid})"


def run_checked(argv: list[str], *, what: str, log: Path, timeout: float, **kw) -> None:
    """Run a preparation command to completion, appending its output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {what}: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                 stdin=subprocess.DEVNULL, **kw)
        except subprocess.TimeoutExpired:
            raise StackError(f"{what} took longer than {timeout:.0f}s; see {log}") from None
        except FileNotFoundError as exc:
            raise StackError(f"{what}: {exc.filename} not found") from None
    if res.returncode != 0:
        from conflux.stack.procs import tail

        raise StackError(f"{what} failed (exit {res.returncode}); see {log}:\n{tail(log)}")
