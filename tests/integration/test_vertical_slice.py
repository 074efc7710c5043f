"""The thin slice through the running stack: a batch dataset loads from ops into the lake with
Postgres-backed Dagster storage, and the daemon turns demo events into materializations — and
keeps its sensor cursor across a restart."""

import time

import dagster as dg
import pandas as pd
import pytest

from pipelines.demo.producer import event_headers, json_rows, load_ops
from pipelines.demo.tpch import TpchGenerator
from conflux.batch.asset import build_batch_asset
from conflux.dagster.compile import asset_specs
from pipelines.catalog import NATION
from conflux.io.kafka import KafkaResource
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource


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
    lake = LakeResource.for_stack(stack.settings)
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


def applied_ranges(instance, asset: str) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """Every distinct [start, end) range recorded in the asset's materializations."""
    seen, cursor = set(), None
    while True:
        page = instance.fetch_materializations(dg.AssetKey(asset), limit=5000, cursor=cursor)
        for rec in page.records:
            meta = rec.asset_materialization.metadata.get("conflux/source_ranges")
            for r in (meta.value if meta else []):
                seen.add((r["topic"], r["partition"], r["start"], r["end"]))
        if not page.has_more:
            break
        cursor = page.cursor
    out: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for topic, partition, start, end in sorted(seen):
        out.setdefault((topic, partition), []).append((start, end))
    return out


def wait_for_keys(lake, keys, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = {k for p in lake.partitions("orders") for k in lake.read("orders", p)["o_orderkey"]}
        if set(keys) <= stored:
            return
        time.sleep(1)
    pytest.fail(f"orders {sorted(set(keys) - stored)[:5]} not applied within {timeout}s")


def test_the_sensor_cursor_survives_a_daemon_restart(stack, kafka, instance):
    lake = LakeResource.for_stack(stack.settings)
    first = orders_rows(20, seed=21)
    first["o_orderkey"] += 91_000_000
    publish(kafka, "tpch.orders", first)
    wait_for_keys(lake, first["o_orderkey"])
    time.sleep(6)  # let the tick that applied them return and save its cursor

    stack.down(["dagster-daemon"], report=lambda line: None)
    second = orders_rows(20, seed=22)
    second["o_orderkey"] += 92_000_000
    publish(kafka, "tpch.orders", second)
    stack.up(["dagster-daemon"], report=lambda line: None)
    wait_for_keys(lake, second["o_orderkey"])

    # the restarted daemon went on from the stored cursor: no range was applied twice (other
    # tests' topics of orders may be deleted and recreated, restarting their offsets)
    ranges_of = applied_ranges(instance, "orders")
    assert any(topic == "tpch.orders" for topic, _ in ranges_of)
    for (topic, partition), ranges in ranges_of.items():
        if topic != "tpch.orders":
            continue
        for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
            assert s2 >= e1, f"{topic}[{partition}] applied [{s1},{e1}) and [{s2},{e2})"
