"""Upserts by key are idempotent and respect record order (real Parquet files, no services).

The behaviour tests take their lakes from ``new_lake``: local folders here;
``tests/integration/test_lake_s3.py`` runs the same tests against an S3 lake (a moto server on
loopback, locked through the test stack's Postgres).
"""

import threading
import time

import pandas as pd
import pyarrow as pa
import pytest

from conflux.io.lake import LakeResource, LakeScan


@pytest.fixture
def new_lake(tmp_path):
    """A fresh, empty lake per name."""
    return lambda name: LakeResource(path=str(tmp_path / name))


@pytest.fixture
def lake(new_lake):
    return new_lake("lake")


def mtime(lake, dataset, partition):
    """The base file's modification time. S3 keeps whole seconds: a second passes first there,
    so a rewrite after this call would show."""
    if lake.store().remote:
        time.sleep(1.05)
    return lake.store().info(lake.file(dataset, partition)).mtime_ns


def rows(*items):
    return pd.DataFrame([{"k": k, "v": v, "__ts": ts, "__offset": off} for k, v, ts, off in items])


def test_newest_record_wins_and_replaying_an_old_range_changes_nothing(lake):
    assert lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p",
                       order_by=["__ts", "__offset"]) == 2
    assert lake.upsert("d", rows((1, "a2", 20, 5)), ["k"], "p", order_by=["__ts", "__offset"]) == 1
    before = mtime(lake, "d", "p")
    # replay of the first range: older than what is stored, so nothing changes
    assert lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p",
                       order_by=["__ts", "__offset"]) == 0
    assert lake.store().info(lake.file("d", "p")).mtime_ns == before
    stored = lake.read("d", "p")
    assert dict(zip(stored.k, stored.v)) == {1: "a2", 2: "b"}


def test_the_same_event_twice_in_one_batch_is_stored_once(lake):
    lake.upsert("d", rows((1, "a", 10, 0), (1, "a", 10, 0)), ["k"], "p", order_by=["__ts", "__offset"])
    assert len(lake.read("d", "p")) == 1


def test_append_only_keeps_the_first_event_of_a_key(lake):
    lake.upsert("l", rows((1, "first", 10, 0)), ["k"], keep_existing=True, order_by=["__ts", "__offset"])
    assert lake.upsert("l", rows((1, "again", 20, 9), (2, "new", 20, 10)), ["k"],
                       keep_existing=True, order_by=["__ts", "__offset"]) == 1
    stored = lake.read("l")
    assert dict(zip(stored.k, stored.v)) == {1: "first", 2: "new"}


def test_without_order_the_incoming_row_replaces_and_equal_data_is_not_rewritten(lake):
    df = pd.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    assert lake.upsert("s", df, ["k"]) == 2
    assert lake.upsert("s", df, ["k"]) == 0
    assert lake.upsert("s", pd.DataFrame({"k": [2], "v": ["B"]}), ["k"]) == 1
    assert dict(zip(lake.read("s").k, lake.read("s").v)) == {1: "a", 2: "B"}


ORDER = ["__ts", "__offset"]


def test_appends_read_back_exactly_as_upserts_would_store_them(new_lake):
    """Random batches with replays, late and repeated keys: append + merge-on-read (with and
    without compaction) equals upsert, row for row."""
    import numpy as np

    rng = np.random.default_rng(7)
    batches = []
    offset = 0
    for _ in range(40):
        n = int(rng.integers(1, 8))
        batch = [(int(rng.integers(0, 15)), f"v{offset + i}", int(rng.integers(0, 50)), offset + i)
                 for i in range(n)]
        offset += n
        batches.append(batch)
        if rng.random() < 0.3:  # a replayed range
            batches.append(batches[int(rng.integers(0, len(batches)))])
    for keep_existing in (False, True):
        upserted, appended = new_lake(f"u{keep_existing}"), new_lake(f"a{keep_existing}")
        for b in batches:
            upserted.upsert("d", rows(*b), ["k"], "p", order_by=ORDER, keep_existing=keep_existing)
            appended.append("d", rows(*b), ["k"], "p", order_by=ORDER,
                            keep_existing=keep_existing, compact_after=7)
        expected = upserted.read("d", "p").sort_values("k").reset_index(drop=True)
        got = appended.read("d", "p").sort_values("k").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
        assert 0 < len(appended.deltas("d", "p")) < 7  # compacted on the way, some pending
        appended.compact("d", "p")
        assert appended.deltas("d", "p") == []
        pd.testing.assert_frame_equal(
            appended.read("d", "p").sort_values("k").reset_index(drop=True), expected)


def test_a_delta_only_partition_is_listed_and_an_upsert_folds_deltas(lake):
    lake.append("d", rows((1, "a", 10, 0)), ["k"], "1996-01-01", order_by=ORDER)
    assert lake.partitions("d") == ["1996-01-01"]
    assert not lake.exists("d", "1996-01-01")
    assert lake.upsert("d", rows((2, "b", 11, 1)), ["k"], "1996-01-01", order_by=ORDER) == 1
    assert lake.deltas("d", "1996-01-01") == []
    assert dict(zip(lake.read("d", "1996-01-01").k, lake.read("d", "1996-01-01").v)) == {1: "a", 2: "b"}


def test_a_crash_after_compaction_wrote_the_base_is_harmless(lake):
    lake.append("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p", order_by=ORDER)
    lake.append("d", rows((1, "a2", 20, 2)), ["k"], "p", order_by=ORDER)
    merged = lake.read("d", "p")
    # what compact() does, minus the deletions (the process died in between)
    lake._write_file(lake.file("d", "p"), merged)
    pd.testing.assert_frame_equal(lake.read("d", "p"), merged)
    assert lake.compact("d", "p") == 2
    pd.testing.assert_frame_equal(lake.read("d", "p"), merged)


def test_write_replaces_pending_deltas(lake):
    lake.append("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER)
    lake.write("d", rows((5, "z", 1, 1)), "p")
    assert list(lake.read("d", "p").k) == [5]


def test_partitions_reads_and_scans_across_base_and_delta_files(lake):
    for day, k in (("1996-01-03", 3), ("1996-01-01", 1), ("1996-01-02", 2)):
        lake.upsert("d", rows((k, f"v{k}", 10, k)), ["k"], day, order_by=ORDER)
    assert lake.partitions("d") == ["1996-01-01", "1996-01-02", "1996-01-03"]
    assert lake.partitions("nothing") == [] and lake.read_partitions("nothing") is None
    scan = lake.scan("d", None, ["k", "v"])
    assert isinstance(scan, LakeScan) and len(scan) == 3
    assert sorted(scan.to_table()["k"].to_pylist()) == [1, 2, 3]
    assert sorted(k for b in scan.to_batches(files_per_batch=2) for k in b["k"].to_pylist()) == [1, 2, 3]
    lake.append("d", rows((4, "v4", 10, 4), (1, "late", 20, 5)), ["k"], "1996-01-01", order_by=ORDER)
    lake.append("d", rows((5, "v5", 10, 6)), ["k"], "1996-01-04", order_by=ORDER)
    assert lake.partitions("d") == ["1996-01-01", "1996-01-02", "1996-01-03", "1996-01-04"]
    merged = lake.scan("d", ["1996-01-01", "1996-01-02", "1996-01-04"], ["k", "v"])
    assert isinstance(merged, pa.Table)  # pending deltas: merged, not streamed
    assert dict(zip(merged["k"].to_pylist(), merged["v"].to_pylist())) == {
        1: "late", 4: "v4", 2: "v2", 5: "v5"}
    everything = lake.read_partitions("d", columns=["k"])
    assert sorted(everything["k"].to_pylist()) == [1, 2, 3, 4, 5]
    assert lake.row_count("d", "1996-01-01") == 2 and lake.row_count("d", "1999-01-01") == 0
    # rewrite folds the deltas in; None empties the partition, which is then no longer listed
    lake.rewrite("d", "1996-01-01", lambda cur: cur.filter(pa.compute.not_equal(cur["k"], 4)))
    assert lake.deltas("d", "1996-01-01") == [] and lake.read("d", "1996-01-01").k.tolist() == [1]
    lake.rewrite("d", "1996-01-04", lambda cur: None)
    lake.rewrite("d", "1996-01-03", lambda cur: None)
    assert lake.partitions("d") == ["1996-01-01", "1996-01-02"]
    assert lake.read("d", "1996-01-03") is None


def test_find_locates_rows_in_base_and_delta_files(lake):
    df = lambda *items: pd.DataFrame([{"k": k, "cid": c, "__ts": 1, "__offset": o}
                                      for k, c, o in items])
    lake.upsert("d", df((1, "x", 0), (2, "y", 1)), ["k"], "1996-01-01", order_by=ORDER)
    lake.append("d", df((3, "x", 2)), ["k"], "1996-01-02", order_by=ORDER)
    hits = lake.find("d", "cid", "x")
    assert [(p, row["k"]) for p, row in hits] == [("1996-01-01", 1), ("1996-01-02", 3)]
    assert lake.find("d", "cid", "nope") == [] and lake.find("absent", "cid", "x") == []


def test_checkpointed_rewrites_commit_content_and_checkpoint_as_a_pair(lake):
    gen = lake.rewrite_checkpointed("p", lambda cur, ck: (pa.table({"k": [1]}),
                                                         {"state": pa.table({"x": [1]})}))
    content, got, tables = lake.read_checkpointed("p")
    assert got == gen and content["k"].to_pylist() == [1] and tables["state"]["x"].to_pylist() == [1]
    assert lake.rewrite_checkpointed("p", lambda cur, ck: None) is None
    # an orphan generation (a crash before the partition named it) is ignored, then removed
    lake._write_file(f"{lake.checkpoint_dir('p')}/99999999999999999999-deadbeef/state.parquet",
                     pa.table({"x": [9]}))
    assert lake.read_checkpointed("p")[2]["state"]["x"].to_pylist() == [1]
    gen2 = lake.rewrite_checkpointed(
        "p", lambda cur, ck: (pa.table({"k": cur["k"].to_pylist() + [2]}),
                              {"state": pa.table({"x": [ck["state"]["x"][0].as_py() + 1]})}))
    content, got, tables = lake.read_checkpointed("p")
    assert (got, content["k"].to_pylist(), tables["state"]["x"].to_pylist()) == (gen2, [1, 2], [2])
    assert lake.store().names(lake.checkpoint_dir("p")) == [gen2]


def test_concurrent_writers_of_one_partition_lose_nothing(lake):
    """Four threads upsert and append distinct keys into one partition at once: the partition
    lock serialises the read-merge-rewrites, so every key is stored; a reader that takes no
    lock meanwhile always reads a whole partition (never a torn or vanished file)."""
    errors, seen = [], []
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                table = lake.read_table("d", "p")
                seen.append(len(table) if table is not None else 0)
            except Exception as exc:  # noqa: BLE001 — reported below
                errors.append(exc)

    def writer(t):
        try:
            for i in range(5):
                k = t * 100 + i
                if i % 2:
                    lake.append("d", rows((k, f"a{k}", 1, k)), ["k"], "p", order_by=ORDER,
                                compact_after=3)
                else:
                    lake.upsert("d", rows((k, f"u{k}", 1, k)), ["k"], "p", order_by=ORDER)
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    watcher = threading.Thread(target=reader)
    for th in [*threads, watcher]:
        th.start()
    for th in threads:
        th.join()
    done.set()
    watcher.join()
    assert errors == [] and len(seen) > 0
    assert sorted(lake.read("d", "p").k) == sorted(t * 100 + i for t in range(4) for i in range(5))
