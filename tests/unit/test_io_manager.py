"""Any Dagster asset reads Conflux datasets through Dagster's own input loading (the lake IO
manager), and a Dagster asset can be a batch dataset's compute: real Dagster (ephemeral
instance), a real local lake, no services."""

import datetime as dt

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import BaseModel

from conflux import BatchDataset, EventDataset, build_definitions
from conflux.core.errors import DeclarationError
from conflux.dagster.compile import asset_specs, daily_partitions
from conflux.dagster.io_manager import IO_MANAGER_KEY, LakeIOManager, OutputContractError
from conflux.event.ingest import ORDER_BY
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource

NOWHERE = "postgresql://127.0.0.1:1/none?connect_timeout=1"  # nothing here needs a database
DAYS = ["1995-01-01", "1995-01-02", "1995-01-03"]


# plain pydantic models: no Conflux base class needed
class Order(BaseModel):
    o_orderkey: int
    o_custkey: int
    o_orderdate: dt.date
    o_totalprice: float


class Customer(BaseModel):
    c_custkey: int
    c_nation: str


class NationRevenue(BaseModel):
    o_orderdate: dt.date
    c_nation: str
    revenue: float


class BigOrder(BaseModel):
    o_orderkey: int
    o_orderdate: dt.date
    o_totalprice: float


def nation_revenue(inputs: dict) -> pd.DataFrame:
    """A small join of an event dataset and a batch dataset (the Conflux compute(inputs) form)."""
    orders, customers = inputs["orders"].to_pandas(), inputs["customer"].to_pandas()
    joined = orders.merge(customers, left_on="o_custkey", right_on="c_custkey")
    return (joined.groupby(["o_orderdate", "c_nation"], as_index=False)["o_totalprice"].sum()
            .rename(columns={"o_totalprice": "revenue"}))


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def big_orders(context: dg.AssetExecutionContext, orders: pd.DataFrame) -> pd.DataFrame:
    """A Dagster asset as the compute of a batch dataset."""
    context.log.info(f"{len(orders)} order(s) in {context.partition_key_range}")
    return orders[orders.o_totalprice > 100][["o_orderkey", "o_orderdate", "o_totalprice"]]


ORDERS = EventDataset(name="orders", contract=Order, key=("o_orderkey",),
                      event_time="o_orderdate", topics=("shop.orders",))
CUSTOMER = BatchDataset(name="customer", contract=Customer, key=("c_custkey",),
                        source_table="ops.customer")
NATION_REVENUE = BatchDataset(name="nation_revenue", contract=NationRevenue,
                              key=("o_orderdate", "c_nation"), event_time="o_orderdate",
                              upstream=("orders", "customer"), compute=nation_revenue)
BIG_ORDERS = BatchDataset(name="big_orders", contract=BigOrder, key=("o_orderkey",),
                          event_time="o_orderdate", compute=big_orders)
DATASETS = (ORDERS, CUSTOMER, NATION_REVENUE, BIG_ORDERS)

ORDER_ROWS = pd.DataFrame({
    "o_orderkey": [1, 2, 3, 4, 5],
    "o_custkey": [10, 11, 10, 11, 10],
    "o_orderdate": [dt.date.fromisoformat(d) for d in
                    ("1995-01-01", "1995-01-01", "1995-01-02", "1995-01-03", "1995-01-03")],
    "o_totalprice": [50.0, 150.0, 250.0, 20.0, 300.0],
})
CUSTOMER_ROWS = pd.DataFrame({"c_custkey": [10, 11], "c_nation": ["FRANCE", "PERU"]})


@pytest.fixture
def lake(tmp_path):
    return LakeResource(path=str(tmp_path / "lake"))


def store_events(lake: LakeResource, rows: pd.DataFrame) -> None:
    """Orders as the event path stores them: one MERGE per day, with Kafka provenance."""
    rows = rows.assign(__topic="shop.orders", __partition=0, __offset=range(len(rows)),
                       __ts=1_000, __correlation_id="c")
    for day, part in rows.groupby(rows.o_orderdate.astype(str)):
        lake.upsert("orders", part, ["o_orderkey"], day, order_by=ORDER_BY)


@pytest.fixture
def filled(lake):
    store_events(lake, ORDER_ROWS)
    lake.write("customer", CUSTOMER_ROWS)
    return lake


def definitions(lake: LakeResource, *assets, datasets=DATASETS, jobs=()) -> dg.Definitions:
    """The catalog compiled by Conflux, with the user's assets, on a local lake."""
    return build_definitions(datasets, extra=dg.Definitions(assets=list(assets), jobs=list(jobs)),
                             resources={"lake": lake, "postgres": PostgresResource(url=NOWHERE),
                                        "registry": SchemaRegistryResource(url=NOWHERE)})


def run(lake: LakeResource, targets: list[str], *assets, datasets=DATASETS,
        partition_key: str | None = None, tags: dict | None = None
        ) -> dg.ExecuteInProcessResult:
    """Materialize ``targets`` with Dagster's own executor (an asset job of the definitions):
    their inputs are loaded by the IO manager of the assets they read."""
    job = dg.define_asset_job("under_test", selection=targets)
    defs = definitions(lake, *assets, datasets=datasets, jobs=[job])
    with dg.DagsterInstance.ephemeral() as instance:
        return defs.resolve_job_def("under_test").execute_in_process(
            instance=instance, partition_key=partition_key, tags=tags)


def test_the_lake_io_manager_is_the_io_manager_of_every_conflux_asset(lake):
    for defs in (build_definitions(DATASETS), definitions(lake)):
        for ds in DATASETS:
            assets_def = defs.resolve_assets_def(ds.name)
            key = assets_def.get_io_manager_key_for_asset_key(dg.AssetKey(ds.name))
            assert key == IO_MANAGER_KEY
        assert isinstance(defs.resources[IO_MANAGER_KEY], LakeIOManager)
    assert definitions(lake).resources[IO_MANAGER_KEY].lake is lake  # follows the given lake


def test_a_user_asset_gets_the_partition_it_depends_on_as_pandas(filled):
    seen = {}

    @dg.asset(partitions_def=daily_partitions())
    def expensive(orders: pd.DataFrame) -> None:
        seen["orders"] = orders

    assert run(filled, ["expensive"], expensive,
               partition_key="1995-01-03").success
    got = seen["orders"]
    assert isinstance(got, pd.DataFrame)
    assert list(got.columns) == list(Order.model_fields)  # the contract, no Kafka provenance
    assert sorted(got.o_orderkey) == [4, 5]


def test_an_arrow_annotation_gets_an_arrow_table(filled):
    seen = {}

    @dg.asset(partitions_def=daily_partitions())
    def arrow_reader(orders: pa.Table) -> None:
        seen["orders"] = orders

    assert run(filled, ["arrow_reader"], arrow_reader,
               partition_key="1995-01-01").success
    assert isinstance(seen["orders"], pa.Table)
    assert sorted(seen["orders"]["o_orderkey"].to_pylist()) == [1, 2]
    assert seen["orders"].schema.field("o_orderdate").type == pa.date32()


def test_an_unpartitioned_user_asset_gets_every_partition_and_unpartitioned_datasets(filled):
    seen = {}

    @dg.asset
    def everything(orders: pd.DataFrame, customer: pd.DataFrame) -> None:
        seen.update(orders=orders, customer=customer)

    assert run(filled, ["everything"], everything).success
    assert sorted(seen["orders"].o_orderkey) == [1, 2, 3, 4, 5]
    assert sorted(seen["customer"].c_custkey) == [10, 11]


def test_a_partitioned_user_asset_gets_an_unpartitioned_dataset_whole(filled):
    seen = {}

    @dg.asset(partitions_def=daily_partitions())
    def with_customers(orders: pd.DataFrame, customer: pd.DataFrame) -> None:
        seen.update(orders=orders, customer=customer)

    assert run(filled, ["with_customers"], with_customers,
               partition_key="1995-01-02").success
    assert seen["orders"].o_orderkey.tolist() == [3]
    assert len(seen["customer"]) == 2


def test_a_user_asset_downstream_of_a_join_gets_the_joined_rows(filled):
    seen = {}

    @dg.asset(partitions_def=daily_partitions())
    def revenue_report(nation_revenue: pd.DataFrame) -> None:
        seen["rows"] = nation_revenue

    # the Conflux join runs (it writes the lake itself), then the user asset reads its output
    assert run(filled, ["nation_revenue", "revenue_report"], revenue_report,
               partition_key="1995-01-03").success
    got = seen["rows"].sort_values("c_nation")
    assert got.c_nation.tolist() == ["FRANCE", "PERU"]
    assert got.revenue.tolist() == [300.0, 20.0]
    assert len(filled.read("nation_revenue", "1995-01-03")) == 2  # written once, by the join


def test_load_asset_value_reads_datasets_as_pandas_or_arrow(filled):
    defs = definitions(filled)
    day = defs.load_asset_value("orders", partition_key="1995-01-01")
    assert isinstance(day, pd.DataFrame) and sorted(day.o_orderkey) == [1, 2]
    arrow = defs.load_asset_value("orders", partition_key="1995-01-03", python_type=pa.Table)
    assert isinstance(arrow, pa.Table) and sorted(arrow["o_orderkey"].to_pylist()) == [4, 5]
    customers = defs.load_asset_value("customer")
    assert customers.c_nation.tolist() == ["FRANCE", "PERU"]


def test_nothing_stored_loads_as_an_empty_table_with_the_contract_columns(lake):
    defs = definitions(lake)
    empty = defs.load_asset_value("orders", partition_key="1995-01-01", python_type=pa.Table)
    assert len(empty) == 0 and empty.schema.names == list(Order.model_fields)
    assert empty.schema.field("o_orderkey").type == pa.int64()
    assert list(defs.load_asset_value("customer").columns) == ["c_custkey", "c_nation"]


def test_an_input_can_ask_for_some_columns_only(filled):
    seen = {}

    @dg.asset(partitions_def=daily_partitions(),
              ins={"orders": dg.AssetIn(metadata={"columns": ["o_orderkey", "o_totalprice"]})})
    def narrow(orders: pd.DataFrame) -> None:
        seen["orders"] = orders

    assert run(filled, ["narrow"], narrow, partition_key="1995-01-01").success
    assert list(seen["orders"].columns) == ["o_orderkey", "o_totalprice"]


def test_assets_that_are_not_datasets_keep_dagsters_default_storage(lake):
    @dg.asset
    def numbers() -> dict:
        return {"a": 1, "b": 2}

    @dg.asset
    def total(numbers: dict) -> int:
        return sum(numbers.values())

    result = run(lake, ["numbers", "total"], numbers, total)
    assert result.success and result.output_for_node("total") == 3
    assert lake.partitions("numbers") == [] and lake.partitions("total") == []


# --- a Dagster asset as a batch dataset's compute ---------------------------------------------

def test_a_dagster_asset_compute_compiles_under_the_dataset_spec():
    assert BIG_ORDERS.upstream == ("orders",)  # taken from the asset's inputs
    spec = asset_specs(DATASETS)["big_orders"]
    assert spec.partitions_def == daily_partitions(BIG_ORDERS.start)
    assert {d.asset_key.to_user_string() for d in spec.deps} == {"orders"}
    asset = build_definitions(DATASETS).resolve_assets_def("big_orders")
    assert asset.keys == {dg.AssetKey("big_orders")}
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    built = asset.specs_by_key[dg.AssetKey("big_orders")]
    assert built.tags["conflux/mode"] == "batch" and built.kinds == spec.kinds
    assert (built.owners, built.group_name, built.code_version) == (spec.owners, spec.group_name,
                                                                    spec.code_version)
    assert built.metadata["conflux/event_time"] == "o_orderdate"
    assert asset.op.retry_policy == dg.RetryPolicy(max_retries=1)  # kept from the user's asset


def test_a_dagster_asset_compute_stores_its_output_in_the_lake_by_day(filled):
    result = run(filled, ["big_orders"], tags={
        "dagster/asset_partition_range_start": DAYS[0],
        "dagster/asset_partition_range_end": DAYS[-1]})
    assert result.success
    assert filled.partitions("big_orders") == DAYS
    assert filled.read("big_orders", "1995-01-01").o_orderkey.tolist() == [2]
    assert len(filled.read("big_orders", "1995-01-03")) == 1
    # readable like any dataset, typed by the contract
    stored = definitions(filled).load_asset_value("big_orders", partition_key="1995-01-02", python_type=pa.Table)
    assert stored["o_orderkey"].to_pylist() == [3]
    assert stored.schema.field("o_orderdate").type == pa.date32()


def test_a_dagster_asset_compute_keeps_its_input_metadata_and_deps(filled):
    columns = ["o_orderkey", "o_orderdate", "o_totalprice"]

    @dg.asset(ins={"orders": dg.AssetIn(metadata={"columns": columns})}, deps=["customer"])
    def priced(orders: pd.DataFrame) -> pd.DataFrame:
        assert list(orders.columns) == columns  # only what the input asked for
        return orders

    ds = BatchDataset(name="priced", contract=BigOrder, key=("o_orderkey",),
                      event_time="o_orderdate", compute=priced)
    assert set(ds.upstream) == {"orders", "customer"}
    assert run(filled, ["priced"], datasets=[ORDERS, CUSTOMER, ds],
               partition_key="1995-01-01").success
    assert filled.read("priced", "1995-01-01").o_orderkey.tolist() == [1, 2]


def test_an_output_that_breaks_the_contract_is_refused(lake):
    @dg.asset
    def sloppy(orders: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"o_orderkey": [1], "o_orderdate": [dt.date(1995, 1, 1)]})

    ds = BatchDataset(name="sloppy", contract=BigOrder, key=("o_orderkey",),
                      event_time="o_orderdate", compute=sloppy)
    with pytest.raises(OutputContractError, match="dataset 'sloppy'.*missing o_totalprice"):
        run(lake, ["sloppy"], datasets=[ORDERS, ds], partition_key="1995-01-01")


def test_rows_outside_the_runs_partitions_are_refused(lake):
    @dg.asset
    def wrong_day(orders: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"o_orderkey": [3], "o_orderdate": [dt.date(1995, 1, 2)],
                             "o_totalprice": [1.0]})

    ds = BatchDataset(name="wrong_day", contract=BigOrder, key=("o_orderkey",),
                      event_time="o_orderdate", compute=wrong_day)
    with pytest.raises(OutputContractError, match="outside the run's 1995-01-01"):
        run(lake, ["wrong_day"], datasets=[ORDERS, ds], partition_key="1995-01-01")
    assert lake.partitions("wrong_day") == []


def test_a_dagster_asset_compute_must_read_its_declared_upstream():
    with pytest.raises(DeclarationError, match="compute asset's inputs"):
        build_definitions([ORDERS, CUSTOMER, BatchDataset(
            name="big_orders", contract=BigOrder, key=("o_orderkey",), event_time="o_orderdate",
            upstream=("customer",), compute=big_orders)])
