"""Batch loads from ops tables on the real Postgres and Dagster instance: a snapshot first,
then only the rows changed since the watermark, and a periodic full snapshot that sees
deletions; tables without ``updated_at`` are always snapshots."""

import dataclasses
import uuid

import dagster as dg
import psycopg
import pytest

from pipelines.demo.tpch import TpchGenerator
from conflux.batch.asset import build_batch_asset
from pipelines.catalog import CUSTOMER
from conflux.dagster.compile import asset_spec
from conflux.batch.ops_load import add_updated_at
from conflux.io.postgres import PostgresResource, replace_table
from conflux.io.registry import SchemaRegistryResource


@pytest.fixture
def source(stack):
    tag = uuid.uuid4().hex[:8]
    table = f"customer_il_{tag}"
    df = TpchGenerator(0.001, seed=21).customer().head(30)
    conn = psycopg.connect(stack.settings.postgres_url, autocommit=True)
    replace_table(conn, "ops", table, df, ["c_custkey"])
    ds = dataclasses.replace(CUSTOMER, name=f"cust_il_{tag}", source_table=f"ops.{table}",
                             overlap_s=0.0, full_every=3, schedule=None)
    yield conn, table, ds, df
    conn.close()


def load(ds, instance, stack, lake):
    asset = build_batch_asset(ds, asset_spec(ds, {ds.name: ds}), {ds.name: ds})
    result = dg.materialize([asset], instance=instance, resources={
        "postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake,
        "registry": SchemaRegistryResource(url=stack.settings.postgres_url)})
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def lake_rows(lake, ds):
    df = lake.read(ds.name)
    return dict(zip(df.c_custkey, df.c_acctbal))


def test_snapshot_then_incremental_then_a_periodic_snapshot_sees_deletions(source, instance,
                                                                        stack, lake):
    conn, table, ds, df = source
    add_updated_at(conn, table)
    first = load(ds, instance, stack, lake)
    assert first["conflux/load_mode"] == "snapshot" and first["conflux/rows_read"] == 30
    assert first["conflux/watermark"]

    conn.execute(f'update ops."{table}" set c_acctbal = c_acctbal + 100 where c_custkey in (1, 2)')
    new = df.head(1).assign(c_custkey=999)
    replace_cols = ", ".join(f'"{c}"' for c in new.columns)
    conn.execute(f'insert into ops."{table}" ({replace_cols}) values ({", ".join(["%s"] * len(new.columns))})',
                 [v.item() if hasattr(v, "item") else v for v in new.iloc[0]])
    second = load(ds, instance, stack, lake)
    assert second["conflux/load_mode"] == "incremental"
    assert second["conflux/rows_read"] == 3  # two updates and one insert, nothing else
    assert second["conflux/watermark"] > first["conflux/watermark"]
    stored = lake_rows(lake, ds)
    expected = dict(zip(df.c_custkey, df.c_acctbal))
    assert stored[1] == pytest.approx(expected[1] + 100) and 999 in stored and len(stored) == 31

    conn.execute(f'delete from ops."{table}" where c_custkey = 3')
    third = load(ds, instance, stack, lake)
    assert third["conflux/load_mode"] == "incremental" and 3 in lake_rows(lake, ds)
    fourth = load(ds, instance, stack, lake)  # every 3rd load is a snapshot: deletions show
    assert fourth["conflux/load_mode"] == "snapshot" and "deleted rows" in fourth["conflux/load_reason"]
    assert 3 not in lake_rows(lake, ds) and len(lake_rows(lake, ds)) == 30


def test_a_table_without_updated_at_is_always_a_snapshot(source, instance, stack, lake):
    conn, table, ds, df = source
    for _ in range(2):
        meta = load(ds, instance, stack, lake)
        assert meta["conflux/load_mode"] == "snapshot"
        assert "has no updated_at column" in meta["conflux/load_reason"]
    assert len(lake_rows(lake, ds)) == 30
