"""The resources every Conflux definition uses, configured from the environment (dg.EnvVar)."""

from __future__ import annotations

import os

import dagster as dg

from conflux.dagster.io_manager import IO_MANAGER_KEY, LakeIOManager
from conflux.io.kafka import SECURITY_ENV, KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource


def kafka_resource(env: dict[str, str] | None = None) -> KafkaResource:
    """Kafka through ``dg.EnvVar``: the brokers, and each security setting whose variable is
    set when the definitions load (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``,
    ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CAFILE``). Dagster resolves an
    ``EnvVar`` when a run or tick starts and keeps only the variable's name in run config, so the
    password is never stored; an unset variable is left out (Dagster fails on an unset
    ``EnvVar``), and the field keeps its default (PLAINTEXT, no credentials)."""
    env = os.environ if env is None else env
    optional = {field: dg.EnvVar(name) for field, name in SECURITY_ENV.items() if env.get(name)}
    return KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS"), **optional)


def platform_resources() -> dict[str, dg.ConfigurableResource]:
    """Kafka, Postgres, the lake, the schema registry, and the default IO manager: the lake's
    (on the same lake), through which assets read the datasets."""
    lake = LakeResource(path=dg.EnvVar("CONFLUX_LAKE_PATH"))
    return {
        "kafka": kafka_resource(),
        "postgres": PostgresResource(url=dg.EnvVar("CONFLUX_POSTGRES_URL")),
        "lake": lake,
        "registry": SchemaRegistryResource(url=dg.EnvVar("CONFLUX_POSTGRES_URL")),
        IO_MANAGER_KEY: LakeIOManager(lake=lake),
    }
