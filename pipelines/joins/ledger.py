"""``customer_balance``: the projection of the append-only ``customer_ledger``."""

from __future__ import annotations

import pandas as pd

SIGN = {"deposit": 1.0, "withdrawal": -1.0, "adjustment": 1.0}


def _pandas(data) -> pd.DataFrame | None:
    return data.to_pandas() if hasattr(data, "to_pandas") and not isinstance(data, pd.DataFrame) else data


def customer_balance(inputs: dict) -> pd.DataFrame:
    """Fold ledger events over each customer's opening balance (``ops.customer.c_acctbal``)."""
    customers = _pandas(inputs["customer"])[["c_custkey", "c_acctbal"]]
    ledger = _pandas(inputs["customer_ledger"])
    if ledger is None or ledger.empty:
        folded = pd.DataFrame({"c_custkey": pd.Series(dtype="int64"),
                               "delta": pd.Series(dtype="float64"),
                               "events_applied": pd.Series(dtype="int64")})
    else:
        ledger = ledger.drop_duplicates("event_id")
        signed = ledger["amount"] * ledger["kind"].map(SIGN)
        folded = (ledger.assign(delta=signed).groupby("c_custkey", as_index=False)
                  .agg(delta=("delta", "sum"), events_applied=("event_id", "count")))
    out = customers.merge(folded, on="c_custkey", how="left")
    out["balance"] = out["c_acctbal"] + out["delta"].fillna(0.0)
    out["events_applied"] = out["events_applied"].fillna(0).astype("int64")
    return out[["c_custkey", "balance", "events_applied"]].sort_values("c_custkey").reset_index(drop=True)
