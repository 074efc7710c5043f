"""A BACKWARD-compatible contract change (a new optional field) evolves the dataset's Delta
table through the real ingest code (``apply_records``; Kafka and the registry are fakes, the
lake a real Delta table): old rows read the field's default (null), new rows their value, and
an outside Delta reader sees the evolved schema. Plus ``conflux lake history|show``."""

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time

import deltalake
import pandas as pd
import pytest

from pipelines.catalog import ORDERS
from pipelines.contracts import Order
from tests.delta import read_delta
from conflux.event.decode import ContractResolver
from conflux.event.ingest import apply_records
from conflux.io.kafka import Record
from conflux.io.lake import LakeResource

TOPIC = "evo.orders"


class OrderV2(Order):
    """Order plus an optional channel: BACKWARD-compatible (old producers still valid)."""

    o_channel: str | None = None


def record(offset: int, key: int, channel: str | None = None) -> Record:
    body = {"o_orderkey": key, "o_custkey": 1, "o_orderstatus": "O", "o_totalprice": 1.0,
            "o_orderdate": "1995-01-0%d" % (1 + key % 3), "o_orderpriority": "1-URGENT",
            "o_clerk": "c", "o_shippriority": 0}
    if channel:
        body["o_channel"] = channel
    return Record(TOPIC, 0, offset, 1_000 + offset, str(key).encode(), json.dumps(body).encode(),
                  ())


class NoKafka:
    def publisher(self, topic):  # nothing may be dead-lettered here
        raise AssertionError(f"unexpected dead letter to {topic}")


def apply(ds, lake, records):
    return apply_records(ds, records, kafka=NoKafka(), lake=lake, origin="test",
                         resolver=ContractResolver(ds.subject, None, []),
                         sources=[{"topic": TOPIC, "partition": 0, "start": records[0].offset,
                                   "end": records[-1].offset + 1}])


def test_a_new_optional_field_evolves_the_table_and_old_rows_read_its_default(tmp_path):
    lake = LakeResource(path=str(tmp_path))
    v1 = dataclasses.replace(ORDERS, name="evo_orders", topics=(TOPIC,))
    apply(v1, lake, [record(i, i + 1) for i in range(6)])
    assert "o_channel" not in deltalake.DeltaTable(lake.uri("evo_orders")).schema().to_arrow().names
    v2 = dataclasses.replace(v1, contract=OrderV2)
    apply(v2, lake, [record(6 + i, 100 + i, "web") for i in range(3)] + [record(9, 1, "app")])
    outside = read_delta(lake.uri("evo_orders")).to_pylist()
    channels = {r["o_orderkey"]: r["o_channel"] for r in outside}
    assert channels == {1: "app", 2: None, 3: None, 4: None, 5: None, 6: None,
                        100: "web", 101: "web", 102: "web"}
    stored = lake.read_partitions("evo_orders").to_pylist()
    assert {r["o_orderkey"]: r["o_channel"] for r in stored} == channels
    # the older version still reads with the old schema (time travel across the change)
    assert "o_channel" not in lake.read_table("evo_orders", version=0).schema.names


def conflux(*args, lake):
    env = {**os.environ, "CONFLUX_LAKE_PATH": lake}
    return subprocess.run([sys.executable, "-c", "import sys; from conflux.cli import main; sys.exit(main())", "lake", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def two_versions(tmp_path):
    lake = LakeResource(path=str(tmp_path / "lake"))
    first = lake.upsert("orders", pd.DataFrame([{"o_orderkey": 1, "v": "a"}]), ["o_orderkey"], "1995-01-01",
                        metadata={"conflux.sources": [{"topic": "t", "partition": 0,
                                                       "start": 0, "end": 1}],
                                  "conflux.origin": "sensor:orders_sensor"})
    time.sleep(1.1)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.1)
    lake.upsert("orders", pd.DataFrame([{"o_orderkey": 1, "v": "b"}, {"o_orderkey": 2, "v": "c"}]),
                ["o_orderkey"], "1995-01-01")
    return lake, first, between


def test_lake_history_and_show_read_a_dataset_now_and_as_of_a_version_or_a_time(two_versions):
    lake, first, between = two_versions
    out = conflux("history", "orders", lake=lake.path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("v1 ") and "MERGE" in lines[0]
    assert lines[1].startswith(f"v{first.version} ") and "by sensor:orders_sensor" in lines[1]
    assert "t[0]@0..1" in lines[1]
    now = conflux("show", "orders", "--json", lake=lake.path)
    assert sorted(json.loads(l)["v"] for l in now.stdout.splitlines()) == ["b", "c"]
    old = conflux("show", "orders", "--version", "0", "--json", lake=lake.path)
    assert [json.loads(l)["v"] for l in old.stdout.splitlines()] == ["a"]
    at = conflux("show", "orders", "--as-of", between.isoformat(), "--json", lake=lake.path)
    assert [json.loads(l)["v"] for l in at.stdout.splitlines()] == ["a"]
    assert "1 row(s)" in at.stderr


@pytest.mark.parametrize("args,code,message", [
    (("show", "orders", "--version", "7"), 1, "no version 7 (versions 0..1"),
    (("show", "orders", "--as-of", "1999-01-01"), 1, "no version as of 1999-01-01"),
    (("show", "orders", "--as-of", "soon"), 2, "--as-of 'soon' is neither"),
    (("show", "orders", "--limit", "-1"), 2, "--limit must be 0 or more"),
    (("show", "nope"), 2, "unknown dataset 'nope'"),
    (("history", "revenue_by_nation"), 1, "no Delta table in the lake yet"),
])
def test_bad_lake_requests_exit_with_one_line_and_no_traceback(two_versions, args, code, message):
    lake, _, _ = two_versions
    out = conflux(*args, lake=lake.path)
    assert out.returncode == code and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_commit_is_synced_to_disk_before_the_write_returns(tmp_path, monkeypatch):
    """What the sensor relies on before moving its cursor: the files a commit added, its log
    entry and their folders are fsynced by the time ``upsert_many`` returns."""
    import conflux.io.lake as lake_module

    synced = []
    real = lake_module._fsync
    monkeypatch.setattr(lake_module, "_fsync", lambda path: (synced.append(path), real(path)))
    lake = LakeResource(path=str(tmp_path))
    rows = pd.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    commit = lake.upsert_many("d", {"1995-01-01": rows, "1995-01-02": rows.assign(k=[3, 4])},
                              ["k"])
    table = deltalake.DeltaTable(lake.uri("d"))
    added = [u.removeprefix("file://") for u in table.file_uris()]
    log = f"{lake.uri('d')}/_delta_log/{commit.version:020d}.json"
    assert added and set(added) <= set(synced) and log in synced
    assert {f"{lake.uri('d')}/__day=1995-01-01", f"{lake.uri('d')}/_delta_log"} <= set(synced)


def test_find_matches_rows_a_merge_wrote(tmp_path):
    """delta-rs's MERGE writes strings as string_view: ``find`` (conflux trace) must still match."""
    lake = LakeResource(path=str(tmp_path))
    lake.upsert("d", pd.DataFrame({"k": [1, 2], "cid": ["a", "b"]}), ["k"], "1995-01-01")
    for i in range(3):  # MERGEs inserting many distinct ids
        lake.upsert("d", pd.DataFrame({"k": range(10 + i * 100, 110 + i * 100),
                                       "cid": [f"id-{i}-{j}" for j in range(100)]}),
                    ["k"], "1995-01-02")
    assert [(p, row["k"]) for p, row in lake.find("d", "cid", "id-1-5")] == [("1995-01-02", 115)]
    assert [row["k"] for _, row in lake.find("d", "cid", "a")] == [1]
