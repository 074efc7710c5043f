"""The lake on Delta Lake (delta-rs): upserts by key are idempotent and respect record order,
partition writes replace exactly their partitions in one commit, every write is one Delta commit
that outside readers see whole, and writers in separate processes lose nothing (real Delta
tables, no services).

The behaviour tests take their lakes from ``new_lake``: local folders here;
``tests/integration/test_lake_s3.py`` runs the same tests against an S3 lake (a moto server on
loopback, commits by conditional PUT).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import queue
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.delta import read_delta
from conflux.core.errors import LakeError
from conflux.io.lake import Commit, LakeResource, LakeScan, is_object_store

ORDER = ["__ts", "__offset"]


@pytest.fixture
def new_lake(tmp_path):
    """A fresh, empty lake per name."""
    return lambda name: LakeResource(path=str(tmp_path / name))


@pytest.fixture
def lake(new_lake):
    return new_lake("lake")


def rows(*items):
    return pd.DataFrame([{"k": k, "v": v, "__ts": ts, "__offset": off} for k, v, ts, off in items])


def outside(lake: LakeResource, dataset: str) -> pa.Table:
    """The dataset as any Delta reader sees it: delta-rs opened on the table's URI, nothing of
    Conflux in between (``__day`` included)."""
    return read_delta(lake.uri(dataset), storage_options=lake.options())


def kv(table) -> dict:
    """{k: v} of a table or frame, failing on a key stored twice."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    keys = table["k"].to_pylist()
    assert len(keys) == len(set(keys)), f"a key is stored twice: {sorted(keys)}"
    return dict(zip(keys, table["v"].to_pylist()))


def pause(lake: LakeResource) -> None:
    """Let the clock move between two commits: S3 (moto) stamps objects in whole seconds,
    and delta-rs times a commit by its log object."""
    time.sleep(1.1 if is_object_store(lake.path) else 0.05)


def test_newest_record_wins_and_replaying_an_old_range_changes_nothing(lake):
    first = lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p", order_by=ORDER)
    assert isinstance(first, Commit) and (first.version, first.rows) == (0, 2)
    newer = lake.upsert("d", rows((1, "a2", 20, 5)), ["k"], "p", order_by=ORDER)
    assert (newer.version, newer.rows) == (1, 1)
    commits = len(lake.history("d"))
    # replay of the first range: older than what is stored, so nothing changes and nothing
    # is committed
    replay = lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p", order_by=ORDER)
    assert (replay.version, replay.rows) == (1, 0)
    # a tie on (__ts, __offset): the stored row wins
    tie = lake.upsert("d", rows((1, "tie", 20, 5)), ["k"], "p", order_by=ORDER)
    assert (tie.version, tie.rows) == (1, 0)
    assert lake.version("d") == 1 and len(lake.history("d")) == commits
    assert kv(lake.read("d", "p")) == {1: "a2", 2: "b"}
    # what any Delta reader sees: the current rows only, once each, partitioned by __day
    stored = outside(lake, "d")
    assert kv(stored) == {1: "a2", 2: "b"} and set(stored["__day"].to_pylist()) == {"p"}
    assert DeltaTable(lake.uri("d"), storage_options=lake.options()
                      ).metadata().partition_columns == ["__day"]


def test_the_same_event_twice_in_one_batch_is_stored_once(lake):
    commit = lake.upsert("d", rows((1, "a", 10, 0), (1, "a", 10, 0)), ["k"], "p", order_by=ORDER)
    assert commit.rows == 1 and len(lake.read("d", "p")) == 1
    commit = lake.upsert("d", rows((2, "b", 10, 1), (2, "b", 10, 1), (3, "c", 10, 2)), ["k"], "p",
                         order_by=ORDER)
    assert commit.rows == 2 and outside(lake, "d").num_rows == 3


def test_append_only_keeps_the_first_event_of_a_key(lake):
    lake.upsert("l", rows((1, "first", 10, 0)), ["k"], keep_existing=True, order_by=ORDER)
    commit = lake.upsert("l", rows((1, "again", 20, 9), (2, "new", 20, 10), (2, "later", 30, 11)),
                         ["k"], keep_existing=True, order_by=ORDER)
    assert commit.rows == 1
    assert kv(lake.read("l")) == {1: "first", 2: "new"}
    assert kv(outside(lake, "l")) == {1: "first", 2: "new"}
    assert "__day" not in outside(lake, "l").schema.names and lake.partitions("l") == ["_all"]


def test_without_order_the_incoming_row_replaces_and_equal_data_is_not_rewritten(lake):
    df = pd.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    assert lake.upsert("s", df, ["k"]).rows == 2
    version = lake.version("s")
    again = lake.upsert("s", df, ["k"])
    assert (again.rows, again.version, lake.version("s")) == (0, version, version)
    assert lake.upsert("s", pd.DataFrame({"k": [2], "v": ["B"]}), ["k"]).rows == 1
    assert kv(lake.read("s")) == {1: "a", 2: "B"} == kv(outside(lake, "s"))


def test_without_order_a_row_of_several_columns_replaces_when_any_of_them_differs(lake):
    """Bug: with two or more non-key columns the MERGE's update condition
    ``s.a IS DISTINCT FROM t.a OR s.b IS DISTINCT FROM t.b`` is parsed as
    ``s.a IS DISTINCT FROM (t.a OR s.b) ...`` (type_coercion error): every such upsert of a
    stored table fails (``conflux/batch/ops_load.py`` upserts without order)."""
    df = pd.DataFrame({"k": [1, 2], "v": ["a", "b"], "n": [1, 2]})
    assert lake.upsert("s", df, ["k"], "p").rows == 2
    assert lake.upsert("s", df, ["k"], "p").rows == 0
    assert lake.upsert("s", pd.DataFrame({"k": [2, 3], "v": ["b", "c"], "n": [20, 3]}),
                       ["k"], "p").rows == 2
    stored = outside(lake, "s")
    assert sorted(zip(*(stored[c].to_pylist() for c in ("k", "v", "n")))) == [
        (1, "a", 1), (2, "b", 20), (3, "c", 3)]


def _model_upsert(model: dict, parts: dict, *, ordered: bool, keep_existing: bool) -> int:
    """What an upsert of ``parts`` ({day: items}) must do to ``model`` ({k: row}), written out
    plainly — a key is unique in the dataset, and a replacing row moves it to its own day;
    returns the rows inserted or updated."""
    incoming: dict = {}
    for day, items in parts.items():  # reduce the call per key first, in the order passed
        for k, v, ts, off in items:
            row = {"k": k, "v": v, "__ts": ts, "__offset": off, "__day": day}
            have = incoming.get(k)
            if have is None:
                incoming[k] = row
            elif keep_existing:  # the oldest event of the call
                if (ts, off) < (have["__ts"], have["__offset"]):
                    incoming[k] = row
            elif not ordered or (ts, off) >= (have["__ts"], have["__offset"]):
                incoming[k] = row  # the newest (the last one, without order)
    changed = 0
    for k, row in incoming.items():
        stored = model.get(k)
        if stored is None:
            replace = True
        elif keep_existing:
            replace = False
        elif ordered:  # strictly newer: the stored row wins a tie
            replace = (row["__ts"], row["__offset"]) > (stored["__ts"], stored["__offset"])
        else:
            replace = row != stored
        if replace:
            model[k] = row
            changed += 1
    return changed


@pytest.mark.parametrize("ordered, keep_existing", [(True, False), (True, True), (False, False)],
                         ids=["newest-wins", "append-only", "without-order"])
def test_random_batches_with_replays_and_late_events_match_an_in_memory_model(
        new_lake, ordered, keep_existing):
    """Random micro-batches over three days (late and repeated keys, replayed ranges, the same
    key twice in a batch), each one ``upsert_many``: the lake equals a plain model row for row,
    and each commit counts the rows the model changed."""
    rng = np.random.default_rng(7)
    batches, offset = [], 0
    for _ in range(25):
        n = int(rng.integers(1, 8))
        batch = [(int(rng.integers(0, 12)), f"v{offset + i}", int(rng.integers(0, 50)), offset + i)
                 for i in range(n)]
        days = [f"1996-01-0{1 + int(rng.integers(0, 3))}" for _ in range(n)]
        offset += n
        batches.append((batch, days))
        if rng.random() < 0.3:  # a replayed range
            batches.append(batches[int(rng.integers(0, len(batches)))])
    lake = new_lake(f"m{ordered}{keep_existing}")
    model: dict = {}
    for batch, days in batches:
        parts: dict[str, list] = {}
        for item, day in zip(batch, days):
            parts.setdefault(day, []).append(item)
        commit = lake.upsert_many("d", {d: rows(*items) for d, items in parts.items()}, ["k"],
                                  order_by=ORDER if ordered else None,
                                  keep_existing=keep_existing)
        expected_changes = _model_upsert(model, parts, ordered=ordered,
                                         keep_existing=keep_existing)
        assert commit.rows == expected_changes, (ordered, keep_existing, batch)
    got = outside(lake, "d").to_pandas()
    got = got.sort_values(["__day", "k"]).reset_index(drop=True)
    expected = pd.DataFrame(list(model.values()))
    expected = expected.sort_values(["__day", "k"]).reset_index(drop=True)[got.columns]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    for day in sorted({row["__day"] for row in model.values()}):  # and the lake's own reads
        mine = {k: row["v"] for k, row in model.items() if row["__day"] == day}
        assert kv(lake.read("d", day)) == mine


def test_write_replaces_one_partition_only(lake):
    lake.write("d", rows((1, "a", 1, 0), (2, "b", 1, 1)), "1996-01-01")
    lake.write("d", rows((3, "c", 1, 2)), "1996-01-02")
    untouched = files_of(lake, "d", "1996-01-02")
    commit = lake.write("d", rows((5, "z", 1, 3)), "1996-01-01")
    assert isinstance(commit, Commit) and commit.rows == 1 and commit.version == 2
    assert kv(lake.read("d", "1996-01-01")) == {5: "z"}
    assert kv(lake.read("d", "1996-01-02")) == {3: "c"}
    assert files_of(lake, "d", "1996-01-02") == untouched  # not even rewritten
    stored = outside(lake, "d")
    assert sorted(zip(stored["__day"].to_pylist(), stored["k"].to_pylist())) == [
        ("1996-01-01", 5), ("1996-01-02", 3)]


def files_of(lake: LakeResource, dataset: str, day: str) -> list[str]:
    table = DeltaTable(lake.uri(dataset), storage_options=lake.options())
    return sorted(f for f in table.to_pyarrow_dataset().files if f"__day={day}/" in f)


def test_write_many_replaces_exactly_the_named_partitions_in_one_commit(lake):
    lake.write_many("w", {"a": rows((1, "a", 1, 1)), "b": rows((2, "b", 1, 2)),
                          "c": rows((3, "c", 1, 3))})
    assert lake.version("w") == 0 and lake.partitions("w") == ["a", "b", "c"]
    untouched = files_of(lake, "w", "c")
    commit = lake.write_many("w", {"a": rows((10, "A", 1, 1), (11, "A2", 1, 4)),
                                   "b": rows((2, "b", 1, 2)).iloc[0:0],  # empties b
                                   "d": rows((4, "d", 1, 5))})
    assert (commit.version, commit.rows) == (1, 3) and lake.version("w") == 1
    assert len(lake.history("w")) == 2 and lake.history("w")[0]["operation"] == "WRITE"
    assert lake.partitions("w") == ["a", "c", "d"]
    assert files_of(lake, "w", "c") == untouched
    stored = outside(lake, "w")
    assert sorted(zip(stored["__day"].to_pylist(), stored["k"].to_pylist())) == [
        ("a", 10), ("a", 11), ("c", 3), ("d", 4)]
    # the version before is still there, whole
    before = lake.read_partitions("w", version=0)
    assert sorted(before["k"].to_pylist()) == [1, 2, 3]


def test_partitions_reads_scans_and_rewrites(lake):
    for day, k in (("1996-01-03", 3), ("1996-01-01", 1), ("1996-01-02", 2)):
        lake.upsert("d", rows((k, f"v{k}", 10, k)), ["k"], day, order_by=ORDER)
    lake.upsert("d", rows((4, "v4", 10, 4), (1, "late", 20, 5)), ["k"], "1996-01-01",
                order_by=ORDER)
    assert lake.partitions("d") == ["1996-01-01", "1996-01-02", "1996-01-03"]
    assert lake.exists("d") and lake.exists("d", "1996-01-02") and not lake.exists("d", "1999-01-01")
    assert lake.partitions("nothing") == [] and lake.read_partitions("nothing") is None
    assert not lake.exists("nothing") and lake.read("d", "1999-01-01") is None
    if not is_object_store(lake.path):
        assert lake.datasets() == ["d"]
    # scans stream what reads return
    scan = lake.scan("d", None, ["k", "v"])
    assert isinstance(scan, LakeScan) and len(scan) == 4 and scan.columns == ("k", "v")
    assert len(scan.files) >= 3 and all(f.endswith(".parquet") for f in scan.files)
    streamed = pa.Table.from_batches(list(scan.to_batches()))
    assert streamed.schema.names == ["k", "v"]
    assert kv(streamed) == kv(scan.to_table()) == kv(lake.read_partitions("d"))
    assert kv(streamed) == {1: "late", 2: "v2", 3: "v3", 4: "v4"}
    some = lake.scan("d", ["1996-01-01", "1996-01-03"], ["k"])
    assert len(some) == 3 and sorted(some.to_table()["k"].to_pylist()) == [1, 3, 4]
    assert len(lake.scan("d", [], ["k"])) == 0 and lake.scan("nothing", None, ["k"]) is None
    assert lake.read_partitions("d", ["1996-01-02"], columns=["k"]).column_names == ["k"]
    # row counts per partition, from the log
    assert lake.row_count("d", "1996-01-01") == 2 and lake.row_count("d", "1996-01-02") == 1
    assert lake.row_count("d", "1999-01-01") == 0 and lake.row_count("d") == 4
    assert lake.row_count("nothing") == 0
    # rewrite: the partition from its current content; None empties it (no longer listed)
    commit = lake.rewrite("d", "1996-01-01", lambda cur: cur.filter(pc.not_equal(cur["k"], 4)))
    assert isinstance(commit, Commit) and commit.rows == 1
    assert kv(lake.read("d", "1996-01-01")) == {1: "late"}
    lake.rewrite("d", "1996-01-03", lambda cur: None)
    assert lake.partitions("d") == ["1996-01-01", "1996-01-02"]
    assert lake.read("d", "1996-01-03") is None and lake.row_count("d", "1996-01-03") == 0
    assert kv(outside(lake, "d")) == {1: "late", 2: "v2"}
    assert lake.rewrite("nothing", "1996-01-01", lambda cur: None) is None
    seen = []
    lake.rewrite("fresh", "1996-01-01", lambda cur: seen.append(cur) or pa.table({"k": [7]}))
    assert seen == [None] and lake.read("fresh", "1996-01-01").k.tolist() == [7]


def test_find_locates_rows_in_every_partition(lake):
    df = lambda *items: pd.DataFrame([{"k": k, "cid": c, "__ts": 1, "__offset": o}
                                      for k, c, o in items])
    lake.upsert("d", df((1, "x", 0), (2, "y", 1)), ["k"], "1996-01-01", order_by=ORDER)
    lake.upsert("d", df((3, "x", 2)), ["k"], "1996-01-02", order_by=ORDER)
    hits = lake.find("d", "cid", "x")
    assert [(p, row["k"]) for p, row in hits] == [("1996-01-01", 1), ("1996-01-02", 3)]
    assert "__day" not in hits[0][1]
    assert lake.find("d", "cid", "nope") == [] and lake.find("absent", "cid", "x") == []
    lake.upsert("u", df((9, "x", 0)), ["k"])
    assert [(p, row["k"]) for p, row in lake.find("u", "cid", "x")] == [("_all", 9)]


@pytest.mark.parametrize("partition", [None, "1996-01-01"])
def test_checkpointed_rewrites_commit_content_and_checkpoint_as_a_pair(lake, partition):
    gen = lake.rewrite_checkpointed("p", lambda cur, ck: (pa.table({"k": [1]}),
                                                         {"state": pa.table({"x": [1]})}),
                                    partition)
    content, got, tables = lake.read_checkpointed("p", partition)
    assert got == gen and content["k"].to_pylist() == [1] and tables["state"]["x"].to_pylist() == [1]
    assert lake.rewrite_checkpointed("p", lambda cur, ck: None, partition) is None
    version = lake.version("p")

    def boom(cur, ck):
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        lake.rewrite_checkpointed("p", boom, partition)
    assert lake.version("p") == version
    assert lake.read_checkpointed("p", partition)[1:] == (gen, tables)  # the old pair
    # an orphan checkpoint version (a crash after writing it, before the commit naming it)
    # is not what readers see
    orphan = f"{lake.uri('p')}/_conflux_checkpoint/{partition or '_all'}/state"
    write_deltalake(orphan, pa.table({"x": [99]}), mode="overwrite", storage_options=lake.options())
    assert lake.read_checkpointed("p", partition)[2]["state"]["x"].to_pylist() == [1]
    gen2 = lake.rewrite_checkpointed(
        "p", lambda cur, ck: (pa.table({"k": cur["k"].to_pylist() + [2]}),
                              {"state": pa.table({"x": [ck["state"]["x"][0].as_py() + 1]})}),
        partition)
    content, got, tables = lake.read_checkpointed("p", partition)
    assert gen2 != gen
    assert (got, content["k"].to_pylist(), tables["state"]["x"].to_pylist()) == (gen2, [1, 2], [2])
    # the checkpoint tables are not part of what Delta readers see
    assert sorted(outside(lake, "p")["k"].to_pylist()) == [1, 2]
    # and the previous version still holds the previous pair's content
    assert lake.read_table("p", partition, version=lake.version("p") - 1)["k"].to_pylist() == [1]
    if partition:  # a write of another partition leaves this pair alone
        lake.write("p", pa.table({"k": [7]}), "1996-01-02")
        assert lake.read_checkpointed("p", partition)[1] == gen2
    # a plain write of the partition drops its checkpoint
    lake.write("p", pa.table({"k": [5]}), partition)
    content, got, tables = lake.read_checkpointed("p", partition)
    assert content["k"].to_pylist() == [5] and (got, tables) == (None, {})
    assert lake.read_checkpointed("nothing", partition) == (None, None, {})


def test_a_checkpointed_read_overtaken_by_a_rewrite_still_sees_one_pair(lake, monkeypatch):
    """Bug: ``read_checkpointed`` reads the content at the table's version, then finds the
    checkpoint through ``DeltaTable.history()`` — which in delta-rs 1.6 lists the commits made
    after that version too (numbered as if they were older). A rewrite committing in between
    makes the reader pair the old content with the new checkpoint. Simulated
    deterministically: another writer (a thread: a table handle of its own) commits right
    after the reader read the content."""
    import threading

    def step(cur, ck):  # the checkpoint counts the content's rows
        n = 0 if cur is None else len(cur)
        return pa.table({"k": list(range(n + 1))}), {"state": pa.table({"n": [n + 1]})}

    lake.rewrite_checkpointed("c", step, "1996-01-01")
    real = LakeResource._read_at
    overtaken = []

    def read_then_another_writer_commits(self, table, partition):
        content = real(self, table, partition)
        if not overtaken:
            overtaken.append(True)
            other = threading.Thread(target=lambda: LakeResource(path=lake.path).rewrite_checkpointed(
                "c", step, "1996-01-01"))
            other.start()
            other.join()
        return content

    monkeypatch.setattr(LakeResource, "_read_at", read_then_another_writer_commits)
    content, _, tables = lake.read_checkpointed("c", "1996-01-01")
    monkeypatch.undo()
    assert overtaken and lake.version("c") == 1
    assert tables["state"]["n"].to_pylist() == [len(content)], "content and checkpoint of two pairs"


def test_history_versions_and_time_travel(lake):
    first = lake.write("t", rows((1, "a", 1, 0)), "p")
    pause(lake)
    between = dt.datetime.now(dt.timezone.utc)
    pause(lake)
    second = lake.upsert("t", rows((1, "b", 2, 1), (2, "c", 2, 2)), ["k"], "p", order_by=ORDER)
    pause(lake)
    later = dt.datetime.now(dt.timezone.utc)
    pause(lake)
    third = lake.write("t", rows((3, "d", 3, 3)), "p")
    assert [first.version, second.version, third.version] == [0, 1, 2]
    assert first.timestamp_ms < second.timestamp_ms < third.timestamp_ms
    history = lake.history("t")
    assert [h["version"] for h in history] == [2, 1, 0]  # newest first
    assert [h["operation"] for h in history] == ["WRITE", "MERGE", "WRITE"]
    assert [h["timestamp"] for h in history] == [c.timestamp_ms for c in (third, second, first)]
    assert len(lake.history("t", 1)) == 1 and lake.history("nothing") == []
    # materialization metadata naming the commit (``delta_version``, ``delta_commit_timestamp``,
    # possibly under a namespace prefix)
    meta = {key.rsplit("/", 1)[-1]: value for key, value in second.metadata().items()}
    assert meta["delta_version"] == 1
    assert dt.datetime.fromisoformat(meta["delta_commit_timestamp"]) == dt.datetime.fromtimestamp(
        second.timestamp_ms / 1000, dt.timezone.utc)
    assert Commit(None).metadata() == {}
    # by version
    assert kv(lake.read_table("t", "p", version=0)) == {1: "a"}
    assert kv(lake.read_table("t", "p", version=1)) == {1: "b", 2: "c"}
    assert kv(lake.read_table("t", "p")) == {3: "d"}
    # by time: a moment between two commits reads the older one (aware, naive UTC or text)
    assert kv(lake.read_table("t", "p", as_of=between)) == {1: "a"}
    assert kv(lake.read_table("t", "p", as_of=later)) == {1: "b", 2: "c"}
    assert kv(lake.read("t", "p", as_of=later.replace(tzinfo=None))) == {1: "b", 2: "c"}
    assert kv(lake.read_partitions("t", as_of=later.isoformat())) == {1: "b", 2: "c"}
    # the latest version is unchanged by reading old ones
    assert lake.version("t") == 2 and kv(lake.read("t", "p")) == {3: "d"}


def test_reading_a_version_the_table_never_had_is_a_clear_error(lake):
    lake.write("t", rows((1, "a", 1, 0)), "p")
    with pytest.raises(LakeError, match="no version 99") as exc:
        lake.read_table("t", "p", version=99)
    assert lake.uri("t") in str(exc.value)


def test_time_travel_to_before_the_table_existed_returns_none_of_its_later_rows(lake):
    """As of a time before the first commit the dataset held nothing: that read must not
    return the rows committed later (an error, or nothing)."""
    lake.write("t", rows((1, "a", 1, 0)), "p")
    try:
        got = lake.read_table("t", "p", as_of="2000-01-01T00:00:00Z")
    except LakeError as exc:
        assert "t" in str(exc)
    else:
        assert got is None, f"as of 2000 the lake read rows committed now: {got.to_pylist()}"


def test_first_version_holding_finds_the_commit_that_applied_an_offset(lake):
    def sources(*ranges):
        return {"conflux.sources": [{"topic": t, "partition": p, "start": s, "end": e}
                                    for t, p, s, e in ranges]}

    lake.upsert("e", rows((1, "a", 1, 0)), ["k"], "p", order_by=ORDER,
                metadata=sources(("t", 0, 0, 10)))
    lake.upsert("e", rows((2, "b", 1, 10)), ["k"], "p", order_by=ORDER,
                metadata={**sources(("t", 0, 10, 20), ("t", 1, 0, 5)), "conflux.origin": "run-1"})
    lake.write("e", rows((3, "c", 1, 20)), "q", metadata=sources(("u", 0, 0, 3)))
    # a replay of [0, 10) commits nothing: the offset stays with the first commit
    assert lake.upsert("e", rows((1, "a", 1, 0)), ["k"], "p", order_by=ORDER,
                       metadata=sources(("t", 0, 0, 10))).rows == 0
    found = lake.first_version_holding("e", "t", 0, 5)
    assert found["version"] == 0 and found["operation"] == "WRITE"
    assert lake.first_version_holding("e", "t", 0, 10)["version"] == 1  # ranges are [start, end)
    assert lake.first_version_holding("e", "t", 0, 19)["version"] == 1
    assert lake.first_version_holding("e", "t", 1, 4)["version"] == 1
    assert lake.first_version_holding("e", "u", 0, 2)["version"] == 2
    assert lake.first_version_holding("e", "t", 0, 20) is None
    assert lake.first_version_holding("e", "t", 2, 0) is None
    assert lake.first_version_holding("nothing", "t", 0, 0) is None
    assert lake.history("e")[1]["conflux.origin"] == "run-1"


def test_a_new_nullable_column_evolves_the_table_schema(lake):
    lake.upsert("s", rows((1, "a", 1, 0)), ["k"], "p", order_by=ORDER)
    commit = lake.upsert("s", rows((2, "b", 1, 1)).assign(extra=[1.5]), ["k"], "p", order_by=ORDER)
    assert commit.rows == 1
    got = lake.read("s", "p").set_index("k")
    assert got.loc[2, "extra"] == 1.5 and pd.isna(got.loc[1, "extra"])
    # append-only and partition writes evolve it too
    lake.upsert("s", rows((3, "c", 1, 2)).assign(tag=["x"]), ["k"], "p", keep_existing=True,
                order_by=ORDER)
    lake.write("s", rows((4, "d", 1, 3)).assign(flag=[True]), "q")
    schema = DeltaTable(lake.uri("s"), storage_options=lake.options()).schema().to_arrow()
    assert {"extra", "tag", "flag"} <= set(schema.names)
    stored = outside(lake, "s").to_pandas().set_index("k")
    assert stored.loc[3, "tag"] == "x" and stored.loc[1, ["tag", "flag"]].isna().all()
    assert bool(stored.loc[4, "flag"]) and pd.isna(stored.loc[4, "extra"])


def test_an_upsert_without_order_by_can_add_a_column(lake):
    """Bug: the MERGE's update condition compares every source column with the target
    (``t."extra"``), which does not exist before the schema is evolved."""
    lake.upsert("s", pd.DataFrame({"k": [1, 2], "v": ["a", "b"]}), ["k"], "p")
    commit = lake.upsert("s", pd.DataFrame({"k": [2, 3], "v": ["b", "c"], "extra": ["x", "y"]}),
                         ["k"], "p")
    assert commit.rows == 2  # key 2 gains a value for the new column, key 3 is new
    got = lake.read("s", "p").set_index("k")
    assert got.loc[2, "extra"] == "x" and got.loc[3, "extra"] == "y" and pd.isna(got.loc[1, "extra"])


def test_an_int_column_receiving_doubles_is_cast(lake):
    """pandas turns an int column with a missing value into float64: such rows are stored in
    the int column (whole numbers, nulls), not refused and not changing its type."""
    lake.upsert("n", pd.DataFrame({"k": [1, 2], "n": [1, 2]}), ["k"], "p")
    lake.upsert("n", pd.DataFrame({"k": [3, 4], "n": [3.0, np.nan]}), ["k"], "p")
    lake.write("n", pd.DataFrame({"k": [5], "n": [5.0]}), "q")
    stored = outside(lake, "n")
    assert stored.schema.field("n").type == pa.int64()
    assert dict(zip(stored["k"].to_pylist(), stored["n"].to_pylist())) == {
        1: 1, 2: 2, 3: 3, 4: None, 5: 5}


@pytest.mark.parametrize("how", ["upsert", "write"])
def test_a_fraction_is_never_silently_truncated_into_an_int_column(lake, how):
    """Bug: 5.5 arriving for an int column is stored as 5 (delta-rs casts unsafely after
    ``_cast_like`` gives up). The value must be kept or the write refused."""
    lake.upsert("n", pd.DataFrame({"k": [1], "n": [1]}), ["k"], "p")
    incoming = pd.DataFrame({"k": [2], "n": [5.5]})
    try:
        if how == "upsert":
            lake.upsert("n", incoming, ["k"], "p")
        else:
            lake.write("n", incoming, "q")
    except LakeError:
        return  # refused: fine
    stored = dict(zip(outside(lake, "n")["k"].to_pylist(), outside(lake, "n")["n"].to_pylist()))
    assert stored[2] == 5.5, f"5.5 was stored as {stored[2]!r}"


def test_a_commit_names_its_own_version_when_another_writer_commits_right_after(
        lake, monkeypatch):
    """Bug: ``Commit.version`` is read from the log after the commit, so a writer that commits
    in between (another process) lends its version to this Commit (and to the materialization
    metadata). Simulated deterministically: another writer appends right after our commit."""
    import conflux.io.lake as lake_module

    lake.write("d", rows((1, "a", 1, 0)), "p")
    real = lake_module.write_deltalake

    def then_another_writer(*args, **kwargs):
        real(*args, **kwargs)
        real(lake.uri("d"), pa.table({"k": [9], "v": ["other"], "__ts": [1], "__offset": [9],
                                      "__day": ["other"]}),
             mode="append", storage_options=lake.options())

    monkeypatch.setattr(lake_module, "write_deltalake", then_another_writer)
    commit = lake.write("d", rows((2, "b", 1, 1)), "p")
    monkeypatch.undo()
    assert lake.version("d") == 2
    mine = next(h for h in lake.history("d") if h["version"] == commit.version)
    assert mine["operationParameters"]["mode"] == "Overwrite", mine
    assert commit.version == 1 and commit.timestamp_ms == mine["timestamp"]


# -- writers in separate processes ---------------------------------------------------------
WRITERS, WRITES = 4, 15
COUNTER = -1  # the key of the row the rewrites increment


def _increment(current: pa.Table) -> pa.Table:
    keys = current["k"].to_pylist()
    counts = current["n"].to_pylist()
    counts[keys.index(COUNTER)] += 1
    return current.set_column(current.schema.get_field_index("n"), "n", pa.array(counts, pa.int64()))


def _writer(path: str, writer: int, results) -> None:
    """One writer process: every third write an upsert of a key of its own, of a key all the
    writers share (a newer event each time), or a read-modify-write ``rewrite`` incrementing
    the counter row — all into one partition of one table."""
    try:
        lake = LakeResource(path=path)
        done = []
        for i in range(WRITES):
            if i % 3 == 0:
                k = 1000 * (writer + 1) + i
                commit = lake.upsert("d", pd.DataFrame([{"k": k, "v": f"own{writer}", "n": 0,
                                                         "__ts": 1, "__offset": k}]),
                                     ["k"], "p", order_by=ORDER)
            elif i % 3 == 1:
                commit = lake.upsert("d", pd.DataFrame([{"k": i % 5, "v": f"w{writer}i{i}", "n": 0,
                                                         "__ts": i, "__offset": writer}]),
                                     ["k"], "p", order_by=ORDER)
            else:
                commit = lake.rewrite("d", "p", _increment)
            done.append((i % 3, commit.version, commit.rows))
        results.put((writer, "ok", done))
    except BaseException as exc:  # noqa: BLE001 — reported to the test
        import traceback

        results.put((writer, "failed", "".join(traceback.format_exception(exc))))


def test_writers_in_separate_processes_lose_nothing(lake):
    """Four processes (as on four machines: nothing shared but the storage) write one
    partition at once — upserts of their own keys and of shared keys, and read-modify-write
    rewrites of a counter — with Delta's optimistic commits as the only coordination: every
    key is stored once, the shared keys hold their newest event, the counter counts every
    increment, and every commit that changed rows has a version of its own."""
    lake.upsert("d", pd.DataFrame([{"k": COUNTER, "v": "counter", "n": 0, "__ts": 0,
                                    "__offset": 0}]), ["k"], "p", order_by=ORDER)
    spawn = multiprocessing.get_context("spawn")  # delta-rs panics in forked children
    results = spawn.Queue()
    procs = [spawn.Process(target=_writer, args=(lake.path, w, results)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=240) for _ in procs]
    except queue.Empty:
        pytest.fail("a writer process did not finish within 240 s")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    failed = [r[2] for r in reports if r[1] != "ok"]
    assert not failed, "\n".join(failed)
    stored = outside(lake, "d")
    keys = stored["k"].to_pylist()
    assert len(keys) == len(set(keys)), "a key is stored twice"
    own = {1000 * (w + 1) + i for w in range(WRITERS) for i in range(0, WRITES, 3)}
    assert set(keys) == {COUNTER} | set(range(5)) | own
    by_key = {row["k"]: row for row in stored.to_pylist()}
    increments = WRITERS * len(range(2, WRITES, 3))
    assert by_key[COUNTER]["n"] == increments
    for k in range(5):  # the newest event of a shared key: highest i, then highest writer
        i = max(i for i in range(1, WRITES, 3) if i % 5 == k)
        assert by_key[k]["v"] == f"w{WRITERS - 1}i{i}"
    versions = [v for _, _, done in reports for _, v, n in done if n]
    assert len(versions) == len(set(versions)), "two writes report the same commit"
    assert len(lake.history("d")) == lake.version("d") + 1 >= len(versions) + 1
