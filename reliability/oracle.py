"""The chaos harness's ground truth and its verdicts (pure pandas; no Kafka, no lake).

The truth is computed from what the broker acknowledged — each record with its producer
timestamp (``__ts``) and offset (``__offset``) — by the platform's documented rule: per key, the
newest record by producer timestamp, then offset, wins (``conflux/event/ingest.py``); an
append-only dataset keeps the first version of a key (its events are never updated). An event
dataset promises that a key lives in exactly one partition, the day of its winning version's
event time: a re-dated key leaves its old day (``LakeResource.upsert_many``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ORDER = ["__ts", "__offset"]
MICRO = 1_000_000


def winners(produced: pd.DataFrame, key: list[str], *, append_only: bool = False) -> pd.DataFrame:
    """Per key, the produced row the platform must keep: the newest by ``__ts`` then
    ``__offset`` (the oldest for ``append_only``)."""
    ordered = produced.sort_values(ORDER, kind="stable")
    return ordered.drop_duplicates(key, keep="first" if append_only else "last").reset_index(drop=True)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Dates as ISO days, ``occurred_at`` as naive UTC text, so JSON and Delta values compare."""
    out = df.copy()
    for col in out.columns:
        if col.endswith("date") or col == "__day":
            out[col] = pd.to_datetime(out[col]).dt.date.astype(str)
        elif col == "occurred_at":
            out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(None).astype(str)
    return out


def judge(expected: pd.DataFrame, stored: pd.DataFrame, key: list[str], columns: list[str],
          day_of: str | None = None) -> dict[str, int]:
    """Lost, extra, twice-stored and changed keys of ``stored`` against ``expected``.

    ``stored`` is every current row of the workload's keys, read as they are (one row per file
    row: a key stored twice appears twice). ``duplicated`` counts rows beyond one per key;
    ``changed`` counts keys with a stored row whose ``columns`` differ from the expected ones —
    or, with ``day_of`` (the event-time column), whose partition ``__day`` is not that day.
    """
    exp = normalise(expected[key + columns]).set_index(key).sort_index()
    got = normalise(stored)
    dup = int(got.duplicated(key).sum())
    got = got.set_index(key).sort_index()
    missing = exp.index.difference(got.index)
    extra = got.index.difference(exp.index).unique()
    both = got[got.index.isin(exp.index)]
    want = exp.loc[both.index]
    bad = pd.Series(False, index=both.index)
    for col in columns:
        x, y = want[col], both[col]
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_float_dtype(y):
            diff = ~np.isclose(x.astype(float).to_numpy(), y.astype(float).to_numpy(),
                               rtol=0, atol=1e-9)
            diff = pd.Series(diff, index=both.index)
        else:
            diff = x.astype(str) != y.astype(str)
        bad |= diff
    if day_of is not None and "__day" in both:
        bad |= both["__day"].astype(str) != want[day_of].astype(str)
    changed = bad[bad].index.unique()
    return {"expected": len(exp), "stored": len(got), "missing": len(missing),
            "extra": len(extra), "duplicated": dup, "changed": len(changed)}


def fold(events: pd.DataFrame, signs: dict[str, int], account: str) -> pd.DataFrame:
    """Per account: the signed sum of the events' amounts in micro-units (each amount rounded to
    1e-6 once) and the number of events — what a projection adds for them."""
    micro = np.rint(events["amount"].to_numpy(dtype="float64") * MICRO).astype("int64")
    sign = events["kind"].map(signs).to_numpy(dtype="int64")
    out = pd.DataFrame({account: events[account].to_numpy(), "micro": micro * sign, "events": 1})
    return out.groupby(account).sum()


def judge_balances(before: pd.DataFrame, after: pd.DataFrame, folded: pd.DataFrame,
                   account: str) -> dict[str, int]:
    """Customers whose projection did not move by exactly the fold of the run's events.

    ``before`` / ``after``: the projection (``ledger_total``, ``events_applied``, ``balance``,
    ``opening_balance`` per ``account``) before the run's events and after them. For each
    account with events: ``ledger_total`` grew by the fold's sum, ``events_applied`` by its
    count, and ``balance = opening_balance + ledger_total``; accounts without events: unchanged.
    """
    b = before.set_index(account) if len(before) else pd.DataFrame(
        columns=["ledger_total", "events_applied"])
    a = after.set_index(account)
    wrong = missing = 0
    for acct, row in a.iterrows():
        prior = b.loc[acct] if acct in b.index else None
        total0 = round(float(prior["ledger_total"]) * MICRO) if prior is not None else 0
        count0 = int(prior["events_applied"]) if prior is not None else 0
        add = folded.loc[acct] if acct in folded.index else None
        want_micro = total0 + (int(add["micro"]) if add is not None else 0)
        want_count = count0 + (int(add["events"]) if add is not None else 0)
        ok = (round(float(row["ledger_total"]) * MICRO) == want_micro
              and int(row["events_applied"]) == want_count
              and abs(float(row["balance"]) - float(row["opening_balance"])
                      - float(row["ledger_total"])) < 1e-6)
        wrong += not ok
    missing = int((~folded.index.isin(a.index)).sum())
    return {"customers": len(a), "with_events": len(folded), "wrong": wrong,
            "missing": missing}
