"""The batch path over an ``s3://`` lake (a Delta table per dataset on moto, loopback) stores
exactly what it stores over a local lake: ``revenue_by_nation`` materialized by Dagster for a
range of daily partitions as one run (what a single-run backfill launches, one Delta commit),
then one day again after a late line item — compared partition by partition, and with DuckDB."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from pipelines.demo.producer import tpch_tables
from pipelines.definitions import defs
from conflux.io.lake import LakeResource, is_object_store
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource
from tests.platform_data import DUCKDB_REVENUE, assert_same, stored_revenue
from tests.unit.test_batch_partitions import fill

FIRST, LAST = "1995-01-01", "1995-03-31"


def duckdb_revenue(lake: LakeResource, first: str, last: str) -> pd.DataFrame:
    """DuckDB's own answer over what the upstream Delta tables hold (each read whole)."""
    import duckdb

    con = duckdb.connect()
    for name in ("orders", "lineitem", "customer", "supplier", "nation"):
        con.register(name, lake.read_partitions(name).to_pandas())
    out = con.execute(DUCKDB_REVENUE).df()
    out["o_orderdate"] = out["o_orderdate"].astype(str)
    out = out[(out.o_orderdate >= first) & (out.o_orderdate <= last)]
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)


def materialize(lake: LakeResource, pg_url: str, instance, **partitions) -> None:
    result = dg.materialize(
        [defs.get_assets_def("revenue_by_nation")], instance=instance,
        resources={"lake": lake, "postgres": PostgresResource(url=pg_url),
                   "registry": SchemaRegistryResource(url=pg_url)}, **partitions)
    assert result.success


def test_a_ranged_backfill_over_s3_stores_what_it_stores_locally(stack, s3_lake_url, tmp_path):
    pg = stack.settings.postgres_url
    tables = tpch_tables(0.002, seed=5)
    for name in ("orders", "lineitem"):  # the range's days and a few around them
        df = tables[name]
        days = df["o_orderdate"].astype(str)
        tables[name] = df[(days >= "1994-12-25") & (days <= "1995-04-07")].reset_index(drop=True)
    lakes = {"s3": LakeResource(path=s3_lake_url),
             "local": LakeResource(path=str(tmp_path / "lake"))}
    stored = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for kind, lake in lakes.items():
            fill(lake, tables)
            materialize(lake, pg, instance, tags={"dagster/asset_partition_range_start": FIRST,
                                                  "dagster/asset_partition_range_end": LAST})
            stored[kind] = stored_revenue(lake, FIRST, LAST)
        assert is_object_store(lakes["s3"].path) and len(stored["s3"]) >= 5
        # the ranged run wrote all its partitions in one Delta commit, on the server
        assert [h["operation"] for h in lakes["s3"].history("revenue_by_nation")] == ["WRITE"]
        pd.testing.assert_frame_equal(stored["s3"], stored["local"])
        assert lakes["s3"].partitions("revenue_by_nation") == lakes["local"].partitions(
            "revenue_by_nation")
        assert_same(stored["s3"], duckdb_revenue(lakes["s3"], FIRST, LAST))
        # a late line item of a day in the range (its supplier in its customer's nation, so it
        # counts), upserted, then that day materialized again
        before = stored["s3"]
        day = before.o_orderdate.iloc[0]
        order = tables["orders"][tables["orders"].o_orderdate.astype(str) == day].iloc[0]
        customer = tables["customer"].set_index("c_custkey").loc[order.o_custkey]
        supplier = tables["supplier"][tables["supplier"].s_nationkey == customer.c_nationkey].iloc[0]
        late = tables["lineitem"].head(1).assign(
            l_orderkey=order.o_orderkey, l_linenumber=99, l_suppkey=supplier.s_suppkey,
            o_orderdate=dt.date.fromisoformat(day))
        for kind, lake in lakes.items():
            lake.upsert("lineitem", late, ["l_orderkey", "l_linenumber"], day)
            materialize(lake, pg, instance, partition_key=day)
            stored[kind] = stored_revenue(lake, FIRST, LAST)
        assert lakes["s3"].version("revenue_by_nation") == 1  # the day's run: one more commit
    pd.testing.assert_frame_equal(stored["s3"], stored["local"])
    assert_same(stored["s3"], duckdb_revenue(lakes["s3"], FIRST, LAST))
    nation = tables["nation"].set_index("n_nationkey").loc[customer.c_nationkey].n_name
    grown = stored["s3"].set_index(["o_orderdate", "n_name"]).revenue.sub(
        before.set_index(["o_orderdate", "n_name"]).revenue, fill_value=0)
    line = late.iloc[0]
    assert grown[(day, nation)] == pytest.approx(line.l_extendedprice * (1 - line.l_discount))
    assert (grown.drop((day, nation)) == 0).all()
