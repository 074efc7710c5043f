"""Dead-letter operations on the real services: the ``dead_letters`` check's counts from Kafka
offsets, reading a DLQ topic, and replaying dead letters into their source topic with a replay
ledger in Postgres (no Dagster here; the wiring is ``conflux/observe/dlq_monitor.py``, the CLI
``conflux/cli/dlq.py``).

**Replay, exactly once per dead letter.** A replay reads the DLQ topic up to its end offsets
at the start, keeps the letters the selection matches (``--since``, ``--reason``) and drops
those the ledger (``dlq.replayed`` in the platform database) says were replayed already —
unless ``again``. It re-publishes each remaining letter's original key, value and headers
(without the ``conflux.error.*`` ones) to its source topic, **on its original partition and
with its original timestamp**, plus ``conflux.replay.*`` headers naming the dead letter and the
replay. Keeping the timestamp matters: the upsert keeps, per key, the row of the newest record,
so a replayed old record cannot overwrite a newer good one that arrived meanwhile. Letters are
published in chunks; each chunk is recorded in the ledger only after Kafka acknowledged all of
it. A crash in between re-publishes that chunk on the next replay: harmless, because the
dataset upserts by key. One replay per DLQ topic runs at a time (a Postgres advisory lock).
Records that are still bad are dead-lettered again by the ingest path, with their reason and the
replay headers, as new letters that a later replay can take.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import psycopg

from conflux.core.errors import DeadLetterError
from conflux.core.declarations import EventDataset
from conflux.observe.dlq import (Letter, Listing, ReplayReport, Selection, WindowCounts,
                           replay_headers, unroutable)
from conflux.io.kafka import KafkaError, KafkaResource, Outgoing

CODE_HEADER = "conflux.error.code"
CHUNK = 5000
REASON_SAMPLE = 500

Progress = Callable[[int, int, int], None]  # (letters read, letters to read, re-published)


# --- the dead_letters check ----------------------------------------------------------------
def _since(kafka: KafkaResource, topic: str, since_ms: int) -> dict[int, tuple[int, int, int]] | None:
    try:
        return kafka.offsets_at(topic, since_ms)
    except KafkaError as exc:
        raise DeadLetterError(f"cannot read the offsets of {topic}: {exc}") from exc


def window_counts(ds: EventDataset, kafka: KafkaResource, *, now_ms: int | None = None,
                  sample: int = REASON_SAMPLE) -> WindowCounts:
    """Records that arrived on ``ds``'s topics and dead letters written to its DLQ topic over
    the trailing ``ds.dlq.window`` (by record timestamp, from offsets: nothing is read but the
    newest ``sample`` dead letters, for the reason histogram)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    window_s = ds.dlq.window.total_seconds()
    since_ms = now_ms - int(window_s * 1000)
    records_in, missing = 0, []
    for topic in ds.topics:
        found = _since(kafka, topic, since_ms)
        if found is None:
            missing.append(topic)
            continue
        records_in += sum(end - max(at, begin) for at, begin, end in found.values())
    dlq = _since(kafka, ds.dlq_topic, since_ms)
    if dlq is None:
        return WindowCounts(window_s, records_in, 0, missing=(*missing, ds.dlq_topic))
    dead = sum(end - max(at, begin) for at, begin, end in dlq.values())
    retained = sum(end - begin for _, begin, end in dlq.values())
    reasons: dict[str, int] = {}
    sampled, sample_error = 0, ""
    if dead and sample > 0:
        per_partition = max(sample // len(dlq), 1)
        ranges = [(ds.dlq_topic, p, max(at, begin, end - per_partition), end)
                  for p, (at, begin, end) in dlq.items()]
        try:
            for rec in kafka.read_ranges(ranges, idle_timeout_s=5.0):
                code = rec.header(CODE_HEADER)
                code = code.decode(errors="replace") if code else "(no reason header)"
                reasons[code] = reasons.get(code, 0) + 1
                sampled += 1
        except KafkaError as exc:  # the counts come from offsets and stand; say the histogram
            sample_error = str(exc)  # is partial (e.g. retention raced the read)
    return WindowCounts(window_s, records_in, dead, retained, reasons, sampled, tuple(missing),
                        sample_error)


# --- reading a DLQ topic -------------------------------------------------------------------
@dataclass
class Scan:
    """The letters of a DLQ topic between the offsets of ``since`` and its end at scan time."""

    topic: str
    ranges: list[tuple[str, int, int, int]]
    kafka: KafkaResource
    exists: bool = True

    @property
    def total(self) -> int:
        return sum(end - start for _, _, start, end in self.ranges)

    def letters(self) -> Iterator[Letter]:
        position = {}
        try:
            for rec in self._records(position):
                yield Letter.from_record(rec)
        except KafkaError as exc:
            where = ", ".join(f"{self.topic}[{p}] after offset {o}"
                              for p, o in sorted(position.items())) or "before the first record"
            raise DeadLetterError(f"reading {self.topic} failed ({where}): {exc}") from exc

    def _records(self, position: dict) -> Iterator:
        for rec in self.kafka.read_ranges(self.ranges, idle_timeout_s=15.0):
            position[rec.partition] = rec.offset
            yield rec


def scan(kafka: KafkaResource, dlq_topic: str, since_ms: int | None = None) -> Scan:
    """What is on ``dlq_topic`` now (since ``since_ms``, by the time letters were written)."""
    found = _since(kafka, dlq_topic, since_ms or 0)
    if found is None:
        return Scan(dlq_topic, [], kafka, exists=False)
    return Scan(dlq_topic, [(dlq_topic, p, max(at, begin), end)
                            for p, (at, begin, end) in sorted(found.items())
                            if end > max(at, begin)], kafka)


def list_letters(ds: EventDataset, kafka: KafkaResource, *, selection: Selection, limit: int,
                 replayed: set[tuple[int, int]] | frozenset = frozenset(),
                 progress: Progress | None = None) -> tuple[Listing, Scan]:
    """Reason histogram (with how many of them ``replayed`` — ``(partition, offset)`` from the
    ledger — holds) and the newest ``limit`` samples of the letters ``selection`` matches."""
    found = scan(kafka, ds.dlq_topic, selection.since_ms)
    listing = Listing(limit=limit)
    read = 0
    for letter in found.letters():
        read += 1
        if selection.matches(letter):
            listing.add(letter, replayed=letter.ref in replayed)
        if progress and read % CHUNK == 0:
            progress(read, found.total, 0)
    return listing, found


# --- the replay ledger ---------------------------------------------------------------------
LEDGER_DDL = """
create schema if not exists dlq;
create table if not exists dlq.replays (
    replay_id text primary key,
    dlq_topic text not null,
    selection text not null,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    report jsonb
);
create table if not exists dlq.replayed (
    dlq_topic text not null,
    dlq_partition int not null,
    dlq_offset bigint not null,
    replay_id text not null references dlq.replays (replay_id),
    reason text not null,
    source text not null,
    target_topic text not null,
    target_partition int not null,
    target_offset bigint not null,
    replayed_at timestamptz not null default now(),
    primary key (dlq_topic, dlq_partition, dlq_offset, replay_id)
);
"""


class ReplayLedger:
    """Which dead letters were replayed, when and by which replay (``dlq.replays``,
    ``dlq.replayed`` in the platform database)."""

    def __init__(self, url: str, connect_timeout_s: int = 5):
        self.url = url
        self.connect_timeout_s = connect_timeout_s

    def connect(self, autocommit: bool = False) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=autocommit,
                                   connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            raise DeadLetterError(f"the replay ledger's database does not answer "
                                  f"({str(exc).strip().splitlines()[0]})") from exc

    @staticmethod
    def exists(conn: psycopg.Connection) -> bool:
        return conn.execute("select to_regclass('dlq.replayed') is not null").fetchone()[0]

    def ensure_schema(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(hashtext('conflux.dlq.ddl'))")
            conn.execute(LEDGER_DDL)

    def replayed_refs(self, dlq_topic: str) -> set[tuple[int, int]]:
        """Every ``(partition, offset)`` of ``dlq_topic`` replayed at least once."""
        with self.connect() as conn:
            if not self.exists(conn):
                return set()
            rows = conn.execute("select distinct dlq_partition, dlq_offset from dlq.replayed "
                                "where dlq_topic = %s", (dlq_topic,)).fetchall()
        return {(p, o) for p, o in rows}

    def history(self, dlq_topic: str, limit: int = 10) -> list[tuple]:
        """The latest replays of ``dlq_topic``: (id, started, finished, selection, report)."""
        with self.connect() as conn:
            if not self.exists(conn):
                return []
            return conn.execute(
                "select replay_id, started_at, finished_at, selection, report from dlq.replays "
                "where dlq_topic = %s order by started_at desc limit %s",
                (dlq_topic, limit)).fetchall()

    @contextlib.contextmanager
    def session(self, dlq_topic: str, *, write: bool) -> Iterator["LedgerSession"]:
        """A connection for one replay; with ``write``, the schema exists and the topic's replay
        lock is held (another replay of the same DLQ topic fails fast, naming it)."""
        conn = self.connect(autocommit=True)
        try:
            if write:
                self.ensure_schema(conn)
                got = conn.execute("select pg_try_advisory_lock(hashtext(%s))",
                                   (f"conflux.dlq.replay:{dlq_topic}",)).fetchone()[0]
                if not got:
                    raise DeadLetterError(f"another replay of {dlq_topic} is running; wait for "
                                          f"it to finish (see `conflux dlq list {dlq_topic}`)")
            yield LedgerSession(conn, dlq_topic, ready=write or self.exists(conn))
        finally:
            conn.close()  # ends the session: releases the advisory lock


@dataclass
class LedgerSession:
    conn: psycopg.Connection
    dlq_topic: str
    ready: bool

    def replayed_in(self, refs: list[tuple[int, int]]) -> set[tuple[int, int]]:
        if not refs or not self.ready:
            return set()
        rows = self.conn.execute(
            "select distinct r.dlq_partition, r.dlq_offset from dlq.replayed r "
            "join unnest(%s::int[], %s::bigint[]) as w(p, o) "
            "on r.dlq_partition = w.p and r.dlq_offset = w.o where r.dlq_topic = %s",
            ([p for p, _ in refs], [o for _, o in refs], self.dlq_topic)).fetchall()
        return {(p, o) for p, o in rows}

    def begin(self, replay_id: str, selection: Selection) -> None:
        self.conn.execute("insert into dlq.replays (replay_id, dlq_topic, selection) "
                          "values (%s, %s, %s)", (replay_id, self.dlq_topic, selection.describe()))

    def record(self, replay_id: str, done: list[tuple[Letter, str, int, int]]) -> None:
        """``(letter, target topic, partition, offset)`` of acknowledged re-publications."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "insert into dlq.replayed (dlq_topic, dlq_partition, dlq_offset, replay_id, "
                "reason, source, target_topic, target_partition, target_offset) "
                "values (%s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
                [(self.dlq_topic, x.dlq_partition, x.dlq_offset, replay_id, x.code, x.source,
                  topic, p, o) for x, topic, p, o in done])

    def finish(self, report: ReplayReport) -> None:
        self.conn.execute("update dlq.replays set finished_at = now(), report = %s "
                          "where replay_id = %s", (json.dumps(report.as_dict()), report.replay_id))


# --- replay --------------------------------------------------------------------------------
def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Publisher:
    """Re-publishes letters to their source topics: original partition (while it exists) and
    original timestamp (read back from the source record; the dead-letter time when retention
    removed it)."""

    def __init__(self, kafka: KafkaResource, replay_id: str, stack: contextlib.ExitStack):
        self.kafka, self.replay_id, self.stack = kafka, replay_id, stack
        self.sends: dict[str, Callable] = {}
        self.partitions: dict[str, int] = {}
        self.time_missing = 0

    def _send(self, topic: str) -> Callable:
        if topic not in self.sends:
            ends = self.kafka.end_offsets(topic)
            if ends is None:
                raise DeadLetterError(f"source topic {topic} does not exist; create it before "
                                      f"replaying its dead letters")
            self.partitions[topic] = len(ends)
            self.sends[topic] = self.stack.enter_context(self.kafka.publisher(topic))
        return self.sends[topic]

    def _timestamps(self, letters: list[Letter]) -> dict[tuple[str, int, int], int]:
        wanted: dict[tuple[str, int], list[int]] = {}
        for x in letters:
            if x.source_partition is not None and x.source_offset is not None:
                wanted.setdefault((x.source_topic, x.source_partition), []).append(x.source_offset)
        return self.kafka.record_timestamps(wanted)

    def publish(self, letters: list[Letter]) -> list[tuple[Letter, str, int, int]]:
        by_topic: dict[str, list[Letter]] = {}
        for x in letters:
            by_topic.setdefault(x.source_topic, []).append(x)
        times = self._timestamps(letters)
        done = []
        for topic, group in by_topic.items():
            send = self._send(topic)
            batch = []
            for x in group:
                ts = times.get((topic, x.source_partition, x.source_offset))
                if ts is None:
                    self.time_missing += 1
                    ts = x.timestamp_ms
                partition = x.source_partition
                if partition is None or not 0 <= partition < self.partitions[topic]:
                    partition = None  # the key's partition, as any producer would pick it
                batch.append(Outgoing(x.key, x.value, replay_headers(x, self.replay_id),
                                      partition, ts))
            try:
                acks = send(batch)
            except KafkaError as exc:
                raise DeadLetterError(
                    f"replay {self.replay_id}: re-publishing dead letters "
                    f"{group[0].coords}..{group[-1].dlq_offset} to {topic} failed: {exc}") from exc
            done += [(x, topic, p, o) for x, (p, o) in zip(group, acks)]
        return done


def replay(ds: EventDataset, *, kafka: KafkaResource, ledger: ReplayLedger,
           selection: Selection, replay_id: str, dry_run: bool = False,
           progress: Progress | None = None, chunk: int = CHUNK) -> ReplayReport:
    """Re-publish the dead letters of ``ds`` that ``selection`` matches and were not replayed
    yet (see the module docstring); ``dry_run`` reports what would happen and changes nothing.
    """
    report = ReplayReport(replay_id=replay_id, dlq_topic=ds.dlq_topic, selection=selection,
                          dry_run=dry_run)
    found = scan(kafka, ds.dlq_topic, selection.since_ms)
    if not found.exists:
        return report
    left = selection.limit
    with ledger.session(ds.dlq_topic, write=not dry_run) as session, \
            contextlib.ExitStack() as stack:
        publisher = _Publisher(kafka, replay_id, stack)
        if not dry_run:
            session.begin(replay_id, selection)
        for letters in _chunks(found.letters(), chunk):
            report.scanned += len(letters)
            chosen = [x for x in letters if selection.matches(x)]
            done_before = set() if selection.again else session.replayed_in([x.ref for x in chosen])
            todo = []
            for x in chosen:
                report.selected[x.code] += 1
                if x.ref in done_before:
                    report.skipped[x.code] += 1
                elif unroutable(x, ds):
                    report.unroutable[x.code] += 1
                elif left is not None and left <= 0:
                    report.over_limit += 1
                else:
                    todo.append(x)
                    left = None if left is None else left - 1
            if todo and not dry_run:
                session.record(replay_id, publisher.publish(todo))
            for x in todo:
                report.published[x.code] += 1
                report.targets[x.source_topic] += 1
            if progress:
                progress(report.scanned, found.total, sum(report.published.values()))
        report.original_time_missing = publisher.time_missing
        if not dry_run:
            session.finish(report)
    return report
