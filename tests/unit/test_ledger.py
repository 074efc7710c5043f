"""Event sourcing without services: the fold is exact and order-independent, the incremental
projection equals the fold of everything at once over any split of the events (duplicates,
shuffles, re-based opening balances, new customers), the checkpoint commits atomically with the
projection, the append-only ledger never replaces a stored row, and a balance can be traced."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conflux.cli import build_parser, main
from conflux.core.errors import LedgerIntegrityError
from conflux.cli.ledger import run_explain
from conflux.ledger import audit as ledger_audit
from conflux.ledger import fold as fold_math
from conflux.ledger.fold import LedgerColumns
from conflux.ledger.projection import LedgerProjection, fold_increment, ledger_projection
from conflux.io.lake import LakeResource
from pipelines.catalog import CUSTOMER_BALANCE

ORDER = ["__ts", "__offset"]
COLUMNS = CUSTOMER_BALANCE.compute.projection.columns  # the demo's: c_custkey over c_acctbal


def demo_projection() -> LedgerProjection:
    return LedgerProjection(ledger="customer_ledger", opening="customer", columns=COLUMNS)


@pytest.fixture
def lake(tmp_path):
    return LakeResource(path=str(tmp_path / "lake"))


def make_events(rng, n, customers=20, start=0) -> pd.DataFrame:
    kinds = rng.choice(["deposit", "withdrawal", "adjustment"], n)
    return pd.DataFrame({
        "event_id": [f"ev-{i:06d}" for i in range(start, start + n)],
        "c_custkey": rng.integers(1, customers + 1, n).astype("int64"),
        "kind": kinds,
        # any decimals, negative adjustments: sums that a float accumulation gets wrong
        "amount": np.where(kinds == "adjustment", rng.uniform(-100, 100, n),
                           rng.uniform(0.01, 5000, n)),
        "occurred_at": (pd.Timestamp("1995-01-01")
                        + pd.to_timedelta(rng.integers(0, 10**8, n), unit="s")),
    })


def make_customers(rng, keys) -> pd.DataFrame:
    keys = np.asarray(sorted(keys), dtype="int64")
    return pd.DataFrame({"c_custkey": keys,
                         "c_acctbal": np.round(rng.uniform(-999.99, 9999.99, len(keys)), 2)})


def full(events, customers) -> pd.DataFrame:
    return fold_math.full_fold(events, customers, COLUMNS)


def test_the_fold_is_exact_and_independent_of_order_and_grouping():
    rng = np.random.default_rng(1)
    events = make_events(rng, 500, customers=5)
    customers = make_customers(rng, range(1, 6))
    expected = full(events, customers)
    for seed in range(5):
        shuffled = events.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        pd.testing.assert_frame_equal(full(shuffled, customers), expected, check_exact=True)
    # and it is the right number: opening + correctly rounded sum of the signed amounts
    sign = events["kind"].map({"deposit": 1, "withdrawal": -1, "adjustment": 1})
    for key, group in events.assign(signed=events["amount"] * sign).groupby("c_custkey"):
        row = expected[expected.c_custkey == key].iloc[0]
        exact = math.fsum(group["signed"])
        assert row.ledger_total == pytest.approx(exact, abs=1e-6 * len(group))
        assert row.balance == row.opening_balance + row.ledger_total
        assert row.events_applied == len(group)
        latest = group.sort_values(["occurred_at", "event_id"]).iloc[-1]
        assert row.last_event_id == latest.event_id


@pytest.mark.parametrize("seed", range(12))
def test_incremental_over_random_splits_with_duplicates_equals_the_full_fold(seed):
    """Random increments of a shuffled stream with repeated events (within and across
    increments), late events, events for customers that only appear later, and opening balances
    that change on the way: the incrementally kept projection equals the fold of everything at
    once, bit for bit, at every step."""
    rng = np.random.default_rng(seed)
    events = make_events(rng, int(rng.integers(1, 400)), customers=25)
    customers = make_customers(rng, range(1, 21))  # 21..25 have events but no row (yet)
    arrivals = events.sample(frac=1.0, random_state=seed)
    repeats = arrivals.sample(frac=0.3, random_state=seed + 1, replace=True)
    stream = pd.concat([arrivals, repeats]).sample(frac=1.0, random_state=seed + 2)
    cuts = np.sort(rng.choice(np.arange(1, len(stream)), size=min(6, len(stream) - 1),
                              replace=False)) if len(stream) > 1 else []
    stored = None
    seen = stream.iloc[0:0]
    bounds = [0, *cuts, len(stream)]
    for i, chunk in enumerate(stream.iloc[a:b] for a, b in zip(bounds, bounds[1:])):
        seen = pd.concat([seen, chunk])
        ledger = seen.drop_duplicates("event_id")  # what the append-only ledger holds
        if i == 2:  # opening balances change, a customer arrives
            customers = customers.assign(c_acctbal=customers["c_acctbal"] + rng.uniform(-5, 5))
            customers = pd.concat([customers, make_customers(rng, [21])])
        out, folded, state, report = fold_increment(pd.concat([ledger, chunk]), customers,
                                                    stored, columns=COLUMNS)
        stored = (folded, state)
        assert report.events_total == ledger["event_id"].nunique()
        pd.testing.assert_frame_equal(out, full(ledger, customers), check_exact=True)
    assert set(folded["event_id"]) == set(events["event_id"])


def test_incremental_materializations_through_the_lake_equal_the_full_fold(lake):
    """The same through real Parquet files: checkpoint and state survive the round trip."""
    rng = np.random.default_rng(3)
    events = make_events(rng, 300)
    customers = make_customers(rng, range(1, 21))
    projection = demo_projection()
    done = 0
    for end in (40, 41, 180, 180, 300):
        report = projection.materialize({"customer_ledger": events.iloc[:end],
                                         "customer": customers}, lake=lake,
                                        dataset="customer_balance")
        assert report.events_folded == end - done
        assert report.from_scratch == (done == 0)
        assert (report.generation is None) == (end == done)  # nothing new: nothing written
        done = end
    stored = lake.read("customer_balance")
    pd.testing.assert_frame_equal(stored[COLUMNS.output_columns].fillna({"last_event_id": ""}),
                                  full(events, customers).fillna({"last_event_id": ""}),
                                  check_exact=True, check_dtype=False)


def test_a_changed_opening_balance_rebases_and_a_new_customer_gets_its_earlier_events(lake):
    t = dt.datetime(1996, 1, 1)
    events = pd.DataFrame({"event_id": ["a", "b", "c"], "c_custkey": [1, 1, 2],
                           "kind": ["deposit", "withdrawal", "deposit"],
                           "amount": [100.0, 30.0, 5.0], "occurred_at": [t, t, t]})
    projection = demo_projection()
    customers = pd.DataFrame({"c_custkey": [1], "c_acctbal": [10.0]})
    projection.materialize({"customer_ledger": events, "customer": customers}, lake=lake,
                           dataset="cb")
    assert lake.read("cb")[["c_custkey", "balance"]].values.tolist() == [[1, 80.0]]
    customers = pd.DataFrame({"c_custkey": [1, 2], "c_acctbal": [1000.0, 1.0]})
    report = projection.materialize({"customer_ledger": events, "customer": customers},
                                    lake=lake, dataset="cb")
    assert report.events_folded == 0 and report.customers_rebased == 1
    assert report.customers_new == 1
    stored = lake.read("cb")
    assert stored[["c_custkey", "balance", "events_applied"]].values.tolist() == [
        [1, 1070.0, 2], [2, 6.0, 1]]  # event c was folded before customer 2 existed


def test_an_event_changed_in_the_ledger_after_it_was_folded_fails_the_fold(lake):
    t = dt.datetime(1996, 1, 1)
    events = pd.DataFrame({"event_id": ["a"], "c_custkey": [1], "kind": ["deposit"],
                           "amount": [100.0], "occurred_at": [t]})
    customers = pd.DataFrame({"c_custkey": [1], "c_acctbal": [0.0]})
    projection = demo_projection()
    projection.materialize({"customer_ledger": events, "customer": customers}, lake=lake,
                           dataset="cb")
    before = lake.read_checkpointed("cb")[1]
    with pytest.raises(LedgerIntegrityError) as exc:
        projection.materialize({"customer_ledger": events.assign(amount=1.0),
                                "customer": customers}, lake=lake, dataset="cb")
    assert "[LEDGER_INTEGRITY]" in str(exc.value) and "'a'" in str(exc.value)
    assert lake.read_checkpointed("cb")[1] == before  # nothing committed


def test_the_checkpoint_is_committed_with_the_projection_or_not_at_all(lake):
    data = pa.table({"k": [1]})
    gen = lake.rewrite_checkpointed("p", lambda cur, ck: (data, {"state": pa.table({"x": [1]})}))
    _, got, tables = lake.read_checkpointed("p")
    assert got == gen and tables["state"]["x"].to_pylist() == [1]

    def crash(cur, ck):
        raise RuntimeError("died while folding")

    with pytest.raises(RuntimeError):
        lake.rewrite_checkpointed("p", crash)
    assert lake.read_checkpointed("p")[1] == gen
    # a crash after the checkpoint tables were written but before the projection's commit: a
    # newer checkpoint version that no commit names is ignored
    from deltalake import write_deltalake
    write_deltalake(lake._checkpoint_uri("p", None, "state"), pa.table({"x": [2]}),
                    mode="overwrite")
    assert lake.read_checkpointed("p")[2]["state"]["x"].to_pylist() == [1]
    version = lake.version("p")
    gen2 = lake.rewrite_checkpointed("p", lambda cur, ck: (cur, {"state": pa.table({"x": [3]})}))
    assert gen2 != gen and lake.version("p") == version + 1  # one commit of the projection
    assert lake.read_checkpointed("p")[1:] == (gen2, {"state": pa.table({"x": [3]})})
    # a partition written without a checkpoint has none: the next fold starts from scratch
    lake.write("p", data)
    assert lake.read_checkpointed("p")[1:] == (None, {})


def rows(*items):
    return pd.DataFrame([{"k": k, "v": v, "__ts": ts, "__offset": off}
                         for k, v, ts, off in items])


def test_append_only_never_replaces_a_stored_row_even_by_an_older_timestamp(lake):
    lake.upsert("l", rows((1, "first", 20, 5)), ["k"], keep_existing=True, order_by=ORDER)
    assert lake.upsert("l", rows((1, "rewrite", 10, 9)), ["k"], keep_existing=True,
                       order_by=ORDER).rows == 0
    assert lake.read("l").v.tolist() == ["first"]
    lake.upsert_many("m", {"d1": rows((1, "first", 20, 5))}, ["k"], order_by=ORDER,
                     keep_existing=True)
    lake.upsert_many("m", {"d1": rows((1, "rewrite", 10, 9), (2, "b", 1, 10))}, ["k"],
                     order_by=ORDER, keep_existing=True)
    assert sorted(lake.read("m").v.tolist()) == ["b", "first"]
    lake.optimize("m")
    assert sorted(lake.read("m").v.tolist()) == ["b", "first"]


def test_append_only_keeps_the_first_write_of_every_key_across_compaction_and_replays(
        tmp_path):
    """Random writes (some replayed, repeated keys with other values and any timestamps):
    upserts unpartitioned and partitioned (compacted every few writes) both keep, per key, the
    row of the first write that held it — the earliest (timestamp, offset) within that write."""
    rng = np.random.default_rng(11)
    writes, offset = [], 0
    for _ in range(40):
        n = int(rng.integers(1, 6))
        writes.append([(int(rng.integers(0, 12)), f"v{offset + i}", int(rng.integers(0, 99)),
                        offset + i) for i in range(n)])
        offset += n
        if rng.random() < 0.3:
            writes.append(writes[int(rng.integers(0, len(writes)))])  # a replayed range
    expected = {}
    for w in writes:
        firsts = {}
        for k, v, ts, off in sorted(w, key=lambda r: (r[2], r[3])):
            firsts.setdefault(k, v)
        for k, v in firsts.items():
            expected.setdefault(k, v)
    upserted = LakeResource(path=str(tmp_path / "u"))
    appended = LakeResource(path=str(tmp_path / "a"))
    for i, w in enumerate(writes):
        upserted.upsert("d", rows(*w), ["k"], keep_existing=True, order_by=ORDER)
        appended.upsert("d", rows(*w), ["k"], "1996-01-01", keep_existing=True, order_by=ORDER)
        if i % 5 == 4:
            appended.optimize("d")
        for lake in (upserted, appended):
            stored = lake.read("d")
            assert dict(zip(stored.k, stored.v)).items() <= expected.items(), i
    assert dict(zip(upserted.read("d").k, upserted.read("d").v)) == expected
    assert dict(zip(appended.read("d").k, appended.read("d").v)) == expected
    appended.optimize("d")
    assert dict(zip(appended.read("d").k, appended.read("d").v)) == expected


def test_a_rebuild_counts_the_copy_the_ledger_stored_and_names_conflicts():
    t = pd.Timestamp("1996-01-01")
    log = pd.DataFrame({
        "event_id": ["a", "a", "b", "b", "c"], "c_custkey": [1, 1, 1, 1, 2],
        "kind": ["deposit"] * 5, "amount": [5.0, 5.0, 7.0, 70.0, 1.0],
        "occurred_at": [t] * 5, "__topic": ["x"] * 5, "__partition": [0, 1, 0, 2, 1],
        "__offset": [3, 1, 4, 0, 2], "__ts": [10, 9, 20, 5, 1], "__correlation_id": [""] * 5})
    stored = pd.DataFrame({"event_id": ["b"], "__topic": ["x"], "__partition": [0],
                           "__offset": [4]})
    kept, repeated, conflicts = ledger_audit.choose_copies(log, stored, COLUMNS)
    assert repeated == 2 and conflicts == ["b"]
    by_id = kept.set_index("event_id")
    assert by_id.loc["b", "amount"] == 7.0  # the stored copy, though another one is older
    assert (by_id.loc["a", "__partition"], by_id.loc["a", "__offset"]) == (1, 1)  # earliest


def ledger_lake(lake, events, customers, name="customer_ledger"):
    """A ledger dataset as ingestion stores it (contract columns + provenance)."""
    n = len(events)
    table = events.assign(__topic="ledger.customer", __partition=np.arange(n) % 3,
                          __offset=np.arange(n) // 3, __ts=np.arange(n) * 1000,
                          __correlation_id=[f"corr-{i}" for i in range(n)])
    lake.write(name, table)
    lake.write("customer", customers)


def test_explain_traces_a_balance_to_its_opening_and_events(lake, capsys):
    rng = np.random.default_rng(5)
    events = make_events(rng, 60, customers=3)
    customers = make_customers(rng, [1, 2, 3])
    ledger_lake(lake, events.iloc[:50], customers)
    projection = demo_projection()
    projection.materialize({"customer_ledger": lake.read_table("customer_ledger"),
                            "customer": customers}, lake=lake, dataset="customer_balance")
    ledger_lake(lake, events, customers)  # 10 more stored, not folded yet
    e = ledger_audit.explain(2, ledger="customer_ledger", projection="customer_balance",
                             opening="customer", columns=COLUMNS, lake=lake)
    mine = events.iloc[:50][events.iloc[:50].c_custkey == 2]
    assert e.adds_up and not e.problems
    assert sorted(ev["event_id"] for ev in e.events) == sorted(mine.event_id)
    assert len(e.pending) == int((events.iloc[50:].c_custkey == 2).sum())
    assert e.recomputed == e.balance == lake.read("customer_balance").set_index(
        "c_custkey").loc[2, "balance"]
    first = e.events[0]
    assert first["topic"] == "ledger.customer" and first["correlation_id"].startswith("corr-")
    assert run_explain(2, ledger="customer_ledger", projection="customer_balance",
                       opening="customer", columns=COLUMNS, lake=lake) == 0
    text = capsys.readouterr().out
    assert "OK" in text and "== stored balance" in text and first["event_id"] in text
    # a stored balance that no longer adds up is reported, exit 1
    content, _, checkpoint = lake.read_checkpointed("customer_balance")
    tampered = content.to_pandas()
    tampered.loc[tampered.c_custkey == 2, "balance"] += 0.01
    lake.rewrite_checkpointed("customer_balance", lambda cur, ck: (tampered, ck))
    assert run_explain(2, ledger="customer_ledger", projection="customer_balance",
                       opening="customer", columns=COLUMNS, lake=lake) == 1
    assert "DOES NOT ADD UP" in capsys.readouterr().out


def test_the_catalog_projection_is_incremental_and_the_cli_has_ledger_commands(capsys):
    from pipelines.catalog import CUSTOMER_BALANCE

    assert isinstance(CUSTOMER_BALANCE.compute.projection, LedgerProjection)
    assert CUSTOMER_BALANCE.compute.projection.columns == LedgerColumns(
        account="c_custkey", balance="c_acctbal", label="customer",
        signs={"deposit": 1, "withdrawal": -1, "adjustment": 1})
    assert COLUMNS.output_columns == list(CUSTOMER_BALANCE.fields)  # the contract's columns
    assert ledger_projection(ledger="x", opening="y", columns=COLUMNS).projection == \
        LedgerProjection("x", "y", COLUMNS)
    args = build_parser().parse_args(["ledger", "explain", "42", "--json"])
    assert args.account == "42" and args.json  # typed by the stored key column when explained
    assert build_parser().parse_args(["ledger", "rebuild", "--check"]).check


def test_explain_of_an_unknown_customer_is_a_clear_error(lake, capsys, monkeypatch):
    monkeypatch.setenv("CONFLUX_LAKE_PATH", lake.path)
    assert main(["ledger", "explain", "7"]) == 1
    assert "[PROJECTION_NOT_FOUND]" in capsys.readouterr().err
    # stored: a customer it does not hold, a key that is not a number (the keys are integers)
    t = dt.datetime(1996, 1, 1)
    events = pd.DataFrame({"event_id": ["a"], "c_custkey": [1], "kind": ["deposit"],
                           "amount": [1.0], "occurred_at": [t]})
    customers = pd.DataFrame({"c_custkey": [1], "c_acctbal": [0.0]})
    ledger_lake(lake, events, customers)
    demo_projection().materialize({"customer_ledger": events, "customer": customers},
                                  lake=lake, dataset="customer_balance")
    assert main(["ledger", "explain", "7"]) == 1
    assert "[PROJECTION_NOT_FOUND]" in (err := capsys.readouterr().err) and "customer 7" in err
    assert main(["ledger", "explain", "not-a-number"]) == 1
    assert "[PROJECTION_NOT_FOUND]" in (err := capsys.readouterr().err) and "integers" in err
    assert main(["ledger", "explain", "1"]) == 0
    assert "customer 1: balance 1.00" in capsys.readouterr().out
