"""The per-partition baseline of the batch benchmark: ``revenue_by_nation`` computed the same
way, but backfilled with one run per partition (``BackfillPolicy.multi_run(1)``)."""

import dataclasses

import dagster as dg

from conflux.batch.asset import build_batch_asset
from pipelines.catalog import CATALOG, REVENUE_BY_NATION
from conflux.dagster.compile import asset_spec
from conflux.dagster.resources import platform_resources

PER_PARTITION = dataclasses.replace(REVENUE_BY_NATION, name="revenue_by_nation_per_partition",
                                    backfill="per_partition", schedule=None, automation=False)
_catalog = {**CATALOG, PER_PARTITION.name: PER_PARTITION}

defs = dg.Definitions(
    assets=[build_batch_asset(PER_PARTITION, asset_spec(PER_PARTITION, _catalog), _catalog)],
    resources=platform_resources())
