"""Contracts of the demo platform: a commerce business shaped like TPC-H.

Field names are TPC-H column names in lower case. Every contract is a *closed* model
(``extra="forbid"``): an unknown field is a contract violation, and in the schema registry a
closed content model is what lets optional fields be added compatibly.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """Base of all contracts: closed, strict about unknown fields, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Order(Contract):
    """One order, as the order service publishes it on ``tpch.orders``."""

    o_orderkey: int = Field(ge=1, description="Order id")
    o_custkey: int = Field(ge=1, description="Customer placing the order")
    o_orderstatus: Literal["O", "F", "P"] = Field(description="Open, fulfilled or partial")
    o_totalprice: float = Field(description="Order total")
    o_orderdate: dt.date = Field(description="Order date (event time)")
    o_orderpriority: str = Field(max_length=15)
    o_clerk: str = Field(max_length=15)
    o_shippriority: int
    o_comment: str = Field(default="", max_length=79)


class LineItem(Contract):
    """One order line, published on ``tpch.lineitem``."""

    l_orderkey: int = Field(ge=1)
    l_partkey: int = Field(ge=1)
    l_suppkey: int = Field(ge=1)
    l_linenumber: int = Field(ge=1, le=7)
    l_quantity: float
    l_extendedprice: float
    l_discount: float = Field(ge=0, le=1)
    l_tax: float = Field(ge=0, le=1)
    l_returnflag: Literal["A", "N", "R"]
    l_linestatus: Literal["O", "F"]
    l_shipdate: dt.date
    l_commitdate: dt.date
    l_receiptdate: dt.date
    l_shipinstruct: str = Field(max_length=25)
    l_shipmode: str = Field(max_length=10)
    l_comment: str = Field(default="", max_length=44)
    o_orderdate: dt.date = Field(description="Date of the order the line belongs to (event time)")


class LedgerEvent(Contract):
    """An audit-critical customer ledger event on ``ledger.customer`` (append-only)."""

    event_id: str = Field(min_length=1, max_length=64)
    c_custkey: int = Field(ge=1)
    kind: Literal["deposit", "withdrawal", "adjustment"]
    amount: float
    occurred_at: dt.datetime


class Customer(Contract):
    c_custkey: int = Field(ge=1)
    c_name: str
    c_address: str
    c_nationkey: int
    c_phone: str
    c_acctbal: float
    c_mktsegment: str
    c_comment: str = ""


class Supplier(Contract):
    s_suppkey: int = Field(ge=1)
    s_name: str
    s_address: str
    s_nationkey: int
    s_phone: str
    s_acctbal: float
    s_comment: str = ""


class Nation(Contract):
    n_nationkey: int = Field(ge=0)
    n_name: str
    n_regionkey: int
    n_comment: str = ""


class Region(Contract):
    r_regionkey: int = Field(ge=0)
    r_name: str
    r_comment: str = ""


class Part(Contract):
    p_partkey: int = Field(ge=1)
    p_name: str
    p_mfgr: str
    p_brand: str
    p_type: str
    p_size: int
    p_container: str
    p_retailprice: float
    p_comment: str = ""


class PartSupp(Contract):
    ps_partkey: int = Field(ge=1)
    ps_suppkey: int = Field(ge=1)
    ps_availqty: int
    ps_supplycost: float
    ps_comment: str = ""


class RevenueByNation(Contract):
    """Daily revenue per nation (TPC-H Q5 without the region/year filter)."""

    o_orderdate: dt.date
    n_name: str
    revenue: float


class CustomerBalance(Contract):
    """Projection of the ledger over the customer's opening balance:
    ``balance = opening_balance + ledger_total``, ``ledger_total`` being the sum of the signed
    amounts of the ``events_applied`` ledger events folded for the customer.

    The last three fields were added later, optional with a default (BACKWARD compatible)."""

    c_custkey: int
    balance: float
    events_applied: int
    opening_balance: float | None = Field(
        default=None, description="ops.customer.c_acctbal the balance is based on")
    ledger_total: float | None = Field(
        default=None, description="Sum of the signed amounts of the ledger events folded")
    last_event_id: str | None = Field(
        default=None, max_length=64,
        description="Latest folded ledger event of the customer (by occurred_at, then event_id)")
