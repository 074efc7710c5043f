"""Conflux: declare datasets once, as batch or event, and run both paths on Dagster and Kafka.

The public API, importable from here (loaded on first use, so ``conflux`` imports fast)::

    from conflux import EventDataset, BatchDataset, build_definitions

    ORDERS = EventDataset(name="orders", contract=Order, key=("o_orderkey",),
                          event_time="o_orderdate", topics=("shop.orders",))
    defs = build_definitions([ORDERS])

Layers, bottom to top (imports only go downwards): ``core`` (errors, settings, project,
declarations) < ``contracts`` (compatibility, fingerprints, metadata) < ``io`` (Kafka, Postgres,
lake, registry) < ``event`` / ``batch`` / ``observe`` / ``ledger`` / ``outbox`` < ``dagster``
(compile declarations to Definitions) < ``cli`` / ``stack`` (command line, local services).
"""

from __future__ import annotations

import importlib

_API = {
    # declarations
    "Dataset": "conflux.core.declarations",
    "EventDataset": "conflux.core.declarations",
    "BatchDataset": "conflux.core.declarations",
    "BatchFallback": "conflux.core.declarations",
    "DeadLetterPolicy": "conflux.core.declarations",
    "validate_catalog": "conflux.core.declarations",
    "ledger_projection": "conflux.ledger.projection",
    "LedgerColumns": "conflux.ledger.fold",
    # compile to Dagster
    "build_definitions": "conflux.dagster.compile",
    "asset_specs": "conflux.dagster.compile",
    "platform_resources": "conflux.dagster.resources",
    "daily_partitions": "conflux.dagster.compile",
    # reading datasets from any Dagster asset (the lake IO manager)
    "LakeIOManager": "conflux.dagster.io_manager",
    "OutputContractError": "conflux.core.errors",
    "ConfluxDatasets": "conflux.dagster.component",
    # resources
    "KafkaResource": "conflux.io.kafka",
    "LakeResource": "conflux.io.lake",
    "PostgresResource": "conflux.io.postgres",
    "SchemaRegistryResource": "conflux.io.registry",
    # projects, settings, errors
    "Project": "conflux.core.project",
    "load_catalog": "conflux.core.project",
    "Settings": "conflux.core.settings",
    "ConfluxError": "conflux.core.errors",
    "ConfigError": "conflux.core.errors",
    "DeclarationError": "conflux.core.errors",
    # publishing events the way Conflux producers do
    "event_headers": "conflux.event.publish",
    "records_for": "conflux.event.publish",
    "publish_all": "conflux.event.publish",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'conflux' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
