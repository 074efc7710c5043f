"""`conflux lag [DATASET ...] [--json]`: consumer lag of every event dataset — how far each Kafka
sensor's cursor (stored by Dagster, read through the webserver) is behind the end offsets.

The same figures are recorded by the sensors themselves as ``conflux/lag_records`` observations
on each event dataset (the asset's *Plots* in the UI); this command answers right now, and also
when a sensor is stopped or stuck and records nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from conflux.cli import dagster_api as api
from conflux.core.errors import UsageError
from conflux.core.declarations import EventDataset
from conflux.event.offsets import lag_by_partition, parse_cursor


@dataclass
class DatasetLag:
    dataset: str
    sensor: str
    sensor_status: str
    lag: int
    partitions: list[dict]  # {topic, partition, cursor, end, lag}


def consumer_lag(datasets: list[EventDataset], *, kafka, url: str) -> list[DatasetLag]:
    """Per dataset: the sensor's cursor against the end offsets of its topics."""
    out = []
    for ds in datasets:
        state = api.sensor_state(url, f"{ds.name}__kafka")
        cursor = parse_cursor(state.cursor)
        ends = {t: found for t in ds.topics if (found := kafka.end_offsets(t)) is not None}
        lag = lag_by_partition(cursor, ends)
        parts = [{"topic": t, "partition": p, "cursor": cursor.get(t, {}).get(p, 0), "end": end,
                  "lag": lag[f"{t}[{p}]"]}
                 for t, found in sorted(ends.items()) for p, end in sorted(found.items())]
        out.append(DatasetLag(ds.name, state.name, state.status, sum(lag.values()), parts))
    return out


def cmd_lag(args) -> int:
    from conflux.core.settings import Settings
    from conflux.core.declarations import EventDataset
    from conflux.core.project import catalog_by_name
    from conflux.io.kafka import KafkaResource

    known = {n: d for n, d in catalog_by_name().items() if isinstance(d, EventDataset)}
    unknown = [n for n in args.datasets if n not in known]
    if unknown:
        raise UsageError(f"not an event dataset: {', '.join(unknown)} "
                         f"(event datasets: {', '.join(known)})")
    chosen = [known[n] for n in args.datasets] or list(known.values())
    settings = Settings.from_env()
    rows = consumer_lag(chosen, kafka=KafkaResource.from_env(settings),
                        url=settings.dagster_url)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    for r in rows:
        print(f"{r.dataset}: lag {r.lag:,} record(s) (sensor {r.sensor} {r.sensor_status})")
        for p in r.partitions:
            print(f"  {p['topic']}[{p['partition']}]: cursor {p['cursor']:,} end {p['end']:,} "
                  f"lag {p['lag']:,}")
    return 0


def register(sub) -> None:
    """Add ``conflux lag`` to the ``conflux`` parser."""
    lag = sub.add_parser("lag", help="consumer lag of each event dataset's Kafka sensor")
    lag.add_argument("datasets", nargs="*", metavar="DATASET",
                     help="event datasets to show (default: all)")
    lag.add_argument("--json", action="store_true", help="machine-readable output")
    lag.set_defaults(func=cmd_lag)
