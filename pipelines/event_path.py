"""Event path: the ingest job of an event dataset (reads one offset range, upserts by key)."""


import json
from collections import defaultdict

import dagster as dg
import pandas as pd
from pydantic import ValidationError

from pipelines.datasets import EventDataset
from pipelines.metadata import materialization_metadata
from resources.kafka import KafkaResource
from resources.lake import LakeResource

EVENT_START_DATE = "1992-01-01"


def daily_partitions() -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=EVENT_START_DATE, end_offset=1)


class RangeConfig(dg.Config):
    topic: str
    partition: int
    start: int
    end: int


def build_ingest_job(ds: EventDataset) -> dg.JobDefinition:
    """A one-op job reading ``[start, end)`` of one partition into ``ds``'s daily partitions."""

    @dg.op(name=f"{ds.name}__ingest", tags={"conflux/dataset": ds.name})
    def ingest(context: dg.OpExecutionContext, config: RangeConfig, kafka: KafkaResource,
               lake: LakeResource) -> None:
        valid: list[dict] = []
        invalid = 0
        for record in kafka.read_range(config.topic, config.partition, config.start, config.end):
            try:
                row = ds.contract.model_validate_json(record.value or b"")
            except ValidationError:
                invalid += 1
                continue
            valid.append(row.model_dump())
        by_partition: dict[str, list[dict]] = defaultdict(list)
        for row in valid:
            by_partition[str(row[ds.event_time])].append(row)
        for partition, rows in sorted(by_partition.items()):
            df = pd.DataFrame(rows)
            lake.upsert(ds.name, df, list(ds.key), partition)
            context.log_event(dg.AssetMaterialization(
                asset_key=ds.name, partition=partition,
                metadata=materialization_metadata(
                    ds, rows=len(rows), source_range=json.dumps(config.model_dump()),
                    invalid=invalid)))
        context.log.info(f"{ds.name}: {len(valid)} valid, {invalid} invalid records from "
                         f"{config.topic}[{config.partition}] [{config.start}, {config.end})")

    @dg.job(name=f"{ds.name}__ingest_job", tags={"conflux/path": "event"},
            executor_def=dg.in_process_executor)
    def ingest_job():
        ingest()

    return ingest_job


def event_asset_spec(ds: EventDataset) -> dg.AssetSpec:
    """The asset an event dataset shows in the graph (materialized by its ingest runs)."""
    return dg.AssetSpec(
        key=ds.name,
        description=ds.description,
        group_name=ds.group,
        owners=[ds.owner],
        kinds={"kafka", "parquet"},
        tags={"conflux/mode": "event"},
        partitions_def=daily_partitions() if ds.event_time else None,
        metadata={"dagster/column_schema": materialization_metadata(ds, rows=0)["dagster/column_schema"],
                  "conflux/topic": ds.topic, "conflux/dlq_topic": ds.dlq_topic},
    )
