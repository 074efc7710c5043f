"""The resources every Conflux definition uses, configured from the environment (dg.EnvVar)."""

from __future__ import annotations

import dagster as dg

from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.postgres import PostgresResource
from resources.registry import SchemaRegistryResource


def platform_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
        "postgres": PostgresResource(url=dg.EnvVar("CONFLUX_POSTGRES_URL")),
        "lake": LakeResource(path=dg.EnvVar("CONFLUX_LAKE_PATH")),
        "registry": SchemaRegistryResource(url=dg.EnvVar("CONFLUX_POSTGRES_URL")),
    }
