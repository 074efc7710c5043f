"""A fallback repair over a range is one Delta commit, and a row the source re-dated leaves its
old day (a key is unique in the dataset). The batch source is a fake here (the comparison and
the repair are what is tested; tests/integration/test_fallback.py runs them on Postgres)."""

import datetime as dt

import pandas as pd

from conflux.batch import reconcile as rec
from conflux.batch.fallback import repair_materialization
from conflux.io.lake import LakeResource
from pipelines.catalog import ORDERS

FIELDS = list(ORDERS.fields)


def order(key: int, day: str, price: float = 1.0) -> dict:
    return {"o_orderkey": key, "o_custkey": 1, "o_orderstatus": "O", "o_totalprice": price,
            "o_orderdate": dt.date.fromisoformat(day), "o_orderpriority": "1-URGENT",
            "o_clerk": "c", "o_shippriority": 0, "o_comment": ""}


def stored(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).assign(__topic="t", __partition=0, __offset=range(len(rows)),
                                     __ts=1_000, __correlation_id="")


def test_a_repair_is_one_commit_and_moves_a_re_dated_row_out_of_its_old_day(tmp_path,
                                                                         monkeypatch):
    lake = LakeResource(path=str(tmp_path))
    lake.write_many("orders", {"1995-01-01": stored([order(1, "1995-01-01"), order(2, "1995-01-01")]),
                               "1995-01-02": stored([order(3, "1995-01-02"), order(4, "1995-01-02")])})
    before = lake.version("orders")
    source = pd.DataFrame([order(1, "1995-01-02"),           # re-dated: moves to the 2nd
                           order(2, "1995-01-01"),           # unchanged
                           order(3, "1995-01-02", 9.0),      # changed in place
                           order(5, "1995-01-01")])          # missing; 4 is extra
    monkeypatch.setattr(rec, "read_source", lambda ds, postgres, start, end: source[FIELDS])
    result = rec.reconcile(ORDERS, postgres=None, lake=lake, start=dt.date(1995, 1, 1),
                           end=dt.date(1995, 1, 2))
    assert result.diff.counts() == {"missing": 1, "extra": 1, "changed": 2}
    assert lake.version("orders") == before + 1  # one commit for every repaired day
    assert sorted(result.partitions_repaired) == ["1995-01-01", "1995-01-02"]
    assert {c.version for c in result.commits.values()} == {before + 1}
    # each day's materialization counts the rows written into it (Dagster's row count)
    assert result.written == {"1995-01-01": 1, "1995-01-02": 2}
    meta = repair_materialization(ORDERS, result, "1995-01-02", "run-1").metadata
    assert meta["dagster/row_count"].value == 2
    days = {d: sorted(lake.read("orders", d).o_orderkey) for d in lake.partitions("orders")}
    assert days == {"1995-01-01": [2, 5], "1995-01-02": [1, 3]}
    assert lake.read("orders", "1995-01-02").set_index("o_orderkey").o_totalprice[3] == 9.0
    again = rec.reconcile(ORDERS, postgres=None, lake=lake, start=dt.date(1995, 1, 1),
                          end=dt.date(1995, 1, 2))
    assert again.diff.clean and lake.version("orders") == before + 1
