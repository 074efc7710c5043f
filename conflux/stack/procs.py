"""Process bookkeeping for the local stack: pid files, ports, health waits, stopping by PID.

Every process the tooling starts gets its own session (process group) and a pid file holding
``<pid> <marker>``; the marker is a word that must appear in the process's command line, so a
pid reused by an unrelated process after a crash is never mistaken for ours (and never killed).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from conflux.core.errors import StackError


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" when gone).

    Right after ``exec`` the kernel may briefly show an empty command line: wait it out.
    """
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.025)
    return ""


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # field 3 (after the parenthesised command) is the state; Z = zombie, X = dead
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


_TROUBLE = re.compile(r"error|exception|fatal|failed|refused|denied|invalid|does not exist|"
                      r"not found", re.IGNORECASE)


def reason_in(text: str) -> str:
    """The line of ``text`` (a log's end) that says what went wrong, for a one-line error: the
    last one naming a problem, else the last one ("" when there is none)."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("==== ")]  # spawn's and run_checked's headers
    line = ([line for line in lines if _TROUBLE.search(line)] or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def log_reason(path: Path, lines: int = 40) -> str:
    """:func:`reason_in` the last ``lines`` of a log file."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return reason_in("\n".join(text[-lines:])) or "(nothing logged)"


@dataclass(frozen=True)
class PidFile:
    """A pid file that remembers which process is ours."""

    path: Path
    marker: str

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {self.marker}\n")

    def live_pid(self) -> int | None:
        """The recorded pid if that process still runs and is ours; removes a stale file."""
        try:
            pid_text, _, marker = self.path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            self.path.unlink(missing_ok=True)
            return None
        cmdline = _cmdline(pid)
        if marker == self.marker and pid_alive(pid) and all(w in cmdline for w in marker.split()):
            return pid
        self.path.unlink(missing_ok=True)  # stale: crashed, or pid reused by someone else
        return None

    def recorded_pid(self) -> int | None:
        """The pid written in the file, alive or not (None without a readable file)."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (state, ppid, pgrp, ...)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())
    except (OSError, IndexError):
        return None


def environ_has(pid: int, entry: str) -> bool:
    """True when ``NAME=value`` ``entry`` is in the environment of ``pid``."""
    try:
        return entry.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def orphans_with(entry: str) -> list[int]:
    """Orphaned processes (parent gone: re-parented to pid 1) whose environment holds ``entry``
    (``NAME=value``), this process and its ancestors excepted."""
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        pid = _ppid(pid)
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in mine and _ppid(int(proc.name)) == 1 \
                and environ_has(int(proc.name), entry):
            found.append(int(proc.name))
    return found


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _default_stop_signals() -> None:
    """In the child before exec: the stop signals back to their default action. An ignored
    signal stays ignored across exec, and the launcher may ignore SIGTERM — Dagster maps it to
    SIGINT's handler, which is SIG_IGN in a process started in the background — so a service
    (the JVM included) would then ignore ``stop``'s SIGTERM and be killed after the timeout."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen:
    """Start ``argv`` detached in its own session, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            preexec_fn=_default_stop_signals,  # (only signal.signal: safe after fork)
        )


def wait_for(
    check: Callable[[], bool],
    *,
    service: str,
    log: Path,
    timeout: float,
    proc: subprocess.Popen | None = None,
    interval: float = 0.2,
) -> float:
    """Poll ``check`` until true; returns seconds waited.

    Raises :class:`StackError` naming the service and its log (with its last lines) when the
    timeout passes or the process exits first.
    """
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{service} exited with code {proc.returncode} while starting "
                             f"(log {log}): {log_reason(log)}")
        if time.monotonic() - start > timeout:
            raise StackError(f"{service} did not become healthy within {timeout:.0f}s "
                             f"(log {log}): {log_reason(log)}")
        time.sleep(interval)


def stop_pid(pid: int, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> str:
    """Stop a process group we started: ``sig`` (SIGTERM), then SIGKILL after ``timeout``; a
    group is stopped when its leader *and* the rest of it (a daemon's code servers, which may be
    finishing a sensor evaluation) have exited.

    Returns how it ended ("stopped" or "killed").
    """
    how = _stop_leader(pid, sig=sig, timeout=timeout)
    if how == "already gone":
        return how
    try:
        members = group_members(pid)
        deadline = time.monotonic() + timeout
        while members and time.monotonic() < deadline:
            time.sleep(0.1)
            members = group_members(pid)
        if members:
            os.killpg(pid, signal.SIGKILL)
            how = "killed"
    except ProcessLookupError:
        pass
    return how


def _stop_leader(pid: int, *, sig: int, timeout: float) -> str:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return "already gone"
    # Only signal the group when the process leads it (it does: spawn() starts a new session).
    target = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    try:
        target(sig)
    except ProcessLookupError:
        return "already gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if not pid_alive(pid):
            return "stopped"
        time.sleep(0.1)
    try:
        target(signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    for _ in range(50):
        reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    return "killed"


def reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
