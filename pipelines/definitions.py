"""The demo platform's one Dagster code location (``pipelines.definitions:defs``): its catalog
compiled by Conflux, plus its own sensors (``sensors/``) and resources (``resources/``)."""

from __future__ import annotations

import dagster as dg

from conflux import build_definitions
from pipelines.catalog import DATASETS
from resources import demo_resources
from sensors import SENSORS

defs = build_definitions(DATASETS, resources=demo_resources(),
                         extra=dg.Definitions(sensors=SENSORS))
