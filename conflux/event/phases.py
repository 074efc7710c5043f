"""Phase markers: what a process applying records is doing, for crash tests to aim at.

Off unless ``CONFLUX_PHASE_DIR`` names a directory (the local stack sets it for its Dagster
processes). Then each ``mark`` replaces the one-line file ``<dir>/<pid>-<thread id>`` with
``<phase> <dataset> <origin>``: ``read`` (records read and decoded), ``write`` (dead letters
sent and the lake's MERGE under way), ``written`` (the lake commit done; reporting and the
cursor follow). A process killed with ``kill -9`` leaves the phase it died in.
"""

from __future__ import annotations

import os
import threading

ENV = "CONFLUX_PHASE_DIR"
PHASES = ("read", "write", "written")


def mark(phase: str, dataset: str, origin: str) -> None:
    """Record that this thread enters ``phase`` (a no-op without ``CONFLUX_PHASE_DIR``)."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    path = os.path.join(directory, f"{os.getpid()}-{threading.get_ident()}")
    for _ in range(2):
        try:
            with open(path + ".tmp", "w") as f:
                f.write(f"{phase} {dataset} {origin}\n")
            os.replace(path + ".tmp", path)  # a reader never sees half a line
            return
        except OSError as exc:  # a marker is a test aid: it never fails the work it describes
            if not isinstance(exc, FileNotFoundError):
                return
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError:
                return
