"""`conflux lag [DATASET ...] [--json]`: consumer lag of every event dataset — how far each Kafka
sensor's cursor (stored by Dagster, read through the webserver) is behind the end offsets.

The same figures are recorded by the sensors themselves as ``conflux/lag_records`` observations
on each event dataset (the asset's *Plots* in the UI); this command answers right now, and also
when a sensor is stopped or stuck and records nothing. It prints a line for each offset gap not
acknowledged yet (``conflux.observe.offset_gaps``) and for each one the sensor will record at its
next tick (its cursor is behind a log start, or the topic was recreated); the lag counts from
past such gaps, as the sensor will read. Records requested from ingest runs that no run has
applied yet (runs mode: the cursor has moved past them) are shown apart, as *unsettled*.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

from conflux.cli import dagster_api as api
from conflux.core.errors import UsageError
from conflux.core.declarations import EventDataset
from conflux.event.offsets import find_gaps, lag_by_partition, parse_state, unsettled_records


@dataclass
class DatasetLag:
    dataset: str
    sensor: str
    sensor_status: str
    lag: int
    partitions: list[dict]  # {topic, partition, cursor, end, lag}
    gaps: list[dict]  # open offset gaps (``recorded`` false: the sensor records it next tick)
    gaps_unknown: str = ""  # why the recorded gaps could not be read ("" when they were)
    unsettled: int = 0  # records requested from ingest runs and not applied yet
    unsettled_batches: list[dict] = field(default_factory=list)  # Pending.as_json() of each


def consumer_lag(datasets: list[EventDataset], *, kafka, url: str,
                 ledger=None) -> list[DatasetLag]:
    """Per dataset: the sensor's cursor against the log of its topics, and its open offset
    gaps (recorded in ``ledger``, a :class:`~conflux.observe.offset_gaps.GapLedger`, and not
    yet recorded)."""
    from conflux.core.errors import OffsetGapError

    out = []
    for ds in datasets:
        state = api.sensor_state(url, f"{ds.name}__kafka")
        tick = parse_state(state.cursor)
        bounds = {t: found for t in ds.topics if (found := kafka.log_bounds(t)) is not None}
        found, cursor = find_gaps(tick.offsets, bounds, tick.topic_ids)
        ends = {t: b.ends for t, b in bounds.items()}
        lag = lag_by_partition(cursor, ends)
        parts = [{"topic": t, "partition": p, "cursor": tick.offsets.get(t, {}).get(p, 0),
                  "end": end, "lag": lag[f"{t}[{p}]"]}
                 for t, found in sorted(ends.items()) for p, end in sorted(found.items())]
        gaps, unknown = [], ""
        try:
            gaps = [{"recorded": True, **r.as_json()} for r in
                    (ledger.gaps([ds.name]) if ledger is not None else [])]
        except OffsetGapError as exc:
            unknown = str(exc)
        gaps += [{"recorded": False, "dataset": ds.name, **g.as_json()} for g in found]
        out.append(DatasetLag(ds.name, state.name, state.status, sum(lag.values()), parts,
                              gaps, unknown, unsettled_records(tick),
                              [p.as_json() for p in tick.pending]))
    return out


def unsettled_line(r: DatasetLag) -> str:
    """How ``conflux lag`` shows the records requested from ingest runs and not applied yet."""
    oldest = min(b["requested_at"] for b in r.unsettled_batches)
    again = sum(b["attempts"] for b in r.unsettled_batches)
    at = dt.datetime.fromtimestamp(oldest, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return (f"  unsettled: {r.unsettled:,} record(s) in {len(r.unsettled_batches)} batch(es) "
            f"requested from ingest runs and not applied yet (oldest requested {at}"
            + (f", {again} re-request(s)" if again else "") + ")")


def gap_line(ds: EventDataset, gap: dict) -> str:
    """How ``conflux lag`` shows an open offset gap."""
    if not gap["recorded"]:
        return (f"  offset gap, recorded at the sensor's next tick: {gap['message']}")
    return (f"  offset gap #{gap['id']} (found by {gap['detected_by']} at "
            f"{gap['detected_at']}): {gap['message']}; after repairing: conflux dlq ack-gaps "
            f"{ds.topic} {gap['id']} --note TEXT")


def cmd_lag(args) -> int:
    from conflux.core.settings import Settings
    from conflux.core.declarations import EventDataset
    from conflux.core.project import catalog_by_name
    from conflux.io.kafka import KafkaResource
    from conflux.observe.offset_gaps import GapLedger

    known = {n: d for n, d in catalog_by_name().items() if isinstance(d, EventDataset)}
    unknown = [n for n in args.datasets if n not in known]
    if unknown:
        raise UsageError(f"not an event dataset: {', '.join(unknown)} "
                         f"(event datasets: {', '.join(known)})")
    chosen = [known[n] for n in args.datasets] or list(known.values())
    settings = Settings.from_env()
    rows = consumer_lag(chosen, kafka=KafkaResource.from_env(settings),
                        url=settings.dagster_url, ledger=GapLedger(settings.postgres_url))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    for r in rows:
        print(f"{r.dataset}: lag {r.lag:,} record(s) (sensor {r.sensor} {r.sensor_status})")
        for p in r.partitions:
            print(f"  {p['topic']}[{p['partition']}]: cursor {p['cursor']:,} end {p['end']:,} "
                  f"lag {p['lag']:,}")
        if r.unsettled_batches:
            print(unsettled_line(r))
        for gap in r.gaps:
            print(gap_line(known[r.dataset], gap))
        if r.gaps_unknown:
            print(f"  offset gaps unknown: {r.gaps_unknown}")
    return 0


def register(sub) -> None:
    """Add ``conflux lag`` to the ``conflux`` parser."""
    lag = sub.add_parser("lag", help="consumer lag of each event dataset's Kafka sensor")
    lag.add_argument("datasets", nargs="*", metavar="DATASET",
                     help="event datasets to show (default: all)")
    lag.add_argument("--json", action="store_true", help="machine-readable output")
    lag.set_defaults(func=cmd_lag)
