"""The Confluent-compatible Schema Registry API (``conflux-schema-registry``) of the shared test
stack, driven by confluent-kafka's own SchemaRegistryClient: a topic's ``-value`` subject is its
dataset's subject, on the very tables ``conflux contracts`` uses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import Jsonb
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from conflux.cli.contracts import register_all
from conflux.contracts.compat import Mode
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry, fingerprint
from pipelines.catalog import ORDERS


@pytest.fixture(scope="module")
def api(stack):
    """The stack's own service, started as ``conflux stack up`` starts it (no auth)."""
    started = stack.up(["conflux-schema-registry"], report=lambda line: None)
    yield stack.settings.schema_registry_url
    stack.down(started, report=lambda line: None)


@pytest.fixture
def dataset(stack):
    """A fresh orders-like event dataset, registered like the catalog's (register_all)."""
    tag = uuid.uuid4().hex[:10]
    ds = dataclasses.replace(ORDERS, name=f"orders_sr_{tag}", topics=(f"test.sr.{tag}",),
                             dlq_topic=f"test.sr.{tag}.dlq", fallback=None)
    registry = SchemaRegistry(stack.settings.postgres_url)
    register_all(registry, [ds], report=lambda line: None)
    return ds, registry


def schema(body: dict) -> Schema:
    return Schema(json.dumps(body), "JSON")


def with_note(ds) -> dict:
    """The dataset's contract with an optional field of a name unique to it (so its global id
    is this test's own)."""
    body = contract_schema(ds.contract)
    body["properties"][f"note_{ds.name}"] = {"type": "string"}
    return body


def refused(call, status: int, code: int) -> str:
    with pytest.raises(SchemaRegistryError) as info:
        call()
    assert (info.value.http_status_code, info.value.error_code) == (status, code), info.value
    return info.value.error_message


def test_confluent_client_on_the_datasets_topic_subject(api, dataset):
    ds, registry = dataset
    subject = f"{ds.topic}-value"  # TopicNameStrategy: what default serializer settings use
    v1 = contract_schema(ds.contract)
    v2 = with_note(ds)  # an optional field on a closed model: BACKWARD-compatible
    breaking = json.loads(json.dumps(v1))
    breaking["properties"]["o_orderkey"] = {"type": "string"}
    client = SchemaRegistryClient({"url": api})

    latest = client.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (1, registry.get(ds.subject).schema_id)
    assert latest.schema.schema_type == "JSON" and json.loads(latest.schema.schema_str) == v1
    assert subject in client.get_subjects() and ds.subject in client.get_subjects()

    assert client.test_compatibility(subject, schema(v2)) is True
    assert client.test_compatibility(subject, schema(breaking)) is False
    assert client.test_compatibility_all_versions(subject, schema(breaking)) is False
    message = refused(lambda: client.register_schema(subject, schema(breaking)), 409, 409)
    assert "BACKWARD" in message and "o_orderkey" in message
    assert [v.version for v in registry.versions(ds.subject)] == [1], "nothing registered"

    new_id = client.register_schema(subject, schema(v2))
    # the dataset's subject got the version, as `conflux contracts` sees it
    stored = registry.get(ds.subject)
    assert (stored.version, stored.schema_id, stored.schema) == (2, new_id, v2)
    assert registry.ids(ds.subject) == {latest.schema_id: 1, new_id: 2}
    assert registry.by_id(new_id) == v2
    assert client.get_versions(subject) == [1, 2] == client.get_versions(ds.subject)
    assert json.loads(client.get_schema(new_id).schema_str) == v2
    assert {(v.subject, v.version) for v in client.get_schema_versions(new_id)} == {
        (ds.subject, 2), (subject, 2)}
    found = client.lookup_schema(subject, schema(v1))
    assert (found.version, found.schema_id) == (1, latest.schema_id)
    refused(lambda: client.lookup_schema(subject, schema(breaking)), 404, 40403)

    # the same content under another subject: the same global id
    other = f"sr-other-{uuid.uuid4().hex[:8]}"
    assert client.register_schema(other, schema(v2)) == new_id
    assert sorted(client.get_subjects_by_schema_id(new_id)) == sorted([ds.subject, other, subject])

    refused(lambda: client.register_schema(other, Schema('{"type": "record", "name": "x", '
                                                          '"fields": []}', "AVRO")), 422, 42201)
    refused(lambda: client.get_latest_version(f"nope-{uuid.uuid4().hex}"), 404, 40401)
    refused(lambda: client.get_version(subject, 99), 404, 40402)
    refused(lambda: client.get_schema(2**31 - 1), 404, 40403)


def test_config_per_subject_and_global(api, dataset):
    ds, registry = dataset
    subject = f"{ds.topic}-value"
    client = SchemaRegistryClient({"url": api})
    assert client.get_compatibility() == "BACKWARD"
    refused(lambda: client.get_compatibility(subject), 404, 40408)  # follows the global mode
    client.set_compatibility(subject, "FULL_TRANSITIVE")
    assert registry.mode(ds.subject) is Mode.FULL_TRANSITIVE
    assert client.get_compatibility(subject) == "FULL_TRANSITIVE"
    refused(lambda: client.set_compatibility(subject, "SIDEWAYS"), 422, 42203)
    try:
        client.set_compatibility(level="NONE")
        assert registry.global_mode() is Mode.NONE
        client.delete_config(subject)
        assert registry.mode(ds.subject) is Mode.NONE, "back to the global mode"
    finally:
        client.set_compatibility(level="BACKWARD")  # the shared stack's default
    assert registry.mode(ds.subject) is Mode.BACKWARD


def test_soft_then_permanent_deletes(api, dataset):
    ds, registry = dataset
    subject = f"{ds.topic}-value"
    client = SchemaRegistryClient({"url": api})
    first = client.get_latest_version(subject).schema_id
    client.register_schema(subject, schema(with_note(ds)))
    refused(lambda: client.delete_version(subject, 1, permanent=True), 404, 40407)
    assert client.delete_version(subject, 1) == 1
    refused(lambda: client.delete_version(subject, 1), 404, 40406)
    refused(lambda: SchemaRegistryClient({"url": api}).get_version(subject, 1), 404, 40402)
    assert client.get_versions(subject) == [2]
    assert client.get_versions(subject, deleted=True) == [1, 2]
    assert [v.version for v in registry.versions(ds.subject)] == [2]
    # still readable by id (old records keep decoding)
    assert json.loads(SchemaRegistryClient({"url": api}).get_schema(first).schema_str) == \
        contract_schema(ds.contract)
    assert registry.ids(ds.subject)[first] == 1
    refused(lambda: client.delete_subject(subject, permanent=True), 404, 40405)
    assert client.delete_subject(subject) == [2]
    refused(lambda: client.delete_subject(subject), 404, 40404)
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    assert sorted(client.delete_subject(subject, permanent=True)) == [1, 2]
    assert registry.versions(ds.subject, deleted=True) == []
    refused(lambda: client.get_versions(subject, deleted=True), 404, 40401)
    # registered again, the content keeps its id
    assert client.register_schema(subject, schema(contract_schema(ds.contract))) == first


def _port_near(port: int) -> int:
    """A free loopback port just above ``port`` (below the ephemeral range)."""
    for candidate in range(port + 1, port + 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise AssertionError(f"no free port in {port + 1}..{port + 49}")


def test_basic_auth_when_credentials_are_configured(stack):
    """The service's app with credentials set: refused without them, served with them."""
    import uvicorn

    from conflux.io.registry_api import create_app

    port = _port_near(stack.settings.schema_registry_port)
    app = create_app(SchemaRegistry(stack.settings.postgres_url), ("producer-team", "s3cret pw"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        refused(lambda: SchemaRegistryClient({"url": url}).get_subjects(), 401, 401)
        refused(lambda: SchemaRegistryClient({"url": url, "basic.auth.user.info":
                                              "producer-team:wrong"}).get_subjects(), 401, 401)
        authed = SchemaRegistryClient({"url": url, "basic.auth.user.info": "producer-team:s3cret pw"})
        # the stack registered the catalog's contracts, each topic's -value subject an alias
        assert {"orders", "tpch.orders-value"} <= set(authed.get_subjects())
        assert authed.get_latest_version("tpch.orders-value").schema_id == \
            SchemaRegistry(stack.settings.postgres_url).get("orders").schema_id
        assert authed.get_compatibility() == "BACKWARD"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# the registry's tables as they were before global ids, soft deletes and the global mode
OLD_DDL = """
create schema registry;
create table registry.subjects (subject text primary key,
    compatibility text not null default 'BACKWARD', created_at timestamptz not null default now());
create table registry.versions (subject text not null references registry.subjects(subject),
    version integer not null, schema jsonb not null, fingerprint text not null,
    created_at timestamptz not null default now(), primary key (subject, version),
    unique (subject, fingerprint));
"""


def test_a_registry_from_before_ids_is_migrated(stack):
    """ensure_schema, run by two processes at once on an old database: ids in registration
    order (one per content), the old default mode BACKWARD now follows the global one."""
    database = f"sr_migration_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.settings.postgres_url, autocommit=True) as conn:
        conn.execute(f"create database {database}")
    url = stack.settings.postgres_url.rsplit("/", 1)[0] + f"/{database}"
    s1, s2 = ({"type": "object", "properties": {f"f{i}": {"type": "integer"}}} for i in (1, 2))
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    try:
        with psycopg.connect(url) as conn:
            conn.execute(OLD_DDL)
            conn.execute("insert into registry.subjects (subject) values ('a')")
            conn.execute("insert into registry.subjects values ('b', 'FULL')")
            for subject, version, body, minutes in [("b", 1, s2, 2), ("a", 1, s1, 0),
                                                    ("a", 2, s2, 1)]:
                conn.execute("insert into registry.versions values (%s, %s, %s, %s, %s)",
                             (subject, version, Jsonb(body), fingerprint(body),
                              t0 + dt.timedelta(minutes=minutes)))
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: SchemaRegistry(url).ensure_schema(), range(2)))
        registry = SchemaRegistry(url)
        assert registry.ids("a") == {1: 1, 2: 2} and registry.ids("b") == {2: 1}
        assert (registry.by_id(1), registry.by_id(2), registry.by_id(3)) == (s1, s2, None)
        assert registry.subject_mode("a") is None and registry.mode("a") is Mode.BACKWARD
        assert registry.mode("b") is Mode.FULL
        registry.ensure_schema()  # idempotent
        assert registry.register("d", s1).version.schema_id == 1  # same content, same id
        assert registry.register("c", {"type": "object"}).version.schema_id == 3
    finally:
        with psycopg.connect(stack.settings.postgres_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {database} with (force)")
