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
