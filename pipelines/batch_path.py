"""Batch path: assets loaded from the operational Postgres or computed by joins."""


import dagster as dg

from pipelines.datasets import BatchDataset
from pipelines.metadata import contract_columns, materialization_metadata
from resources.lake import LakeResource
from resources.postgres import PostgresResource


def build_table_load_asset(ds: BatchDataset) -> dg.AssetsDefinition:
    """A snapshot load of ``ds.source_table`` into the lake."""
    schema, table = ds.source_table.split(".", 1)
    columns = list(ds.contract.model_fields)

    @dg.asset(name=ds.name, group_name=ds.group, owners=[ds.owner], description=ds.description,
              kinds={"postgres", "parquet"}, tags={"conflux/mode": "batch"},
              metadata={"dagster/column_schema": contract_columns(ds),
                        "conflux/source_table": ds.source_table})
    def _load(postgres: PostgresResource, lake: LakeResource) -> dg.MaterializeResult:
        df = postgres.read_table(schema, table, columns)
        lake.write(ds.name, df)
        return dg.MaterializeResult(
            metadata=materialization_metadata(ds, rows=len(df), source_table=ds.source_table))

    return _load
