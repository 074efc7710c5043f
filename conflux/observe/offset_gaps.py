"""Offset gaps of event datasets: recorded in Postgres, judged by the ``offset_gaps`` check
until an operator acknowledges them.

A gap (:class:`conflux.event.offsets.Gap`) is a range of offsets that was never applied and no
longer exists: records removed by retention or ``delete_records`` before they were read
(``OFFSET_GAP``), or a topic deleted and recreated (``TOPIC_RECREATED``). The Kafka sensor finds
them when it plans (cursor vs. the logs) and when a read is refused; an ingest run finds them
when its range was removed meanwhile. Either way:

* **recorded** in ``dlq.offset_gaps`` in the platform database, beside the dead-letter replay
  ledger — reason, topic, partition, first..last missing offset, message, who found it (the
  sensor or a run id) and when — before the cursor moves past it; found again (a tick that died
  before saving its cursor) it updates its open row;
* **judged** by the dataset's ``offset_gaps`` check: ERROR while any gap is open, naming each
  missing range. The finder reports the failing evaluation at once, the Kafka sensor evaluates
  it again every ``CHECK_EVERY_S`` (reporting changes), *Execute* in the UI evaluates it now;
* **acknowledged** by ``conflux dlq ack-gaps TOPIC ID... --note TEXT`` once the range was
  repaired (reconcile from the batch source, re-sent by its producer) or the loss accepted; the
  row keeps who, when and the note, and the check passes when no gap is left open.
"""


import datetime as dt
import getpass
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg
import psycopg

from conflux.core.declarations import EventDataset
from conflux.core.errors import OffsetGapError
from conflux.event.offsets import Gap
from conflux.io.postgres import PostgresResource

CHECK_NAME = "offset_gaps"
CHECK_EVERY_S = 30.0  # how often the Kafka sensor evaluates the check from the ledger
SHOWN = 5  # gaps named in a check's description

DDL = """
create schema if not exists dlq;
create table if not exists dlq.offset_gaps (
    id bigserial primary key,
    dataset text not null,
    reason text not null,
    topic text not null,
    partition int not null,
    first_offset bigint not null,
    last_offset bigint,
    resume_at bigint,
    why text not null default '',
    detected_by text not null,
    detected_at timestamptz not null default now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    note text
);
create unique index if not exists offset_gaps_open on dlq.offset_gaps
    (dataset, reason, topic, partition, first_offset) where acknowledged_at is null;
"""
COLUMNS = ("id, dataset, reason, topic, partition, first_offset, last_offset, resume_at, why, "
           "detected_by, detected_at, acknowledged_at, acknowledged_by, note")


@dataclass(frozen=True)
class GapRecord:
    """A gap as the ledger holds it."""

    id: int
    dataset: str
    gap: Gap
    detected_by: str
    detected_at: dt.datetime
    acknowledged_at: dt.datetime | None = None
    acknowledged_by: str | None = None
    note: str | None = None

    @classmethod
    def from_row(cls, row: tuple) -> "GapRecord":
        (id_, dataset, reason, topic, partition, first, last, resume, why, by, at,
         ack_at, ack_by, note) = row
        return cls(id_, dataset, Gap(reason, topic, partition, first, last, resume, why), by,
                   at, ack_at, ack_by, note)

    def describe(self) -> str:
        return f"#{self.id} {self.gap.describe()}"

    def as_json(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, **self.gap.as_json(),
                "detected_by": self.detected_by, "detected_at": _iso(self.detected_at),
                "acknowledged_at": _iso(self.acknowledged_at),
                "acknowledged_by": self.acknowledged_by, "note": self.note}


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


class GapLedger:
    """``dlq.offset_gaps`` in the platform database (``url``)."""

    def __init__(self, url: str, connect_timeout_s: int = 5):
        self.url = url
        self.connect_timeout_s = connect_timeout_s

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            raise OffsetGapError(f"the offset-gap ledger's database does not answer "
                                 f"({str(exc).strip().splitlines()[0]})") from exc

    def record(self, dataset: str, gaps: Iterable[Gap], detected_by: str) -> None:
        """Record ``gaps`` of ``dataset``; one found again updates its open row."""
        rows = [(dataset, g.reason, g.topic, g.partition, g.first, g.last, g.resume_at, g.why,
                 detected_by) for g in gaps]
        if not rows:
            return
        with self._connect() as conn:
            conn.execute("select pg_advisory_xact_lock(hashtext('conflux.dlq.ddl'))")
            conn.execute(DDL)
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into dlq.offset_gaps (dataset, reason, topic, partition, "
                    "first_offset, last_offset, resume_at, why, detected_by) "
                    "values (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "on conflict (dataset, reason, topic, partition, first_offset) "
                    "where acknowledged_at is null do update set "
                    "last_offset = excluded.last_offset, resume_at = excluded.resume_at, "
                    "why = excluded.why", rows)

    def gaps(self, datasets: Sequence[str], *, open_only: bool = True) -> list[GapRecord]:
        """The gaps of ``datasets``, oldest first (only the unacknowledged ones by default)."""
        with self._connect() as conn:
            if not conn.execute("select to_regclass('dlq.offset_gaps')").fetchone()[0]:
                return []
            rows = conn.execute(
                f"select {COLUMNS} from dlq.offset_gaps where dataset = any(%s)"
                + (" and acknowledged_at is null" if open_only else "") + " order by id",
                (list(datasets),)).fetchall()
        return [GapRecord.from_row(r) for r in rows]

    def acknowledge(self, dataset: str, ids: Sequence[int] | None, *, note: str,
                    by: str | None = None) -> list[GapRecord]:
        """Acknowledge the open gaps of ``dataset`` among ``ids`` (None: all of them); returns
        those it acknowledged.

        Raises:
            OffsetGapError: an empty note.
        """
        if not note.strip():
            raise OffsetGapError("acknowledging needs a note saying what was done: the "
                                 "repair, or why the loss is accepted")
        with self._connect() as conn:
            rows = conn.execute(
                f"update dlq.offset_gaps set acknowledged_at = now(), acknowledged_by = %s, "
                f"note = %s where dataset = %s and acknowledged_at is null "
                f"and (%s::bigint[] is null or id = any(%s)) returning {COLUMNS}",
                (by or _operator(), note.strip(), dataset, ids, ids)).fetchall()
        return sorted((GapRecord.from_row(r) for r in rows), key=lambda r: r.id)


# --- the offset_gaps check -------------------------------------------------------------------
def check_spec(ds: EventDataset) -> dg.AssetCheckSpec:
    """The ``offset_gaps`` check of ``ds`` (pure)."""
    return dg.AssetCheckSpec(
        CHECK_NAME, asset=ds.name, blocking=False,
        description=f"Fails while offsets of {', '.join(ds.topics)} that were never applied "
                    f"and no longer exist (removed by retention or delete_records before they "
                    f"were read, or a recreated topic) are unacknowledged. List them with "
                    f"`conflux dlq gaps {ds.topic}`; after repairing, `conflux dlq ack-gaps "
                    f"{ds.topic} ID... --note TEXT`.")


def _verdict(ds: EventDataset, open_gaps: Sequence[GapRecord],
             evaluated_by: str) -> tuple[bool, str, dict]:
    """(passed, description, metadata) of the check over the open gaps (pure)."""
    known = sum(r.gap.records or 0 for r in open_gaps)
    meta = {"conflux/open_gaps": dg.MetadataValue.json([r.as_json() for r in open_gaps]),
            "conflux/records_missing": known,
            "conflux/evaluated_by": evaluated_by}
    if not open_gaps:
        return True, f"{ds.name}: no unacknowledged offset gap", meta
    named = "; ".join(r.describe() for r in open_gaps[:SHOWN])
    more = f"; and {len(open_gaps) - SHOWN} more" if len(open_gaps) > SHOWN else ""
    ids = " ".join(str(r.id) for r in open_gaps)
    return False, (f"{ds.name}: {len(open_gaps)} unacknowledged offset gap(s): {named}{more}. "
                   f"Repair, then: conflux dlq ack-gaps {ds.topic} {ids} --note TEXT"), meta


def evaluation(ds: EventDataset, open_gaps: Sequence[GapRecord], *,
               evaluated_by: str) -> dg.AssetCheckEvaluation:
    """The runless evaluation of ``offset_gaps`` (pure)."""
    passed, text, meta = _verdict(ds, open_gaps, evaluated_by)
    return dg.AssetCheckEvaluation(asset_key=dg.AssetKey(ds.name), check_name=CHECK_NAME,
                                   passed=passed, severity=dg.AssetCheckSeverity.ERROR,
                                   description=text, metadata=meta)


def track(ds: EventDataset, ledger: GapLedger, found: Sequence[Gap], *, detected_by: str,
          last_open: tuple[int, ...] | None = None
          ) -> tuple[list[dg.AssetCheckEvaluation], tuple[int, ...]]:
    """Record ``found`` and evaluate the check from the ledger; returns the evaluation when it
    changed from ``last_open`` (or gaps were found) and the open gaps' ids."""
    ledger.record(ds.name, found, detected_by)
    open_gaps = ledger.gaps([ds.name])
    ids = tuple(r.id for r in open_gaps)
    if not found and ids == last_open:
        return [], ids
    return [evaluation(ds, open_gaps, evaluated_by=detected_by)], ids


def build_gap_check(*, dataset: EventDataset) -> dg.AssetChecksDefinition:
    """The ``offset_gaps`` check of ``dataset``, executable from the UI (reads the ledger).

    Args:
        dataset: an event dataset.

    Returns:
        An asset checks definition named ``<dataset>__offset_gaps``.

    Examples:
        >>> build_gap_check(dataset=ORDERS).check_keys
        {AssetCheckKey(asset_key=AssetKey(['orders']), name='offset_gaps')}
    """
    ds = dataset

    @dg.multi_asset_check(specs=[check_spec(ds)], name=f"{ds.name}__offset_gaps",
                          description=f"Unacknowledged offset gaps of {ds.name}")
    def _check(context: dg.AssetCheckExecutionContext, postgres: PostgresResource):
        open_gaps = GapLedger(postgres.url).gaps([ds.name])
        passed, text, meta = _verdict(ds, open_gaps, context.op_execution_context.run_id)
        context.log.info(text)
        yield dg.AssetCheckResult(asset_key=ds.name, check_name=CHECK_NAME, passed=passed,
                                  severity=dg.AssetCheckSeverity.ERROR, description=text,
                                  metadata=meta)

    return _check
