"""Reconciliation diff between a batch source and a stored dataset (pure pandas)."""

import datetime as dt

import pandas as pd

from conflux.batch.reconcile import diff_frames

FIELDS = ["k", "day", "price", "note"]


def frame(*rows):
    return pd.DataFrame(rows, columns=FIELDS)


def test_missing_extra_and_changed_keys_are_told_apart():
    d1 = dt.date(1996, 1, 1)
    source = frame((1, d1, 10.0, "a"), (2, d1, 20.0, "b"), (3, d1, 30.0, "c"))
    stored = frame((1, d1, 10.0, "a"), (2, d1, 20.5, "b"), (4, d1, 40.0, "d"))
    diff = diff_frames(source, stored, ["k"], FIELDS)
    assert list(diff.missing.k) == [3] and list(diff.extra.k) == [4] and list(diff.changed.k) == [2]
    assert diff.counts() == {"missing": 1, "extra": 1, "changed": 1}
    assert not diff.clean
    assert list(diff.changed.price) == [20.0]  # the source's version, used by the repair


def test_equal_data_with_different_types_and_float_noise_is_clean():
    source = frame((1, dt.date(1996, 1, 1), 0.1 + 0.2, "a"))
    stored = frame((1, pd.Timestamp("1996-01-01"), 0.3, "a"))
    assert diff_frames(source, stored, ["k"], FIELDS).clean


def test_empty_stored_side_reports_everything_missing():
    source = frame((1, dt.date(1996, 1, 1), 1.0, "a"))
    diff = diff_frames(source, pd.DataFrame(columns=FIELDS), ["k"], FIELDS)
    assert len(diff.missing) == 1 and not len(diff.extra) and not len(diff.changed)
