"""Audit a ledger projection: rebuild it from offset zero, and trace a balance to its events.

* ``rebuild`` reads every partition of the ledger's topics **from offset zero** to their current
  end, through the same decode → contract → validate code as ingestion (``decode_records``;
  invalid records are skipped and counted, not dead-lettered again), keeps one record per
  event id and folds them from nothing over the current opening balances (the projection's
  ``LedgerColumns`` say which columns are which). Which copy of a
  repeated ``event_id`` counts follows the ledger: the copy the append-only ledger dataset
  stored (same topic/partition/offset); for events it does not hold yet, the earliest by
  (Kafka timestamp, partition, offset) — what ingestion would store. Repeated ids whose copies
  differ in content are reported as conflicts.
* ``compare`` sets a rebuild beside the stored projection *and* its checkpoint: the projection
  rows (every column, exactly), the set of events folded, the per-account state.
* ``replace`` commits a rebuild as the projection (the same atomic commit as a materialization).
* ``explain`` traces one account's balance: the opening balance it is based on and every event
  folded into it, with its provenance, and checks that they add up to the stored balance.

No Dagster here beyond the resources; the CLI (``conflux ledger``) formats the results.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pandas as pd

from conflux.core.errors import LedgerRebuildError, ProjectionNotFoundError
from conflux.core.declarations import EventDataset
from conflux.event.decode import ContractResolver
from conflux.event.ingest import CORRELATION_HEADER, decode_records
from conflux.ledger import fold as fold_math
from conflux.ledger.fold import ACCOUNT, LedgerColumns
from conflux.ledger.projection import checkpoint_tables, load_checkpoint, same_projection
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource

EXAMPLES = 10


# --- rebuild from offset zero ------------------------------------------------------------------
@dataclass
class LogRead:
    """Every valid record of a ledger's topics from offset zero (one row per record, with its
    provenance), and what was skipped."""

    rows: pd.DataFrame
    records_read: int
    invalid: Counter
    ends: dict[str, dict[int, int]]  # topic -> partition -> end offset read up to


@dataclass
class Rebuild:
    """A projection folded from nothing out of the whole log."""

    projection: pd.DataFrame         # the user's column names
    folded: pd.DataFrame             # canonical names (conflux/ledger/fold.py)
    state: pd.DataFrame              # canonical names
    events: pd.DataFrame             # the record kept per event id, with provenance
    records_read: int
    invalid: Counter
    repeated: int                    # records whose event_id an earlier one already had
    conflicts: list[str]             # repeated event_ids whose copies differ in content
    ends: dict[str, dict[int, int]]
    columns: LedgerColumns

    def summary(self) -> dict:
        return {"records_read": self.records_read, "events": len(self.events),
                "repeated_event_ids_ignored": self.repeated,
                "invalid_records_skipped": sum(self.invalid.values()),
                "invalid_reasons": dict(self.invalid), "conflicting_event_ids": self.conflicts,
                "accounts": len(self.projection),
                "offsets": {t: {str(p): e for p, e in sorted(ends.items())}
                            for t, ends in self.ends.items()}}


def read_log(ledger: EventDataset, *, kafka: KafkaResource,
             resolver: ContractResolver) -> LogRead:
    """Read and validate every record of ``ledger``'s topics from offset zero.

    Raises:
        LedgerRebuildError: a topic does not exist, or retention already removed its first
            records (a rebuild from offset zero is impossible).
    """
    ranges, ends = [], {}
    for topic in ledger.topics:
        offsets = kafka.offsets_at(topic, 0)
        if offsets is None:
            raise LedgerRebuildError(f"{ledger.name}: topic {topic!r} does not exist")
        for partition, (_, begin, end) in sorted(offsets.items()):
            if begin > 0:
                raise LedgerRebuildError(
                    f"{ledger.name}: {topic}[{partition}] starts at offset {begin}: records "
                    f"before it were removed (retention), so the ledger cannot be rebuilt from "
                    f"offset zero; keep ledger topics forever (retention.ms=-1)")
            ranges.append((topic, partition, 0, end))
        ends[topic] = {p: e for p, (_, _, e) in offsets.items()}
    decoded, seen = decode_records(ledger, kafka.read_ranges(ranges), resolver)
    columns = list(ledger.fields)
    rows = (pd.DataFrame(decoded.rows, columns=columns) if decoded.rows
            else pd.DataFrame({c: pd.Series(dtype=object) for c in columns}))
    recs = decoded.records
    rows["__topic"] = [r.topic for r in recs]
    rows["__partition"] = np.array([r.partition for r in recs], dtype="int64")
    rows["__offset"] = np.array([r.offset for r in recs], dtype="int64")
    rows["__ts"] = np.array([r.timestamp_ms for r in recs], dtype="int64")
    rows["__correlation_id"] = [(r.header(CORRELATION_HEADER) or b"").decode(errors="replace")
                                for r in recs]
    return LogRead(rows=rows, records_read=seen, invalid=Counter(d.code for d in decoded.dead),
                   ends=ends)


def stored_provenance(lake: LakeResource, ledger: str, columns: LedgerColumns) -> pd.DataFrame:
    """The event id and the topic/partition/offset of the copy the ledger dataset stored."""
    names = [columns.event_id, "__topic", "__partition", "__offset"]
    table = lake.read_partitions(ledger)
    if table is None or not all(c in table.column_names for c in names):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in names})
    return table.select(names).to_pandas()


def choose_copies(log: pd.DataFrame, stored: pd.DataFrame, columns: LedgerColumns
                  ) -> tuple[pd.DataFrame, int, list[str]]:
    """One record per event id: the copy the ledger stored, else the earliest by (Kafka
    timestamp, partition, offset). Returns (records kept, repeated records, conflicting ids);
    the user's column names in and out."""
    if log.empty:
        return log, 0, []
    event_id = columns.event_id
    marked = log.merge(stored.assign(__stored=0), how="left",
                       on=[event_id, "__topic", "__partition", "__offset"])
    marked["__stored"] = marked["__stored"].fillna(1).astype("int64")
    ordered = marked.sort_values([event_id, "__stored", "__ts", "__partition", "__offset"],
                                 kind="stable")
    kept = ordered.drop_duplicates(event_id, keep="first").drop(columns="__stored")
    content = [columns.account, columns.kind, columns.amount, columns.occurred_at]
    distinct = ordered.assign(**{columns.occurred_at: fold_math._naive_us(
        ordered[columns.occurred_at])}).drop_duplicates([event_id, *content])
    conflicts = sorted(distinct.loc[distinct[event_id].duplicated(), event_id].unique())
    return kept.reset_index(drop=True), len(log) - len(kept), [str(c) for c in conflicts]


def opening_balances(lake: LakeResource, opening: str, columns: LedgerColumns) -> pd.DataFrame:
    """The opening dataset's (canonical) ``account``, ``opening`` as stored now."""
    table = lake.read_partitions(opening, columns=[columns.opening_account, columns.balance])
    return columns.openings(None if table is None else table.to_pandas())


def rebuild(ledger: EventDataset, *, opening: str, columns: LedgerColumns, kafka: KafkaResource,
            lake: LakeResource, resolver: ContractResolver) -> Rebuild:
    """Fold ``ledger`` from offset zero over the opening balances stored as ``opening``
    (``columns``: the projection's ``LedgerColumns``)."""
    log = read_log(ledger, kafka=kafka, resolver=resolver)
    events, repeated, conflicts = choose_copies(
        log.rows, stored_provenance(lake, ledger.name, columns), columns)
    folded = fold_math.folded_rows(columns.events(events), columns.sign)
    state = fold_math.fold(fold_math.empty_state(), folded)
    projection = columns.output(fold_math.project(opening_balances(lake, opening, columns), state))
    return Rebuild(projection=projection, folded=folded, state=state, events=events,
                   records_read=log.records_read, invalid=log.invalid, repeated=repeated,
                   conflicts=conflicts, ends=log.ends, columns=columns)


# --- compare / replace -------------------------------------------------------------------------
@dataclass
class Comparison:
    """A rebuild beside the stored projection and its checkpoint."""

    identical: bool
    generation: str | None
    accounts: int
    differences: list[dict] = field(default_factory=list)  # {account, column, stored, rebuilt}
    difference_count: int = 0
    not_folded: list[str] = field(default_factory=list)     # in the log, not in the checkpoint
    not_folded_count: int = 0
    folded_not_in_log: list[str] = field(default_factory=list)
    folded_not_in_log_count: int = 0
    folded_differently: list[str] = field(default_factory=list)  # same id, other contribution
    state_differs: bool = False
    problem: str | None = None       # why nothing could be compared

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _plain(value):
    """A JSON-ready scalar (None for every kind of missing value)."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int(value) -> int | None:
    value = _plain(value)
    return None if value is None else int(value)


def diff_rows(stored: pd.DataFrame, rebuilt: pd.DataFrame) -> tuple[list[dict], int]:
    """Cell differences between two (canonical) projections (accounts missing on one side
    included)."""
    columns = fold_math.OUTPUT
    both = stored.reindex(columns=columns).merge(rebuilt[columns], on=ACCOUNT, how="outer",
                                                 suffixes=("_stored", "_rebuilt"), indicator=True)
    out: list[dict] = []
    total = 0
    for column in columns[1:]:
        left = both[f"{column}_stored"].astype(object)
        right = both[f"{column}_rebuilt"].astype(object)
        differs = ~((left == right) | (left.isna() & right.isna()))
        total += int(differs.sum())
        for i in np.flatnonzero(differs.to_numpy())[:EXAMPLES]:
            side = both["_merge"].iloc[i]
            out.append({"account": _plain(both[ACCOUNT].iloc[i]), "column": column,
                        "stored": _plain(left.iloc[i]) if side != "right_only" else "(missing)",
                        "rebuilt": _plain(right.iloc[i]) if side != "left_only" else "(missing)"})
    out.sort(key=lambda d: (d["account"], columns.index(d["column"])))
    return out[:EXAMPLES], total


def compare(rebuilt: Rebuild, *, projection: str, lake: LakeResource) -> Comparison:
    """Compare a rebuild with the stored projection and its checkpoint, exactly."""
    columns = rebuilt.columns
    content, generation, checkpoint = lake.read_checkpointed(projection)
    stored = load_checkpoint(checkpoint, columns)
    result = Comparison(identical=False, generation=generation, accounts=len(rebuilt.projection))
    if content is None or stored is None:
        result.problem = (f"{projection} is not stored with a checkpoint yet: materialize it "
                          f"first, or replace it with the rebuild (`conflux ledger rebuild`)")
        return result
    current = content.to_pandas()
    result.differences, result.difference_count = diff_rows(
        columns.canonical(current), columns.canonical(rebuilt.projection))
    folded, state = stored
    ids_log, ids_folded = set(rebuilt.folded["event_id"]), set(folded["event_id"])
    not_folded = sorted(ids_log - ids_folded)
    gone = sorted(ids_folded - ids_log)
    result.not_folded, result.not_folded_count = not_folded[:EXAMPLES], len(not_folded)
    result.folded_not_in_log, result.folded_not_in_log_count = gone[:EXAMPLES], len(gone)
    same_ids = folded.merge(rebuilt.folded, on="event_id", suffixes=("", "_log"))
    other = same_ids[(same_ids[ACCOUNT] != same_ids[f"{ACCOUNT}_log"])
                     | (same_ids["delta_micro"] != same_ids["delta_micro_log"])
                     | (same_ids["occurred_at"] != same_ids["occurred_at_log"])]
    result.folded_differently = sorted(other["event_id"].astype(str))[:EXAMPLES]
    result.state_differs = not _same_state(state, rebuilt.state)
    result.identical = (same_projection(current, rebuilt.projection, columns) and not not_folded
                        and not gone and other.empty and not result.state_differs)
    return result


def _same_state(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    a = fold_math.typed_state(a.sort_values(ACCOUNT).reset_index(drop=True))
    b = fold_math.typed_state(b.sort_values(ACCOUNT).reset_index(drop=True))
    if len(a) != len(b):
        return False
    return all(((a[c].astype(object) == b[c].astype(object))
                | (a[c].isna() & b[c].isna())).all() for c in a.columns)


def replace(rebuilt: Rebuild, *, projection: str, lake: LakeResource) -> str:
    """Commit the rebuild as the projection (projection + checkpoint, atomically)."""
    return lake.rewrite_checkpointed(
        projection, lambda current, checkpoint: (
            rebuilt.projection, checkpoint_tables(rebuilt.folded, rebuilt.state,
                                                  rebuilt.columns)))


# --- explain -----------------------------------------------------------------------------------
@dataclass
class Explanation:
    """How one account's stored balance was made."""

    account: object                  # the account key's value (as stored)
    balance: float
    opening_balance: float
    ledger_total: float
    events_applied: int
    last_event_id: str | None
    opening_now: float | None        # its opening balance in the opening dataset now (None:
    #                                  not there)
    events: list[dict]               # folded into the balance, oldest first
    pending: list[dict]              # in the ledger, not folded yet
    recomputed: float                # opening_balance + sum of the events' signed amounts
    events_sum: str                  # that sum, exactly (decimal)
    adds_up: bool
    problems: list[str]
    generation: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _event_dicts(rows: pd.DataFrame) -> list[dict]:
    """Canonical event rows (with ``delta_micro`` and provenance) as JSON-ready dicts."""
    return [{
        "event_id": str(row["event_id"]), "kind": _plain(row["kind"]),
        "amount": _plain(row["amount"]),
        "signed_amount": int(row["delta_micro"]) / fold_math.MICRO,
        "occurred_at": pd.Timestamp(row["occurred_at"]).isoformat(),
        "topic": _plain(row["__topic"]), "partition": _int(row["__partition"]),
        "offset": _int(row["__offset"]),
        "correlation_id": _plain(row["__correlation_id"]) or None,
    } for row in rows.to_dict(orient="records")]


def account_value(value, stored: pd.Series, *, label: str, projection: str):
    """``value`` (e.g. a command-line string) as a value of the stored account column.

    Raises:
        ProjectionNotFoundError: ``value`` cannot be such a value (not an integer where the
            keys are integers).
    """
    if pd.api.types.is_integer_dtype(stored.dtype) and not isinstance(value, (int, np.integer)):
        try:
            return int(str(value).strip())
        except ValueError:
            raise ProjectionNotFoundError(
                f"{label} {value!r} is not in {projection}: its keys are integers") from None
    if pd.api.types.is_float_dtype(stored.dtype) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ProjectionNotFoundError(
                f"{label} {value!r} is not in {projection}: its keys are numbers") from None
    if stored.dtype == object and len(stored) and isinstance(stored.iloc[0], str):
        return str(value)
    return value


PROVENANCE = ("__topic", "__partition", "__offset", "__correlation_id")


def explain(account, *, ledger: str, projection: str, opening: str, columns: LedgerColumns,
            lake: LakeResource) -> Explanation:
    """Trace ``account``'s stored balance to the opening balance and the ledger events that
    made it, and check that they add up (``columns``: the projection's ``LedgerColumns``;
    ``account`` may be given as a string, e.g. from the command line).

    Raises:
        ProjectionNotFoundError: the projection, or the account's row in it, is not stored.
    """
    label = columns.label
    content, generation, checkpoint = lake.read_checkpointed(projection)
    stored = load_checkpoint(checkpoint, columns)
    if content is None or stored is None:
        raise ProjectionNotFoundError(
            f"{projection} is not stored with a checkpoint: materialize it first (or run "
            f"`conflux ledger rebuild`)")
    current = columns.canonical(content.to_pandas())
    account = account_value(account, current[ACCOUNT], label=label, projection=projection)
    row = current[current[ACCOUNT] == account]
    if row.empty:
        raise ProjectionNotFoundError(
            f"{label} {account} is not in {projection} ({len(current)} rows): not in "
            f"{opening} when it was last materialized")
    row = row.iloc[0]
    folded, _ = stored
    mine = folded[folded[ACCOUNT] == account]
    ledger_table = lake.read_partitions(ledger)
    wanted = [*fold_math.EVENT_FIELDS, *PROVENANCE]
    if ledger_table is None:
        ledger_rows = pd.DataFrame({c: pd.Series(dtype=object) for c in wanted})
    else:
        ledger_rows = columns.events(ledger_table.to_pandas(), keep=PROVENANCE)[wanted]
    account_rows = ledger_rows[ledger_rows[ACCOUNT] == account]
    problems: list[str] = []

    # the folded events, described by the ledger (its signed amount recomputed from it)
    described = mine[["event_id", "delta_micro", "occurred_at"]].merge(
        ledger_rows.drop(columns=["occurred_at"]), on="event_id", how="left", indicator=True)
    absent = described[described["_merge"] == "left_only"]
    if len(absent):
        problems.append(f"{len(absent)} folded event(s) are not in {ledger} (e.g. "
                        f"{absent['event_id'].iloc[0]}): read from Kafka by a rebuild before "
                        f"ingestion stored them, or lost by the ledger")
    present = described[described["_merge"] == "both"]
    if len(present):
        from_ledger = fold_math.signed_micro(present, columns.sign)
        moved = (present[ACCOUNT].to_numpy() != account)
        changed = from_ledger != present["delta_micro"].to_numpy()
        if changed.any() or moved.any():
            bad = present["event_id"].to_numpy()[changed | moved][0]
            problems.append(f"event {bad} was folded with another amount or {label} than "
                            f"{ledger} holds now (the ledger changed in place)")
    described = described.drop(columns=["_merge", ACCOUNT]).sort_values(
        ["occurred_at", "event_id"], kind="stable")
    events = _event_dicts(described)

    pending_rows = account_rows[~account_rows["event_id"].isin(folded["event_id"])]
    pending = _event_dicts(pending_rows.assign(
        delta_micro=fold_math.signed_micro(pending_rows, columns.sign) if len(pending_rows)
        else []).sort_values(["occurred_at", "event_id"], kind="stable"))

    micro = int(mine["delta_micro"].sum())
    opening_balance = float(row["opening_balance"])
    recomputed = float(fold_math.balance_of(opening_balance, micro))
    balance = float(row["balance"])
    if recomputed != balance:
        problems.append(f"opening {opening_balance} + events {micro / fold_math.MICRO} = "
                        f"{recomputed}, but the stored balance is {balance}")
    if len(mine) != int(row["events_applied"]):
        problems.append(f"{len(mine)} event(s) folded for the {label}, but events_applied "
                        f"says {int(row['events_applied'])}")
    if micro / fold_math.MICRO != float(row["ledger_total"]):
        problems.append(f"the events add up to {micro / fold_math.MICRO}, but ledger_total "
                        f"says {float(row['ledger_total'])}")
    opening_now = opening_balances(lake, opening, columns)
    now = opening_now.loc[opening_now[ACCOUNT] == account, fold_math.OPENING]
    last = row.get("last_event_id")
    return Explanation(
        account=_plain(account), balance=balance, opening_balance=opening_balance,
        ledger_total=float(row["ledger_total"]), events_applied=int(row["events_applied"]),
        last_event_id=None if last is None or pd.isna(last) else str(last),
        opening_now=float(now.iloc[-1]) if len(now) else None, events=events, pending=pending,
        recomputed=recomputed, events_sum=str(Decimal(micro) / Decimal(fold_math.MICRO)),
        adds_up=not problems, problems=problems, generation=generation)
