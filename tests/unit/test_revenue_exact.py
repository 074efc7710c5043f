"""``revenue_by_nation`` equals an independent engine (DuckDB) on generated TPC-H data, for
every (day, nation), with pandas or Arrow inputs, and on empty input."""

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipelines.demo.producer import tpch_tables
from pipelines import contracts as tpch
from conflux.contracts.lineage import arrow_schema
from pipelines.joins import revenue as revenue_module
from pipelines.joins.revenue import revenue_by_nation

Q = """
select o.o_orderdate::date::varchar as o_orderdate, n.n_name,
       sum(l.l_extendedprice * (1 - l.l_discount)) as revenue
from lineitem l join orders o on l.l_orderkey = o.o_orderkey
join customer c on o.o_custkey = c.c_custkey join supplier s on l.l_suppkey = s.s_suppkey
join nation n on s.s_nationkey = n.n_nationkey
where c.c_nationkey = s.s_nationkey group by 1, 2 order by 1, 2
"""


@pytest.mark.parametrize("as_arrow", [False, True])
@pytest.mark.parametrize("path", ["direct-address", "hash-join"])
def test_every_day_and_nation_matches_duckdb(as_arrow, path, monkeypatch):
    if path == "hash-join":  # keys too large for lookup arrays: Arrow's hash joins
        monkeypatch.setattr(revenue_module, "MAX_DENSE_KEY", 10)
    tables = tpch_tables(0.005, seed=9)
    con = duckdb.connect()
    for name in ("orders", "lineitem", "customer", "supplier", "nation"):
        con.register(name, tables[name])
    expected = con.execute(Q).df()
    inputs = {k: pa.Table.from_pandas(v, preserve_index=False) if as_arrow else v
              for k, v in tables.items()}
    ours = revenue_by_nation(inputs)
    assert len(ours) == len(expected) > 100
    assert list(ours.o_orderdate.astype(str)) == list(expected.o_orderdate)
    assert list(ours.n_name) == list(expected.n_name)
    assert np.allclose(ours.revenue, expected.revenue, rtol=1e-12, atol=0)


def test_empty_inputs_give_an_empty_result():
    empty = {name: arrow_schema(contract).empty_table() for name, contract in (
        ("orders", tpch.Order), ("lineitem", tpch.LineItem), ("customer", tpch.Customer),
        ("supplier", tpch.Supplier), ("nation", tpch.Nation))}
    assert revenue_by_nation(empty).empty


def test_a_lazy_lineitem_scan_gives_the_same_answer(tmp_path):
    from conflux.batch.asset import read_inputs
    from pipelines.catalog import CATALOG, REVENUE_BY_NATION
    from conflux.io.lake import LakeResource, LakeScan

    import datetime as dt

    tables = tpch_tables(0.002, seed=4)
    for name in ("orders", "lineitem"):  # 150 days are enough partitions (and quick to write)
        df = tables[name]
        tables[name] = df[df["o_orderdate"] < dt.date(1992, 6, 1)].reset_index(drop=True)
    lake = LakeResource(path=str(tmp_path))
    for name in ("customer", "supplier", "nation"):
        lake.write(name, tables[name])
    for name in ("orders", "lineitem"):
        df = tables[name]
        lake.write_many(name, {day: part.reset_index(drop=True)
                               for day, part in df.groupby(df["o_orderdate"].astype(str))})
    inputs = read_inputs(REVENUE_BY_NATION, CATALOG, lake, None)
    assert isinstance(inputs["lineitem"], LakeScan) and len(inputs["lineitem"].files) > 100
    streamed = revenue_by_nation(inputs)
    whole = revenue_by_nation(tables)
    assert list(streamed.n_name) == list(whole.n_name)
    assert np.allclose(streamed.revenue, whole.revenue, rtol=1e-12, atol=0)
