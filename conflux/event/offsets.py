"""Kafka offsets as the event path's commit: cursors, ``[start, end)`` ranges, run keys and lag.

Pure functions with no Kafka, Dagster or lake: the sensor plans with them and the CLI (``conflux
lag``, ``conflux replay``) reads cursors with them. A cursor is the next offset to apply per
topic and partition; a :class:`TickState` is what a sensor keeps in its Dagster cursor between
ticks (the offsets plus what must survive a code-server restart).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from conflux.core.declarations import EventDataset
from conflux.io.kafka import Record

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
    """

    offsets: Cursor = field(default_factory=dict)
    capped: bool = False
    caught_up_at: float = 0.0
    observed_at: float = 0.0
    pending: tuple[Pending, ...] = ()

    def with_(self, **changes) -> "TickState":
        return replace(self, **changes)


def parse_state(raw: str | None) -> TickState:
    """A sensor cursor as stored: ``{"offsets": ..., ...}``, or a bare offsets cursor (older)."""
    if not raw:
        return TickState()
    data = json.loads(raw)
    if "offsets" not in data:
        return TickState(offsets=_offsets(data))
    return TickState(offsets=_offsets(data["offsets"]), capped=bool(data.get("capped", False)),
                     caught_up_at=float(data.get("caught_up_at", 0.0)),
                     observed_at=float(data.get("observed_at", 0.0)),
                     pending=tuple(Pending.from_json(p) for p in data.get("pending", ())))


def dump_state(state: TickState) -> str:
    return json.dumps({"offsets": json.loads(dump_cursor(state.offsets)), "capped": state.capped,
                       "caught_up_at": state.caught_up_at, "observed_at": state.observed_at,
                       "pending": [p.as_json() for p in state.pending]})


def _offsets(data: dict) -> Cursor:
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in data.items()}
