"""What every benchmark shares: its own stack (state in ``.conflux/bench``, loopback ports
26092 / 26093 / 26432 / 26000, never the ``make dev`` or test stack) and a workspace with the
Conflux code location plus the benchmark's baseline location."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_ENV = {
    "CONFLUX_HOME": str(REPO / ".conflux" / "bench"),
    "CONFLUX_KAFKA_PORT": "26092", "CONFLUX_KAFKA_CONTROLLER_PORT": "26093",
    "CONFLUX_PG_PORT": "26432", "CONFLUX_DAGSTER_PORT": "26000",
    # the benchmarks launch the runs they time; automation (on by default) would add its own
    "CONFLUX_AUTOMATION": "off",
}
WORKSPACE = """\
load_from:
  - python_module: {{module_name: pipelines.definitions, attribute: defs, working_directory: {repo},
                    location_name: conflux}}
  - python_module: {{module_name: {module}, attribute: defs,
                    working_directory: {repo}, location_name: {location}}}
"""


def use_bench_stack(baseline_module: str, location: str) -> None:
    """Point this process (and the stack it starts) at the benchmark stack and workspace."""
    os.environ.update(BENCH_ENV)
    home = Path(BENCH_ENV["CONFLUX_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    workspace = home / "workspace.yaml"
    workspace.write_text(WORKSPACE.format(repo=REPO, module=baseline_module, location=location))
    os.environ["CONFLUX_WORKSPACE"] = str(workspace)



def duckdb_delta(**config):
    """A DuckDB connection with the ``delta`` extension loaded from the installed
    ``duckdb_extension_delta`` wheel (DuckDB's own download and autoload off: nothing is fetched),
    as an outside reader would open the lake (docs/outside-readers.md)."""
    import duckdb
    import duckdb_extension_delta

    extension = next(Path(duckdb_extension_delta.__path__[0]).rglob("*.duckdb_extension"))
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False, **config})
    con.execute(f"LOAD '{extension}'")
    return con


class LoadWatch(threading.Thread):
    """What else the machine was doing while a benchmark ran (a shared machine skews figures):
    every 5 s, the CPU all processes used (``/proc/stat``) less what the benchmark's own used —
    this process, the processes of its stack (a command line naming ``.conflux/bench``) and all
    their descendants, exited children included (``cutime``/``cstime``)."""

    def __init__(self, marker: str = "/.conflux/bench/", every: float = 5.0):
        super().__init__(daemon=True)
        self.marker, self.every = marker, every
        self.others: list[float] = []  # cores used by other processes, per interval
        self.load: list[float] = [os.getloadavg()[0]]
        self.stop = threading.Event()
        self._last = (time.monotonic(), _busy_ticks(), self._ours())
        self.start()

    def _ours(self) -> dict[int, int]:
        procs: dict[int, tuple[int, int]] = {}
        roots = {os.getpid()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            pid = int(entry.name)
            procs[pid] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
            if self.marker.encode() in cmdline:
                roots.add(pid)
        ours = {}
        for pid, (ppid, ticks) in procs.items():
            seen, p = set(), pid
            while p and p not in seen:  # this process or one of its ancestors is ours
                if p in roots:
                    ours[pid] = ticks
                    break
                seen.add(p)
                p = procs.get(p, (0, 0))[0]
        return ours

    def _sample(self) -> None:
        now, busy, ours = time.monotonic(), _busy_ticks(), self._ours()
        then, busy0, ours0 = self._last
        mine = sum(t - ours0.get(pid, 0) for pid, t in ours.items() if t >= ours0.get(pid, 0))
        hz = os.sysconf("SC_CLK_TCK")
        self.others.append(max(busy - busy0 - mine, 0) / hz / max(now - then, 1e-9))
        self.load.append(os.getloadavg()[0])
        self._last = (now, busy, ours)

    def run(self):
        while not self.stop.wait(self.every):
            self._sample()

    def summary(self) -> str:
        self.stop.set()
        others, load = sorted(self.others) or [0.0], sorted(self.load)
        return (f"machine ({os.cpu_count()} cores, shared): other processes used median "
                f"{others[len(others) // 2]:.2f} cores, max {others[-1]:.2f} (5 s samples); "
                f"1-min load average median {load[len(load) // 2]:.1f}, max {load[-1]:.1f}")


def _busy_ticks() -> int:
    """CPU ticks spent on all cores, idle and I/O wait excluded (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal

# --- the one results file -------------------------------------------------------------------------
# Benchmark figures live only here, written by the scripts themselves (never copied by hand into
# the README or other docs): one section per benchmark, replaced by its next run.
RESULTS = REPO / "docs" / "benchmark-results.md"
RESULTS_HEADER = """\
# Benchmark results

Written by the benchmark scripts (`bench/*.py`, `bench.common.record_results`), never by hand:
each section is replaced by the next run of its benchmark and says when, on what machine, at
which commit and with which command it was measured. What each benchmark measures and how to
run it: [benchmarks.md](benchmarks.md). Targets: `../shared/DESIGN.md` ("What good means here").
"""
_BEGIN, _END = "<!-- results:{} -->", "<!-- /results:{} -->"


def _git(*args: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine() -> str:
    """``N cores, M GiB`` of this machine."""
    cores = os.cpu_count() or 0
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
        return f"{cores} cores, {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError, IndexError):
        return f"{cores} cores"


def commit() -> str:
    """The checked-out commit, marked when tracked files other than the results file (which
    a run before this one in the same checkout may have written) differ from it."""
    head = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if head != "unknown" and _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                  f":(exclude){RESULTS.relative_to(REPO)}"):
        head += " (with uncommitted changes)"
    return head


def record_results(name: str, lines, *, command: str | None = None,
                   path: Path | None = None, when=None) -> Path:
    """Record the figures a benchmark printed as its section of the results file.

    Args:
        name: the benchmark (``event_path``, ``batch_path``, ...): its section's title.
        lines: the lines it printed, as printed (blank lines kept).
        command: how it was run (default: ``python -m bench.<name>`` + this process's arguments).
        path: the results file (default ``docs/benchmark-results.md``).
        when: the time of the run (default now, UTC).

    Returns:
        The file written. Other benchmarks' sections are kept, in name order.
    """
    import datetime as dt
    import shlex
    import sys

    path = RESULTS if path is None else Path(path)
    when = when or dt.datetime.now(dt.timezone.utc)
    if command is None:
        command = " ".join(["python -m bench." + name, *map(shlex.quote, sys.argv[1:])])
    text = "\n".join(str(line) for line in lines).strip("\n")
    section = "\n".join([
        _BEGIN.format(name), f"## {name}", "",
        f"- date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- command: `{command}`", "",
        "```", text, "```", _END.format(name)])
    sections = {}
    if path.exists():
        for found in re.finditer(r"<!-- results:(\S+) -->.*?<!-- /results:\1 -->",
                                 path.read_text(), re.S):
            sections[found.group(1)] = found.group(0)
    sections[name] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join(sections[key] for key in sorted(sections))
    path.write_text(RESULTS_HEADER + "\n" + body + "\n")
    return path


class Figures:
    """Print figures as usual and keep them for :func:`record_results`:
    ``out = Figures(); out("p95 ..."); record_results("x", out.lines)``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text)
        self.lines.extend(str(text).split("\n"))
