"""The demo platform's dataset declarations (names relied on by docs and tests)."""

from __future__ import annotations

import datetime as dt

from conflux import (BatchDataset, BatchFallback, Dataset, DeadLetterPolicy, EventDataset,
                     LedgerColumns, ledger_projection, validate_catalog)
from pipelines import contracts as tpch
from pipelines.joins.revenue import revenue_by_nation

# --- event datasets ---------------------------------------------------------------------------
ORDERS = EventDataset(
    name="orders", contract=tpch.Order, key=("o_orderkey",), event_time="o_orderdate",
    topics=("tpch.orders",), owner="team:order-service", group="sales",
    description="Orders as the order service publishes them, upserted by o_orderkey.",
    fallback=BatchFallback(source_table="ops.orders"),
)
LINEITEM = EventDataset(
    name="lineitem", contract=tpch.LineItem, key=("l_orderkey", "l_linenumber"),
    event_time="o_orderdate", topics=("tpch.lineitem",), owner="team:order-service",
    group="sales", description="Order lines, partitioned by the date of their order.",
    fallback=BatchFallback(source_table="ops.lineitem"),
)
CUSTOMER_LEDGER = EventDataset(
    name="customer_ledger", contract=tpch.LedgerEvent, key=("event_id",),
    event_time=None, topics=("ledger.customer",), owner="team:finance", group="finance",
    append_only=True, dlq=DeadLetterPolicy(error_count=1),  # audit-critical: any letter is an incident
    description="Audit-critical, append-only ledger of customer money movements.",
)

# --- batch datasets loaded from the operational database ---------------------------------------
# loaded by their schedule (daily, off until turned on) and, with automation (no upstream
# datasets), once as soon as they were never loaded: `make dev` starts with them in place
def _ops(name: str, contract, key: tuple[str, ...], group: str = "reference") -> BatchDataset:
    return BatchDataset(name=name, contract=contract, key=key, source_table=f"ops.{name}",
                        group=group, schedule="0 2 * * *", automation=True,
                        description=f"ops.{name}, loaded from the operational database.")


CUSTOMER = _ops("customer", tpch.Customer, ("c_custkey",), group="customers")
SUPPLIER = _ops("supplier", tpch.Supplier, ("s_suppkey",))
NATION = _ops("nation", tpch.Nation, ("n_nationkey",))
REGION = _ops("region", tpch.Region, ("r_regionkey",))
PART = _ops("part", tpch.Part, ("p_partkey",))
PARTSUPP = _ops("partsupp", tpch.PartSupp, ("ps_partkey", "ps_suppkey"))

# --- batch joins -------------------------------------------------------------------------------
REVENUE_BY_NATION = BatchDataset(
    name="revenue_by_nation", contract=tpch.RevenueByNation, key=("o_orderdate", "n_name"),
    event_time="o_orderdate", group="sales", owner="team:analytics",
    upstream=("orders", "lineitem", "customer", "supplier", "nation"),
    compute=revenue_by_nation, schedule="30 * * * *", automation=True,
    lineage={"revenue": ("lineitem.l_extendedprice", "lineitem.l_discount"),
             "o_orderdate": ("orders.o_orderdate",)},
    reads={"orders": ("o_orderkey", "o_custkey", "o_orderdate"),
           "lineitem": ("l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"),
           "customer": ("c_custkey", "c_nationkey"), "supplier": ("s_suppkey", "s_nationkey"),
           "nation": ("n_nationkey", "n_name")},
    stream=("lineitem",),
    description="Daily revenue per nation where customer and supplier share the nation "
                "(TPC-H Q5 without the region/year filter).",
)
CUSTOMER_BALANCE = BatchDataset(
    name="customer_balance", contract=tpch.CustomerBalance, key=("c_custkey",),
    group="finance", owner="team:finance", upstream=("customer_ledger", "customer"),
    compute=ledger_projection(
        ledger="customer_ledger", opening="customer",
        columns=LedgerColumns(account="c_custkey", balance="c_acctbal", label="customer",
                              signs={"deposit": 1, "withdrawal": -1, "adjustment": 1})),
    schedule="*/15 * * * *", automation=True,
    lineage={"balance": ("customer.c_acctbal", "customer_ledger.amount", "customer_ledger.kind"),
             "events_applied": ("customer_ledger.event_id",),
             "opening_balance": ("customer.c_acctbal",),
             "ledger_total": ("customer_ledger.amount", "customer_ledger.kind"),
             "last_event_id": ("customer_ledger.event_id", "customer_ledger.occurred_at")},
    reads={"customer": ("c_custkey", "c_acctbal")},
    freshness=dt.timedelta(minutes=30),
    description="Projection of customer_ledger over ops.customer.c_acctbal, maintained "
                "incrementally: each run folds only the ledger events not folded yet "
                "(checkpoint beside it in the lake); `conflux ledger rebuild --check` compares "
                "it with a fold from offset zero, `conflux ledger explain C_CUSTKEY` traces a "
                "balance to its events.",
)

DATASETS: tuple[Dataset, ...] = (
    ORDERS, LINEITEM, CUSTOMER_LEDGER,
    CUSTOMER, SUPPLIER, NATION, REGION, PART, PARTSUPP,
    REVENUE_BY_NATION, CUSTOMER_BALANCE,
)
CATALOG = validate_catalog(DATASETS)


def event_datasets() -> list[EventDataset]:
    return [d for d in DATASETS if isinstance(d, EventDataset)]
