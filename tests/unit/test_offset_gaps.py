"""Offset gaps without services: the pure planning (cursor vs. log start, end offsets and topic id
-> gaps and the cursor past them), what a refused read becomes, the ``offset_gaps`` check's
verdict, and the sensor's inline reading past a gap met mid-tick (a fake broker)."""

import dataclasses
import datetime as dt
import json
import time
from types import SimpleNamespace

import dagster as dg

from pipelines.catalog import ORDERS
from conflux.event.offsets import (OFFSET_GAP, TOPIC_RECREATED, Gap, Range, TickState,
                                   dump_state, find_gaps, gap_at, lag_by_partition, parse_state,
                                   plan_ranges)
from conflux.event.sensor import apply_inline
from conflux.io.kafka import OutOfRange, Record, TopicBounds
from conflux.io.lake import LakeResource
from conflux.observe.offset_gaps import CHECK_NAME, GapRecord, evaluation

T = "tpch.orders"
DS = dataclasses.replace(ORDERS, topics=(T,), max_records_per_run=1000)


def bounds(begins, ends, topic_id="id-1"):
    return {T: TopicBounds(topic_id, dict(enumerate(begins)), dict(enumerate(ends)))}


def test_a_cursor_below_the_log_start_is_a_gap_and_reading_goes_on_from_the_log_start():
    gaps, cursor = find_gaps({T: {0: 120, 1: 50}}, bounds([200, 10], [260, 90]), {T: "id-1"})
    assert gaps == [Gap(OFFSET_GAP, T, 0, 120, 199, 200)]
    assert gaps[0].records == 80
    assert gaps[0].describe() == ("tpch.orders partition 0: offsets 120–199 (80 record(s)) "
                                  "removed before they were read (retention or delete_records)")
    assert cursor == {T: {0: 200, 1: 50}}
    assert plan_ranges(DS, cursor, {T: {0: 260, 1: 90}}) == [Range(T, 0, 200, 260),
                                                              Range(T, 1, 50, 90)]


def test_a_cursor_at_or_past_the_log_start_is_no_gap_whatever_offsets_hold_no_record():
    # transaction markers and compaction leave offsets without records: the log start and end
    # offsets do not move because of them, so nothing here can mistake them for a gap
    cursor = {T: {0: 200, 1: 17}}
    assert find_gaps(cursor, bounds([200, 0], [260, 18]), {T: "id-1"}) == ([], cursor)


def test_a_topic_read_for_the_first_time_starts_at_its_log_start_without_a_gap():
    assert find_gaps({}, bounds([500, 0], [900, 3]), {}) == ([], {T: {0: 500, 1: 0}})


def test_a_new_partition_of_a_known_topic_is_read_from_zero_so_its_removed_records_are_a_gap():
    gaps, cursor = find_gaps({T: {0: 5}}, bounds([0, 40], [5, 60]), {T: "id-1"})
    assert gaps == [Gap(OFFSET_GAP, T, 1, 0, 39, 40)] and cursor == {T: {0: 5, 1: 40}}


def test_a_recreated_topic_is_told_by_its_id_even_when_it_holds_more_than_the_cursor():
    gaps, cursor = find_gaps({T: {0: 120, 1: 7}}, bounds([0, 0], [500, 500], "id-2"),
                             {T: "id-1"})
    assert [(g.reason, g.partition, g.first, g.last, g.resume_at) for g in gaps] == [
        (TOPIC_RECREATED, 0, 120, None, 0), (TOPIC_RECREATED, 1, 7, None, 0)]
    assert "topic id id-1 is now id-2" in gaps[0].describe()
    assert "reading resumed at offset 0 of the new topic" in gaps[0].describe()
    assert cursor == {T: {0: 0, 1: 0}}  # every record of the new topic is read


def test_a_recreated_topic_is_told_by_its_offsets_when_its_id_is_unknown():
    gaps, cursor = find_gaps({T: {0: 120, 1: 7}}, bounds([0, 0], [30, 9], None), {})
    assert {g.reason for g in gaps} == {TOPIC_RECREATED} and cursor == {T: {0: 0, 1: 0}}
    assert "end offset below the cursor: partition 0 at 30 < 120" in gaps[0].why
    # before: lag 0 on partition 0 (30 - 120 clamped), the new topic's 30 records never read
    assert lag_by_partition({T: {0: 120, 1: 7}}, {T: {0: 30, 1: 9}})[f"{T}[0]"] == 0
    assert lag_by_partition(cursor, {T: {0: 30, 1: 9}}) == {f"{T}[0]": 30, f"{T}[1]": 9}


def test_a_topic_with_fewer_partitions_was_recreated():
    gaps, cursor = find_gaps({T: {0: 5, 1: 5, 2: 5}}, bounds([0], [50], None), {})
    assert [(g.partition, g.resume_at) for g in gaps] == [(0, 0), (1, None), (2, None)]
    assert "partition(s) 1, 2 no longer exist" in gaps[0].why
    assert "the partition no longer exists" in gaps[2].describe()
    assert cursor == {T: {0: 0}}


def test_a_refused_read_becomes_the_gap_of_its_range():
    # below the log start, inside the range: the offsets up to the log start are gone
    assert gap_at(OutOfRange(T, 0, 100, 150, 300), 200) == Gap(OFFSET_GAP, T, 0, 100, 149, 150)
    # the whole range is below the log start
    assert gap_at(OutOfRange(T, 0, 100, 450, 500), 200) == Gap(OFFSET_GAP, T, 0, 100, 199, 450)
    # no range end (the sensor's inline read)
    assert gap_at(OutOfRange(T, 0, 100, 150, 300)).last == 149
    # above the log end: a recreated topic; the rest of the range is lost
    lost = gap_at(OutOfRange(T, 2, 100, 0, 40), 200)
    assert (lost.reason, lost.first, lost.last, lost.resume_at) == (TOPIC_RECREATED, 100, 199, 0)
    assert "offsets 100–199 of the old topic are lost" in lost.describe()
    assert OutOfRange(T, 0, 100, 50, 300).in_range and not OutOfRange(T, 0, 10, 50, 60).in_range


def test_the_sensor_state_keeps_topic_ids_and_the_open_gaps_it_reported():
    state = TickState(offsets={T: {0: 5}}, topic_ids={T: "id-1"}, gaps_checked_at=9.5,
                      gaps_open=(3, 4))
    assert parse_state(dump_state(state)) == state
    assert parse_state(dump_state(TickState())).gaps_open is None  # never evaluated


def test_the_check_fails_naming_each_open_range_and_passes_without_one():
    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
    rows = [GapRecord(3, "orders", Gap(OFFSET_GAP, T, 0, 120, 199, 200), "sensor:orders__kafka",
                      at),
            GapRecord(4, "orders", Gap(TOPIC_RECREATED, T, 1, 7, None, 0, "topic id a is now b"),
                      "run-1", at)]
    failing = evaluation(DS, rows, evaluated_by="sensor:orders__kafka")
    assert failing.check_name == CHECK_NAME == "offset_gaps"
    assert not failing.passed and failing.severity == dg.AssetCheckSeverity.ERROR
    assert "#3 tpch.orders partition 0: offsets 120–199 (80 record(s)) removed" in \
        failing.description
    assert "#4 tpch.orders partition 1: topic deleted and recreated" in failing.description
    assert "conflux dlq ack-gaps tpch.orders 3 4 --note" in failing.description
    meta = {k: v.value for k, v in failing.metadata.items()}
    assert meta["conflux/records_missing"] == 80
    assert [(g["id"], g["first"], g["last"]) for g in meta["conflux/open_gaps"]] == [
        (3, 120, 199), (4, 7, None)]
    passing = evaluation(DS, [], evaluated_by="x")
    assert passing.passed and "no unacknowledged offset gap" in passing.description


# --- the inline read meeting a gap mid-tick ------------------------------------------------
def order(key: int) -> bytes:
    return json.dumps({"o_orderkey": key, "o_custkey": 1, "o_orderstatus": "O",
                       "o_totalprice": 1.0, "o_orderdate": "1995-01-01",
                       "o_orderpriority": "1-URGENT", "o_clerk": "c",
                       "o_shippriority": 0}).encode()


class RetentionMidRead:
    """Partition 0 holds offsets 0..29; offsets 10..19 are removed while the sensor reads."""

    def poll_from(self, positions, *, deadline, max_records=5000, on_gap=None):
        rec = lambda o: Record(T, 0, o, 1_000, str(o).encode(), order(o + 1), ())  # noqa: E731
        assert positions == {(T, 0): 0}
        yield [rec(o) for o in range(10)]
        on_gap(OutOfRange(T, 0, 10, 20, 30))  # what poll_from reports, then it reads on
        yield []
        yield [rec(o) for o in range(20, 30)]


def test_an_inline_read_goes_past_a_gap_met_mid_tick_without_claiming_it(tmp_path):
    lake = LakeResource(path=str(tmp_path))
    registry = SimpleNamespace(client=SimpleNamespace(versions=lambda s, deleted=False: []))
    ds = dataclasses.replace(DS, linger_ms=0)
    with dg.DagsterInstance.ephemeral() as instance:
        cursor, stats = apply_inline(dg.build_sensor_context(instance=instance), ds, {},
                                     {T: {0: 30}}, RetentionMidRead(), lake, registry,
                                     deadline=time.monotonic() + 30)
        assert cursor == {T: {0: 30}} and stats["records"] == 20
        assert stats["gaps"] == [Gap(OFFSET_GAP, T, 0, 10, 19, 20)]
        mats = instance.fetch_materializations(dg.AssetKey(ds.name), limit=100).records
        ranges = sorted((r["start"], r["end"]) for m in mats
                        for r in m.asset_materialization.metadata["conflux/source_ranges"].value)
    assert ranges == [(0, 10), (20, 30)]  # the applied ranges never span the removed offsets
    assert sorted(lake.read(ds.name, "1995-01-01")["o_orderkey"]) == [*range(1, 11),
                                                                      *range(21, 31)]


def test_conflux_lag_shows_a_gap_the_sensor_has_not_reached_and_counts_past_it(monkeypatch):
    from conflux.cli import lag
    from conflux.core.errors import OffsetGapError

    state = TickState(offsets={T: {0: 120}}, topic_ids={T: "id-1"})
    monkeypatch.setattr(lag.api, "sensor_state", lambda url, name: SimpleNamespace(
        name=name, status="STOPPED", cursor=dump_state(state)))
    kafka = SimpleNamespace(log_bounds=lambda topic: TopicBounds("id-1", {0: 200}, {0: 260}))

    def down(names):
        raise OffsetGapError("the offset-gap ledger's database does not answer")

    [row] = lag.consumer_lag([DS], kafka=kafka, url="u", ledger=SimpleNamespace(gaps=down))
    assert row.lag == 60 and row.partitions == [
        {"topic": T, "partition": 0, "cursor": 120, "end": 260, "lag": 60}]
    [gap] = row.gaps
    assert (gap["recorded"], gap["first"], gap["last"]) == (False, 120, 199)
    assert lag.gap_line(DS, gap) == ("  offset gap, recorded at the sensor's next tick: "
                                     "tpch.orders partition 0: offsets 120–199 (80 record(s)) "
                                     "removed before they were read (retention or "
                                     "delete_records)")
    assert "does not answer" in row.gaps_unknown


def test_conflux_lag_shows_ranges_requested_from_runs_and_not_applied_apart(monkeypatch, capsys):
    from conflux.cli import lag
    from conflux.event.offsets import Pending, Range

    owed = (Pending("k1", (Range(T, 0, 100, 150),), requested_at=1_700_000_000.0, attempts=2),
            Pending("k2", (Range(T, 0, 150, 160),), requested_at=1_700_000_100.0))
    state = TickState(offsets={T: {0: 160}}, topic_ids={T: "id-1"}, pending=owed)
    monkeypatch.setattr(lag.api, "sensor_state", lambda url, name: SimpleNamespace(
        name=name, status="RUNNING", cursor=dump_state(state)))
    kafka = SimpleNamespace(log_bounds=lambda topic: TopicBounds("id-1", {0: 0}, {0: 170}))
    [row] = lag.consumer_lag([DS], kafka=kafka, url="u",
                             ledger=SimpleNamespace(gaps=lambda names: []))
    assert (row.lag, row.unsettled, len(row.unsettled_batches)) == (10, 60, 2)
    assert lag.unsettled_line(row) == (
        "  unsettled: 60 record(s) in 2 batch(es) requested from ingest runs and not applied "
        "yet (oldest requested 2023-11-14 22:13:20Z, 2 re-request(s))")
