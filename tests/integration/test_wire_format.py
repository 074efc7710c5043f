"""Confluent wire format on the real stack: the orders contract registered through the Schema
Registry API with confluent-kafka's own ``SchemaRegistryClient`` under ``tpch.orders-value``,
orders produced with confluent-kafka's ``Producer`` and ``JSONSerializer`` land exactly like the
same orders published header-tagged (same rows, same contract ref); an unknown schema id, an id
of another subject and a bad frame are dead-lettered with their reasons, original bytes kept."""

import dataclasses
import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from conflux.contracts.lineage import contract_schema
from conflux.event.decode import BAD_FRAMING, UNKNOWN_SCHEMA_ID
from conflux.event.job import build_ingest_job
from conflux.event.publish import Outgoing
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from pipelines.catalog import ORDERS
from pipelines.demo import confluent as cf
from pipelines.demo.producer import build_stream
from pipelines.demo.tpch import TpchGenerator

PROVENANCE_OF_THE_COPY = ["__topic", "__partition", "__offset", "__ts"]  # differ by design


@pytest.fixture(scope="module")
def registry_api(stack):
    """The stack's Schema Registry API (started here when the session's stack has not)."""
    started = stack.up(["conflux-schema-registry"], report=lambda line: None)
    yield stack.settings.schema_registry_url
    if started:
        stack.down(started, report=lambda line: None)


def ingest(ds, kafka, lake, instance, stack):
    ends = kafka.end_offsets(ds.topics[0])
    result = build_ingest_job(ds).execute_in_process(
        run_config={"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
            {"topic": ds.topics[0], "partition": p, "start": 0, "end": e}
            for p, e in ends.items()]}}}},
        instance=instance,
        resources={"kafka": kafka, "lake": lake,
                   "registry": SchemaRegistryResource(url=stack.settings.postgres_url)})
    assert result.success
    return [e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()]


def stored(ds, lake):
    rows = [r for p in lake.partitions(ds.name) for r in
            lake.read(ds.name, p).drop(columns=PROVENANCE_OF_THE_COPY).to_dict("records")]
    return sorted(rows, key=lambda r: r["o_orderkey"])


def test_confluent_serialized_orders_land_like_header_tagged_ones(
        kafka, instance, registry, registry_api, stack, tmp_path):
    tag = uuid.uuid4().hex[:10]
    framed_topic, tagged_topic = f"test.wire.{tag}", f"test.tagged.{tag}"
    for t in (framed_topic, tagged_topic):
        assert kafka.ensure_topic(t, partitions=2)
    # one dataset (its own subject, the orders contract) read from either topic into its own lake
    ds = dataclasses.replace(ORDERS, name=f"orders_wire_{tag}", topics=(framed_topic,),
                             dlq_topic=f"{framed_topic}.dlq", fallback=None)
    kafka.ensure_topic(ds.dlq_topic, 1)
    ref = registry.register(ds.subject, contract_schema(ds.contract)).version.ref
    # as the stack does for the catalog's topics: <topic>-value names the dataset's subject
    registry.set_alias(f"{framed_topic}-value", ds.subject)

    # the producer team's side: the orders contract under tpch.orders-value, through the API
    client = SchemaRegistryClient({"url": registry_api})
    schema_text = json.dumps(contract_schema(ORDERS.contract))
    schema_id = client.register_schema("tpch.orders-value", Schema(schema_text, "JSON"))
    assert registry.ids(ds.subject) == {schema_id: 1}, "one id per content, wherever registered"
    other_id = client.register_schema(f"wire-other-{tag}-value", Schema(json.dumps(
        {"type": "object", "title": f"other {tag}", "properties": {"x": {"type": "string"}}}),
        "JSON"))

    orders = build_stream("tpch.orders", TpchGenerator(0.001, seed=21).orders().head(40), ref)
    tagged = [Outgoing(tagged_topic, o.key, o.value, o.headers) for o in orders]
    # the framed copy (same keys, values and correlation ids) as the demo producer makes it:
    # JSONSerializer with default settings, registering under <topic>-value
    framed = cf.frame([Outgoing(framed_topic, o.key, o.value, o.headers) for o in orders],
                      {framed_topic: contract_schema(ORDERS.contract)}, client)
    payload = orders[0].value
    bad = {b"unknown-id": b"\x00" + (2**31 - 7).to_bytes(4, "big") + payload,
           b"other-subject": b"\x00" + other_id.to_bytes(4, "big") + payload,
           b"bad-frame": b"\x00\x00\x01"}
    producer = cf.ConfluentProducer(cf.producer_config(kafka))
    for o in framed:
        producer.send(o.topic, key=o.key, value=o.value, headers=o.headers)
    for key, value in bad.items():
        producer.send(framed_topic, key=key, value=value, headers=[])
    producer.flush()
    kafka.send_raw(tagged_topic, [(o.key, o.value, o.headers) for o in tagged])
    assert all(o.value[:5] == b"\x00" + schema_id.to_bytes(4, "big")
               and "contract" not in dict(o.headers) for o in framed)

    lake_framed = LakeResource(path=str(tmp_path / "framed"))
    lake_tagged = LakeResource(path=str(tmp_path / "tagged"))
    mats_framed = ingest(ds, kafka, lake_framed, instance, stack)
    mats_tagged = ingest(dataclasses.replace(ds, topics=(tagged_topic,)), kafka, lake_tagged,
                         instance, stack)

    rows = stored(ds, lake_framed)
    assert len(rows) == 40 and rows == stored(ds, lake_tagged)
    assert {m.metadata["conflux/contract_version"].value for m in mats_framed} == {ref}
    assert {m.metadata["conflux/contract_version"].value for m in mats_tagged} == {ref}
    assert ({m.partition for m in mats_framed} == {m.partition for m in mats_tagged})
    assert all(m.metadata["conflux/dead_lettered"].value == 3 for m in mats_framed)

    dead = {d.key: d for d in kafka.read_range(ds.dlq_topic, 0, 0,
                                               kafka.end_offsets(ds.dlq_topic)[0])}
    assert {k: d.header("conflux.error.code") for k, d in dead.items()} == {
        b"unknown-id": UNKNOWN_SCHEMA_ID.encode(), b"other-subject": UNKNOWN_SCHEMA_ID.encode(),
        b"bad-frame": BAD_FRAMING.encode()}
    assert b"is not registered" in dead[b"unknown-id"].header("conflux.error.message")
    assert (f"registered as wire-other-{tag}-value@1".encode()
            in dead[b"other-subject"].header("conflux.error.message"))
    assert all(d.value == bad[k] for k, d in dead.items()), "original bytes kept for replay"
