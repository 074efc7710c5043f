"""Where a business event went, by correlation id — read from the lake, Kafka, the Dagster
instance and the ops database:

* **arrivals**: every stored row carrying the id (each event dataset's provenance columns say
  topic / partition / offset / time), with the record's headers read back from Kafka while it
  is retained;
* **applications**: the materializations whose ``source_ranges`` cover that offset — the run
  (or the sensor's inline micro-batch) that applied it, and when;
* **downstream**: the batch datasets that read those partitions, and whether their latest
  materialization of the partition came after the event was applied (so includes it);
* **dead letters**: records of the dead-letter topics carrying the id, with their reasons;
* **outbox**: the ``ops.outbox`` events the id was published through, if it came that way.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field

import dagster as dg

from conflux.core.declarations import BatchDataset, Dataset, EventDataset
from conflux.event.ingest import CORRELATION_HEADER
from conflux.io.lake import UNPARTITIONED

DLQ_HEADERS = ("conflux.error.code", "conflux.error.message", "conflux.error.topic",
               "conflux.error.partition", "conflux.error.offset")


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Arrival:
    dataset: str
    partition: str
    key: dict
    topic: str
    kafka_partition: int
    offset: int
    arrived_at: str | None
    headers: dict[str, str] | None  # None: no longer retained by Kafka
    delta_version: int | None = None   # the first table version that held it
    delta_committed_at: str | None = None


@dataclass
class Application:
    dataset: str
    partition: str
    offset: int
    applied_by: str  # a run id, or ``sensor:<name>`` for an inline micro-batch
    run_id: str | None
    materialized_at: str | None
    seconds: float  # epoch, for ordering


@dataclass
class Downstream:
    dataset: str
    partition: str | None
    materialized_at: str | None
    run_id: str | None
    includes_event: bool


@dataclass
class DeadLetterHit:
    dlq_topic: str
    offset: int
    reason: str
    message: str
    source: str


@dataclass
class OutboxHit:
    event_id: str
    topic: str
    aggregate_id: str
    created_at: str
    sent_at: str | None


@dataclass
class Trace:
    correlation_id: str
    arrivals: list[Arrival] = field(default_factory=list)
    applications: list[Application] = field(default_factory=list)
    downstream: list[Downstream] = field(default_factory=list)
    dead_letters: list[DeadLetterHit] = field(default_factory=list)
    outbox: list[OutboxHit] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)  # arrivals whose run search was cut

    @property
    def found(self) -> bool:
        return bool(self.arrivals or self.dead_letters or self.outbox)

    def as_dict(self) -> dict:
        out = asdict(self)
        for a in out["applications"]:
            a.pop("seconds")
        return out


def find_arrivals(cid: str, datasets: list[EventDataset], *, lake, kafka) -> list[Arrival]:
    """Stored rows carrying ``cid``, with the source record's headers while Kafka keeps it."""
    out = []
    for ds in datasets:
        history = None
        for partition, row in lake.find(ds.name, "__correlation_id", cid):
            topic, part, offset = row["__topic"], int(row["__partition"]), int(row["__offset"])
            history = lake.history(ds.name) if history is None else history
            first = lake.first_version_holding(ds.name, topic, part, offset,
                                               history=history) or {}
            out.append(Arrival(ds.name, partition, {k: row[k] for k in ds.key}, topic, part,
                               offset, _iso(row["__ts"] / 1000) if row.get("__ts") else None,
                               None, first.get("version"),
                               _iso(first["timestamp"] / 1000) if first.get("timestamp") else None))
    by_partition: dict[tuple[str, int], list[Arrival]] = {}
    for a in out:
        by_partition.setdefault((a.topic, a.kafka_partition), []).append(a)
    for (topic, part), hits in by_partition.items():
        retained = kafka.offsets_at(topic, 0) or {}
        earliest, end = retained.get(part, (0, 0, 0))[1:]
        wanted = [a for a in hits if earliest <= a.offset < end]
        if not wanted:
            continue
        first, last = min(a.offset for a in wanted), max(a.offset for a in wanted)
        records = {r.offset: r for r in kafka.read_ranges([(topic, part, first, last + 1)],
                                                           idle_timeout_s=10)
                   if r.offset in {a.offset for a in wanted}}
        for a in wanted:
            rec = records.get(a.offset)
            if rec is not None:
                a.headers = {k: v.decode(errors="replace") for k, v in rec.headers}
    return out


MAX_PAGES = 50  # of 200 materializations each, per arrival


def find_applications(arrivals: list[Arrival], instance: dg.DagsterInstance
                      ) -> tuple[list[Application], list[str]]:
    """The materializations whose source ranges cover each arrival's offset, newest first back
    to the first one whose range on that partition ends at or before the offset (older ones
    cannot hold it); and the arrivals whose search was cut at ``MAX_PAGES``."""
    out, truncated = [], []
    for a in arrivals:
        cursor, done = None, False
        for _ in range(MAX_PAGES):
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(a.dataset),
                    asset_partitions=None if a.partition == UNPARTITIONED else [a.partition]),
                limit=200, cursor=cursor, ascending=False)
            for rec in page.records:
                meta = rec.asset_materialization.metadata
                ranges = meta.get("conflux/source_ranges")
                mine = [r for r in (ranges.value if ranges is not None else [])
                        if r["topic"] == a.topic and r["partition"] == a.kafka_partition]
                if any(r["start"] <= a.offset < r["end"] for r in mine):
                    by = meta.get("conflux/applied_by")
                    applied_by = by.value if by is not None else (rec.run_id or "?")
                    out.append(Application(a.dataset, a.partition, a.offset, applied_by,
                                           rec.run_id or None, _iso(rec.timestamp),
                                           rec.timestamp))
                elif any(r["end"] <= a.offset for r in mine):
                    done = True  # everything older applied earlier offsets
            if done or not page.has_more:
                break
            cursor = page.cursor
        else:
            truncated.append(f"{a.dataset} {a.topic}[{a.kafka_partition}]@{a.offset}")
    out.sort(key=lambda app: app.seconds)
    return out, truncated


def find_downstream(applications: list[Application], catalog: dict[str, Dataset],
                    instance: dg.DagsterInstance) -> list[Downstream]:
    """Batch datasets reading the touched partitions: is their latest materialization newer?"""
    first_applied: dict[tuple[str, str], float] = {}
    for app in applications:
        k = (app.dataset, app.partition)
        first_applied[k] = min(first_applied.get(k, app.seconds), app.seconds)
    out = []
    for (name, partition), applied in sorted(first_applied.items()):
        for ds in catalog.values():
            if not isinstance(ds, BatchDataset) or name not in ds.upstream:
                continue
            part = partition if ds.partitioned and partition != UNPARTITIONED else None
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(ds.name),
                                      asset_partitions=[part] if part else None), limit=1)
            rec = page.records[0] if page.records else None
            # it includes the event if its run started (read its inputs) after it was applied
            run = instance.get_run_record_by_id(rec.run_id) if rec and rec.run_id else None
            started = (run.start_time if run and run.start_time else rec.timestamp) if rec else 0
            out.append(Downstream(ds.name, part, _iso(rec.timestamp) if rec else None,
                                  rec.run_id if rec else None, bool(rec and started >= applied)))
    return out


def find_dead_letters(cid: str, datasets: list[EventDataset], *, kafka) -> list[DeadLetterHit]:
    """Dead letters carrying ``cid`` (every retained record of each dead-letter topic)."""
    out = []
    for ds in datasets:
        found = kafka.offsets_at(ds.dlq_topic, 0)
        if not found:
            continue
        ranges = [(ds.dlq_topic, p, earliest, end) for p, (_, earliest, end) in found.items()]
        for rec in kafka.read_ranges(ranges, idle_timeout_s=10):
            value = rec.header(CORRELATION_HEADER)
            if value is None or value.decode(errors="replace") != cid:
                continue
            h = {k: v.decode(errors="replace") for k, v in rec.headers if k in DLQ_HEADERS}
            out.append(DeadLetterHit(
                ds.dlq_topic, rec.offset, h.get("conflux.error.code", "?"),
                h.get("conflux.error.message", ""),
                f"{h.get('conflux.error.topic', '?')}[{h.get('conflux.error.partition', '?')}]"
                f"@{h.get('conflux.error.offset', '?')}"))
    return out


def find_outbox(cid: str, pg_url: str) -> list[OutboxHit]:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        exists = conn.execute("select to_regclass('ops.outbox')").fetchone()[0]
        if exists is None:
            return []
        rows = conn.execute(
            "select event_id, topic, aggregate_id, created_at, sent_at from ops.outbox "
            "where headers->>'correlation_id' = %s order by id", [cid]).fetchall()
    return [OutboxHit(str(e), t, a, c.isoformat(), s.isoformat() if s else None)
            for e, t, a, c, s in rows]


def trace(cid: str, catalog: dict[str, Dataset], *, lake, kafka, instance: dg.DagsterInstance,
          pg_url: str) -> Trace:
    """Everything known about one correlation id (see the module docstring)."""
    events = [d for d in catalog.values() if isinstance(d, EventDataset)]
    out = Trace(cid)
    steps = (
        ("lake+kafka", lambda: setattr(out, "arrivals", find_arrivals(cid, events, lake=lake,
                                                                       kafka=kafka))),
        ("runs", lambda: (setattr(out, "applications", (found := find_applications(
            out.arrivals, instance))[0]), setattr(out, "truncated", found[1]))),
        ("downstream", lambda: setattr(out, "downstream",
                                       find_downstream(out.applications, catalog, instance))),
        ("dead letters", lambda: setattr(out, "dead_letters",
                                         find_dead_letters(cid, events, kafka=kafka))),
        ("outbox", lambda: setattr(out, "outbox", find_outbox(cid, pg_url))),
    )
    for name, step in steps:
        started = time.perf_counter()
        step()
        out.seconds[name] = round(time.perf_counter() - started, 3)
    return out


def render(t: Trace, dagster_url: str) -> list[str]:
    """The human-readable report."""
    lines = [f"correlation id {t.correlation_id}"]
    if not t.found:
        return lines + ["  not found: no stored row, dead letter or outbox event carries it"]
    for o in t.outbox:
        lines.append(f"  outbox: event {o.event_id} → {o.topic} (key {o.aggregate_id}), "
                     f"queued {o.created_at}, " + (f"sent {o.sent_at}" if o.sent_at
                                                    else "NOT SENT yet"))
    for a in t.arrivals:
        kept = "" if a.headers is not None else " (record no longer retained by Kafka)"
        lines.append(f"  arrived: {a.topic}[{a.kafka_partition}]@{a.offset} at {a.arrived_at}"
                     f"{kept} → {a.dataset} partition {a.partition} key {a.key}")
        if a.delta_version is not None:
            lines.append(f"    first held by Delta version {a.delta_version} of {a.dataset} "
                         f"(committed {a.delta_committed_at})")
        if a.headers:
            shown = {k: v for k, v in a.headers.items() if k != CORRELATION_HEADER}
            lines.append(f"    headers: {shown}")
        for app in (x for x in t.applications
                    if (x.dataset, x.partition, x.offset) == (a.dataset, a.partition, a.offset)):
            where = (f"run {app.run_id} ({dagster_url}/runs/{app.run_id})" if app.run_id
                     else f"{app.applied_by} (inline micro-batch)")
            lines.append(f"    applied by {where} at {app.materialized_at}")
    for d in t.downstream:
        state = "includes it" if d.includes_event else "NOT recomputed since"
        lines.append(f"  downstream: {d.dataset}"
                     + (f" partition {d.partition}" if d.partition else "")
                     + (f" materialized {d.materialized_at} by run {d.run_id}: {state}"
                        if d.materialized_at else ": never materialized"))
    for dl in t.dead_letters:
        lines.append(f"  dead letter: {dl.dlq_topic}@{dl.offset} from {dl.source}: "
                     f"{dl.reason} — {dl.message}")
    for t_ in t.truncated:
        lines.append(f"  search truncated: the {MAX_PAGES * 200} newest materializations of "
                     f"{t_} were searched; older applications are not listed")
    lines.append("  looked up in " + ", ".join(f"{k} {v:.2f}s" for k, v in t.seconds.items()))
    return lines
