"""Pure pieces of the ingest engine: the per-partition split and contract-version ordering."""

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa

from pipelines.catalog import CUSTOMER_LEDGER, ORDERS
from conflux.event.ingest import newest_ref, split_by_partition


def test_rows_are_split_by_event_day_keeping_original_indices():
    days = [dt.date(1996, 1, 3), dt.date(1995, 12, 30), dt.date(1996, 1, 3), dt.date(1996, 1, 1)]
    table = pa.table({"o_orderdate": pa.array(days, pa.date32()), "x": [0, 1, 2, 3]})
    parts = split_by_partition(ORDERS, table)
    assert [(name, idx.tolist()) for name, idx in parts] == [
        ("1995-12-30", [1]), ("1996-01-01", [3]), ("1996-01-03", [0, 2])]


def test_timestamps_split_by_their_date():
    ds = dataclasses.replace(ORDERS, event_time="at")
    stamps = [dt.datetime(1996, 1, 1, 23, 59), dt.datetime(1996, 1, 2, 0, 0)]
    parts = split_by_partition(ds, pa.table({"at": pa.array(stamps, pa.timestamp("us"))}))
    assert [name for name, _ in parts] == ["1996-01-01", "1996-01-02"]


def test_unpartitioned_dataset_is_one_group():
    parts = split_by_partition(CUSTOMER_LEDGER, pa.table({"x": [1, 2, 3]}))
    assert len(parts) == 1 and np.array_equal(parts[0][1], [0, 1, 2])


def test_newest_contract_version_compares_numbers_not_text():
    assert newest_ref({"orders@9", "orders@10", "orders@2"}) == "orders@10"


def test_a_micro_batch_is_capped_at_a_prefix_spanning_few_partitions():
    from conflux.event.decode import Decoded, DeadLetter
    from conflux.event.ingest import _cut, partition_prefix
    from conflux.io.kafka import Record

    recs = [Record("t", 0, i, 0, b"k", b"v", ()) for i in range(6)]
    days = [dt.date(1996, 1, d) for d in (1, 1, 2, 3, 2, 4)]
    # record 3 is a dead letter; rows come from records 0, 1, 2, 4, 5 (days 1, 1, 2, 2, 4)
    rows = [recs[i] for i in (0, 1, 2, 4, 5)]
    decoded = Decoded(rows=[{"o_orderdate": days[r.offset]} for r in rows], records=rows,
                      contracts=["orders@1"] * 5,
                      dead=[DeadLetter(recs[3], "SCHEMA_INVALID", "bad", None)])
    assert partition_prefix(ORDERS, decoded, 3) is None  # days 1, 2, 4 fit
    row = partition_prefix(ORDERS, decoded, 2)  # day 4 (record 5) would be the third
    assert row == 4
    kept, consumed = _cut(decoded, recs, row)
    assert consumed == 5 and [r.offset for r in kept.records] == [0, 1, 2, 4]
    assert [d.record.offset for d in kept.dead] == [3]
    assert partition_prefix(CUSTOMER_LEDGER, decoded, 1) is None  # unpartitioned: no cap
