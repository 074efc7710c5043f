"""New and late events mark exactly the downstream batch partitions they affect (Dagster's own
declarative automation, evaluated against the Postgres-backed instance)."""

import uuid

import dagster as dg
import pandas as pd

from pipelines import contracts as tpch
from conflux.dagster.compile import build_definitions
from conflux.core.declarations import BatchDataset, EventDataset
from conflux.event.report import report_materializations


def mini_catalog():
    tag = uuid.uuid4().hex[:8]
    orders = EventDataset(name=f"o_{tag}", contract=tpch.Order, key=("o_orderkey",),
                          event_time="o_orderdate", topics=(f"t.o.{tag}",))
    lines = EventDataset(name=f"l_{tag}", contract=tpch.LineItem,
                         key=("l_orderkey", "l_linenumber"), event_time="o_orderdate",
                         topics=(f"t.l.{tag}",))
    nation = BatchDataset(name=f"n_{tag}", contract=tpch.Nation, key=("n_nationkey",),
                          source_table="ops.nation")
    revenue = BatchDataset(name=f"r_{tag}", contract=tpch.RevenueByNation,
                           key=("o_orderdate", "n_name"), event_time="o_orderdate",
                           upstream=(orders.name, lines.name, nation.name),
                           compute=lambda inputs: pd.DataFrame(), automation=True)
    return orders, lines, nation, revenue


def materialize(instance, name, *partitions):
    """Record materializations the way the sensor does: a micro-batch's events written at once."""
    report_materializations(instance, [dg.AssetMaterialization(asset_key=name, partition=p)
                                       for p in partitions or (None,)])


def test_concurrently_written_materializations_are_all_stored(instance):
    name = f"batched_{uuid.uuid4().hex[:8]}"
    days = ["1995-02-01", "1995-02-02", "1995-02-03"]
    report_materializations(instance, [
        dg.AssetMaterialization(asset_key=name, partition=d, metadata={"conflux/rows": i})
        for i, d in enumerate(days)])
    records = instance.fetch_materializations(dg.AssetKey(name), limit=10).records
    assert sorted((r.partition_key, r.asset_materialization.metadata["conflux/rows"].value)
                  for r in records) == [(d, i) for i, d in enumerate(days)]
    assert all(r.run_id == "" for r in records)  # runless
    assert instance.get_materialized_partitions(dg.AssetKey(name)) == set(days)
    assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None


def test_exactly_the_affected_partitions_are_requested(instance):
    orders, lines, nation, revenue = mini_catalog()
    defs = build_definitions([orders, lines, nation, revenue])
    selection = dg.AssetSelection.assets(revenue.name)
    materialize(instance, nation.name)
    materialize(instance, orders.name, "1995-01-01", "1995-01-02", "1995-01-03")
    materialize(instance, lines.name, "1995-01-01", "1995-01-02")  # day 3 has no lines yet

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                              asset_selection=selection)
    assert first.get_requested_partitions(dg.AssetKey(revenue.name)) == {"1995-01-01", "1995-01-02"}

    materialize(instance, revenue.name, "1995-01-01", "1995-01-02")
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                              asset_selection=selection, cursor=first.cursor)
    assert quiet.get_requested_partitions(dg.AssetKey(revenue.name)) == set()

    # a late order for an old day, and the missing lines of day 3 arrive
    materialize(instance, orders.name, "1995-01-01")
    materialize(instance, lines.name, "1995-01-03")
    late = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                             asset_selection=selection, cursor=quiet.cursor)
    assert late.get_requested_partitions(dg.AssetKey(revenue.name)) == {"1995-01-01", "1995-01-03"}
