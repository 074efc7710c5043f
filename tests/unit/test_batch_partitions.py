"""A batch join run over a range of partitions (what a single-run backfill launches): every
partition's materialization counts its own rows, and the run's total is kept apart."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from pipelines.demo.producer import tpch_tables
from pipelines.catalog import CATALOG
from pipelines.definitions import defs
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource

NOWHERE = "postgresql://127.0.0.1:1/none?connect_timeout=1"  # a join needs no database


def fill(lake: LakeResource, tables: dict[str, pd.DataFrame]) -> None:
    """The join's upstreams in a lake, partitioned as the catalog declares them."""
    for name in ("orders", "lineitem", "customer", "supplier", "nation"):
        df, ds = tables[name], CATALOG[name]
        if not ds.partitioned:
            lake.write(name, df)
            continue
        lake.write_many(name, dict(tuple(df.groupby(df[ds.event_time].astype(str)))))


def test_each_partition_of_a_ranged_run_carries_its_own_row_count(tmp_path):
    lake = LakeResource(path=str(tmp_path / "lake"))
    tables = tpch_tables(0.0005, seed=5)
    fill(lake, tables)
    first, last = "1995-01-01", "1995-06-30"
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [defs.get_assets_def("revenue_by_nation")], instance=instance,
            tags={"dagster/asset_partition_range_start": first,
                  "dagster/asset_partition_range_end": last},
            resources={"lake": lake, "postgres": PostgresResource(url=NOWHERE),
                       "registry": SchemaRegistryResource(url=NOWHERE)})
        assert result.success
        events = result.get_asset_materialization_events()
    stored = pd.concat([lake.read("revenue_by_nation", p) for p in
                        lake.partitions("revenue_by_nation") if first <= p <= last])
    per_day = stored.o_orderdate.astype(str).value_counts()
    assert len(stored) > 0 and per_day.max() < len(stored)  # days differ from the run's total
    by_partition = {e.partition: e.materialization.metadata for e in events}
    assert len(by_partition) == 181
    for day, meta in by_partition.items():
        assert meta["dagster/row_count"].value == per_day.get(day, 0), day
        assert meta["conflux/run_rows"].value == len(stored)
        assert meta["conflux/partitions_computed"].value == 181
