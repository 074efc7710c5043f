"""Outside readers see exactly a dataset's current rows, on the real event path.

Orders are published to the test stack's Kafka and applied by the dataset's own sensor (inline
ticks) and ingest job (replays), then repaired by its batch fallback from a Postgres table. After
every step the expected rows are computed from what Kafka holds — per key the newest record by
(Kafka timestamp, offset), in the day of its event time — without Conflux's code, and compared
with what DuckDB (``delta_scan``, the delta extension loaded from its PyPI wheel, no download)
and Polars (``read_delta``) read from the table: the same keys, one row per key, every contract
field and provenance column equal, each row in the ``__day`` of its ``o_orderdate``. The Delta
version named by the latest materialization Dagster holds precedes or equals the version read,
and reading that version pinned gives the same rows.

The S3 snippets of docs/outside-readers.md run here against a moto server on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import duckdb_extension_delta
import pandas as pd
import polars as pl
import psycopg
import pytest
from deltalake import DeltaTable

from conflux.batch.fallback import build_fallback
from conflux.cli.backfill import plan_replay
from conflux.contracts.lineage import contract_schema
from conflux.core.declarations import BatchFallback
from conflux.event.job import build_ingest_job
from conflux.event.offsets import parse_cursor
from conflux.event.sensor import build_kafka_sensor
from conflux.io.kafka import Outgoing
from conflux.io.postgres import PostgresResource, replace_table
from conflux.io.registry import SchemaRegistryResource
from conflux.io.schema_registry import SchemaRegistry
from pipelines.catalog import ORDERS
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from tests.unit.test_outside_readers_docs import check_rows, make_lake, run, snippets

FIELDS = list(ORDERS.fields)
PROVENANCE = ["__topic", "__partition", "__offset", "__ts"]
DAYS = ["1995-06-01", "1995-06-02", "1995-06-03", "1995-06-04", "1995-06-05"]
LATE_DAY = "1993-02-14"


# --- the dataset, its events and the sensor ----------------------------------------------------

@pytest.fixture
def ds(kafka, topic, stack):
    """An orders-like event dataset on this test's topic, its contract registered, its batch
    fallback reading ``ops.orders_<tag>`` (created by the test that repairs)."""
    tag = uuid.uuid4().hex[:8]
    ds = dataclasses.replace(ORDERS, name=f"orders_rd_{tag}", topics=(topic,),
                             dlq_topic=f"{topic}.dlq", tick_budget_s=1.0,
                             fallback=BatchFallback(source_table=f"ops.orders_rd_{tag}"))
    kafka.ensure_topic(ds.dlq_topic, 1)
    registry = SchemaRegistry(stack.settings.postgres_url)
    registry.ensure_schema()
    registry.register(ds.subject, contract_schema(ds.contract))
    return ds


@pytest.fixture
def resources(kafka, lake, stack):
    return {"kafka": kafka, "lake": lake,
            "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}


def base_orders(n: int, seed: int) -> list[dict]:
    rows = json_rows(TpchGenerator(0.001, seed=seed).orders().head(n))
    return [{**r, "o_orderdate": DAYS[i % len(DAYS)]} for i, r in enumerate(rows)]


def publish(kafka, topic: str, rows: list[dict], timestamp_ms: int | None = None) -> None:
    """One record per row, keyed by ``o_orderkey`` (a key always goes to the same partition)."""
    with kafka.publisher(topic) as send:
        send([Outgoing(str(r["o_orderkey"]).encode(), json.dumps(r).encode(), event_headers(),
                       timestamp_ms=timestamp_ms) for r in rows])


def apply(ds, instance, resources, cursor=None):
    """Sensor ticks, as the daemon makes them, until the cursor reaches the topic's end; the
    last cursor."""
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    ends = {t: resources["kafka"].end_offsets(t) for t in ds.topics}
    for _ in range(10):
        with dg.build_sensor_context(instance=instance, resources=resources,
                                     cursor=cursor) as ctx:
            result = sensor(ctx)
        assert not result.run_requests, "applied inline"
        cursor = result.cursor
        if parse_cursor(cursor) == ends:
            return cursor
    pytest.fail(f"the sensor's cursor {parse_cursor(cursor)} is short of {ends} after 10 ticks")


def replay(ds, kafka, instance, resources, since_ms: int = 0) -> int:
    """Re-apply what the topic received since ``since_ms`` through the ingest job, in the runs
    ``conflux replay`` launches; returns the records replayed."""
    plan = plan_replay(ds, {t: kafka.offsets_at(t, since_ms) for t in ds.topics})
    assert plan.runs and not plan.gaps
    job = build_ingest_job(ds)
    for batch in plan.runs:
        config = {"ops": {f"{ds.name}__ingest": {"config": {
            "ranges": [r.as_config() for r in batch]}}}}
        assert job.execute_in_process(run_config=config, instance=instance,
                                      resources=resources).success
    return plan.records


# --- the expected rows, from what Kafka holds ---------------------------------------------------

def produced(kafka, topic: str) -> list[dict]:
    """Every record of ``topic`` as the broker stores it: value, partition, offset, timestamp."""
    ends = kafka.end_offsets(topic)
    return [{**json.loads(r.value), "__topic": r.topic, "__partition": r.partition,
             "__offset": r.offset, "__ts": r.timestamp_ms}
            for r in kafka.read_ranges([(topic, p, 0, e) for p, e in ends.items()])]


def newest_per_key(records: list[dict]) -> dict[int, dict]:
    """Per key, the record with the greatest (Kafka timestamp, offset)."""
    out: dict[int, dict] = {}
    for r in records:
        seen = out.get(r["o_orderkey"])
        if seen is None or (r["__ts"], r["__offset"]) > (seen["__ts"], seen["__offset"]):
            out[r["o_orderkey"]] = r
    return {k: {c: r[c] for c in FIELDS + PROVENANCE} for k, r in out.items()}


# --- what outside readers see ------------------------------------------------------------------

def _rows(df: pd.DataFrame) -> list[dict]:
    df = df.copy()
    df["o_orderdate"] = [pd.Timestamp(v).date().isoformat() for v in df["o_orderdate"]]
    return df.to_dict("records")


def read_duckdb(uri: str, version: int | None = None) -> list[dict]:
    ext = next(Path(duckdb_extension_delta.__path__[0]).rglob("*.duckdb_extension"))
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    try:
        con.execute(f"LOAD '{ext}'")
        pinned = f", version := {int(version)}" if version is not None else ""
        return _rows(con.sql(f"SELECT * FROM delta_scan('{uri}'{pinned})").df())
    finally:
        con.close()


def read_polars(uri: str, version: int | None = None) -> list[dict]:
    return _rows(pl.read_delta(uri, version=version).to_pandas())


READERS = {"duckdb": read_duckdb, "polars": read_polars}


def assert_reads(uri: str, expected: dict[int, dict], version: int | None = None) -> None:
    """Every reader sees exactly ``expected``: one row per key, each in the day of its event
    time, contract fields and provenance equal (a ``(low, high)`` pair bounds a timestamp)."""
    for name, read in READERS.items():
        rows = read(uri, version)
        keys = [r["o_orderkey"] for r in rows]
        assert len(keys) == len(set(keys)), f"{name}: a key appears twice"
        assert set(keys) == set(expected), (
            f"{name}: missing {sorted(set(expected) - set(keys))[:5]}, "
            f"extra {sorted(set(keys) - set(expected))[:5]}")
        for row in rows:
            want = expected[row["o_orderkey"]]
            assert row["__day"] == row["o_orderdate"], f"{name}: {row} outside its day"
            for column in FIELDS + PROVENANCE:
                if isinstance(want[column], tuple):
                    low, high = want[column]
                    assert low <= row[column] <= high, (name, row["o_orderkey"], column)
                else:
                    assert row[column] == want[column], (name, row["o_orderkey"], column,
                                                         row[column], want[column])


def run_fallback(ds, lake, stack, instance, source: list[dict], run_config=None):
    """Replace the dataset's operational table by ``source`` and run its reconcile job (it
    repairs); returns the successful run's result."""
    frame = pd.DataFrame(source)[FIELDS]
    frame["o_orderdate"] = pd.to_datetime(frame["o_orderdate"]).dt.date
    schema, table = ds.fallback.source_table.split(".")
    with psycopg.connect(stack.settings.postgres_url) as conn:
        replace_table(conn, schema, table, frame, ["o_orderkey"])
    check, job, _ = build_fallback(ds)
    defs = dg.Definitions(asset_checks=[check], jobs=[job], resources={
        "postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake})
    result = defs.resolve_job_def(job.name).execute_in_process(instance=instance,
                                                               run_config=run_config)
    assert result.success
    return result


def latest_delta_version(instance, ds) -> int | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(ds.name))
    value = event.asset_materialization.metadata.get("conflux/delta_version")
    return value.value if value is not None else None


def assert_current(lake, instance, ds, expected: dict[int, dict]) -> int:
    """Readers see ``expected`` at the latest version, which Dagster's latest materialization
    names or precedes; pinned to that materialization's version they see it too. Returns the
    table's version."""
    uri = lake.uri(ds.name)
    version = DeltaTable(uri).version()
    assert_reads(uri, expected)
    reported = latest_delta_version(instance, ds)
    assert reported is not None and reported <= version
    assert_reads(uri, expected, version=reported)
    return version


# --- the scenario ------------------------------------------------------------------------------

def test_readers_see_the_current_rows_after_duplicates_updates_late_events_and_replays(
        kafka, topic, ds, instance, resources, lake):
    # 1. thirty orders over five days
    first = base_orders(30, seed=21)
    publish(kafka, topic, first)
    cursor = apply(ds, instance, resources)
    expected = newest_per_key(produced(kafka, topic))
    assert len(expected) == 30
    assert_current(lake, instance, ds, expected)

    # 2. duplicates (a producer's retries), an update with a newer timestamp, an older event
    #    of a stored key arriving out of order, a late order of a day long past
    stored = {r["o_orderkey"]: r for r in produced(kafka, topic)}
    updated = {**first[0], "o_totalprice": first[0]["o_totalprice"] + 1.25, "o_orderstatus": "F"}
    stale = {**first[1], "o_totalprice": 1.0}
    late = {**first[2], "o_orderkey": 77_000_001, "o_orderdate": LATE_DAY}
    step2_ms = int(time.time() * 1000)
    publish(kafka, topic, first[3:8])
    publish(kafka, topic, [updated, late])
    publish(kafka, topic, [stale], timestamp_ms=stored[first[1]["o_orderkey"]]["__ts"] - 60_000)
    publish(kafka, topic, [late])  # and the late one twice
    apply(ds, instance, resources, cursor)
    expected = newest_per_key(produced(kafka, topic))
    assert len(expected) == 31
    assert expected[updated["o_orderkey"]]["o_totalprice"] == updated["o_totalprice"]
    assert expected[stale["o_orderkey"]]["o_totalprice"] == first[1]["o_totalprice"]
    assert expected[late["o_orderkey"]]["o_orderdate"] == LATE_DAY
    version = assert_current(lake, instance, ds, expected)
    assert LATE_DAY in lake.partitions(ds.name)

    # 3. replays: everything, through the ingest job; the second half again through the
    #    sensor from an empty cursor (a lost cursor) — nothing changes, nothing is committed
    assert replay(ds, kafka, instance, resources) == sum(kafka.end_offsets(topic).values())
    assert replay(ds, kafka, instance, resources, since_ms=step2_ms) >= 8
    apply(ds, instance, resources, None)
    assert DeltaTable(lake.uri(ds.name)).version() == version
    assert_current(lake, instance, ds, expected)


def test_readers_see_a_fallback_repair_and_replays_do_not_undo_it(kafka, topic, ds, instance,
                                                                  resources, lake, stack):
    first = base_orders(30, seed=22)
    publish(kafka, topic, first)
    cursor = apply(ds, instance, resources)
    since_ms = int(time.time() * 1000)
    updated = {**first[1], "o_totalprice": first[1]["o_totalprice"] + 3.5}
    publish(kafka, topic, [updated])
    apply(ds, instance, resources, cursor)
    expected = newest_per_key(produced(kafka, topic))
    assert_current(lake, instance, ds, expected)

    # the operational table: what the stream says, except on DAYS[1] — the updated order has
    # another price there (a lost update), one order is not there (rolled back), one is only
    # there (its event never came) — and one price differs on DAYS[2], outside the repair
    day = DAYS[1]
    on_day = sorted(k for k, r in expected.items() if r["o_orderdate"] == day)
    changed_key, extra_key = updated["o_orderkey"], next(k for k in on_day
                                                        if k != updated["o_orderkey"])
    source = {k: {c: r[c] for c in FIELDS} for k, r in expected.items() if k != extra_key}
    source[changed_key]["o_totalprice"] = 999.99
    missing = {**source[changed_key], "o_orderkey": 77_000_002, "o_totalprice": 12.5}
    source[missing["o_orderkey"]] = missing
    outside = next(k for k, r in source.items() if r["o_orderdate"] == DAYS[2])
    source[outside]["o_totalprice"] = 1.0
    before_ms = int(time.time() * 1000)
    result = run_fallback(ds, lake, stack, instance, list(source.values()),
                          {"ops": {f"{ds.name}__reconcile": {"config": {"start": day,
                                                                        "end": day}}}})
    after_ms = int(time.time() * 1000)
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    counts = {k: meta[f"conflux/{k}_repaired"].value for k in ("missing", "extra", "changed")}
    assert counts == {"missing": 1, "extra": 1, "changed": 1}

    batch = {"__topic": f"batch:{ds.fallback.source_table}", "__partition": -1, "__offset": -1,
             "__ts": (before_ms, after_ms)}
    del expected[extra_key]
    expected[changed_key] = {**source[changed_key], **batch}
    expected[missing["o_orderkey"]] = {**missing, **batch}
    uri = lake.uri(ds.name)
    assert_reads(uri, expected)

    # a replay of the events since the update (older than the repair) does not undo it
    assert replay(ds, kafka, instance, resources, since_ms=since_ms) == 1
    assert_reads(uri, expected)
    # the latest materialization naming a Delta version precedes what the readers read
    versions = [r.asset_materialization.metadata["conflux/delta_version"].value
                for r in instance.fetch_materializations(dg.AssetKey(ds.name), limit=100).records
                if "conflux/delta_version" in r.asset_materialization.metadata]
    assert versions and versions[0] <= DeltaTable(uri).version()


def test_a_fallback_repair_materialization_names_its_delta_version(kafka, topic, ds, instance,
                                                                   resources, lake, stack):
    rows = base_orders(5, seed=23)
    publish(kafka, topic, rows)
    apply(ds, instance, resources)
    source = [{**r, "o_totalprice": r["o_totalprice"] + (1.0 if i == 0 else 0.0)}
              for i, r in enumerate(rows)]
    run_fallback(ds, lake, stack, instance, source)
    assert latest_delta_version(instance, ds) == DeltaTable(lake.uri(ds.name)).version()


def test_an_update_moving_an_order_to_another_day_leaves_one_row(kafka, topic, ds, instance,
                                                                 resources, lake):
    rows = base_orders(4, seed=24)
    publish(kafka, topic, rows)
    cursor = apply(ds, instance, resources)
    moved = {**rows[0], "o_orderdate": DAYS[4], "o_totalprice": 5.0}
    publish(kafka, topic, [moved])
    # an older event of another order, dated another day, arriving out of order
    ts = {r["o_orderkey"]: r["__ts"] for r in produced(kafka, topic)}
    older = {**rows[1], "o_orderdate": DAYS[3]}
    publish(kafka, topic, [older], timestamp_ms=ts[rows[1]["o_orderkey"]] - 60_000)
    apply(ds, instance, resources, cursor)
    assert_current(lake, instance, ds, newest_per_key(produced(kafka, topic)))


# --- the S3 snippets of docs/outside-readers.md ------------------------------------------------

def test_polars_reads_an_s3_lake_as_the_doc_says(s3_lake_url, monkeypatch):
    first, current = make_lake(s3_lake_url)
    monkeypatch.setenv("CONFLUX_LAKE_PATH", s3_lake_url)
    [snippet] = [s for s in snippets("s3") if "polars" in s]
    check_rows(run(snippet)["orders"], current)


def test_duckdb_reads_an_s3_lake_as_the_doc_says(s3_lake_url, monkeypatch):
    first, current = make_lake(s3_lake_url)
    monkeypatch.setenv("CONFLUX_LAKE_PATH", s3_lake_url)
    [snippet] = [s for s in snippets("s3") if "duckdb" in s]
    check_rows(run(snippet)["orders"], current)
