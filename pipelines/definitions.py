"""The one place the Dagster ``Definitions`` of Conflux is assembled (``pipelines.definitions:defs``)."""

from __future__ import annotations

from pipelines.catalog import DATASETS
from pipelines.compile import build_definitions

defs = build_definitions(DATASETS)
