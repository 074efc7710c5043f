"""The demo platform's dataset declarations (names relied on by docs and tests)."""

from __future__ import annotations

from contracts import tpch
from pipelines.datasets import BatchDataset, Dataset, EventDataset

ORDERS = EventDataset(
    name="orders",
    contract=tpch.Order,
    key=("o_orderkey",),
    event_time="o_orderdate",
    topic="tpch.orders",
    owner="team:order-service",
    description="Orders as the order service publishes them, upserted by o_orderkey.",
)

NATION = BatchDataset(
    name="nation",
    contract=tpch.Nation,
    key=("n_nationkey",),
    source_table="ops.nation",
    description="Nations, loaded from the operational database.",
)

DATASETS: tuple[Dataset, ...] = (ORDERS, NATION)


def event_datasets() -> list[EventDataset]:
    return [d for d in DATASETS if isinstance(d, EventDataset)]
