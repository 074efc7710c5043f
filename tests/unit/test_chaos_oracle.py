"""The chaos harness's oracle (reliability/oracle.py): the expected winner of each key, the
verdict on stored rows read as they are, and the fold of ledger events into balances."""

from __future__ import annotations

import pandas as pd

from reliability import oracle


def produced():
    """Key 1: an update, then an older one (loses); key 2: re-dated by a newer update; key 3:
    two copies of one version (a re-send) — the later offset wins, with the same values."""
    return pd.DataFrame([
        {"k": 1, "v": 1.0, "d": "2030-01-01", "__ts": 100, "__offset": 0},
        {"k": 1, "v": 2.0, "d": "2030-01-01", "__ts": 200, "__offset": 5},
        {"k": 1, "v": 0.5, "d": "2030-01-03", "__ts": 150, "__offset": 9},   # out of order
        {"k": 2, "v": 7.0, "d": "2030-01-01", "__ts": 100, "__offset": 1},
        {"k": 2, "v": 8.0, "d": "2030-01-02", "__ts": 300, "__offset": 6},   # re-dated
        {"k": 3, "v": 3.0, "d": "2030-01-01", "__ts": 100, "__offset": 2},
        {"k": 3, "v": 3.0, "d": "2030-01-01", "__ts": 100, "__offset": 7},   # re-sent copy
        {"k": 4, "v": 4.0, "d": "2030-01-01", "__ts": 100, "__offset": 8},
        {"k": 4, "v": 4.5, "d": "2030-01-01", "__ts": 100, "__offset": 3},   # tie: offset decides
    ])


def test_the_winner_is_the_newest_by_producer_timestamp_then_offset():
    won = oracle.winners(produced(), ["k"]).set_index("k")
    assert won["v"].to_dict() == {1: 2.0, 2: 8.0, 3: 3.0, 4: 4.0}
    assert won.loc[3, "__offset"] == 7 and won.loc[2, "d"] == "2030-01-02"
    first = oracle.winners(produced(), ["k"], append_only=True).set_index("k")
    assert first["v"].to_dict() == {1: 1.0, 2: 7.0, 3: 3.0, 4: 4.5}


def stored_from(expected: pd.DataFrame) -> pd.DataFrame:
    return expected[["k", "v", "d"]].assign(__day=expected["d"])


def test_the_verdict_counts_lost_twice_changed_and_misplaced_keys():
    expected = oracle.winners(produced(), ["k"])
    good = stored_from(expected)
    assert oracle.judge(expected, good, ["k"], ["v", "d"], day_of="d") == {
        "expected": 4, "stored": 4, "missing": 0, "extra": 0, "duplicated": 0, "changed": 0}
    # the older update applied over the newer one; key 2 left behind on its old day as well
    # as moved; key 3 lost; key 9 never produced; key 4 in a partition that is not its day
    bad = pd.concat([
        good[good.k != 3].assign(v=lambda f: f.v.where(f.k != 1, 0.5)),
        pd.DataFrame([{"k": 2, "v": 7.0, "d": "2030-01-01", "__day": "2030-01-01"},
                      {"k": 9, "v": 9.0, "d": "2030-01-01", "__day": "2030-01-01"}])],
        ignore_index=True)
    bad.loc[bad.k == 4, "__day"] = "2030-01-05"
    assert oracle.judge(expected, bad, ["k"], ["v", "d"], day_of="d") == {
        "expected": 4, "stored": 5, "missing": 1, "extra": 1, "duplicated": 1, "changed": 3}


def test_dates_and_times_compare_across_json_and_delta_types():
    expected = pd.DataFrame({"k": [1], "d": ["2030-01-02"], "occurred_at": ["1995-03-02T10:00:00"],
                             "__ts": [1], "__offset": [0]})
    stored = pd.DataFrame({"k": [1], "d": [pd.Timestamp("2030-01-02").date()],
                           "occurred_at": [pd.Timestamp("1995-03-02 10:00", tz="UTC")],
                           "__day": ["2030-01-02"]})
    assert oracle.judge(expected, stored, ["k"], ["d", "occurred_at"], day_of="d")["changed"] == 0


SIGNS = {"deposit": 1, "withdrawal": -1, "adjustment": 1}


def events():
    return pd.DataFrame({"event_id": ["a", "b", "c", "d"], "c_custkey": [1, 1, 2, 3],
                         "kind": ["deposit", "withdrawal", "adjustment", "withdrawal"],
                         "amount": [100.10, 30.05, -2.5, 0.000001]})


def test_the_fold_sums_signed_amounts_in_micro_units():
    folded = oracle.fold(events(), SIGNS, "c_custkey")
    assert folded["micro"].to_dict() == {1: 70_050_000, 2: -2_500_000, 3: -1}
    assert folded["events"].to_dict() == {1: 2, 2: 1, 3: 1}


def projection(rows):
    return pd.DataFrame([{"c_custkey": c, "opening_balance": o, "ledger_total": t,
                          "events_applied": n, "balance": o + t} for c, o, t, n in rows])


def test_balances_must_move_by_exactly_the_fold_of_the_runs_events():
    folded = oracle.fold(events(), SIGNS, "c_custkey")
    before = projection([(1, 10.0, 5.0, 3), (2, 0.0, 0.0, 0), (3, 1.0, 0.0, 0), (4, 2.0, 1.0, 1)])
    after = projection([(1, 10.0, 75.05, 5), (2, 0.0, -2.5, 1), (3, 1.0, -0.000001, 1),
                        (4, 2.0, 1.0, 1)])
    assert oracle.judge_balances(before, after, folded, "c_custkey") == {
        "customers": 4, "with_events": 3, "wrong": 0, "missing": 0}
    # an event folded twice, an event not folded, a balance off its parts, a customer missing
    twice = after.copy()
    twice.loc[0, ["ledger_total", "events_applied"]] = [145.1, 6]
    twice.loc[1, "balance"] = 0.0
    twice = twice[twice.c_custkey != 3]
    assert oracle.judge_balances(before, twice, folded, "c_custkey") == {
        "customers": 3, "with_events": 3, "wrong": 2, "missing": 1}
    # a customer new to the projection starts from nothing
    assert oracle.judge_balances(before.iloc[0:0], after.iloc[[1]], folded.loc[[2]],
                                 "c_custkey")["wrong"] == 0


def test_the_chaos_workload_exercises_the_ordering_rule_and_re_dating():
    """Published in chunk order, some keys' last version is not their winner (an older producer
    timestamp), and some winners moved to another day than their first version's."""
    from pipelines.demo.tpch import TpchGenerator
    from reliability.chaos import build_workload

    customers = TpchGenerator(0.001, seed=3).customer()[["c_custkey"]]
    work = build_workload(3000, 5, 7, set(), "abc", base_ms=10**12, customers=customers)
    orders = pd.concat([c.orders for c in work.chunks], ignore_index=True)
    orders["__offset"] = range(len(orders))  # publish order, as one partition would have it
    assert work.updates["out_of_order"] > 0 and work.updates["redated"] > 0
    assert orders.groupby("o_orderkey")["__ts"].nunique().eq(
        orders.groupby("o_orderkey").size()).all()  # no ties between versions of a key
    won = oracle.winners(orders, ["o_orderkey"]).set_index("o_orderkey")
    last = orders.drop_duplicates("o_orderkey", keep="last").set_index("o_orderkey")
    first = orders.drop_duplicates("o_orderkey", keep="first").set_index("o_orderkey")
    assert (last.loc[won.index, "o_comment"] != won["o_comment"]).sum() > 0
    assert (first.loc[won.index, "o_orderdate"] != won["o_orderdate"]).sum() > 0
    assert set(work.chunks[0].ledger["c_custkey"]) <= set(customers["c_custkey"])
