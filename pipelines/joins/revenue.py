"""``revenue_by_nation``: TPC-H Q5 without the region/year filter, per order date and nation."""

from __future__ import annotations

import pandas as pd


def revenue_by_nation(inputs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Sum of ``l_extendedprice * (1 - l_discount)`` over lineitems whose customer and supplier
    are in the same nation, per ``o_orderdate`` and ``n_name``."""
    orders = inputs["orders"][["o_orderkey", "o_custkey", "o_orderdate"]]
    lines = inputs["lineitem"][["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"]]
    customers = inputs["customer"][["c_custkey", "c_nationkey"]]
    suppliers = inputs["supplier"][["s_suppkey", "s_nationkey"]]
    nations = inputs["nation"][["n_nationkey", "n_name"]]
    joined = (lines.merge(orders, left_on="l_orderkey", right_on="o_orderkey")
              .merge(customers, left_on="o_custkey", right_on="c_custkey")
              .merge(suppliers, left_on="l_suppkey", right_on="s_suppkey"))
    joined = joined[joined["c_nationkey"] == joined["s_nationkey"]]
    joined = joined.assign(revenue=joined["l_extendedprice"] * (1 - joined["l_discount"]))
    joined = joined.merge(nations, left_on="s_nationkey", right_on="n_nationkey")
    out = joined.groupby(["o_orderdate", "n_name"], as_index=False)["revenue"].sum()
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)
