"""Where `make test`'s time goes: phase wall times, how busy the CPUs were, the slowest files.

    suite_report.py mark FILE NAME        record that phase NAME starts (or ``end``) now
    suite_report.py report FILE JUNIT...  print each phase's wall time and CPU use, then the
                                          slowest test files of the JUnit reports

CPU use is read from /proc/stat between marks: near 100 % means the suite is CPU-bound (more
pytest processes would not help); well below means it waits (they might).
"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def mark(path: Path, name: str) -> None:
    busy, total = cpu_times()
    with path.open("a") as out:
        out.write(f"{name} {time.time():.1f} {busy} {total}\n")


def phases(path: Path) -> list[str]:
    marks = [line.split() for line in path.read_text().splitlines() if line.strip()]
    lines = []
    for (name, t0, b0, n0), (_, t1, b1, n1) in zip(marks, marks[1:]):
        total = int(n1) - int(n0)
        busy = 100 * (int(b1) - int(b0)) / total if total else 0.0
        lines.append(f"  {name:<12} {float(t1) - float(t0):7.0f} s   CPU busy {busy:3.0f} %")
    return lines


def slowest_files(reports: list[Path], top: int = 15) -> list[str]:
    seconds: Counter = Counter()
    for report in reports:
        if not report.exists():
            continue
        for case in ET.parse(report).getroot().iter("testcase"):
            seconds[case.get("file") or case.get("classname", "?").replace(".", "/") + ".py"] += \
                float(case.get("time", 0))
    return [f"  {s:7.0f} s  {name}" for name, s in seconds.most_common(top)]


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "mark":
        mark(Path(argv[1]), argv[2])
        return 0
    if len(argv) >= 2 and argv[0] == "report":
        path = Path(argv[1])
        print("==== suite time by phase (scripts/suite_report.py) ====")
        print("\n".join(phases(path)) if path.exists() else "  (no marks)")
        print("slowest test files (setup + call + teardown):")
        print("\n".join(slowest_files([Path(p) for p in argv[2:]])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
