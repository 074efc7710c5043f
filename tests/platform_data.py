"""Small TPC-H data on the live test platform, and DuckDB's independent answer to the batch
join — shared by the batch-path tests (CLI) and the browser tests (UI)."""

from __future__ import annotations


import dagster as dg
import duckdb
import pandas as pd

from pipelines.demo.producer import load_ops, tpch_tables
from conflux.core.settings import Settings
from pipelines.catalog import LINEITEM, ORDERS
from conflux.batch.reconcile import reconcile
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource

DUCKDB_REVENUE = """
select o.o_orderdate::date as o_orderdate, n.n_name,
       sum(l.l_extendedprice * (1 - l.l_discount)) as revenue
from lineitem l
join orders o on l.l_orderkey = o.o_orderkey
join customer c on o.o_custkey = c.c_custkey
join supplier s on l.l_suppkey = s.s_suppkey
join nation n on s.s_nationkey = n.n_nationkey
where c.c_nationkey = s.s_nationkey
group by 1, 2
"""
LAKE_DATASETS = ("orders", "lineitem", "revenue_by_nation", "customer", "supplier", "nation")


def load(settings: Settings, *, materialized: bool = True) -> dict:
    """TPC-H at scale 0.0005 in ops; orders and lineitem filled from their batch source and
    (``materialized``: ~40 s) their days reported materialized and the dimension tables
    materialized (as their schedules would). Returns the lake, the tables and
    the first and last order day."""
    tables = tpch_tables(0.0005, seed=5)
    load_ops(settings.postgres_url, tables)
    lake = LakeResource.for_stack(settings)
    postgres = PostgresResource(url=settings.postgres_url)
    for ds in (ORDERS, LINEITEM):
        reconcile(ds, postgres=postgres, lake=lake)
    if materialized:
        report_materialized(lake, postgres)
    days = sorted(tables["orders"]["o_orderdate"].astype(str))
    return {"lake": lake, "tables": tables, "first": days[0], "last": days[-1],
            "url": settings.dagster_url, "settings": settings}


def report_materialized(lake: LakeResource, postgres: PostgresResource) -> None:
    """Each stored day of orders and lineitem reported materialized; the dimensions
    materialized."""
    from pipelines.definitions import defs

    with dg.DagsterInstance.get() as instance:
        # each stored day materialized in Dagster, as the Kafka sensor reports what it applies
        # (the UI's Materialize… on a join asks first when its upstreams never were)
        for ds in (ORDERS, LINEITEM):
            for day in lake.partitions(ds.name):
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(asset_key=ds.name, partition=day))
        dimensions = [defs.get_assets_def(n) for n in ("customer", "supplier", "nation")]
        result = dg.materialize(dimensions, instance=instance,
                                resources={"postgres": postgres, "lake": lake,
                                           "registry": defs.resources["registry"]})
        assert result.success


def clear(settings: Settings) -> None:
    """Leave the shared lake as found: later tests reuse these order keys with other dates."""
    lake = LakeResource.for_stack(settings)
    for name in LAKE_DATASETS:
        lake.drop(name)


def read_all(lake: LakeResource, name: str) -> pd.DataFrame:
    return lake.read_partitions(name).to_pandas()


def duckdb_revenue(lake: LakeResource, first: str = "", last: str = "9999") -> pd.DataFrame:
    """The independent answer: DuckDB over exactly what is stored upstream (days in
    ``first..last``)."""
    con = duckdb.connect()
    for name in ("orders", "lineitem", "customer", "supplier", "nation"):
        con.register(name, read_all(lake, name))
    out = con.execute(DUCKDB_REVENUE).df()
    out["o_orderdate"] = out["o_orderdate"].astype(str)
    out = out[(out.o_orderdate >= first) & (out.o_orderdate <= last)]
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)


def stored_revenue(lake: LakeResource, first: str, last: str) -> pd.DataFrame:
    """``revenue_by_nation`` as stored in the lake, days in ``first..last``."""
    frames = [lake.read("revenue_by_nation", p) for p in lake.partitions("revenue_by_nation")
              if first <= p <= last]
    out = pd.concat(frames, ignore_index=True)[["o_orderdate", "n_name", "revenue"]]
    out["o_orderdate"] = out["o_orderdate"].astype(str)
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)


def assert_same(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(zip(ours.o_orderdate, ours.n_name)) == list(zip(theirs.o_orderdate, theirs.n_name))
    pd.testing.assert_series_equal(ours.revenue, theirs.revenue, check_names=False, rtol=1e-9)
