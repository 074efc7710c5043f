"""Compilation of declarations into Dagster specs, inspected without running anything."""

import dagster as dg
from pydantic import create_model

from pipelines import contracts as tpch
from pipelines.catalog import DATASETS, ORDERS
from conflux.dagster.compile import asset_specs, daily_partitions
from conflux.core.declarations import EventDataset

SPECS = asset_specs(DATASETS)


def test_asset_keys_are_dataset_names():
    assert {s.key.to_user_string() for s in SPECS.values()} == {d.name for d in DATASETS}


def test_deps_follow_the_declared_upstreams():
    deps = {d.asset_key.to_user_string() for d in SPECS["revenue_by_nation"].deps}
    assert deps == {"orders", "lineitem", "customer", "supplier", "nation"}
    assert not SPECS["orders"].deps


def test_partitions_follow_the_event_time_field():
    assert SPECS["orders"].partitions_def == daily_partitions()
    assert SPECS["revenue_by_nation"].partitions_def == daily_partitions()
    assert SPECS["customer"].partitions_def is None
    assert SPECS["customer_ledger"].partitions_def is None


def test_partitions_start_on_the_declared_first_day():
    # the demo keeps its 1992-01-01 (the default start)
    assert SPECS["orders"].partitions_def == dg.DailyPartitionsDefinition(start_date="1992-01-01",
                                                                         end_offset=1)
    later = EventDataset(name="orders", contract=tpch.Order, key=("o_orderkey",),
                         event_time="o_orderdate", topics=("tpch.orders",), start="2024-03-01")
    partitions = asset_specs([later])["orders"].partitions_def
    assert partitions == daily_partitions("2024-03-01")
    assert partitions.get_first_partition_key() == "2024-03-01"


def test_kinds_and_tags_tell_event_from_batch():
    assert "event" in SPECS["orders"].kinds and "kafka" in SPECS["orders"].kinds
    assert "batch" in SPECS["nation"].kinds and "postgres" in SPECS["nation"].kinds
    assert "batch" in SPECS["revenue_by_nation"].kinds
    assert SPECS["orders"].tags["conflux/mode"] == "event"
    assert SPECS["revenue_by_nation"].tags["conflux/mode"] == "batch"


def test_column_schema_comes_from_the_contract():
    schema = SPECS["lineitem"].metadata["dagster/column_schema"]
    cols = {c.name: c for c in schema.columns}
    assert list(cols) == list(tpch.LineItem.model_fields)
    assert cols["l_shipdate"].type == "date"
    assert cols["l_quantity"].type == "number"
    assert "enum" in cols["l_returnflag"].type
    assert cols["l_orderkey"].constraints.nullable is False


def test_owners_groups_and_contract_metadata():
    assert SPECS["orders"].owners == ["team:order-service"]
    assert SPECS["orders"].group_name == "sales"
    assert SPECS["customer_ledger"].group_name == "finance"
    assert SPECS["orders"].metadata["conflux/topics"] == "tpch.orders"
    assert SPECS["orders"].metadata["conflux/dlq_topic"] == "tpch.orders.dlq"
    assert SPECS["orders"].metadata["conflux/contract"].startswith("orders")


def test_code_version_changes_exactly_when_the_contract_changes():
    same = asset_specs([ORDERS])["orders"].code_version
    assert same == SPECS["orders"].code_version
    Wider = create_model("Order", __base__=tpch.Order, o_channel=(str | None, None))
    changed = EventDataset(name="orders", contract=Wider, key=("o_orderkey",),
                           event_time="o_orderdate", topics=("tpch.orders",))
    assert asset_specs([changed])["orders"].code_version != same


def test_column_lineage_of_joins_is_derived_and_declared():
    lineage = SPECS["revenue_by_nation"].metadata["dagster/column_lineage"]
    deps = {col: {(d.asset_key.to_user_string(), d.column_name) for d in ds}
            for col, ds in lineage.deps_by_column.items()}
    assert deps["o_orderdate"] == {("orders", "o_orderdate")}  # declared: the name is ambiguous
    assert deps["n_name"] == {("nation", "n_name")}
    assert deps["revenue"] == {("lineitem", "l_extendedprice"), ("lineitem", "l_discount")}


def test_automation_and_backfill_policy_are_compiled():
    assert SPECS["revenue_by_nation"].automation_condition is not None
    from pipelines.definitions import defs

    rbn = defs.resolve_assets_def("revenue_by_nation")
    assert rbn.backfill_policy == dg.BackfillPolicy.single_run()
    names = {s.name for s in defs.schedules}
    assert {"revenue_by_nation__schedule", "customer__schedule"} <= names
    assert {s.name for s in defs.sensors} >= {"orders__kafka", "lineitem__kafka",
                                             "customer_ledger__kafka"}


def test_ambiguous_column_names_are_not_guessed():
    from conflux.contracts.lineage import derive_column_lineage

    lineage = derive_column_lineage(("d", "x"), {"a": ("d", "x"), "b": ("d",)}, {})
    assert lineage == {"x": [("a", "x")]}
