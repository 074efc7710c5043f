"""The declarative API: one declaration per dataset, ``batch`` or ``event``, one contract.

Declarations are plain frozen dataclasses (no Dagster here); ``pipelines.compile`` turns a
catalog of them into Dagster definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

Mode = Literal["batch", "event"]


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """What every dataset declares.

    Args:
        name: dataset name; also the Dagster asset key.
        contract: pydantic model describing one row / event.
        key: fields that identify a row (upserts are idempotent by this key).
        event_time: date field that picks the daily partition, or None for unpartitioned.
        owner: team or person answering for the dataset.
        description: one paragraph shown in the UI.
        group: domain the dataset belongs to (one Dagster group per domain).
    """

    name: str
    contract: type[BaseModel]
    key: tuple[str, ...]
    event_time: str | None = None
    owner: str = "team:data-platform"
    description: str = ""
    group: str = "commerce"

    mode: Mode = field(init=False, default="batch")


@dataclass(frozen=True, kw_only=True)
class EventDataset(Dataset):
    """A dataset built from a Kafka topic.

    Args:
        topic: source topic.
        partitions: partitions the platform creates the topic with.
        max_records_per_run: micro-batch bound: a run reads at most this many records per
            partition range.

    Examples:
        >>> EventDataset(name="orders", contract=Order, key=("o_orderkey",),
        ...              event_time="o_orderdate", topic="tpch.orders")
    """

    topic: str
    partitions: int = 3
    max_records_per_run: int = 50_000
    mode: Mode = field(init=False, default="event")

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"


@dataclass(frozen=True, kw_only=True)
class BatchDataset(Dataset):
    """A dataset computed in batch: loaded from an ``ops`` table or joined from upstreams.

    Args:
        source_table: ``schema.table`` in the operational Postgres to load from, or None.
        upstream: names of the datasets ``compute`` reads.
        compute: function computing the dataset (joins), or None for a table load.
    """

    source_table: str | None = None
    upstream: tuple[str, ...] = ()
    compute: Callable | None = None
    mode: Mode = field(init=False, default="batch")
