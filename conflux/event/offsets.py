"""Kafka offsets as the event path's commit: cursors, ``[start, end)`` ranges, run keys, lag
and offset gaps.

Pure functions with no Kafka, Dagster or lake: the sensor plans with them and the CLI (``conflux
lag``, ``conflux replay``) reads cursors with them. A cursor is the next offset to apply per
topic and partition; a :class:`TickState` is what a sensor keeps in its Dagster cursor between
ticks (the offsets plus what must survive a code-server restart).

An **offset gap** is a range of offsets that was never applied and never can be: the cursor is
below the partition's log start (retention or ``delete_records`` removed records first), or the
topic was deleted and recreated (another topic id, fewer partitions, or an end offset below the
cursor). Offsets without a record — transaction markers, compacted keys — are no gap: the
records before and after them are still read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from conflux.core.declarations import EventDataset
from conflux.io.kafka import OutOfRange, Record, TopicBounds

Cursor = dict[str, dict[int, int]]  # topic -> partition -> next offset to apply


@dataclass(frozen=True)
class Range:
    topic: str
    partition: int
    start: int
    end: int

    def label(self) -> str:
        return f"{self.topic}|{self.partition}|{self.start}-{self.end}"

    def as_config(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "start": self.start,
                "end": self.end}


def run_key(dataset: str, ranges: list[Range]) -> str:
    """``dataset|topic|partition|start-end`` for each range, ``;``-separated."""
    return f"{dataset}|" + ";".join(r.label() for r in ranges)


def plan_ranges(ds: EventDataset, cursor: Cursor, ends: Cursor) -> list[Range]:
    """Micro-batches between the cursor and the end offsets (pure: unit-tested)."""
    ranges = []
    for topic, parts in sorted(ends.items()):
        done = cursor.get(topic, {})
        for partition, end in sorted(parts.items()):
            start = done.get(partition, 0)
            while start < end:
                stop = min(end, start + ds.max_records_per_run)
                ranges.append(Range(topic, partition, start, stop))
                start = stop
    return ranges


def next_batch(ranges: list[Range]) -> list[Range]:
    """The first pending range of every partition: what one run takes on this tick."""
    seen: set[tuple[str, int]] = set()
    batch = []
    for r in ranges:
        if (r.topic, r.partition) not in seen:
            seen.add((r.topic, r.partition))
            batch.append(r)
    return batch


def parse_cursor(raw: str | None) -> Cursor:
    """The offsets of a stored sensor cursor (either format of :func:`parse_state`)."""
    return parse_state(raw).offsets


def dump_cursor(cursor: Cursor) -> str:
    return json.dumps({t: {str(p): o for p, o in sorted(parts.items())}
                       for t, parts in sorted(cursor.items())})


def advance(cursor: Cursor, ranges: list[Range]) -> Cursor:
    """The cursor after the given ranges were requested or applied."""
    out = {t: dict(parts) for t, parts in cursor.items()}
    for r in ranges:
        out.setdefault(r.topic, {})[r.partition] = max(out.get(r.topic, {}).get(r.partition, 0), r.end)
    return out


def batch_ranges(cursor: Cursor, records: list[Record]) -> list[Range]:
    """The ``[start, end)`` ranges a micro-batch of sequentially read records covers."""
    last: dict[tuple[str, int], int] = {}
    for rec in records:
        last[(rec.topic, rec.partition)] = max(last.get((rec.topic, rec.partition), -1), rec.offset)
    return [Range(t, p, cursor.get(t, {}).get(p, 0), end + 1) for (t, p), end in sorted(last.items())]


def lag_by_partition(cursor: Cursor, ends: Cursor) -> dict[str, int]:
    """Records between the cursor and the end offsets, per ``topic[partition]`` (pure)."""
    return {f"{t}[{p}]": max(end - cursor.get(t, {}).get(p, 0), 0)
            for t, parts in sorted(ends.items()) for p, end in sorted(parts.items())}


OFFSET_GAP = "OFFSET_GAP"            # records removed before they were read
TOPIC_RECREATED = "TOPIC_RECREATED"  # the topic was deleted and recreated (or its log truncated)


@dataclass(frozen=True)
class Gap:
    """Offsets ``first..last`` of a partition that were never applied and no longer exist.

    ``last`` None: unknown (the deleted topic's end); ``resume_at``: where reading goes on
    (None: the partition is gone); ``why``: how a recreation was told.
    """

    reason: str
    topic: str
    partition: int
    first: int
    last: int | None
    resume_at: int | None
    why: str = ""

    @property
    def records(self) -> int | None:
        """How many offsets are missing (None: unknown)."""
        return None if self.last is None else self.last - self.first + 1

    def as_json(self) -> dict:
        return {"reason": self.reason, "topic": self.topic, "partition": self.partition,
                "first": self.first, "last": self.last, "records": self.records,
                "resume_at": self.resume_at, "message": self.describe()}

    def describe(self) -> str:
        """One line naming the topic, partition and missing offsets."""
        where = f"{self.topic} partition {self.partition}"
        if self.reason == OFFSET_GAP:
            return (f"{where}: offsets {self.first}–{self.last} ({self.records} record(s)) "
                    f"removed before they were read (retention or delete_records)")
        lost = (f"offsets {self.first}–{self.last} of the old topic"
                if self.last is not None else
                f"records of the old topic from offset {self.first} on that had not been read")
        then = ("the partition no longer exists" if self.resume_at is None
                else f"reading resumed at offset {self.resume_at} of the new topic")
        return f"{where}: topic deleted and recreated ({self.why}): {lost} are lost; {then}"


def find_gaps(cursor: Cursor, bounds: dict[str, TopicBounds],
              topic_ids: dict[str, str]) -> tuple[list[Gap], Cursor]:
    """Gaps between the cursor and the topics' logs, and the cursor that goes on past them (pure).

    Args:
        cursor: the next offset to apply per topic and partition.
        bounds: each existing topic's id, log start and end offsets now.
        topic_ids: the ids the topics had when the cursor was last saved.

    A topic the cursor does not know yet starts at its log start: no gap. Of a known topic,
    a partition (new ones too, from 0) whose log starts past its cursor lost the offsets in
    between; a topic whose id changed, that lost partitions or whose end offset is below the
    cursor was recreated: its cursor restarts at the new log's start.
    """
    gaps: list[Gap] = []
    out = {t: dict(parts) for t, parts in cursor.items()}
    for topic, found in sorted(bounds.items()):
        done = cursor.get(topic)
        if done is None:
            out[topic] = dict(found.begins)
            continue
        known = topic_ids.get(topic)
        gone = sorted(set(done) - set(found.ends))
        behind = sorted(p for p, o in done.items() if p in found.ends and o > found.ends[p])
        why = (f"topic id {known} is now {found.topic_id}"
               if known and found.topic_id and known != found.topic_id
               else f"partition(s) {', '.join(map(str, gone))} no longer exist" if gone
               else "end offset below the cursor: " + ", ".join(
                   f"partition {p} at {found.ends[p]} < {done[p]}" for p in behind) if behind
               else "")
        if why:
            gaps += [Gap(TOPIC_RECREATED, topic, p, o, None, found.begins.get(p), why)
                     for p, o in sorted(done.items())]
            out[topic] = dict(found.begins)
            continue
        for p, begin in sorted(found.begins.items()):
            start = done.get(p, 0)
            if start < begin:
                gaps.append(Gap(OFFSET_GAP, topic, p, start, begin - 1, begin))
                out[topic][p] = begin
    return gaps, out


def gap_at(jump: OutOfRange, end: int | None = None) -> Gap:
    """The gap a read ran into (pure): ``jump.offset`` below the log start (the records up to
    it, or to the range's ``end``, are gone) or above the log end (a recreated topic: the rest
    of the range, up to ``end`` when known, is lost)."""
    if jump.offset < jump.log_start:
        last = jump.log_start if end is None else min(jump.log_start, end)
        return Gap(OFFSET_GAP, jump.topic, jump.partition, jump.offset, last - 1,
                   jump.log_start)
    return Gap(TOPIC_RECREATED, jump.topic, jump.partition, jump.offset,
               None if end is None else end - 1, jump.log_start,
               f"offset {jump.offset} is past the log end {jump.log_end}")


GAP_NOTE_S = 12.0  # the daemon ticks every 5 s: a longer silence was an outage


def tick_gap(previous: float | None, now: float) -> str:
    """A note when the sensor's previous tick started over ``GAP_NOTE_S`` before this one —
    Postgres or the daemon was down, or ticks were failing — so the tick history says when
    processing resumed and after how long. ``previous`` is the daemon's record of the last
    tick (``context.last_tick_completion_time``, kept in Postgres: it survives restarts)."""
    if previous is None or now - previous < GAP_NOTE_S:
        return ""
    return f"resumed after {now - previous:.0f}s without a tick; "


def observe_every_s(ds: EventDataset) -> float:
    """How often a tick records the dataset's lag: a third of its freshness window, 5..60 s."""
    return min(max(ds.freshness.total_seconds() / 3, 5.0), 60.0)


@dataclass(frozen=True)
class Pending:
    """Ranges an ingest run was requested for and no run has applied yet.

    ``key``: the first request's run_key; ``requested_at``: epoch seconds of the latest request;
    ``attempts``: requests after the first (``conflux.event.requeue``).
    """

    key: str
    ranges: tuple[Range, ...]
    requested_at: float
    attempts: int = 0

    @property
    def batch(self) -> str:
        """The ``conflux/batch`` tag of every run requested for these ranges (a digest of
        ``key``: run tags stay short)."""
        return batch_id(self.key)

    def as_json(self) -> dict:
        return {"key": self.key, "ranges": [r.as_config() for r in self.ranges],
                "requested_at": self.requested_at, "attempts": self.attempts}

    @classmethod
    def from_json(cls, data: dict) -> "Pending":
        return cls(key=data["key"], ranges=tuple(Range(**r) for r in data["ranges"]),
                   requested_at=float(data["requested_at"]), attempts=int(data.get("attempts", 0)))


def batch_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TickState:
    """What an event dataset's sensor keeps between ticks, in its Dagster cursor (Postgres).

    ``offsets``: the next offset to apply per topic and partition (the commit).
    ``capped``: the last inline tick left records unapplied (a wide backlog: use a run).
    ``caught_up_at``: epoch seconds of the start of the last tick that ended caught up.
    ``observed_at``: epoch seconds of the last lag observation reported to Dagster.
    ``pending``: ranges requested from ingest runs that no run has applied yet (runs mode): the
    offsets moved past them, so they are kept here, without time limit, until applied.
    ``topic_ids``: the id of each topic read (a recreated topic has another).
    ``gaps_checked_at`` / ``gaps_open``: when the ``offset_gaps`` check was last evaluated, and
    the ids of the unacknowledged gaps it found (None: never evaluated).
    """

    offsets: Cursor = field(default_factory=dict)
    capped: bool = False
    caught_up_at: float = 0.0
    observed_at: float = 0.0
    pending: tuple[Pending, ...] = ()
    topic_ids: dict[str, str] = field(default_factory=dict)
    gaps_checked_at: float = 0.0
    gaps_open: tuple[int, ...] | None = None

    def with_(self, **changes) -> "TickState":
        return replace(self, **changes)


def parse_state(raw: str | None) -> TickState:
    """A sensor cursor as stored: ``{"offsets": ..., ...}``, or a bare offsets cursor (older)."""
    if not raw:
        return TickState()
    data = json.loads(raw)
    if "offsets" not in data:
        return TickState(offsets=_offsets(data))
    gaps_open = data.get("gaps_open")
    return TickState(offsets=_offsets(data["offsets"]), capped=bool(data.get("capped", False)),
                     caught_up_at=float(data.get("caught_up_at", 0.0)),
                     observed_at=float(data.get("observed_at", 0.0)),
                     pending=tuple(Pending.from_json(p) for p in data.get("pending", ())),
                     topic_ids=dict(data.get("topic_ids", {})),
                     gaps_checked_at=float(data.get("gaps_checked_at", 0.0)),
                     gaps_open=None if gaps_open is None else tuple(gaps_open))


def dump_state(state: TickState) -> str:
    return json.dumps({"offsets": json.loads(dump_cursor(state.offsets)), "capped": state.capped,
                       "caught_up_at": state.caught_up_at, "observed_at": state.observed_at,
                       "pending": [p.as_json() for p in state.pending],
                       "topic_ids": state.topic_ids, "gaps_checked_at": state.gaps_checked_at,
                       "gaps_open": None if state.gaps_open is None else list(state.gaps_open)})


def _offsets(data: dict) -> Cursor:
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in data.items()}


# -- the cursor mirrored into a consumer group (conflux.event.group_mirror) ---------------------

GROUP_PREFIX = "conflux."


def consumer_group(dataset: str) -> str:
    """The Kafka consumer group an event dataset's cursor is mirrored into: ``conflux.<dataset>``."""
    return f"{GROUP_PREFIX}{dataset}"


def unsettled_records(state: TickState) -> int:
    """Records in ranges requested from ingest runs that no run has applied yet."""
    return sum(r.end - r.start for p in state.pending for r in p.ranges)


def group_offsets(state: TickState) -> Cursor:
    """What the consumer group shows of a saved tick state (pure): the cursor, each partition
    held back to the start of its earliest range requested from a run and not yet applied (runs
    mode), so the group never counts records as consumed before they are applied."""
    out = {t: dict(parts) for t, parts in state.offsets.items()}
    for p in state.pending:
        for r in p.ranges:
            parts = out.setdefault(r.topic, {})
            parts[r.partition] = min(parts.get(r.partition, r.start), r.start)
    return out


def mirror_due(wanted: Cursor, last: Cursor | None, last_at: float, now: float,
               refresh_s: float) -> bool:
    """Whether to commit ``wanted`` (pure): something to commit, and it differs from ``last``
    committed or that commit is ``refresh_s`` old (the broker may have dropped it since: a
    deleted topic's, an expired empty group's)."""
    if not any(wanted.values()):
        return False
    return wanted != last or not 0 <= now - last_at < refresh_s
