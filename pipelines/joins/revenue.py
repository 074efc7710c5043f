"""``revenue_by_nation``: TPC-H Q5 without the region/year filter, per order date and nation.

Computed with Arrow's multi-threaded hash joins and aggregation on the needed columns only
(inputs may be Arrow tables — what the batch path reads — or pandas frames)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _arrow(data, columns: list[str]) -> pa.Table:
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    return table.select(columns)


def revenue_by_nation(inputs: dict[str, pa.Table | pd.DataFrame]) -> pd.DataFrame:
    """Sum of ``l_extendedprice * (1 - l_discount)`` over lineitems whose customer and supplier
    are in the same nation, per ``o_orderdate`` and ``n_name``."""
    lines = _arrow(inputs["lineitem"], ["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"])
    orders = _arrow(inputs["orders"], ["o_orderkey", "o_custkey", "o_orderdate"])
    customers = _arrow(inputs["customer"], ["c_custkey", "c_nationkey"])
    suppliers = _arrow(inputs["supplier"], ["s_suppkey", "s_nationkey"])
    nations = _arrow(inputs["nation"], ["n_nationkey", "n_name"])
    if not len(lines) or not len(orders):
        return pd.DataFrame({"o_orderdate": pd.Series(dtype=object), "n_name": pd.Series(dtype=object),
                             "revenue": pd.Series(dtype="float64")})
    revenue = pc.multiply(lines["l_extendedprice"], pc.subtract(1, lines["l_discount"]))
    lines = pa.table({"l_orderkey": lines["l_orderkey"], "l_suppkey": lines["l_suppkey"],
                      "revenue": revenue})
    # small sides first: customer and supplier nations onto orders and lines
    orders = orders.join(customers, "o_custkey", "c_custkey", join_type="inner")
    lines = lines.join(suppliers, "l_suppkey", "s_suppkey", join_type="inner")
    joined = lines.join(orders, "l_orderkey", "o_orderkey", join_type="inner")
    joined = joined.filter(pc.equal(joined["c_nationkey"], joined["s_nationkey"]))
    sums = joined.group_by(["o_orderdate", "s_nationkey"]).aggregate([("revenue", "sum")])
    named = sums.join(nations, "s_nationkey", "n_nationkey", join_type="inner")
    out = named.select(["o_orderdate", "n_name", "revenue_sum"]).rename_columns(
        ["o_orderdate", "n_name", "revenue"]).to_pandas()
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)
