"""The ledger framework knows no demo names: a wallet ledger with other column names, other
event kinds and string account keys folds through ``LedgerProjection`` end to end (incremental
equals the full fold, the checkpoint carries the wallet's names, a balance is explained)."""

import numpy as np
import pandas as pd
import pytest

from conflux.cli.ledger import run_explain
from conflux.core.errors import DeclarationError, LedgerIntegrityError
from conflux.io.lake import LakeResource
from conflux.ledger import audit as ledger_audit
from conflux.ledger.fold import LedgerColumns
from conflux.ledger.projection import LedgerProjection, ledger_projection

WALLET = LedgerColumns(account="wallet_id", balance="start_balance", opening_account="id",
                       event_id="txn", kind="direction", amount="value",
                       occurred_at="booked_at", label="wallet",
                       signs={"credit": 1, "debit": -1})


def wallet_events(rng, n, wallets=8) -> pd.DataFrame:
    return pd.DataFrame({
        "txn": [f"t{i:05d}" for i in range(n)],
        "wallet_id": [f"w-{k}" for k in rng.integers(1, wallets + 1, n)],
        "direction": rng.choice(["credit", "debit"], n),
        "value": rng.uniform(0.01, 300, n),
        "booked_at": pd.Timestamp("2024-01-01", tz="UTC")
        + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s"),
        "memo": "x",  # a column the fold does not read
    })


def provenance(events: pd.DataFrame) -> pd.DataFrame:
    n = len(events)
    return events.assign(__topic="wallets", __partition=np.arange(n) % 2,
                         __offset=np.arange(n) // 2, __ts=np.arange(n),
                         __correlation_id=[f"c{i}" for i in range(n)])


def test_a_wallet_ledger_folds_incrementally_like_the_full_fold_and_is_explained(tmp_path,
                                                                                  capsys):
    lake = LakeResource(path=str(tmp_path))
    rng = np.random.default_rng(2)
    events = wallet_events(rng, 240)
    wallets = pd.DataFrame({"id": [f"w-{k}" for k in range(1, 8)],  # w-8: events, no row yet
                            "start_balance": np.round(rng.uniform(0, 1000, 7), 2)})
    compute = ledger_projection(ledger="wallet_ledger", opening="wallets", columns=WALLET)
    projection = compute.projection
    assert projection == LedgerProjection("wallet_ledger", "wallets", WALLET)
    lake.write("wallets", wallets)
    done = 0
    for end in (30, 31, 31, 150, 240):
        chunk = events.iloc[:end]
        shuffled = pd.concat([chunk, chunk.iloc[: end // 4]]).sample(frac=1.0, random_state=end)
        report = projection.materialize({"wallet_ledger": shuffled, "wallets": wallets},
                                        lake=lake, dataset="wallet_balance")
        assert report.events_folded == end - done and report.events_total == end
        assert report.from_scratch == (done == 0)
        done = end
        stored = lake.read("wallet_balance")
        assert list(stored.columns[:6]) == ["wallet_id", "balance", "events_applied",
                                            "opening_balance", "ledger_total", "last_event_id"]
        full = compute({"wallet_ledger": chunk, "wallets": wallets})
        pd.testing.assert_frame_equal(stored[list(full.columns)].reset_index(drop=True), full,
                                      check_exact=True, check_dtype=False)
    # the figures: start balance + credits - debits, per wallet
    sign = events["direction"].map({"credit": 1, "debit": -1})
    expected = (events.assign(s=events["value"] * sign).groupby("wallet_id")["s"].sum())
    got = lake.read("wallet_balance").set_index("wallet_id")
    for wallet, row in got.iterrows():
        assert row.ledger_total == pytest.approx(expected.get(wallet, 0.0),
                                                 abs=1e-6 * row.events_applied)  # 1e-6 each
        assert row.balance == row.opening_balance + row.ledger_total
    assert "w-8" not in got.index  # not in the opening dataset (yet)
    # the checkpoint is stored under the wallet ledger's own column names
    _, _, checkpoint = lake.read_checkpointed("wallet_balance")
    assert checkpoint["folded"].column_names == ["txn", "wallet_id", "delta_micro", "booked_at"]
    assert checkpoint["state"].column_names[0] == "wallet_id"

    # a new wallet arrives with the events it already had
    wallets = pd.concat([wallets, pd.DataFrame({"id": ["w-8"], "start_balance": [5.0]})])
    report = projection.materialize({"wallet_ledger": events, "wallets": wallets}, lake=lake,
                                    dataset="wallet_balance")
    assert report.events_folded == 0 and report.customers_new == 1
    lake.write("wallets", wallets)

    # explain: a balance traced to its events, by the wallet's key given as a string
    lake.write("wallet_ledger", provenance(events))
    e = ledger_audit.explain("w-8", ledger="wallet_ledger", projection="wallet_balance",
                             opening="wallets", columns=WALLET, lake=lake)
    mine = events[events.wallet_id == "w-8"]
    assert e.adds_up and not e.problems and e.account == "w-8" and not e.pending
    assert sorted(ev["event_id"] for ev in e.events) == sorted(mine.txn)
    assert {ev["kind"] for ev in e.events} <= {"credit", "debit"}
    assert e.opening_balance == 5.0 == e.opening_now
    assert run_explain("w-3", ledger="wallet_ledger", projection="wallet_balance",
                       opening="wallets", columns=WALLET, lake=lake) == 0
    text = capsys.readouterr().out
    assert "wallet w-3: balance" in text and "wallets.start_balance" in text and "OK" in text

    # a debit rewritten in place after it was folded: refused, in the wallet's words
    changed = events.assign(value=np.where(events.txn == "t00000", 1e6, events.value))
    with pytest.raises(LedgerIntegrityError) as exc:
        projection.materialize({"wallet_ledger": changed, "wallets": wallets}, lake=lake,
                               dataset="wallet_balance")
    assert "'t00000'" in str(exc.value) and "wallet w-" in str(exc.value)


def test_a_rebuild_from_the_log_compares_and_replaces_under_the_wallet_names(tmp_path):
    """``compare`` and ``replace`` (the halves of ``conflux ledger rebuild`` after the log is
    read) on a wallet ledger: the fold of the whole log equals the incremental projection."""
    lake = LakeResource(path=str(tmp_path))
    rng = np.random.default_rng(4)
    events = wallet_events(rng, 80, wallets=4)
    wallets = pd.DataFrame({"id": ["w-1", "w-2", "w-3", "w-4"], "start_balance": [0.0] * 4})
    lake.write("wallets", wallets)
    projection = LedgerProjection("wallet_ledger", "wallets", WALLET)
    for end in (20, 80):
        projection.materialize({"wallet_ledger": events.iloc[:end], "wallets": wallets},
                               lake=lake, dataset="wallet_balance")
    log = provenance(events)
    kept, repeated, conflicts = ledger_audit.choose_copies(
        pd.concat([log, log.iloc[:5]]), log.iloc[0:0][["txn", "__topic", "__partition",
                                                      "__offset"]], WALLET)
    assert repeated == 5 and conflicts == [] and len(kept) == 80
    from conflux.ledger import fold as fold_math
    folded = fold_math.folded_rows(WALLET.events(kept), WALLET.sign)
    state = fold_math.fold(fold_math.empty_state(), folded)
    rebuilt = ledger_audit.Rebuild(
        projection=WALLET.output(fold_math.project(
            ledger_audit.opening_balances(lake, "wallets", WALLET), state)),
        folded=folded, state=state, events=kept, records_read=85, invalid={}, repeated=5,
        conflicts=[], ends={"wallets": {0: 40, 1: 40}}, columns=WALLET)
    comparison = ledger_audit.compare(rebuilt, projection="wallet_balance", lake=lake)
    assert comparison.identical, comparison.as_dict()
    tampered = lake.read("wallet_balance")
    tampered.loc[tampered.wallet_id == "w-2", "balance"] += 1.0
    lake.rewrite_checkpointed("wallet_balance", lambda cur, ck: (tampered, ck))
    comparison = ledger_audit.compare(rebuilt, projection="wallet_balance", lake=lake)
    assert not comparison.identical
    assert comparison.differences == [{"account": "w-2", "column": "balance",
                                       "stored": pytest.approx(
                                           comparison.differences[0]["rebuilt"] + 1.0),
                                       "rebuilt": comparison.differences[0]["rebuilt"]}]
    ledger_audit.replace(rebuilt, projection="wallet_balance", lake=lake)
    assert ledger_audit.compare(rebuilt, projection="wallet_balance", lake=lake).identical


def test_ledger_columns_are_required_and_checked():
    with pytest.raises(TypeError):
        LedgerColumns()  # no defaults for the account, the balance or the kinds
    with pytest.raises(DeclarationError):
        LedgerColumns(account="a", balance="b", signs={"credit": 2})
    with pytest.raises(DeclarationError):
        LedgerColumns(account="kind", balance="b", signs={"credit": 1})  # one column, two parts
    with pytest.raises(DeclarationError):
        LedgerColumns(account="balance", balance="b", signs={"credit": 1})  # an output column
    columns = LedgerColumns(account="a", balance="b", signs={"credit": 1, "debit": -1})
    assert columns.opening_account == "a" and columns.sign == {"credit": 1, "debit": -1}
    hash(columns)  # frozen and hashable: a projection can be compared and kept in sets
