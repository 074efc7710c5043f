"""What every benchmark shares: its own stack (state in ``.conflux/bench``, loopback ports
26092 / 26093 / 26432 / 26000, never the ``make dev`` or test stack) and a workspace with the
Conflux code location plus the benchmark's baseline location."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_ENV = {
    "CONFLUX_HOME": str(REPO / ".conflux" / "bench"),
    "CONFLUX_KAFKA_PORT": "26092", "CONFLUX_KAFKA_CONTROLLER_PORT": "26093",
    "CONFLUX_PG_PORT": "26432", "CONFLUX_DAGSTER_PORT": "26000",
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
