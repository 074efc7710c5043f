"""The thin slice: Kafka records reach a sensor, event and batch datasets materialize in Dagster
with Postgres storage — through a real sensor evaluation and through the running daemon."""

import json
import time

import dagster as dg
import pandas as pd
import pytest

from conflux.demo.producer import event_headers, json_rows, load_ops
from conflux.demo.tpch import TpchGenerator
from contracts.tpch import Order
from pipelines.batch_path import build_batch_asset
from pipelines.compile import asset_specs
from pipelines.catalog import NATION
from pipelines.datasets import EventDataset
from pipelines.event_path import build_ingest_job
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.postgres import PostgresResource
from resources.registry import SchemaRegistryResource
from sensors.kafka_sensor import build_kafka_sensor


def orders_rows(n: int, seed: int = 1) -> pd.DataFrame:
    return TpchGenerator(0.001, seed=seed).orders().head(n)


def publish(kafka: KafkaResource, topic: str, df: pd.DataFrame) -> int:
    return kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers())
                                   for r in json_rows(df)])


def test_batch_dataset_loads_from_ops_into_the_lake(stack, instance, lake):
    load_ops(stack.settings.postgres_url, {"nation": TpchGenerator(0.001).nation()})
    spec = asset_specs([NATION])["nation"]
    result = dg.materialize(
        [build_batch_asset(NATION, spec, {"nation": NATION})], instance=instance,
        resources={"postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake,
                   "registry": SchemaRegistryResource(url=stack.settings.postgres_url)})
    assert result.success
    event = instance.get_latest_materialization_event(dg.AssetKey("nation"))
    meta = event.asset_materialization.metadata
    assert meta["dagster/row_count"].value == 25
    assert meta["conflux/contract_version"].value.startswith("nation@")
    assert len(lake.read("nation")) == 25


def test_running_daemon_turns_demo_events_into_materializations(stack, kafka, instance):
    """End to end: the daemon of the stack runs the catalog's sensor and the ingest runs."""
    df = orders_rows(30, seed=7)
    df["o_orderkey"] += 90_000_000  # keys of its own: other tests publish demo orders too
    publish(kafka, "tpch.orders", df)
    expected = {str(d) for d in df["o_orderdate"]}
    lake = LakeResource(path=str(stack.settings.lake_path))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = instance.get_materialized_partitions(dg.AssetKey("orders"))
        if expected <= done:
            break
        time.sleep(1)
    else:
        runs = instance.get_runs(limit=10)
        pytest.fail(f"daemon did not materialize {sorted(expected - done)[:5]}...; recent runs: "
                    f"{[(r.job_name, r.status.value) for r in runs]}")
    stored = pd.concat([lake.read("orders", p) for p in expected])
    assert set(df["o_orderkey"]) <= set(stored["o_orderkey"])
