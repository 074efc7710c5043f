"""The declarations of defs/datasets/defs.yaml, for ``[tool.conflux] catalog`` (the CLI and
the local stack follow the same YAML the Dagster component compiles)."""

from __future__ import annotations

from pathlib import Path

from conflux.dagster.component import datasets_from_yaml

DATASETS = datasets_from_yaml(Path(__file__).parent / "defs" / "datasets" / "defs.yaml")
