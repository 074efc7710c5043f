"""Event sourcing: a projection of an append-only ledger, maintained incrementally in the lake.

A batch dataset computed by ``ledger_projection(ledger=..., opening=..., columns=...)`` folds
the ``ledger`` event dataset over the opening balances of the ``opening`` dataset;
``columns`` (a ``LedgerColumns``) names the ledger's event id / account / kind / amount / time
columns, the opening dataset's key and balance, and each kind's sign (``conflux/ledger/fold.py``
holds the pure fold). Each materialization folds **only the ledger events not folded yet** and
commits the new projection together with its checkpoint, in one atomic lake commit
(``LakeResource.rewrite_checkpointed``):

* ``folded`` — one row per event folded so far: its event id, its account, the signed amount
  it contributed (``delta_micro``), its event time (the ledger's column names for those three).
  "Not folded yet" is "event id not in it", so events arriving in any order, late, or through
  either ingest path are folded exactly once, and a repeated event id (which the append-only
  ledger ignores anyway) never counts twice.
* ``state`` — per account (the ledger's account column name): exact ledger total, events
  applied, latest event. A materialization adds the new events' group sums to it (work
  proportional to what is new, plus one anti-join of the ledger's event id column).

A checkpoint whose tables lack the columns the ``LedgerColumns`` name (written under other
column names) is not used: the next materialization folds the whole ledger from scratch and
replaces it.

The opening balance is joined afresh every time from the opening dataset: a changed opening
balance *re-bases* the balance (``balance = current opening balance + every folded event``), a
new account starts from its own opening balance (plus any events that arrived for it before it
did), an account removed from the opening dataset leaves the projection but keeps its folded
state for when it returns.

Every fold also checks the append-only promise: an event already folded whose account, signed
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
from conflux.ledger.fold import ACCOUNT, LedgerColumns
from conflux.io.lake import LakeResource


@dataclass
class FoldReport:
    """What one incremental materialization of a projection did."""

    rows: int = 0
    events_in_ledger: int = 0
    events_folded: int = 0           # folded by this materialization
    events_total: int = 0            # folded so far, in all
    customers_touched: int = 0       # accounts with newly folded events
    customers_rebased: int = 0       # opening balance changed since the stored projection
    customers_new: int = 0           # rows (accounts) not in the stored projection
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
                f"{self.events_total} folded in all, {self.rows} account(s), "
                f"{self.customers_touched} touched, {self.customers_rebased} re-based on a "
                f"changed opening balance, {self.customers_new} new")
        if self.folded_not_in_ledger:
            text += (f"; {self.folded_not_in_ledger} folded event(s) not in the ledger "
                     f"dataset yet (e.g. {self.folded_not_in_ledger_examples[0]})")
        return text + (f"; checkpoint {self.generation}" if self.generation else "; unchanged")


def load_checkpoint(checkpoint: dict[str, pa.Table], columns: LedgerColumns
                    ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(folded events, per-account state) from stored checkpoint tables, under canonical
    names; None when absent — or stored under other column names than ``columns`` gives (the
    next fold then starts from scratch)."""
    if "folded" not in checkpoint or "state" not in checkpoint:
        return None
    folded_names, state_names = columns.folded_names(), columns.state_names()
    want_folded = [folded_names.get(c, c) for c in fold_math.empty_folded().columns]
    want_state = [state_names.get(c, c) for c in fold_math.empty_state().columns]
    if (any(c not in checkpoint["folded"].column_names for c in want_folded)
            or any(c not in checkpoint["state"].column_names for c in want_state)):
        return None
    folded = checkpoint["folded"].select(want_folded).to_pandas().rename(
        columns={v: k for k, v in folded_names.items()})
    state = checkpoint["state"].select(want_state).to_pandas().rename(
        columns={v: k for k, v in state_names.items()})
    return fold_math.typed_folded(folded), fold_math.typed_state(state)


def checkpoint_tables(folded: pd.DataFrame, state: pd.DataFrame,
                      columns: LedgerColumns) -> dict[str, pd.DataFrame]:
    """The checkpoint tables to store (the ledger's names for event id, account and time)."""
    return {"folded": folded.reset_index(drop=True).rename(columns=columns.folded_names()),
            "state": state.reset_index(drop=True).rename(columns=columns.state_names())}


def changed_events(folded: pd.DataFrame, ledger_rows: pd.DataFrame) -> pd.DataFrame:
    """Events folded earlier that the ledger holds differently now (account, signed amount or
    time): columns ``event_id`` and ``<column>_folded`` / ``<column>_ledger`` (canonical)."""
    both = folded.merge(ledger_rows, on="event_id", suffixes=("_folded", "_ledger"))
    differs = pd.Series(False, index=both.index)
    for column in (ACCOUNT, "delta_micro", "occurred_at"):
        differs |= both[f"{column}_folded"] != both[f"{column}_ledger"]
    return both[differs]


def integrity_message(ledger: str, projection: str, changed: pd.DataFrame,
                      label: str = "account") -> str:
    first = changed.iloc[0]
    return (f"{ledger}: {len(changed)} event(s) folded into {projection} are held differently "
            f"by the append-only ledger now, e.g. event_id {first.event_id!r}: folded as {label} "
            f"{first.account_folded}, {first.delta_micro_folded / fold_math.MICRO:+} at "
            f"{first.occurred_at_folded}; ledger now says {label} {first.account_ledger}, "
            f"{first.delta_micro_ledger / fold_math.MICRO:+} at {first.occurred_at_ledger}. "
            f"The ledger must never change in place: find out why, then rebuild the projection "
            f"(`conflux ledger rebuild`)")


def fold_increment(ledger: pd.DataFrame | None, opening: pd.DataFrame,
                   stored: tuple[pd.DataFrame, pd.DataFrame] | None, *,
                   columns: LedgerColumns, ledger_name: str = "ledger",
                   projection_name: str = "projection"
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, FoldReport]:
    """One incremental step (pure): fold the ledger rows whose event id is not in the stored
    checkpoint into the stored state; returns (projection, folded, state, report) — the
    projection under the user's names (``columns``), folded and state canonical (as
    ``load_checkpoint`` gives them and ``checkpoint_tables`` takes them).

    Raises:
        LedgerIntegrityError: an event folded earlier is held differently by the ledger now.
    """
    report = FoldReport(from_scratch=stored is None)
    folded, state = stored if stored is not None else (fold_math.empty_folded(),
                                                       fold_math.empty_state())
    rows = fold_math.folded_rows(columns.events(ledger), columns.sign)
    report.events_in_ledger = len(rows)
    rows = rows.drop_duplicates("event_id", keep="first")
    seen = fold_math.isin(rows["event_id"], folded["event_id"])
    if seen.any():
        changed = changed_events(folded, rows[seen])
        if len(changed):
            raise LedgerIntegrityError(integrity_message(ledger_name, projection_name, changed,
                                                         columns.label))
    new = rows[~seen]
    missing = ~fold_math.isin(folded["event_id"], rows["event_id"])
    report.folded_not_in_ledger = int(missing.sum())
    report.folded_not_in_ledger_examples = sorted(folded.loc[missing, "event_id"].astype(str))[:5]
    state = fold_math.fold(state, new)
    folded = pd.concat([folded, new], ignore_index=True) if len(new) else folded
    out = columns.output(fold_math.project(columns.openings(opening), state))
    report.rows = len(out)
    report.events_folded = len(new)
    report.events_total = len(folded)
    report.customers_touched = int(new[ACCOUNT].nunique())
    return out, folded, state, report


def _compare_with_stored(report: FoldReport, stored_table: pa.Table | None,
                         out: pd.DataFrame, columns: LedgerColumns) -> bool:
    """Fill the re-based / new counts; True when ``out`` equals what is stored."""
    if stored_table is None:
        report.customers_new = len(out)
        return False
    old = stored_table.to_pandas()
    if "opening_balance" not in old.columns or columns.account not in old.columns:
        report.customers_new = len(out)
        return False
    both = out.merge(old, on=columns.account, how="left", suffixes=("", "_old"), indicator=True)
    report.customers_new = int((both["_merge"] == "left_only").sum())
    present = both["_merge"] == "both"
    report.customers_rebased = int((present & (both["opening_balance"]
                                               != both["opening_balance_old"])).sum())
    return same_projection(out, old, columns)


def same_projection(a: pd.DataFrame, b: pd.DataFrame, columns: LedgerColumns) -> bool:
    """Exactly equal (every projection column, bit for bit, None equal to None)."""
    names = columns.output_columns
    if any(c not in b.columns for c in names) or len(a) != len(b):
        return False
    a = a[names].sort_values(columns.account).reset_index(drop=True)
    b = b[names].sort_values(columns.account).reset_index(drop=True)
    for c in names:
        left, right = a[c].astype(object), b[c].astype(object)
        if not ((left == right) | (left.isna() & right.isna())).all():
            return False
    return True


@dataclass(frozen=True)
class LedgerProjection:
    """How a batch dataset keeps itself as an incremental projection of a ledger.

    Args:
        ledger: the append-only event dataset folded (an upstream of the projection).
        opening: the dataset giving each account's opening balance (an upstream too).
        columns: which columns of both play which part, and each event kind's sign.
    """

    ledger: str
    opening: str
    columns: LedgerColumns

    def full(self, inputs: dict) -> pd.DataFrame:
        """The whole fold at once, from nothing (no checkpoint involved)."""
        return fold_math.full_fold(inputs[self.ledger], inputs[self.opening], self.columns)

    def materialize(self, inputs: dict, *, lake: LakeResource, dataset: str) -> FoldReport:
        """Fold what is new in ``inputs[ledger]`` into the projection stored as ``dataset``
        and commit projection + checkpoint atomically (under the partition lock, so two
        materializations never fold the same events twice). Nothing is written when nothing
        changed."""
        ledger = fold_math.pandas(inputs[self.ledger])
        opening = fold_math.pandas(inputs[self.opening])
        box: dict = {}

        def step(current: pa.Table | None, checkpoint: dict[str, pa.Table]):
            stored = load_checkpoint(checkpoint, self.columns)
            out, folded, state, report = fold_increment(
                ledger, opening, stored, columns=self.columns, ledger_name=self.ledger,
                projection_name=dataset)
            box["report"] = report
            if _compare_with_stored(report, current, out, self.columns) \
                    and not report.events_folded and stored is not None:
                return None
            return out, checkpoint_tables(folded, state, self.columns)

        generation = lake.rewrite_checkpointed(dataset, step)
        report = box["report"]
        report.generation = generation
        return report


def ledger_projection(*, ledger: str, opening: str, columns: LedgerColumns) -> Callable:
    """The ``compute`` of a batch dataset that is an incremental projection of ``ledger``.

    Called with the inputs it folds everything at once (a plain batch join); the batch path
    sees its ``projection`` attribute and folds only what is new instead, keeping a checkpoint
    beside the projection in the lake.

    Args:
        ledger: name of the append-only event dataset folded (an upstream of the dataset).
        opening: name of the dataset with the opening balances (an upstream too).
        columns: the ledger's event id / account / kind / amount / time columns, the opening
            dataset's key and balance columns, and each event kind's sign.

    Returns:
        ``compute(inputs) -> DataFrame`` with a ``projection`` attribute (``LedgerProjection``):
        one row per account of ``opening`` with the columns ``columns.account``, ``balance``,
        ``events_applied``, ``opening_balance``, ``ledger_total``, ``last_event_id``.

    Examples:
        >>> CUSTOMER_BALANCE = BatchDataset(
        ...     name="customer_balance", contract=tpch.CustomerBalance, key=("c_custkey",),
        ...     upstream=("customer_ledger", "customer"),
        ...     compute=ledger_projection(
        ...         ledger="customer_ledger", opening="customer",
        ...         columns=LedgerColumns(account="c_custkey", balance="c_acctbal",
        ...                               label="customer", signs={"deposit": 1,
        ...                               "withdrawal": -1, "adjustment": 1})))
    """
    projection = LedgerProjection(ledger=ledger, opening=opening, columns=columns)

    def ledger_projection_compute(inputs: dict) -> pd.DataFrame:
        return projection.full(inputs)

    ledger_projection_compute.projection = projection
    return ledger_projection_compute
