"""The one place the Dagster ``Definitions`` of Conflux is assembled (``pipelines.definitions:defs``)."""

from __future__ import annotations

import dagster as dg

from pipelines.batch_path import build_table_load_asset
from pipelines.catalog import DATASETS
from pipelines.datasets import BatchDataset, EventDataset
from pipelines.event_path import build_ingest_job, event_asset_spec
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.postgres import PostgresResource
from sensors.kafka_sensor import build_kafka_sensor


def build_definitions(datasets=DATASETS) -> dg.Definitions:
    assets, jobs, sensors = [], [], []
    for ds in datasets:
        if isinstance(ds, EventDataset):
            job = build_ingest_job(ds)
            assets.append(event_asset_spec(ds))
            jobs.append(job)
            sensors.append(build_kafka_sensor(ds, job))
        elif isinstance(ds, BatchDataset) and ds.source_table:
            assets.append(build_table_load_asset(ds))
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        resources={
            "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
            "postgres": PostgresResource(url=dg.EnvVar("CONFLUX_POSTGRES_URL")),
            "lake": LakeResource(path=dg.EnvVar("CONFLUX_LAKE_PATH")),
        },
    )


defs = build_definitions()
