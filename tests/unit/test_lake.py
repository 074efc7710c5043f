"""Upserts by key are idempotent and respect record order (real Parquet files, no services)."""

import pandas as pd
import pytest

from resources.lake import LakeResource


@pytest.fixture
def lake(tmp_path):
    return LakeResource(path=str(tmp_path))


def rows(*items):
    return pd.DataFrame([{"k": k, "v": v, "__ts": ts, "__offset": off} for k, v, ts, off in items])


def test_newest_record_wins_and_replaying_an_old_range_changes_nothing(lake):
    assert lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p",
                       order_by=["__ts", "__offset"]) == 2
    assert lake.upsert("d", rows((1, "a2", 20, 5)), ["k"], "p", order_by=["__ts", "__offset"]) == 1
    before = lake.file("d", "p").stat().st_mtime_ns
    # replay of the first range: older than what is stored, so nothing changes
    assert lake.upsert("d", rows((1, "a", 10, 0), (2, "b", 10, 1)), ["k"], "p",
                       order_by=["__ts", "__offset"]) == 0
    assert lake.file("d", "p").stat().st_mtime_ns == before
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


def test_appends_read_back_exactly_as_upserts_would_store_them(tmp_path):
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
        upserted = LakeResource(path=str(tmp_path / f"u{keep_existing}"))
        appended = LakeResource(path=str(tmp_path / f"a{keep_existing}"))
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
    assert not lake.file("d", "1996-01-01").exists()
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
