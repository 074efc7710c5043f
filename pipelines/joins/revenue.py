"""``revenue_by_nation``: TPC-H Q5 without the region/year filter, per order date and nation.

Inputs may be Arrow tables (what the batch path reads, needed columns only) or pandas frames.
With integer surrogate keys of reasonable range (TPC-H's), the joins are direct-address
lookups — an array indexed by key — and the aggregation one ``bincount`` over (day, nation):
no hash tables at all. Otherwise Arrow's hash joins do the same work. Both are checked against
DuckDB in the tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

MAX_DENSE_KEY = 100_000_000  # lookup arrays up to this size (int32: 400 MB at most)


def _arrow(data, columns: list[str]) -> pa.Table:
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    return table.select(columns)


LINE_COLUMNS = ["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"]


def revenue_by_nation(inputs: dict) -> pd.DataFrame:
    """Sum of ``l_extendedprice * (1 - l_discount)`` over lineitems whose customer and supplier
    are in the same nation, per ``o_orderdate`` and ``n_name``. ``lineitem`` may also be a lazy
    scan (anything with ``to_batches()`` and ``to_table()``): it is then aggregated batch by
    batch, never held whole."""
    lines = inputs["lineitem"]
    if not hasattr(lines, "to_batches") or isinstance(lines, pd.DataFrame):
        lines = _arrow(lines, LINE_COLUMNS)
    orders = _arrow(inputs["orders"], ["o_orderkey", "o_custkey", "o_orderdate"])
    customers = _arrow(inputs["customer"], ["c_custkey", "c_nationkey"])
    suppliers = _arrow(inputs["supplier"], ["s_suppkey", "s_nationkey"])
    nations = _arrow(inputs["nation"], ["n_nationkey", "n_name"])
    if not len(orders) or (isinstance(lines, pa.Table) and not len(lines)):
        return pd.DataFrame({"o_orderdate": pd.Series(dtype=object), "n_name": pd.Series(dtype=object),
                             "revenue": pd.Series(dtype="float64")})
    dense = _dense(lines, orders, customers, suppliers, nations)
    if dense is not None:
        return dense
    table = lines if isinstance(lines, pa.Table) else lines.to_table()
    return _hashed(table.select(LINE_COLUMNS), orders, customers, suppliers, nations)


def _keys(column: pa.ChunkedArray) -> np.ndarray | None:
    """Integer keys as numpy, or None when they do not suit a lookup array."""
    if not pa.types.is_integer(column.type) or column.null_count:
        return None
    keys = column.to_numpy()
    if len(keys) and (keys.min() < 0 or keys.max() >= MAX_DENSE_KEY):
        return None
    return keys


def _lookup(keys: np.ndarray, values: np.ndarray, fill) -> np.ndarray:
    table = np.full(int(keys.max()) + 1 if len(keys) else 1, fill, dtype=values.dtype)
    table[keys] = values
    return table


def _at(table: np.ndarray, keys: np.ndarray, fill) -> np.ndarray:
    """``table[keys]``, with ``fill`` for keys beyond the table (no match)."""
    inside = keys < len(table)
    out = np.full(len(keys), fill, dtype=table.dtype)
    out[inside] = table[keys[inside]]
    return out


def _dense(lines, orders, customers, suppliers, nations) -> pd.DataFrame | None:
    o_key, o_cust = _keys(orders["o_orderkey"]), _keys(orders["o_custkey"])
    c_key, s_key = _keys(customers["c_custkey"]), _keys(suppliers["s_suppkey"])
    n_key = _keys(nations["n_nationkey"])
    if any(k is None for k in (o_key, o_cust, c_key, s_key, n_key)) or len(n_key) == 0:
        return None
    if not pa.types.is_date32(orders["o_orderdate"].type) or orders["o_orderdate"].null_count:
        return None
    cust_nation = _lookup(c_key, customers["c_nationkey"].to_numpy().astype(np.int32), -1)
    supp_nation = _lookup(s_key, suppliers["s_nationkey"].to_numpy().astype(np.int32), -1)
    days = pc.cast(orders["o_orderdate"], pa.int32()).to_numpy()
    order_nation = _lookup(o_key, _at(cust_nation, o_cust, -1), -1)
    order_day = _lookup(o_key, days, 0)
    del o_key, o_cust, cust_nation
    first, width = int(days.min()), int(max(n_key.max(), supp_nation.max())) + 1
    nbins = (int(days.max()) - first + 1) * width
    sums, counts = np.zeros(nbins), np.zeros(nbins, dtype=np.int64)
    # one slice of lineitem at a time: no full-size intermediate arrays
    batches = (lines.to_batches(max_chunksize=1 << 20) if isinstance(lines, pa.Table)
               else lines.to_batches())
    for batch in batches:
        keys = [batch.column(c) for c in ("l_orderkey", "l_suppkey")]
        if any(not pa.types.is_integer(k.type) or k.null_count for k in keys):
            return None
        l_order, l_supp = keys[0].to_numpy(), keys[1].to_numpy()
        if len(l_order) and (l_order.min() < 0 or l_supp.min() < 0):
            return None
        cn = _at(order_nation, l_order, -1)
        sn = _at(supp_nation, l_supp, -2)
        keep = (cn == sn) & (cn >= 0)
        if not keep.any():
            continue
        price = batch.column("l_extendedprice").to_numpy()[keep]
        revenue = price * (1 - batch.column("l_discount").to_numpy()[keep])
        bins = (_at(order_day, l_order[keep], 0) - first).astype(np.int64) * width + sn[keep]
        sums += np.bincount(bins, weights=revenue, minlength=nbins)
        counts += np.bincount(bins, minlength=nbins)
    hit = np.flatnonzero(counts)
    names = dict(zip(n_key.tolist(), nations["n_name"].to_pylist()))
    out_day = (hit // width + first).astype("datetime64[D]").astype(object)
    out = pd.DataFrame({"o_orderdate": out_day,
                        "n_name": [names.get(int(n)) for n in hit % width],
                        "revenue": sums[hit]})
    out = out[out["n_name"].notna()]  # a supplier nation missing from nation: inner join
    return out.sort_values(["o_orderdate", "n_name"]).reset_index(drop=True)


def _hashed(lines, orders, customers, suppliers, nations) -> pd.DataFrame:
    """The same computation with Arrow's hash joins (any key types)."""
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
