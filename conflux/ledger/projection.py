"""Event sourcing: a projection of an append-only ledger, maintained incrementally in the lake.

``customer_balance`` folds ``customer_ledger`` over ``ops.customer.c_acctbal``
(``conflux/ledger/fold.py`` holds the pure fold). Each materialization folds **only the
ledger events not folded yet** and commits the new projection together with its checkpoint,
in one atomic lake commit (``LakeResource.rewrite_checkpointed``):

* ``folded`` — one row per event folded so far: ``event_id``, ``c_custkey``, the signed amount
  it contributed (``delta_micro``), ``occurred_at``. "Not folded yet" is "``event_id`` not in
  it", so events arriving in any order, late, or through either ingest path are folded exactly
  once, and a repeated ``event_id`` (which the append-only ledger ignores anyway) never counts
  twice.
* ``state`` — per customer: exact ledger total, events applied, latest event. A materialization
  adds the new events' group sums to it (work proportional to what is new, plus one anti-join of
  the ledger's ``event_id`` column).

The opening balance is joined afresh every time from the ``customer`` dataset (``ops.customer``
as loaded): a changed ``c_acctbal`` *re-bases* the balance
(``balance = current c_acctbal + every folded event``), a new customer starts from its own
opening balance (plus any events that arrived for it before it did), a customer removed from
``ops.customer`` leaves the projection but keeps its folded state for when it returns.

Every fold also checks the append-only promise: an event already folded whose customer, signed
amount or time differs in the ledger now fails the materialization (``LEDGER_INTEGRITY``)
instead of silently diverging. ``conflux/ledger/audit.py`` rebuilds the projection from
offset zero and explains a balance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from conflux.core.errors import LedgerIntegrityError
from conflux.ledger import fold as fold_math
from conflux.io.lake import LakeResource


@dataclass
class FoldReport:
    """What one incremental materialization of a projection did."""

    rows: int = 0
    events_in_ledger: int = 0
    events_folded: int = 0           # folded by this materialization
    events_total: int = 0            # folded so far, in all
    customers_touched: int = 0       # customers with newly folded events
    customers_rebased: int = 0       # opening balance changed since the stored projection
    customers_new: int = 0           # rows not in the stored projection
    folded_not_in_ledger: int = 0    # folded events the ledger dataset lacks (a rebuild ran
    folded_not_in_ledger_examples: list[str] = field(default_factory=list)  # ahead of ingest)
    generation: str | None = None    # checkpoint generation committed (None: nothing changed)
    from_scratch: bool = False       # no checkpoint was stored: everything folded now

    def metadata(self) -> dict:
        return {"events_folded": self.events_folded, "events_total": self.events_total,
                "events_in_ledger": self.events_in_ledger,
                "customers_touched": self.customers_touched,
                "customers_rebased": self.customers_rebased,
                "customers_new": self.customers_new,
                "folded_not_in_ledger": self.folded_not_in_ledger,
                "fold": "from scratch" if self.from_scratch else "incremental",
                "checkpoint": self.generation or "unchanged"}

    def summary(self, name: str) -> str:
        how = "from scratch (no checkpoint)" if self.from_scratch else "incrementally"
        text = (f"{name}: folded {self.events_folded} new ledger event(s) {how}; "
                f"{self.events_total} folded in all, {self.rows} customer(s), "
                f"{self.customers_touched} touched, {self.customers_rebased} re-based on a "
                f"changed opening balance, {self.customers_new} new")
        if self.folded_not_in_ledger:
            text += (f"; {self.folded_not_in_ledger} folded event(s) not in the ledger "
                     f"dataset yet (e.g. {self.folded_not_in_ledger_examples[0]})")
        return text + (f"; checkpoint {self.generation}" if self.generation else "; unchanged")


def load_checkpoint(checkpoint: dict[str, pa.Table]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(folded events, per-customer state) from stored checkpoint tables; None when absent."""
    if "folded" not in checkpoint or "state" not in checkpoint:
        return None
    folded = checkpoint["folded"].to_pandas().astype(fold_math.FOLDED)
    state = checkpoint["state"].to_pandas().astype(fold_math.STATE)
    return folded, state


def checkpoint_tables(folded: pd.DataFrame, state: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"folded": folded.reset_index(drop=True), "state": state.reset_index(drop=True)}


def changed_events(folded: pd.DataFrame, ledger_rows: pd.DataFrame) -> pd.DataFrame:
    """Events folded earlier that the ledger holds differently now (customer, signed amount or
    time): columns ``event_id`` and ``<column>_folded`` / ``<column>_ledger``."""
    both = folded.merge(ledger_rows, on="event_id", suffixes=("_folded", "_ledger"))
    differs = pd.Series(False, index=both.index)
    for column in ("c_custkey", "delta_micro", "occurred_at"):
        differs |= both[f"{column}_folded"] != both[f"{column}_ledger"]
    return both[differs]


def integrity_message(ledger: str, projection: str, changed: pd.DataFrame) -> str:
    first = changed.iloc[0]
    return (f"{ledger}: {len(changed)} event(s) folded into {projection} are held differently "
            f"by the append-only ledger now, e.g. event_id {first.event_id!r}: folded as customer "
            f"{first.c_custkey_folded}, {first.delta_micro_folded / fold_math.MICRO:+} at "
            f"{first.occurred_at_folded}; ledger now says customer {first.c_custkey_ledger}, "
            f"{first.delta_micro_ledger / fold_math.MICRO:+} at {first.occurred_at_ledger}. "
            f"The ledger must never change in place: find out why, then rebuild the projection "
            f"(`conflux ledger rebuild`)")


def fold_increment(ledger: pd.DataFrame | None, customers: pd.DataFrame,
                   stored: tuple[pd.DataFrame, pd.DataFrame] | None, *,
                   ledger_name: str = "customer_ledger",
                   projection_name: str = "customer_balance"
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, FoldReport]:
    """One incremental step (pure): fold the ledger rows whose ``event_id`` is not in the stored
    checkpoint into the stored state; returns (projection, folded, state, report).

    Raises:
        LedgerIntegrityError: an event folded earlier is held differently by the ledger now.
    """
    report = FoldReport(from_scratch=stored is None)
    folded, state = stored if stored is not None else (fold_math.empty_folded(),
                                                       fold_math.empty_state())
    rows = fold_math.folded_rows(ledger)
    report.events_in_ledger = len(rows)
    rows = rows.drop_duplicates("event_id", keep="first")
    seen = fold_math.isin(rows["event_id"], folded["event_id"])
    if seen.any():
        changed = changed_events(folded, rows[seen])
        if len(changed):
            raise LedgerIntegrityError(integrity_message(ledger_name, projection_name, changed))
    new = rows[~seen]
    missing = ~fold_math.isin(folded["event_id"], rows["event_id"])
    report.folded_not_in_ledger = int(missing.sum())
    report.folded_not_in_ledger_examples = sorted(folded.loc[missing, "event_id"].astype(str))[:5]
    state = fold_math.fold(state, new)
    folded = pd.concat([folded, new], ignore_index=True) if len(new) else folded
    out = fold_math.project(customers, state)
    report.rows = len(out)
    report.events_folded = len(new)
    report.events_total = len(folded)
    report.customers_touched = int(new["c_custkey"].nunique())
    return out, folded, state, report


def _compare_with_stored(report: FoldReport, stored_table: pa.Table | None,
                         out: pd.DataFrame) -> bool:
    """Fill the re-based / new counts; True when ``out`` equals what is stored."""
    if stored_table is None:
        report.customers_new = len(out)
        return False
    old = stored_table.to_pandas()
    if "opening_balance" not in old.columns:
        report.customers_new = len(out)
        return False
    both = out.merge(old, on="c_custkey", how="left", suffixes=("", "_old"), indicator=True)
    report.customers_new = int((both["_merge"] == "left_only").sum())
    present = both["_merge"] == "both"
    report.customers_rebased = int((present & (both["opening_balance"]
                                               != both["opening_balance_old"])).sum())
    return same_projection(out, old)


def same_projection(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Exactly equal (every contract column, bit for bit, None equal to None)."""
    columns = fold_math.OUTPUT
    if any(c not in b.columns for c in columns) or len(a) != len(b):
        return False
    a = a[columns].sort_values("c_custkey").reset_index(drop=True)
    b = b[columns].sort_values("c_custkey").reset_index(drop=True)
    for c in columns:
        left, right = a[c].astype(object), b[c].astype(object)
        if not ((left == right) | (left.isna() & right.isna())).all():
            return False
    return True


@dataclass(frozen=True)
class LedgerProjection:
    """How a batch dataset keeps itself as an incremental projection of a ledger.

    Args:
        ledger: the append-only event dataset folded (an upstream of the projection).
        opening: the dataset giving each customer's opening balance (``c_custkey``,
            ``c_acctbal``; an upstream too).
    """

    ledger: str = "customer_ledger"
    opening: str = "customer"

    def full(self, inputs: dict) -> pd.DataFrame:
        """The whole fold at once, from nothing (no checkpoint involved)."""
        return fold_math.customer_balance({"customer_ledger": inputs[self.ledger],
                                           "customer": inputs[self.opening]})

    def materialize(self, inputs: dict, *, lake: LakeResource, dataset: str) -> FoldReport:
        """Fold what is new in ``inputs[ledger]`` into the projection stored as ``dataset``
        and commit projection + checkpoint atomically (under the partition lock, so two
        materializations never fold the same events twice). Nothing is written when nothing
        changed."""
        ledger = fold_math.pandas(inputs[self.ledger])
        customers = fold_math.pandas(inputs[self.opening])
        box: dict = {}

        def step(current: pa.Table | None, checkpoint: dict[str, pa.Table]):
            stored = load_checkpoint(checkpoint)
            out, folded, state, report = fold_increment(
                ledger, customers, stored, ledger_name=self.ledger, projection_name=dataset)
            box["report"] = report
            if _compare_with_stored(report, current, out) and not report.events_folded \
                    and stored is not None:
                return None
            return out, checkpoint_tables(folded, state)

        generation = lake.rewrite_checkpointed(dataset, step)
        report = box["report"]
        report.generation = generation
        return report


def ledger_projection(*, ledger: str, opening: str) -> Callable:
    """The ``compute`` of a batch dataset that is an incremental projection of ``ledger``.

    Called with the inputs it folds everything at once (a plain batch join); the batch path
    sees its ``projection`` attribute and folds only what is new instead, keeping a checkpoint
    beside the projection in the lake.

    Args:
        ledger: name of the append-only event dataset folded (an upstream of the dataset).
        opening: name of the dataset with the opening balances (``c_custkey``, ``c_acctbal``).

    Returns:
        ``compute(inputs) -> DataFrame`` with a ``projection`` attribute (``LedgerProjection``).

    Examples:
        >>> CUSTOMER_BALANCE = BatchDataset(
        ...     name="customer_balance", contract=tpch.CustomerBalance, key=("c_custkey",),
        ...     upstream=("customer_ledger", "customer"),
        ...     compute=ledger_projection(ledger="customer_ledger", opening="customer"))
    """
    projection = LedgerProjection(ledger=ledger, opening=opening)

    def customer_balance(inputs: dict) -> pd.DataFrame:
        return projection.full(inputs)

    customer_balance.projection = projection
    return customer_balance
