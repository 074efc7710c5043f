"""The Schema Registry REST API's routing, request parsing and error mapping, over an in-memory
store with SchemaRegistry's methods (the Postgres store and a real Confluent client are tested in
tests/integration/test_schema_registry_api.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from starlette.testclient import TestClient

from conflux.contracts.compat import Mode, check_compatibility
from conflux.contracts.fingerprint import fingerprint
from conflux.core.errors import ConfigError, IncompatibleSchemaError
from conflux.io.registry_api import (ApiError, check_basic, create_app, credentials, parse_level,
                                     parse_schema, parse_version)
from conflux.io.schema_registry import (NotSoftDeletedError, Registration, SchemaVersion,
                                        SoftDeletedError, UnknownSubjectError, UnknownVersionError,
                                        describe_rejection)

CT = "application/vnd.schemaregistry.v1+json"


class FakeStore:
    """SchemaRegistry's semantics in memory: global ids by fingerprint, soft deletes, modes."""

    def __init__(self):
        self.rows: list[SchemaVersion] = []
        self.ids: dict[str, int] = {}
        self.modes: dict[str, Mode] = {}
        self.global_ = Mode.BACKWARD
        self.alias: dict[str, str] = {}

    def resolve(self, name):
        return self.alias.get(name, name)

    def aliases(self):
        return dict(self.alias)

    def subjects(self, deleted=False):
        return sorted({v.subject for v in self.rows if deleted or not v.deleted})

    def versions(self, subject, deleted=False):
        return [v for v in self.rows if v.subject == subject and (deleted or not v.deleted)]

    def get(self, subject, version=None):
        every = self.versions(subject, deleted=True)
        if not every:
            raise UnknownSubjectError(subject)
        if version is None:
            live = self.versions(subject)
            if not live:
                raise UnknownSubjectError(subject)
            return live[-1]
        for v in every:
            if v.version == version:
                return v
        raise UnknownVersionError(f"{subject} {version}")

    def lookup(self, subject, schema, deleted=False):
        found = [v for v in self.versions(subject, deleted) if v.fingerprint == fingerprint(schema)]
        return found[-1] if found else None

    def by_id(self, schema_id):
        return next((v.schema for v in self.rows if v.schema_id == schema_id), None)

    def usages(self, schema_id, deleted=False):
        return sorted((v.subject, v.version) for v in self.rows
                      if v.schema_id == schema_id and (deleted or not v.deleted))

    def subject_mode(self, subject):
        return self.modes.get(subject)

    def mode(self, subject):
        return self.modes.get(subject) or self.global_

    def global_mode(self):
        return self.global_

    def set_global_mode(self, mode):
        self.global_ = Mode.parse(mode)

    def set_mode(self, subject, mode):
        self.modes[subject] = Mode.parse(mode)

    def clear_mode(self, subject):
        return self.modes.pop(subject, None)

    def check(self, subject, schema, version=None):
        history = ([v.schema for v in self.versions(subject)] if version is None
                   else [self.get(subject, version).schema])
        return check_compatibility(schema, history, self.mode(subject)) if history else []

    def register(self, subject, schema):
        same = self.lookup(subject, schema)
        if same:
            return Registration(same, created=False)
        live = self.versions(subject)
        problems = check_compatibility(schema, [v.schema for v in live], self.mode(subject))
        if problems:
            raise IncompatibleSchemaError(describe_rejection(subject, self.mode(subject),
                                                             live[-1].version, problems))
        fp = fingerprint(schema)
        sid = self.ids.setdefault(fp, len(self.ids) + 1)
        number = max((v.version for v in self.versions(subject, True)), default=0) + 1
        row = SchemaVersion(subject, number, schema, fp, dt.datetime.now(), sid)
        self.rows.append(row)
        return Registration(row, created=True)

    def _replace(self, old, **change):
        import dataclasses

        self.rows[self.rows.index(old)] = dataclasses.replace(old, **change)

    def delete_subject(self, subject, permanent=False):
        every = self.versions(subject, deleted=True)
        if not every:
            raise UnknownSubjectError(subject)
        live = [v for v in every if not v.deleted]
        if permanent:
            if live:
                raise NotSoftDeletedError("subject", subject)
            self.rows = [v for v in self.rows if v.subject != subject]
            return [v.version for v in every]
        if not live:
            raise SoftDeletedError("subject", subject)
        for v in live:
            self._replace(v, deleted=True)
        return [v.version for v in live]

    def delete_version(self, subject, version, permanent=False):
        v = self.get(subject, version)
        if permanent and not v.deleted:
            raise NotSoftDeletedError("version", subject)
        if not permanent and v.deleted:
            raise SoftDeletedError("version", subject)
        if permanent:
            self.rows.remove(v)
        else:
            self._replace(v, deleted=True)
        return v.version


def obj(*required: str, closed: bool = False, **props) -> dict:
    schema = {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def body(schema: dict, **extra) -> dict:
    return {"schema": json.dumps(schema), "schemaType": "JSON", **extra}


V1 = obj("id", closed=True, id="integer")
V2 = obj("id", closed=True, id="integer", note="string")  # an optional field: BACKWARD-compatible
BREAKING = obj("id", closed=True, id="string")


@pytest.fixture
def store():
    s = FakeStore()
    s.alias["tpch.orders-value"] = "orders"
    return s


@pytest.fixture
def client(store):
    return TestClient(create_app(store))


def error(response, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(CT)
    assert response.json()["error_code"] == code
    return response.json()["message"]


def test_register_through_an_alias_is_a_version_of_the_dataset_subject(client, store):
    r = client.post("/subjects/tpch.orders-value/versions", json=body(V1),
                    headers={"Content-Type": CT})
    assert r.status_code == 200 and r.headers["content-type"].startswith(CT)
    first = r.json()["id"]
    assert [v.version for v in store.versions("orders")] == [1]
    assert client.post("/subjects/tpch.orders-value/versions", json=body(V1)).json()["id"] == first
    second = client.post("/subjects/orders/versions", json=body(V2)).json()["id"]
    assert second != first
    # the same content under another subject: the same global id
    assert client.post("/subjects/other/versions", json=body(V1)).json()["id"] == first
    assert client.get("/subjects").json() == ["orders", "other", "tpch.orders-value"]
    assert client.get("/subjects/tpch.orders-value/versions").json() == [1, 2]
    got = client.get("/subjects/tpch.orders-value/versions/latest").json()
    assert got == {"subject": "tpch.orders-value", "version": 2, "id": second,
                   "schemaType": "JSON", "schema": json.dumps(V2)}
    assert client.get("/subjects/orders/versions/-1").json()["version"] == 2
    assert client.get("/subjects/orders/versions/1/schema").json() == V1
    assert client.get(f"/schemas/ids/{first}").json() == {"schema": json.dumps(V1),
                                                          "schemaType": "JSON"}
    assert client.get(f"/schemas/ids/{first}/subjects").json() == [
        "orders", "other", "tpch.orders-value"]
    assert client.get(f"/schemas/ids/{first}/versions", params={"subject": "other"}).json() == [
        {"subject": "other", "version": 1}]
    assert client.get("/schemas/types").json() == ["JSON"]
    assert client.get("/subjects", params={"subjectPrefix": "tp", "limit": "5"}).json() == [
        "tpch.orders-value"]


def test_an_incompatible_schema_is_refused_with_409_listing_each_break(client, store):
    client.post("/subjects/orders/versions", json=body(V1))
    message = error(client.post("/subjects/tpch.orders-value/versions", json=body(BREAKING)),
                    409, 409)
    assert "BACKWARD" in message and "#/properties/id" in message
    assert [v.version for v in store.versions("orders")] == [1], "nothing was registered"
    r = client.post("/compatibility/subjects/tpch.orders-value/versions/latest",
                    params={"verbose": "true"}, json=body(BREAKING))
    assert r.json()["is_compatible"] is False and r.json()["messages"]
    assert client.post("/compatibility/subjects/orders/versions?verbose=True",
                       json=body(V2)).json() == {"is_compatible": True, "messages": []}
    assert client.post("/compatibility/subjects/orders/versions/1", json=body(V2)).json() == {
        "is_compatible": True}
    assert client.post("/compatibility/subjects/new/versions/latest", json=body(BREAKING)).json()[
        "is_compatible"] is True
    error(client.post("/compatibility/subjects/orders/versions/7", json=body(V2)), 404, 40402)
    error(client.post("/compatibility/subjects/nope/versions/1", json=body(V2)), 404, 40401)
    # NONE lets it through (the same check as conflux contracts: nothing is compared)
    assert client.put("/config/tpch.orders-value", json={"compatibility": "NONE"}).json() == {
        "compatibility": "NONE"}
    assert client.post("/subjects/orders/versions", json=body(BREAKING)).status_code == 200


@pytest.mark.parametrize("payload, words", [
    ({"schema": json.dumps(V1)}, "AVRO is not supported"),
    (body(V1, schemaType="PROTOBUF"), "PROTOBUF is not supported"),
    (body(V1, references=[{"name": "x", "subject": "y", "version": 1}]), "references"),
    ({"schema": "{not json", "schemaType": "JSON"}, "not JSON"),
    ({"schema": "[1]", "schemaType": "JSON"}, "object"),
    (body({"type": 7}), "Invalid schema"),
    ({"schemaType": "JSON"}, "'schema' string"),
])
def test_schemas_this_registry_does_not_take_are_42201(client, payload, words):
    message = error(client.post("/subjects/orders/versions", json=payload), 422, 42201)
    assert words in message
    error(client.post("/subjects/orders", json=payload), 422, 42201)


def test_not_found_codes(client, store):
    error(client.get("/subjects/nope/versions"), 404, 40401)
    error(client.get("/subjects/nope/versions/1"), 404, 40401)
    error(client.get("/subjects/nope/versions/latest"), 404, 40401)
    client.post("/subjects/orders/versions", json=body(V1))
    assert "Version 9 not found" in error(client.get("/subjects/orders/versions/9"), 404, 40402)
    error(client.get("/subjects/orders/versions/zero"), 422, 42202)
    error(client.get("/subjects/orders/versions/0"), 422, 42202)
    error(client.get("/schemas/ids/999"), 404, 40403)
    error(client.get("/schemas/ids/abc"), 404, 40403)
    error(client.get("/schemas/ids/999/versions"), 404, 40403)
    error(client.post("/subjects/nope", json=body(V1)), 404, 40401)
    error(client.post("/subjects/orders", json=body(V2)), 404, 40403)
    found = client.post("/subjects/tpch.orders-value", json=body(V1)).json()
    assert (found["subject"], found["version"], found["schemaType"]) == ("tpch.orders-value", 1,
                                                                         "JSON")
    assert error(client.post("/subjects/orders/versions", content=b"{oops"), 400, 400)


def test_config_global_and_per_subject(client, store):
    assert client.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert client.put("/config", json={"compatibility": "full"}).json() == {"compatibility": "FULL"}
    assert store.global_mode() is Mode.FULL
    assert client.get("/config").json() == {"compatibilityLevel": "FULL"}
    error(client.put("/config", json={"compatibility": "SIDEWAYS"}), 422, 42203)
    error(client.put("/config", json={}), 422, 42203)
    error(client.get("/config/orders"), 404, 40408)
    assert client.get("/config/orders?defaultToGlobal=true").json() == {"compatibilityLevel": "FULL"}
    client.put("/config/tpch.orders-value", json={"compatibilityLevel": "FORWARD_TRANSITIVE"})
    assert store.mode("orders") is Mode.FORWARD_TRANSITIVE
    assert client.get("/config/orders").json() == {"compatibilityLevel": "FORWARD_TRANSITIVE"}
    assert client.delete("/config/orders").json() == {"compatibilityLevel": "FORWARD_TRANSITIVE"}
    assert store.mode("orders") is Mode.FULL
    error(client.delete("/config/orders"), 404, 40401)
    assert client.delete("/config").json() == {"compatibilityLevel": "FULL"}
    assert store.global_mode() is Mode.BACKWARD
    assert client.get("/mode").json() == {"mode": "READWRITE"}


def test_soft_then_permanent_deletes(client, store):
    first = client.post("/subjects/orders/versions", json=body(V1)).json()["id"]
    client.post("/subjects/orders/versions", json=body(V2))
    error(client.delete("/subjects/orders/versions/1?permanent=true"), 404, 40407)
    assert client.delete("/subjects/tpch.orders-value/versions/1").json() == 1
    error(client.delete("/subjects/orders/versions/1"), 404, 40406)
    error(client.get("/subjects/orders/versions/1"), 404, 40402)
    assert client.get("/subjects/orders/versions/1?deleted=true").json()["id"] == first
    assert client.get("/subjects/orders/versions").json() == [2]
    assert client.get("/subjects/orders/versions?deleted=true").json() == [1, 2]
    assert client.get(f"/schemas/ids/{first}").status_code == 200, "still readable by id"
    assert client.get(f"/schemas/ids/{first}/versions").json() == []
    assert client.get(f"/schemas/ids/{first}/versions?deleted=true").json() == [
        {"subject": "orders", "version": 1}, {"subject": "tpch.orders-value", "version": 1}]
    error(client.delete("/subjects/orders?permanent=true"), 404, 40405)
    assert client.delete("/subjects/orders").json() == [2]
    error(client.delete("/subjects/orders"), 404, 40404)
    assert client.get("/subjects").json() == []
    assert client.get("/subjects?deleted=true").json() == ["orders", "tpch.orders-value"]
    error(client.get("/subjects/orders/versions"), 404, 40401)
    assert client.delete("/subjects/orders?permanent=true").json() == [1, 2]
    error(client.get("/subjects/orders/versions?deleted=true"), 404, 40401)
    error(client.delete("/subjects/orders"), 404, 40401)


def test_basic_auth_when_configured():
    token = base64.b64encode(b"alice:s3cret").decode()
    app = TestClient(create_app(FakeStore(), ("alice", "s3cret")))
    r = app.get("/subjects")
    assert error(r, 401, 401) and r.headers["www-authenticate"].startswith("Basic")
    assert app.get("/subjects", headers={"Authorization": f"Basic {token}"}).json() == []
    wrong = base64.b64encode(b"alice:guess").decode()
    error(app.get("/subjects", headers={"Authorization": f"Basic {wrong}"}), 401, 401)
    assert check_basic(f"basic {token}", "alice", "s3cret")
    assert not check_basic("Bearer xyz", "alice", "s3cret")
    assert not check_basic("Basic !!!", "alice", "s3cret")
    assert not check_basic(f"Basic {base64.b64encode(b'alice').decode()}", "alice", "s3cret")


def test_credentials_come_from_settings_and_the_environment(monkeypatch):
    monkeypatch.delenv("CONFLUX_SCHEMA_REGISTRY_PASSWORD", raising=False)
    assert credentials(None) is None
    with pytest.raises(ConfigError, match="CONFLUX_SCHEMA_REGISTRY_PASSWORD"):
        credentials("alice")
    monkeypatch.setenv("CONFLUX_SCHEMA_REGISTRY_PASSWORD", "s3cret")
    assert credentials("alice") == ("alice", "s3cret")


def test_pure_parsers():
    assert parse_version("latest") is None and parse_version("-1") is None
    assert parse_version(" 3 ") == 3
    for bad in ("0", "2147483648", "x", "٣", "-2"):
        with pytest.raises(ApiError) as info:
            parse_version(bad)
        assert info.value.code == 42202
    assert parse_level({"compatibility": "backward-transitive"}) is Mode.BACKWARD_TRANSITIVE
    with pytest.raises(ApiError):
        parse_level([])
    assert parse_schema(body(V1)) == V1


def test_a_store_failure_is_50001(store):
    def broken(*_a, **_k):
        raise OSError("connection refused")

    store.subjects = broken
    r = TestClient(create_app(store)).get("/subjects")
    assert "connection refused" in error(r, 500, 50001)


def test_the_stack_serves_it_on_its_own_port(tmp_path):
    from conflux.core.settings import Settings
    from conflux.stack import Stack

    s = Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_DAGSTER_PORT": "18300"})
    assert (s.schema_registry_port, s.schema_registry_url) == (18500, "http://127.0.0.1:18500")
    assert s.client_env()["CONFLUX_SCHEMA_REGISTRY_URL"] == "http://127.0.0.1:18500"
    with pytest.raises(ConfigError, match="ports must differ"):
        Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_SCHEMA_REGISTRY_PORT": "3000"})
    service = Stack(Settings.from_env({"CONFLUX_HOME": str(tmp_path),
                                       "CONFLUX_SCHEMA_REGISTRY_USER": "alice",
                                       "CONFLUX_SCHEMA_REGISTRY_PASSWORD": "s3cret"})
                    ).services["conflux-schema-registry"]
    assert service.command()[-4:] == ["--host", "127.0.0.1", "--port", "3200"]
    assert "s3cret" not in " ".join(service.command())
    assert service.env()["CONFLUX_SCHEMA_REGISTRY_USER"] == "alice"
    assert "basic auth" in service.describe()
