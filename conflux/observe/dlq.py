"""Dead letters, read and judged without Dagster or Kafka clients (pure: unit-tested).

A dead letter is the original record (key, value, headers) plus the ``conflux.error.*`` headers
written by ``conflux.event.decode.dead_letter_headers``: reason code, message, source topic /
partition / offset, contract, dataset, run id. This module turns DLQ records into
:class:`Letter` objects, builds reason histograms and samples, evaluates the ``dead_letters``
check's thresholds (:class:`~conflux.core.declarations.DeadLetterPolicy`) and plans replays: which
letters to re-publish and with which headers. The I/O lives in ``conflux.observe.dlq_replay``.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conflux.core import opconfig
from conflux.core.errors import UsageError
from conflux.core.declarations import DeadLetterPolicy, EventDataset

ERROR_PREFIX = "conflux.error."
REPLAY_PREFIX = "conflux.replay."
# headers a replayed record carries (on top of its original headers)
REPLAY_OF = "conflux.replay.of"            # "<dlq topic>:<partition>:<offset>" of the dead letter
REPLAY_ID = "conflux.replay.id"            # the replay that re-published it
REPLAY_REASON = "conflux.replay.reason"    # why it had been dead-lettered
REPLAY_ATTEMPT = "conflux.replay.attempt"  # 1 for the first replay of a record, 2 after it failed again
CORRELATION_HEADER = "correlation_id"
NO_REASON = "(no reason header)"


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if value is not None else ""


def _int(value: bytes | None) -> int | None:
    text = _text(value).strip()
    return int(text) if text.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class Letter:
    """One dead letter read from a DLQ topic."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int                   # when it was dead-lettered
    code: str
    message: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    contract: str
    dataset: str
    run_id: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]  # the original headers (no error / replay headers)
    replay_of: str | None = None        # set when this letter is a replayed record that failed again
    attempt: int = 0                    # replays the record had been through before failing

    @classmethod
    def from_record(cls, rec) -> "Letter":
        """From a DLQ :class:`conflux.io.kafka.Record` (the last value of a repeated header wins)."""
        headers = {}
        original = []
        for name, value in rec.headers:
            if name.startswith(ERROR_PREFIX) or name.startswith(REPLAY_PREFIX):
                headers[name] = value
            else:
                original.append((name, value))
        err = lambda n: headers.get(ERROR_PREFIX + n)  # noqa: E731
        return cls(
            dlq_topic=rec.topic, dlq_partition=rec.partition, dlq_offset=rec.offset,
            timestamp_ms=rec.timestamp_ms,
            code=_text(err("code")) or NO_REASON, message=_text(err("message")),
            source_topic=_text(err("topic")), source_partition=_int(err("partition")),
            source_offset=_int(err("offset")), contract=_text(err("contract")),
            dataset=_text(err("dataset")), run_id=_text(err("run_id")),
            key=rec.key, value=rec.value, headers=tuple(original),
            replay_of=_text(headers.get(REPLAY_OF)) or None,
            attempt=_int(headers.get(REPLAY_ATTEMPT)) or 0)

    @property
    def coords(self) -> str:
        """``topic[partition]@offset`` of the dead letter."""
        return f"{self.dlq_topic}[{self.dlq_partition}]@{self.dlq_offset}"

    @property
    def source(self) -> str:
        """``topic[partition]@offset`` the record was first read at."""
        if self.source_partition is None:
            return self.source_topic or "(unknown source)"
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"

    @property
    def correlation_id(self) -> str:
        for name, value in self.headers:
            if name == CORRELATION_HEADER:
                return _text(value)
        return ""

    @property
    def ref(self) -> tuple[int, int]:
        return self.dlq_partition, self.dlq_offset


def preview(value: bytes | None, width: int = 120) -> str:
    """A printable, one-line, truncated view of a key or value."""
    if value is None:
        return "(null)"
    text = _text(value)
    text = re.sub(r"[\x00-\x1f\x7f]", "\N{REPLACEMENT CHARACTER}", text)
    return text if len(text) <= width else text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"


def sample(letter: Letter, width: int = 1000) -> dict:
    """What ``conflux dlq list`` shows of one letter (JSON-ready)."""
    return {
        "dlq": letter.coords, "dlq_partition": letter.dlq_partition,
        "dlq_offset": letter.dlq_offset,
        "dead_lettered_at": iso(letter.timestamp_ms),
        "reason": letter.code, "message": letter.message, "source": letter.source,
        "source_topic": letter.source_topic, "source_partition": letter.source_partition,
        "source_offset": letter.source_offset, "contract": letter.contract,
        "correlation_id": letter.correlation_id, "key": preview(letter.key, 200),
        "value": preview(letter.value, width), "value_bytes": len(letter.value or b""),
        "replay_of": letter.replay_of, "attempt": letter.attempt,
    }


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Listing:
    """A reason histogram and the newest samples, built while streaming letters."""

    limit: int = 5
    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    replayed: Counter = field(default_factory=Counter)  # reason -> letters already replayed
    retries: int = 0  # letters that are replayed records which failed again
    samples: deque = field(default_factory=deque)
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, letter: Letter, replayed: bool = False) -> None:
        self.total += 1
        self.reasons[letter.code] += 1
        self.replayed[letter.code] += replayed
        self.retries += letter.replay_of is not None
        ts = letter.timestamp_ms
        self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
        self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)
        if self.limit > 0:
            self.samples.append(letter)
            if len(self.samples) > self.limit:
                self.samples.popleft()

    def newest(self) -> list[Letter]:
        return sorted(self.samples, key=lambda x: (x.timestamp_ms, x.dlq_offset), reverse=True)

    def histogram(self) -> list[tuple[str, int, int]]:
        """``(reason, letters, replayed)``, most frequent first."""
        return [(code, n, self.replayed[code]) for code, n in
                sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))]


# --- the dead_letters check ----------------------------------------------------------------
@dataclass(frozen=True)
class WindowCounts:
    """What the ``dead_letters`` check measures over its window, from Kafka offsets."""

    window_s: float
    records_in: int                 # records that arrived on the dataset's topics in the window
    dead: int                       # dead letters written to its DLQ topic in the window
    dlq_retained: int = 0           # every dead letter the DLQ topic still holds
    reasons: dict[str, int] = field(default_factory=dict)  # histogram of the sampled letters
    sampled: int = 0                # the newest `sampled` dead letters of the window
    missing: tuple[str, ...] = ()   # topics that do not exist (yet)
    sample_error: str = ""          # why the histogram is partial ("" when it is not)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: str | None             # "WARN" | "ERROR" | None when passed
    rate: float | None               # dead / records_in (None when no record arrived)
    judged_rate: float               # dead / max(records_in, min_records): what is compared
    why: tuple[str, ...]             # each threshold crossed

    @property
    def summary(self) -> str:
        if self.passed:
            return "below every threshold"
        return f"{self.severity}: " + "; ".join(self.why)


def evaluate(counts: WindowCounts, policy: DeadLetterPolicy) -> Verdict:
    """Judge the counts of a window against the declared thresholds (pure)."""
    rate = counts.dead / counts.records_in if counts.records_in else None
    over = max(counts.records_in, policy.min_records)
    judged = counts.dead / over
    basis = (f"of {counts.records_in} record(s)" if counts.records_in >= policy.min_records
             else f"judged over min_records={policy.min_records}, {counts.records_in} arrived")
    crossed: dict[str, list[str]] = {"ERROR": [], "WARN": []}
    for level in ("ERROR", "WARN"):
        limit = getattr(policy, f"{level.lower()}_rate")
        if limit is not None and counts.dead and judged >= limit:
            crossed[level].append(f"dead-letter rate {judged:.2%} ({counts.dead} {basis}) "
                                  f">= {level.lower()}_rate {limit:.2%}")
        limit = getattr(policy, f"{level.lower()}_count")
        if limit is not None and counts.dead >= limit:
            crossed[level].append(f"{counts.dead} dead letter(s) >= {level.lower()}_count {limit}")
    severity = "ERROR" if crossed["ERROR"] else "WARN" if crossed["WARN"] else None
    return Verdict(passed=severity is None, severity=severity, rate=rate, judged_rate=judged,
                   why=tuple(crossed[severity]) if severity else ())


def top_reasons(reasons: dict[str, int], n: int = 5) -> list[tuple[str, int]]:
    return sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def window_label(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- choosing and re-publishing letters ------------------------------------------------------
def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or date-time (UTC when no zone is given) or a duration back from
    now (``90m``, ``2h``, ``1d``, ``1w``)."""
    return opconfig.parse_since(text, "--since", now)


@dataclass(frozen=True)
class Selection:
    """Which dead letters a listing or a replay takes."""

    since_ms: int | None = None
    reasons: frozenset[str] | None = None   # None: every reason
    source_topic: str | None = None         # None: every topic of the dataset
    again: bool = False                     # replay letters that were replayed already
    limit: int | None = None                # replay at most this many (oldest first)

    def matches(self, letter: Letter) -> bool:
        if self.since_ms is not None and letter.timestamp_ms < self.since_ms:
            return False
        if self.reasons is not None and letter.code not in self.reasons:
            return False
        return self.source_topic is None or letter.source_topic == self.source_topic

    def describe(self) -> str:
        parts = []
        if self.reasons is not None:
            parts.append("reason " + ", ".join(sorted(self.reasons)))
        if self.since_ms is not None:
            parts.append(f"dead-lettered since {iso(self.since_ms)}")
        if self.source_topic is not None:
            parts.append(f"from {self.source_topic}")
        if self.again:
            parts.append("again")
        if self.limit is not None:
            parts.append(f"at most {self.limit}")
        return ", ".join(parts) or "every dead letter"


def resolve_topic(topic: str, datasets: Iterable) -> tuple[EventDataset, str | None]:
    """The event dataset a source or dead-letter ``topic`` belongs to, and the source topic to
    restrict to (None when the DLQ topic itself was named)."""
    events = [d for d in datasets if isinstance(d, EventDataset)]
    for ds in events:
        if topic == ds.dlq_topic:
            return ds, None
        if topic in ds.topics:
            return ds, topic if len(ds.topics) > 1 else None
    known = sorted(t for d in events for t in (*d.topics, d.dlq_topic))
    raise UsageError(f"topic {topic!r} is not a source or dead-letter topic of any declared "
                     f"event dataset; known: {', '.join(known) or 'none'}")


def check_reasons(reasons: Sequence[str] | None, known: Iterable[str]) -> frozenset[str] | None:
    """``--reason`` codes, upper-cased, each one a known code (of decode, or seen in the DLQ)."""
    if not reasons:
        return None
    known = set(known)
    wanted = frozenset(r.strip().upper() for r in reasons)
    unknown = sorted(wanted - known)
    if unknown:
        raise UsageError(f"unknown reason code(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    return wanted


def new_replay_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"replay-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def replay_headers(letter: Letter, replay_id: str) -> list[tuple[str, bytes]]:
    """The original headers (no ``conflux.error.*`` / ``conflux.replay.*``) plus the replay's."""
    return [*letter.headers,
            (REPLAY_OF, f"{letter.dlq_topic}:{letter.dlq_partition}:{letter.dlq_offset}".encode()),
            (REPLAY_ID, replay_id.encode()),
            (REPLAY_REASON, letter.code.encode()),
            (REPLAY_ATTEMPT, str(letter.attempt + 1).encode())]


def unroutable(letter: Letter, ds: EventDataset) -> str | None:
    """Why ``letter`` cannot be re-published to a topic of ``ds`` (None when it can)."""
    if not letter.source_topic:
        return "no conflux.error.topic header"
    if letter.source_topic not in ds.topics:
        return f"source topic {letter.source_topic!r} is not a topic of {ds.name}"
    return None


@dataclass
class ReplayReport:
    """What a replay did (or, dry, would do), per reason."""

    replay_id: str
    dlq_topic: str
    selection: Selection
    dry_run: bool = False
    scanned: int = 0                                        # letters read from the DLQ
    selected: Counter = field(default_factory=Counter)      # matching the selection
    skipped: Counter = field(default_factory=Counter)       # already replayed (no --again)
    unroutable: Counter = field(default_factory=Counter)    # no usable source topic
    published: Counter = field(default_factory=Counter)     # re-published (dry: would be)
    over_limit: int = 0
    targets: Counter = field(default_factory=Counter)       # topic -> records re-published
    original_time_missing: int = 0  # re-published with the dead-letter time (source record gone)

    def rows(self) -> list[tuple[str, int, int, int, int]]:
        """``(reason, selected, already replayed, unroutable, re-published)``."""
        return [(code, n, self.skipped[code], self.unroutable[code], self.published[code])
                for code, n in sorted(self.selected.items(), key=lambda kv: (-kv[1], kv[0]))]

    def as_dict(self) -> dict:
        return {
            "replay_id": self.replay_id, "dlq_topic": self.dlq_topic, "dry_run": self.dry_run,
            "selection": self.selection.describe(), "scanned": self.scanned,
            "selected": sum(self.selected.values()), "skipped": sum(self.skipped.values()),
            "unroutable": sum(self.unroutable.values()),
            "published": sum(self.published.values()), "over_limit": self.over_limit,
            "targets": dict(self.targets),
            "original_time_missing": self.original_time_missing,
            "reasons": {code: {"selected": s, "already_replayed": k, "unroutable": u,
                               "published": p} for code, s, k, u, p in self.rows()},
        }
