"""One managed local service: start it, check it, stop it by its PID.

Subclasses say how to prepare (download, format), which command runs the service and how to
tell it is healthy; this base does the pid-file, port and health bookkeeping the same way for all.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
import subprocess
import time
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conflux.core.errors import StackError
from conflux.core.settings import Settings
from conflux.stack.procs import (PidFile, reap, group_members, pid_alive, port_open, spawn,
                                 stop_pid, wait_for)


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    detail: str

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.running and self.pid else (
            "running" if self.running else "stopped")
        return f"{self.name:<23} {state:<22} {self.detail}"


@dataclass
class Launch:
    """What :meth:`Service.launch` did: the service's pid, and the process it spawned (None
    when the service was already running)."""

    pid: int
    proc: subprocess.Popen | None
    began: float
    recorded: int | None = None
    leftovers: list[int] = field(default_factory=list)


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

    def owns_leftover(self, pid: int) -> bool:
        """Whether a survivor of this service's crashed process group is ours to end (by
        default none is: the service's children exit when their parent dies)."""
        return False

    def clear_leftovers(self, leader: int, timeout: float = 15.0) -> list[int]:
        """After the service's leader process died uncleanly (``kill -9``, OOM): wait for the
        rest of its process group to exit, ending the members ``owns_leftover`` claims (like a
        service manager restarting a unit); returns the pids ended."""
        ended = []
        deadline = time.monotonic() + timeout
        while (members := group_members(leader)) and time.monotonic() < deadline:
            for pid in members:
                if pid not in ended and self.owns_leftover(pid):
                    stop_pid(pid, timeout=10)
                    ended.append(pid)
            time.sleep(0.2)
        return ended

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
        return self.await_up(self.launch())

    def launch(self) -> "Launch":
        """The first half of :meth:`up`: checks, ``prepare`` and spawn, without waiting (the
        nodes of a KRaft cluster must all run before any of them becomes healthy)."""
        recorded = self.pidfile.recorded_pid()
        pid = self.pidfile.live_pid()
        if pid is not None:
            return Launch(pid=pid, proc=None, began=time.monotonic())
        if self.port is not None and port_open(self.settings.bind_host, self.port):
            raise StackError(
                f"{self.name}: port {self.settings.bind_host}:{self.port} is in use by a process "
                f"that conflux did not start (no live pid file in {self.settings.run_dir}); stop it "
                f"or choose another port (see `conflux stack env` and conflux/core/settings.py)"
            )
        start = time.monotonic()
        leftovers = self.clear_leftovers(recorded) if recorded else []
        self.prepare()
        proc = spawn(self.command(), log=self.log, env=self.env(), cwd=self.cwd(), user=self.user)
        self.pidfile.write(proc.pid)
        return Launch(pid=proc.pid, proc=proc, began=start, recorded=recorded,
                      leftovers=leftovers)

    def await_up(self, launch: "Launch") -> str:
        """The second half of :meth:`up`: wait until healthy, then ``after_start``; a process
        ``launch`` spawned is stopped again when that fails."""
        if launch.proc is None:
            if not self.healthy():
                # ours but not answering: give it the rest of a start timeout, then fail clearly
                wait_for(self.healthy, service=self.name, log=self.log,
                         timeout=self.start_timeout)
            return f"{self.name}: already running (pid {launch.pid}) {self.describe()}"
        try:
            wait_for(self.healthy, service=self.name, log=self.log,
                     timeout=self.start_timeout, proc=launch.proc)
            self.after_start()
        except BaseException:
            self.abort(launch)
            raise
        took = time.monotonic() - launch.began
        note = (f" (ended {len(launch.leftovers)} process(es) left by the previous pid "
                f"{launch.recorded})" if launch.leftovers else "")
        return (f"{self.name}: started (pid {launch.pid}) {self.describe()} in {took:.1f}s; "
                f"log {self.log}{note}")

    def abort(self, launch: "Launch") -> None:
        """Stop the process ``launch`` spawned (none when the service was already running)."""
        if launch.proc is not None:
            stop_pid(launch.proc.pid, sig=self.stop_signal)
            self.pidfile.clear()

    def kill(self) -> int | None:
        """``kill -9`` the service's leader process only, as a crash would (fault injection);
        returns its pid. ``up`` restarts it and clears what the crash left behind."""
        pid = self.pidfile.live_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):  # until reaped: a zombie still "exists" for kill(pid, 0)
                reap(pid)
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
        return pid

    def down(self) -> str:
        recorded = self.pidfile.recorded_pid()
        pid = self.pidfile.live_pid()
        if pid is None:
            if recorded and self.clear_leftovers(recorded, timeout=5):
                return f"{self.name}: not running (ended what its crashed pid {recorded} left)"
            return f"{self.name}: not running"
        how = stop_pid(pid, sig=self.stop_signal)
        self.pidfile.clear()
        return f"{self.name}: {how} (pid {pid})"


# argument parts that carry a secret: key=value pairs (Kafka's --add-scram credentials, JAAS
# options, URLs' query strings) and flags whose next argument is the secret
_SECRET_PAIR = re.compile(r"(?i)\b((?:salted)?password|secret|token|salt)=(\"[^\"]*\"|'[^']*'|[^,\]\s;&]*)")
_SECRET_FLAGS = ("--password", "--add-scram", "-S")
_SECRET_ENV = re.compile(r"(?i)(PASSWORD|SECRET|TOKEN)")


def redact_argv(argv: list[str], secrets: Iterable[str] | None = None) -> list[str]:
    """``argv`` fit for a log: secret ``key=value`` parts, the argument after a secret flag and
    every known secret value (by default the values of the environment's ``*PASSWORD*``,
    ``*SECRET*`` and ``*TOKEN*`` variables) become ``***`` (pure: tested without running)."""
    if secrets is None:
        from os import environ

        secrets = [v for k, v in environ.items() if _SECRET_ENV.search(k)]
    known = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)
    out: list[str] = []
    after_flag = False
    for arg in argv:
        if after_flag:  # the flag's value: its secret parts, or all of it
            redacted = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", arg)
            arg = redacted if redacted != arg else "***"
        for secret in known:
            arg = arg.replace(secret, "***")
        arg = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", arg)
        after_flag = arg in _SECRET_FLAGS
        out.append(arg)
    return out


def run_checked(argv: list[str], *, what: str, log: Path, timeout: float, **kw) -> None:
    """Run a preparation command to completion, appending its output to ``log`` (the command
    line is written with its secrets redacted, see :func:`redact_argv`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {what}: {' '.join(redact_argv(argv))}\n".encode())
        out.flush()
        try:
            res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                 stdin=subprocess.DEVNULL, **kw)
        except subprocess.TimeoutExpired:
            raise StackError(f"{what} took longer than {timeout:.0f}s; see {log}") from None
        except FileNotFoundError as exc:
            raise StackError(f"{what}: {exc.filename} not found") from None
    if res.returncode != 0:
        from conflux.stack.procs import log_reason

        raise StackError(f"{what} failed (exit {res.returncode}; log {log}): {log_reason(log)}")
