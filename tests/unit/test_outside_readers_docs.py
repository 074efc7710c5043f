"""docs/outside-readers.md cannot rot: its ```python tested blocks are run as written against a
small lake made by ``LakeResource`` (no services), and what they read is compared with the rows
the lake must hold — current rows only, the superseded version of an updated key nowhere but in
time travel. The ``s3`` blocks run in tests/integration/test_outside_readers.py (moto)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from conflux.io.lake import LakeResource

DOC = Path(__file__).resolve().parents[2] / "docs" / "outside-readers.md"
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)
KEY = ["o_orderkey"]
ORDER_BY = ["__ts", "__offset"]


def snippets(kind: str = "") -> list[str]:
    """The doc's ```python blocks marked ``tested`` (``tested s3`` when ``kind="s3"``)."""
    return [body for info, body in BLOCK.findall(DOC.read_text())
            if info.split() == ["tested", *([kind] if kind else [])]]


def run(snippet: str) -> dict:
    """Execute one snippet as a script; its variables."""
    scope: dict = {"__name__": "__snippet__"}
    exec(compile(snippet, str(DOC), "exec"), scope)
    return scope


def _order(key: int, day: str, price: float, offset: int, ts: int) -> dict:
    return {"o_orderkey": key, "o_custkey": 7, "o_orderstatus": "O", "o_totalprice": price,
            "o_orderdate": dt.date.fromisoformat(day), "o_orderpriority": "1-URGENT",
            "o_clerk": "Clerk#1", "o_shippriority": 0, "o_comment": "",
            "__topic": "tpch.orders", "__partition": 0, "__offset": offset, "__ts": ts,
            "__correlation_id": f"c{offset}"}


def _upsert(lake: LakeResource, rows: list[dict]):
    by_day: dict[str, list[dict]] = {}
    for r in rows:
        by_day.setdefault(r["o_orderdate"].isoformat(), []).append(r)
    return lake.upsert_many("orders", {d: pa.Table.from_pylist(rs) for d, rs in by_day.items()},
                            KEY, order_by=ORDER_BY,
                            metadata={"conflux.sources": [{"topic": "tpch.orders", "partition": 0,
                                                           "start": rows[0]["__offset"],
                                                           "end": rows[-1]["__offset"] + 1}]})


def make_lake(path: str) -> tuple[list[dict], list[dict]]:
    """An orders table in three versions: 0 — three orders on two days; 1 — order 2 updated by
    a newer event, and a late order on an older day; 2 — a replay of version 0's events (no
    commit: nothing changes) and the duplicate of the late one. Returns (rows of version 0,
    current rows)."""
    lake = LakeResource(path=path)
    first = [_order(1, "1995-01-01", 10.0, 0, 1000), _order(2, "1995-01-02", 20.0, 1, 1001),
             _order(3, "1995-01-02", 30.0, 2, 1002)]
    assert _upsert(lake, first).version == 0
    update, late = _order(2, "1995-01-02", 25.0, 3, 2000), _order(4, "1994-12-31", 40.0, 4, 2001)
    assert _upsert(lake, [update, late]).version == 1
    assert _upsert(lake, first + [late]).rows == 0 and lake.version("orders") == 1
    return first, [first[0], update, first[2], late]


def frame(value) -> pd.DataFrame:
    """What a reader returned (pandas, Polars, Arrow) as a pandas frame sorted by key."""
    if isinstance(value, pa.Table):
        value = value.to_pandas()
    elif not isinstance(value, pd.DataFrame):
        value = value.to_pandas()
    return value.sort_values(KEY).reset_index(drop=True)


def check_rows(got, expected: list[dict]) -> None:
    """``got`` holds exactly ``expected``: one row per key, every column equal, each in its day."""
    df = frame(got)
    assert df["o_orderkey"].is_unique
    assert len(df) == len(expected)
    want = pd.DataFrame(expected).sort_values(KEY).reset_index(drop=True)
    for column in want.columns:
        values = df[column].tolist()
        if column == "o_orderdate":
            values = [pd.Timestamp(v).date() for v in values]
        assert values == want[column].tolist(), column
    assert df["__day"].tolist() == [d.isoformat() for d in want["o_orderdate"]]


@pytest.fixture
def lake_env(tmp_path, monkeypatch):
    path = str(tmp_path / "lake")
    first, current = make_lake(path)
    monkeypatch.setenv("CONFLUX_LAKE_PATH", path)
    return first, current


def test_the_doc_marks_its_tested_snippets():
    assert len(snippets()) == 3 and len(snippets("s3")) == 2
    for info, body in BLOCK.findall(DOC.read_text()):  # the untested ones (Spark) at least parse
        compile(body, str(DOC), "exec")


def test_readme_links_the_page():
    assert "(docs/outside-readers.md)" in (DOC.parents[1] / "README.md").read_text()


def test_duckdb_snippet(lake_env):
    first, current = lake_env
    [snippet] = [s for s in snippets() if "duckdb" in s]
    got = run(snippet)
    check_rows(got["orders"], current)
    check_rows(got["first_version"], first)
    day = {r["o_orderkey"]: r for r in current if r["o_orderdate"].isoformat() == "1995-01-02"}
    assert sorted(got["one_day"]) == [(k, r["o_totalprice"], r["o_orderdate"])
                                      for k, r in sorted(day.items())]
    # loaded from the wheel, nothing installed by DuckDB itself
    con = got["con"]
    assert con.sql("SELECT install_mode FROM duckdb_extensions() WHERE extension_name = 'delta'"
                   ).fetchone() == ("NOT_INSTALLED",)


def test_polars_snippet(lake_env):
    first, current = lake_env
    [snippet] = [s for s in snippets() if "polars" in s]
    got = run(snippet)
    check_rows(got["orders"], current)
    check_rows(got["first_version"], first)
    check_rows(got["one_day"], [r for r in current if r["o_orderdate"].isoformat() == "1995-01-02"])


def test_deltalake_snippet(lake_env):
    first, current = lake_env
    [snippet] = [s for s in snippets() if "from deltalake import" in s]
    got = run(snippet)
    assert got["version"] == 1
    check_rows(got["orders"], current)
    check_rows(got["first_version"], first)
    check_rows(got["one_day"], [r for r in current if r["o_orderdate"].isoformat() == "1995-01-02"])
    assert got["as_of"].version() == 0
    check_rows(got["as_of"].to_pyarrow_table(), first)
    assert got["applied"] == {0: [{"topic": "tpch.orders", "partition": 0, "start": 0, "end": 3}],
                              1: [{"topic": "tpch.orders", "partition": 0, "start": 3, "end": 5}]}
