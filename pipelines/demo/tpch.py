"""A TPC-H-shaped data generator (vectorised with numpy, deterministic for a seed).

Not dbgen: the shapes, key ranges, value domains and row counts per scale factor follow the
TPC-H specification closely enough that every demo number can be checked with an independent
SQL engine, but the text columns are synthetic.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

REGIONS = ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
NATIONS = [  # (name, region) in TPC-H order, n_nationkey = index
    ("ALGERIA", 0), ("ARGENTINA", 1), ("BRAZIL", 1), ("CANADA", 1), ("EGYPT", 4),
    ("ETHIOPIA", 0), ("FRANCE", 3), ("GERMANY", 3), ("INDIA", 2), ("INDONESIA", 2),
    ("IRAN", 4), ("IRAQ", 4), ("JAPAN", 2), ("JORDAN", 4), ("KENYA", 0),
    ("MOROCCO", 0), ("MOZAMBIQUE", 0), ("PERU", 1), ("CHINA", 2), ("ROMANIA", 3),
    ("SAUDI ARABIA", 4), ("VIETNAM", 2), ("RUSSIA", 3), ("UNITED KINGDOM", 3),
    ("UNITED STATES", 1),
]
START_DATE = dt.date(1992, 1, 1)
END_DATE = dt.date(1998, 8, 2)  # last o_orderdate in TPC-H
SEGMENTS = ["AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY"]
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
SHIPMODES = ["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"]
INSTRUCTIONS = ["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]


def counts(scale: float) -> dict[str, int]:
    """Rows per table at ``scale`` (at least one of each)."""
    return {
        "supplier": max(1, int(10_000 * scale)),
        "customer": max(1, int(150_000 * scale)),
        "part": max(1, int(200_000 * scale)),
        "orders": max(1, int(1_500_000 * scale)),
    }


class TpchGenerator:
    """Generates the eight TPC-H tables for a scale factor and seed."""

    def __init__(self, scale: float, seed: int = 42):
        self.scale = scale
        self.seed = seed
        self.n = counts(scale)

    def _rng(self, table: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, sum(map(ord, table))])

    def region(self) -> pd.DataFrame:
        return pd.DataFrame({"r_regionkey": range(5), "r_name": REGIONS,
                             "r_comment": [f"region {r.lower()}" for r in REGIONS]})

    def nation(self) -> pd.DataFrame:
        return pd.DataFrame({
            "n_nationkey": range(len(NATIONS)),
            "n_name": [n for n, _ in NATIONS],
            "n_regionkey": [r for _, r in NATIONS],
            "n_comment": [f"nation {n.lower()}" for n, _ in NATIONS],
        })

    def supplier(self) -> pd.DataFrame:
        rng, n = self._rng("supplier"), self.n["supplier"]
        keys = np.arange(1, n + 1)
        return pd.DataFrame({
            "s_suppkey": keys,
            "s_name": [f"Supplier#{k:09d}" for k in keys],
            "s_address": [f"addr-s{k}" for k in keys],
            "s_nationkey": rng.integers(0, 25, n),
            "s_phone": [f"{10 + k % 25}-555-{k % 10000:04d}" for k in keys],
            "s_acctbal": np.round(rng.uniform(-999.99, 9999.99, n), 2),
            "s_comment": "",
        })

    def customer(self) -> pd.DataFrame:
        rng, n = self._rng("customer"), self.n["customer"]
        keys = np.arange(1, n + 1)
        return pd.DataFrame({
            "c_custkey": keys,
            "c_name": [f"Customer#{k:09d}" for k in keys],
            "c_address": [f"addr-c{k}" for k in keys],
            "c_nationkey": rng.integers(0, 25, n),
            "c_phone": [f"{10 + k % 25}-555-{k % 10000:04d}" for k in keys],
            "c_acctbal": np.round(rng.uniform(-999.99, 9999.99, n), 2),
            "c_mktsegment": rng.choice(SEGMENTS, n),
            "c_comment": "",
        })

    def part(self) -> pd.DataFrame:
        rng, n = self._rng("part"), self.n["part"]
        keys = np.arange(1, n + 1)
        return pd.DataFrame({
            "p_partkey": keys,
            "p_name": [f"part {k}" for k in keys],
            "p_mfgr": [f"Manufacturer#{1 + k % 5}" for k in keys],
            "p_brand": [f"Brand#{1 + k % 5}{1 + k % 5}" for k in keys],
            "p_type": rng.choice(["STANDARD ANODIZED TIN", "SMALL PLATED COPPER",
                                  "PROMO BURNISHED STEEL", "ECONOMY POLISHED BRASS"], n),
            "p_size": rng.integers(1, 51, n),
            "p_container": rng.choice(["SM BOX", "LG CASE", "MED BAG", "JUMBO PKG"], n),
            "p_retailprice": np.round(900 + (keys / 10) % 20001 / 100 + 100 * (keys % 1000) / 1000, 2),
            "p_comment": "",
        })

    def partsupp(self) -> pd.DataFrame:
        rng = self._rng("partsupp")
        parts = np.repeat(np.arange(1, self.n["part"] + 1), 4)
        nsupp = self.n["supplier"]
        i = np.tile(np.arange(4), self.n["part"])
        supp = (parts + i * (nsupp // 4 + (parts - 1) // nsupp)) % nsupp + 1
        frame = pd.DataFrame({"ps_partkey": parts, "ps_suppkey": supp})
        frame = frame.drop_duplicates(["ps_partkey", "ps_suppkey"]).reset_index(drop=True)
        m = len(frame)
        frame["ps_availqty"] = rng.integers(1, 10_000, m)
        frame["ps_supplycost"] = np.round(rng.uniform(1.0, 1000.0, m), 2)
        frame["ps_comment"] = ""
        return frame

    def orders(self) -> pd.DataFrame:
        rng, n = self._rng("orders"), self.n["orders"]
        days = (END_DATE - START_DATE).days
        # sparse keys like dbgen (8 used of every 32)
        keys = (np.arange(n) // 8) * 32 + np.arange(n) % 8 + 1
        dates = np.datetime64(START_DATE) + rng.integers(0, days + 1, n).astype("timedelta64[D]")
        return pd.DataFrame({
            "o_orderkey": keys,
            "o_custkey": rng.integers(1, self.n["customer"] + 1, n),
            "o_orderstatus": rng.choice(["O", "F", "P"], n),
            "o_totalprice": np.round(rng.uniform(800.0, 500_000.0, n), 2),
            "o_orderdate": pd.to_datetime(dates).date,
            "o_orderpriority": rng.choice(PRIORITIES, n),
            "o_clerk": [f"Clerk#{c:09d}" for c in rng.integers(1, 1001, n)],
            "o_shippriority": 0,
            "o_comment": "",
        })

    def lineitem(self, orders: pd.DataFrame | None = None) -> pd.DataFrame:
        orders = self.orders() if orders is None else orders
        rng = self._rng("lineitem")
        lines = rng.integers(1, 8, len(orders))
        okeys = np.repeat(orders["o_orderkey"].to_numpy(), lines)
        odates = np.repeat(pd.to_datetime(orders["o_orderdate"]).to_numpy(), lines)
        starts = np.repeat(np.cumsum(lines) - lines, lines)
        linenumber = np.arange(len(okeys)) - starts + 1
        m = len(okeys)
        partkey = rng.integers(1, self.n["part"] + 1, m)
        nsupp = self.n["supplier"]
        suppkey = (partkey + rng.integers(0, 4, m) * (nsupp // 4 + (partkey - 1) // nsupp)) % nsupp + 1
        qty = rng.integers(1, 51, m).astype(float)
        price = np.round(qty * (900 + (partkey % 20001) / 100), 2)
        ship = odates + rng.integers(1, 122, m).astype("timedelta64[D]")
        commit = odates + rng.integers(30, 91, m).astype("timedelta64[D]")
        receipt = ship + rng.integers(1, 31, m).astype("timedelta64[D]")
        return pd.DataFrame({
            "l_orderkey": okeys,
            "l_partkey": partkey,
            "l_suppkey": suppkey,
            "l_linenumber": linenumber,
            "l_quantity": qty,
            "l_extendedprice": price,
            "l_discount": np.round(rng.integers(0, 11, m) / 100, 2),
            "l_tax": np.round(rng.integers(0, 9, m) / 100, 2),
            "l_returnflag": rng.choice(["A", "N", "R"], m),
            "l_linestatus": rng.choice(["O", "F"], m),
            "l_shipdate": pd.to_datetime(ship).date,
            "l_commitdate": pd.to_datetime(commit).date,
            "l_receiptdate": pd.to_datetime(receipt).date,
            "l_shipinstruct": rng.choice(INSTRUCTIONS, m),
            "l_shipmode": rng.choice(SHIPMODES, m),
            "l_comment": "",
            "o_orderdate": pd.to_datetime(odates).date,
        })


LEDGER_KINDS = ["deposit", "withdrawal", "adjustment"]


def ledger(customers: pd.DataFrame, per_customer: float = 3.0, seed: int = 42,
           start_id: int = 0) -> pd.DataFrame:
    """Customer ledger events (deposit / withdrawal / adjustment) with stable event ids."""
    rng = np.random.default_rng([seed, 7])
    n = max(1, int(len(customers) * per_customer))
    ids = np.arange(start_id, start_id + n)
    seconds = int((dt.datetime.combine(END_DATE, dt.time()) -
                   dt.datetime.combine(START_DATE, dt.time())).total_seconds())
    occurred = (np.datetime64(dt.datetime.combine(START_DATE, dt.time()), "s")
                + rng.integers(0, seconds, n).astype("timedelta64[s]"))
    kinds = rng.choice(LEDGER_KINDS, n, p=[0.5, 0.4, 0.1])
    amounts = np.round(rng.uniform(1.0, 5000.0, n), 2)
    amounts = np.where(kinds == "adjustment", np.round(rng.uniform(-100, 100, n), 2), amounts)
    return pd.DataFrame({
        "event_id": [f"ev-{seed}-{i:012d}" for i in ids],
        "c_custkey": rng.choice(customers["c_custkey"].to_numpy(), n),
        "kind": kinds,
        "amount": amounts,
        "occurred_at": pd.to_datetime(occurred).to_pydatetime(),
    })
