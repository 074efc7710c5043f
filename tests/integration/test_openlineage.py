"""OpenLineage on the real stack: Kafka, Postgres (ops tables, schema registry) and the
Postgres-backed Dagster instance of the test stack. Runs of both paths execute in this process
with the file transport set by environment variables, as an operator would set it; every event
they emit is validated against the OpenLineage spec's JSON Schema.

* ingest run and sensor tick (Kafka → lake, bad records → DLQ): START + COMPLETE;
* ``revenue_by_nation`` (lake → lake): START + COMPLETE with the contract's columns and the
  column lineage of the join;
* a table load from ``ops`` (Postgres → lake): START + COMPLETE, and START + FAIL when the table
  is missing; the batch fallback: START + COMPLETE.
"""

import dataclasses
import json
import uuid

import dagster as dg
import psycopg
import pytest

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry
from conflux.observe import openlineage as ol
from conflux.batch.asset import build_batch_asset
from pipelines.catalog import CATALOG, LINEITEM, NATION, ORDERS, REVENUE_BY_NATION
from conflux.dagster.compile import asset_spec
from conflux.event.decode import ContractResolver
from conflux.event.job import build_ingest_job
from conflux.batch.fallback import build_fallback
from conflux.event.ingest import apply_records
from conflux.io.kafka import Record
from conflux.io.postgres import PostgresResource, replace_table
from conflux.io.registry import SchemaRegistryResource
from conflux.event.offsets import parse_cursor
from conflux.event.sensor import build_kafka_sensor
from tests.fixtures.openlineage import assert_valid


@pytest.fixture
def lineage(monkeypatch, tmp_path):
    """The file transport, set through the environment; returns a reader of what was sent."""
    import os

    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    path = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    seen = 0

    def new_events() -> list[dict]:
        """Events sent since the last call, each checked against the spec."""
        nonlocal seen
        assert ol.flush(20), "OpenLineage events still unsent after 20 s"
        lines = path.read_text().splitlines() if path.exists() else []
        fresh, seen = lines[seen:], len(lines)
        return [assert_valid(json.loads(line)) for line in fresh]

    return new_events


def by_run(events: list[dict]) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for e in events:
        runs.setdefault(e["run"]["runId"], []).append(e["eventType"])
    return runs


def schema_columns(dataset: dict) -> list[str]:
    return [f["name"] for f in dataset["facets"]["schema"]["fields"]]


def row_count(output: dict) -> int:
    return output["outputFacets"]["outputStatistics"]["rowCount"]


def register(stack, ds) -> None:
    reg = SchemaRegistry(stack.settings.postgres_url)
    reg.ensure_schema()
    reg.register(ds.subject, contract_schema(ds.contract))


def test_ingest_runs_and_inline_ticks_emit_start_and_complete(stack, kafka, topic, instance, lake,
                                                              lineage):
    ds = dataclasses.replace(ORDERS, name=f"orders_ol_{topic[-12:]}", topics=(topic,),
                             dlq_topic=f"{topic}.dlq", fallback=None, tick_budget_s=3.0)
    kafka.ensure_topic(ds.dlq_topic, 1)
    register(stack, ds)
    resources = {"kafka": kafka, "lake": lake,
                 "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}
    rows = list(json_rows(TpchGenerator(0.001, seed=21).orders().head(30)))
    kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers()) for r in rows[:20]])
    kafka.send_raw(topic, [(b"bad-1", b'{"o_orderkey": ', []), (b"bad-2", b"\xff\xfe", [])])

    # an ingest run over everything published so far
    ends = kafka.end_offsets(topic)
    job = build_ingest_job(ds)
    result = job.execute_in_process(instance=instance, resources=resources, run_config={
        "ops": {f"{ds.name}__ingest": {"config": {"ranges": [
            {"topic": topic, "partition": p, "start": 0, "end": end}
            for p, end in ends.items() if end > 0]}}}})
    assert result.success
    events = lineage()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    start, complete = events
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"]["name"] == f"{ds.name}__ingest"
    parent = complete["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == result.run_id and parent["job"]["name"] == job.name
    [source] = complete["inputs"]
    assert (source["namespace"], source["name"]) == (f"kafka://{stack.settings.kafka_bootstrap}",
                                                     topic)
    assert schema_columns(source) == list(ds.fields)
    stored, dead = complete["outputs"]
    assert (stored["namespace"], stored["name"]) == ("file", f"{lake.path}/{ds.name}")
    assert schema_columns(stored) == list(ds.fields)
    assert dead["name"] == ds.dlq_topic
    assert (row_count(stored), row_count(dead)) == (20, 2)

    # the sensor applies what comes next inline: each tick that applies records is a run
    kafka.send_json(topic, [(str(r["o_orderkey"]).encode(), r, event_headers())
                            for r in rows[20:]])
    cursor = json.dumps({topic: {str(p): end for p, end in ends.items()}})
    sensor = build_kafka_sensor(ds, job)
    for _ in range(5):
        with dg.build_sensor_context(instance=instance, resources=resources,
                                     cursor=cursor) as ctx:
            cursor = sensor(ctx).cursor
        if parse_cursor(cursor)[topic] == kafka.end_offsets(topic):
            break
    assert parse_cursor(cursor)[topic] == kafka.end_offsets(topic)
    events = lineage()
    runs = by_run(events)
    assert runs and all(states == ["START", "COMPLETE"] for states in runs.values())
    completes = [e for e in events if e["eventType"] == "COMPLETE"]
    assert {e["job"]["name"] for e in events} == {f"{ds.name}__kafka"}
    assert {e["job"]["facets"]["jobType"]["jobType"] for e in events} == {"MICRO_BATCH"}
    assert not any("parent" in e["run"]["facets"] for e in events)  # the tick is the run
    assert sum(row_count(e["outputs"][0]) for e in completes) == 10
    # a tick with nothing to apply is no run
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        sensor(ctx)
    assert lineage() == []


def write_upstreams(lake, day: str) -> None:
    """One day of orders and lineitems (through the event path's own upsert) and the reference
    tables, in this test's lake."""
    gen = TpchGenerator(0.002, seed=3)
    orders = gen.orders()
    lines = gen.lineitem(orders)
    for ds, df, key in ((ORDERS, orders, "o_orderkey"), (LINEITEM, lines, "l_orderkey")):
        day_rows = df[df["o_orderdate"].astype(str) == day]
        records = [Record(ds.topics[0], 0, i, 1_000 + i, str(r[key]).encode(),
                          json.dumps(r).encode(), ()) for i, r in enumerate(json_rows(day_rows))]
        apply_records(ds, records, kafka=None, lake=lake, sources=[], origin="test",
                      resolver=ContractResolver(ds.subject, None, []))
    for name in ("customer", "supplier", "nation"):
        lake.write(name, getattr(gen, name)())


def busiest_day() -> str:
    """A day on which customers and suppliers of the same nation trade (revenue rows exist)."""
    gen = TpchGenerator(0.002, seed=3)
    orders = gen.orders()
    df = (gen.lineitem(orders)[["l_orderkey", "l_suppkey"]]
          .merge(orders[["o_orderkey", "o_custkey", "o_orderdate"]], left_on="l_orderkey",
                 right_on="o_orderkey")
          .merge(gen.customer()[["c_custkey", "c_nationkey"]], left_on="o_custkey",
                 right_on="c_custkey")
          .merge(gen.supplier()[["s_suppkey", "s_nationkey"]], left_on="l_suppkey",
                 right_on="s_suppkey"))
    same = df[df["c_nationkey"] == df["s_nationkey"]]
    return str(same["o_orderdate"].astype(str).value_counts().index[0])


def test_revenue_by_nation_emits_its_columns_and_column_lineage(stack, instance, lake, lineage):
    day = busiest_day()
    write_upstreams(lake, day)
    assert lineage() == []  # writing the lake directly is no run
    resources = {"postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake,
                 "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}
    asset = build_batch_asset(REVENUE_BY_NATION, asset_spec(REVENUE_BY_NATION, CATALOG), CATALOG)
    result = dg.materialize([asset], partition_key=day, instance=instance, resources=resources)
    assert result.success
    stored = lake.read("revenue_by_nation", day)
    assert len(stored) > 0

    events = lineage()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    complete = events[1]
    assert complete["job"]["name"] == "revenue_by_nation"
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == result.run_id
    assert [(i["namespace"], i["name"]) for i in complete["inputs"]] == [
        ("file", f"{lake.path}/{up}") for up in REVENUE_BY_NATION.upstream]
    for i, up in zip(complete["inputs"], REVENUE_BY_NATION.upstream):
        assert schema_columns(i) == list(CATALOG[up].fields)
    [out] = complete["outputs"]
    assert (out["namespace"], out["name"]) == ("file", f"{lake.path}/revenue_by_nation")
    assert schema_columns(out) == ["o_orderdate", "n_name", "revenue"]
    assert row_count(out) == len(stored)
    fields = out["facets"]["columnLineage"]["fields"]
    deps = {column: {(f["name"].rsplit("/", 1)[1], f["field"]) for f in spec["inputFields"]}
            for column, spec in fields.items()}
    assert deps == {"revenue": {("lineitem", "l_extendedprice"), ("lineitem", "l_discount")},
                    "o_orderdate": {("orders", "o_orderdate")},
                    "n_name": {("nation", "n_name")}}
    assert all(f["namespace"] == "file" for spec in fields.values() for f in spec["inputFields"])


def test_a_table_load_completes_and_a_missing_table_fails(stack, instance, lake, lineage):
    tag = uuid.uuid4().hex[:8]
    nations = TpchGenerator(0.001).nation()
    with psycopg.connect(stack.settings.postgres_url) as conn:
        replace_table(conn, "ops", f"nation_ol_{tag}", nations, ["n_nationkey"])
    resources = {"postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake,
                 "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}

    def load(name: str, table: str):
        ds = dataclasses.replace(NATION, name=name, source_table=table)
        asset = build_batch_asset(ds, asset_spec(ds, {ds.name: ds}), {ds.name: ds})
        return dg.materialize([asset], instance=instance, resources=resources,
                              raise_on_error=False)

    assert load(f"nation_ol_{tag}", f"ops.nation_ol_{tag}").success
    start, complete = lineage()
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    [source] = complete["inputs"]
    pg = psycopg.conninfo.conninfo_to_dict(stack.settings.postgres_url)
    assert (source["namespace"], source["name"]) == (
        f"postgres://{pg['host']}:{pg.get('port') or 5432}", f"{pg['dbname']}.ops.nation_ol_{tag}")
    assert schema_columns(source) == list(NATION.fields)
    assert row_count(complete["outputs"][0]) == len(nations)

    failed = load(f"nation_gone_{tag}", f"ops.nation_gone_{tag}")
    assert not failed.success
    start, fail = lineage()
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert start["run"]["runId"] == fail["run"]["runId"]
    error = fail["run"]["facets"]["errorMessage"]
    assert f"nation_gone_{tag}" in error["message"] and error["programmingLanguage"] == "python"
    assert fail["run"]["facets"]["parent"]["run"]["runId"] == failed.run_id


def test_the_batch_fallback_emits_start_and_complete(stack, instance, lake, lineage, fallback_ds):
    ds, _ = fallback_ds
    check, job, _ = build_fallback(ds)
    defs = dg.Definitions(asset_checks=[check], jobs=[job], resources={
        "postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake})
    assert defs.resolve_job_def(job.name).execute_in_process(instance=instance).success
    assert lake.partitions(ds.name)  # repaired from the source
    start, complete = lineage()
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert complete["job"]["name"] == f"{ds.name}__reconcile"
    assert [i["name"] for i in complete["inputs"]] == [
        f"{psycopg.conninfo.conninfo_to_dict(stack.settings.postgres_url)['dbname']}"
        f".{ds.fallback.source_table}", f"{lake.path}/{ds.name}"]
    assert all(schema_columns(i) == list(ds.fields) for i in complete["inputs"])
