"""Producers and consumers use the registry: headers resolve, plain JSON reads as latest, unknown
versions are dead-lettered with their reason while good records of the same range are kept."""

import dataclasses
import json

import dagster as dg

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry
from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.io.registry import SchemaRegistryResource


def test_unknown_versions_are_dead_lettered_and_headerless_events_read_as_latest(
        kafka, topic, instance, lake, stack):
    ds = dataclasses.replace(ORDERS, name=f"orders_{topic[-8:]}", topics=(topic,),
                             dlq_topic=f"{topic}.dlq", fallback=None)
    kafka.ensure_topic(ds.dlq_topic, 1)
    registry = SchemaRegistry(stack.settings.postgres_url)
    registry.ensure_schema()
    ref = registry.register(ds.subject, contract_schema(ds.contract)).version.ref
    rows = list(json_rows(TpchGenerator(0.001, seed=3).orders().head(4)))
    kafka.send_raw(topic, [
        (b"1", json.dumps(rows[0]).encode(), event_headers(contract=ref)),
        (b"2", json.dumps(rows[1]).encode(), []),                                  # plain JSON
        (b"3", json.dumps(rows[2]).encode(), event_headers(contract=f"{ds.subject}@99")),
        (b"4", json.dumps(rows[3]).encode(), event_headers(contract="nobody@1")),
    ])
    ends = kafka.end_offsets(topic)
    result = build_ingest_job(ds).execute_in_process(
        run_config={"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
            {"topic": topic, "partition": p, "start": 0, "end": e} for p, e in ends.items()]}}}},
        instance=instance,
        resources={"kafka": kafka, "lake": lake,
                   "registry": SchemaRegistryResource(url=stack.settings.postgres_url)})
    assert result.success

    stored = {k for p in lake.partitions(ds.name) for k in lake.read(ds.name, p)["o_orderkey"]}
    assert stored == {rows[0]["o_orderkey"], rows[1]["o_orderkey"]}
    dead = list(kafka.read_range(ds.dlq_topic, 0, 0, kafka.end_offsets(ds.dlq_topic)[0]))
    assert sorted(d.key for d in dead) == [b"3", b"4"]
    for d in dead:
        assert d.header("conflux.error.code") == b"UNKNOWN_SCHEMA"
        assert d.header("conflux.error.topic") == topic.encode()
        assert d.header("conflux.error.dataset") == ds.name.encode()
        assert d.header("correlation_id"), "original headers are kept"
    mats = [e.asset_materialization for e in instance.fetch_materializations(
        dg.AssetKey(ds.name), limit=10).records]
    assert {m.metadata["conflux/contract_version"].value for m in mats} == {ref}
    assert all(m.metadata["conflux/dead_lettered"].value == 2 for m in mats)
