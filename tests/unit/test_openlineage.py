"""OpenLineage events, built from the declarations and checked against the OpenLineage spec's
JSON Schema (vendored in tests/fixtures/openlineage), and their sending — off by default, never
failing the pipeline. No services: the file transport writes to a temporary folder and the HTTP
transport posts to a server on loopback that this test starts."""

import http.server
import json
import logging
import threading
import uuid

import pytest

from conflux.observe import openlineage as ol
from pipelines.catalog import CATALOG, CUSTOMER_LEDGER, LINEITEM, NATION, ORDERS, REVENUE_BY_NATION
from conflux.contracts.metadata import column_lineage, column_schema
from tests.fixtures.openlineage import assert_valid, event_errors, spec_documents

LAKE = "/srv/lake"
PG = "postgresql://conflux:secret@db.internal:6543/platform"
KAFKA = "broker-1:29092,broker-2:29092"
DAGSTER_RUN = str(uuid.uuid4())


def all_ios() -> dict[str, ol.LineageIO]:
    return {
        "table_load": ol.batch_io(NATION, CATALOG, lake_path=LAKE, postgres_url=PG),
        "join": ol.batch_io(REVENUE_BY_NATION, CATALOG, lake_path=LAKE, postgres_url=PG),
        "ingest": ol.ingest_io(ORDERS, lake_path=LAKE, bootstrap_servers=KAFKA,
                               job_name="orders__ingest"),
        "micro_batch": ol.ingest_io(CUSTOMER_LEDGER, lake_path=LAKE, bootstrap_servers=KAFKA,
                                    job_name="customer_ledger__kafka", job_type="MICRO_BATCH"),
        "fallback": ol.fallback_io(LINEITEM, lake_path=LAKE, postgres_url=PG),
    }


def failed(message: str) -> Exception:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


def as_dict(io, state="START", **kwargs) -> dict:
    return ol.event_dict(ol.run_event(io, state=state, run_id=ol.uuid7(), **kwargs))


# --- naming ---------------------------------------------------------------------------------------
def test_datasets_are_named_by_openlineage_conventions():
    assert ol.kafka_dataset(KAFKA, "tpch.orders") == ("kafka://broker-1:29092", "tpch.orders")
    assert ol.kafka_dataset("PLAINTEXT://127.0.0.1:9092", "t") == ("kafka://127.0.0.1:9092", "t")
    assert ol.kafka_dataset("localhost", "t") == ("kafka://localhost:9092", "t")
    # credentials never leave the URL; default port 5432
    assert ol.postgres_dataset(PG, "ops.orders") == ("postgres://db.internal:6543",
                                                     "platform.ops.orders")
    assert ol.postgres_dataset("postgresql://u@h/db", "ops.x") == ("postgres://h:5432", "db.ops.x")
    assert ol.postgres_dataset("host=h port=7 dbname=db password=s", "ops.x") == (
        "postgres://h:7", "db.ops.x")
    assert ol.lake_dataset("/srv/lake/", "orders") == ("file", "/srv/lake/orders")
    assert ol.lake_dataset("file:///srv/lake", "orders") == ("file", "/srv/lake/orders")
    assert ol.lake_dataset("s3://bucket/lake", "orders") == ("s3://bucket", "lake/orders")


# --- events against the spec ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(all_ios()))
@pytest.mark.parametrize("state", ["START", "COMPLETE", "FAIL", "ABORT"])
def test_every_event_kind_is_valid_against_the_spec(kind, state):
    extra = {"COMPLETE": {"rows": {ol.DATA: 10, ol.DLQ: 2}},
             "FAIL": {"error": failed("the lake is read-only")}}.get(state, {})
    event = as_dict(all_ios()[kind], state, parent=ol.Parent("some_job", DAGSTER_RUN), **extra)
    assert_valid(event)
    assert event["eventType"] == state
    assert event["job"]["facets"]["jobType"]["integration"] == "CONFLUX"


def test_schema_facets_carry_the_contract_columns_as_the_dagster_asset_does():
    event = as_dict(all_ios()["ingest"])
    [topic] = event["inputs"]
    lake, dlq = event["outputs"]
    assert (topic["namespace"], topic["name"]) == ("kafka://broker-1:29092", "tpch.orders")
    assert (dlq["namespace"], dlq["name"]) == ("kafka://broker-1:29092", "tpch.orders.dlq")
    dagster = [(c.name, c.type, c.description) for c in column_schema(ORDERS).columns]
    for ds in (topic, lake):
        fields = ds["facets"]["schema"]["fields"]
        assert [(f["name"], f["type"], f.get("description")) for f in fields] == dagster
        assert [f["ordinal_position"] for f in fields] == list(range(1, len(dagster) + 1))
    assert lake["facets"]["ownership"]["owners"] == [{"name": ORDERS.owner}]
    assert lake["facets"]["documentation"]["description"] == ORDERS.description
    assert "schema" not in dlq["facets"]  # dead letters are whatever failed to decode


def test_column_lineage_of_revenue_by_nation_matches_the_dagster_metadata():
    event = as_dict(all_ios()["join"])
    assert [i["name"] for i in event["inputs"]] == [
        f"{LAKE}/{up}" for up in REVENUE_BY_NATION.upstream]
    [out] = event["outputs"]
    assert out["name"] == f"{LAKE}/revenue_by_nation"
    facet = out["facets"]["columnLineage"]["fields"]
    dagster = column_lineage(REVENUE_BY_NATION, CATALOG).deps_by_column
    assert set(facet) == set(dagster)
    for column, deps in dagster.items():
        assert {(f["namespace"], f["name"], f["field"]) for f in facet[column]["inputFields"]} == {
            ("file", f"{LAKE}/{d.asset_key.to_user_string()}", d.column_name) for d in deps}
    assert {(f["name"].rsplit("/", 1)[1], f["field"]) for f in facet["revenue"]["inputFields"]} \
        == {("lineitem", "l_extendedprice"), ("lineitem", "l_discount")}


def test_table_loads_and_fallbacks_read_the_ops_table_in_postgres():
    load = as_dict(all_ios()["table_load"])
    assert [(i["namespace"], i["name"]) for i in load["inputs"]] == [
        ("postgres://db.internal:6543", "platform.ops.nation")]
    assert load["outputs"][0]["name"] == f"{LAKE}/nation"
    fallback = as_dict(all_ios()["fallback"])
    assert fallback["job"]["name"] == "lineitem__reconcile"
    assert [i["name"] for i in fallback["inputs"]] == ["platform.ops.lineitem", f"{LAKE}/lineitem"]
    assert not as_dict(ol.fallback_io(LINEITEM, lake_path=LAKE, postgres_url=PG,
                                      repair=False))["outputs"]


def test_complete_counts_rows_per_output_and_fail_names_the_error():
    io = all_ios()["ingest"]
    done = as_dict(io, "COMPLETE", rows={ol.DATA: 7, ol.DLQ: 3})
    assert [o["outputFacets"]["outputStatistics"]["rowCount"] for o in done["outputs"]] == [7, 3]
    fail = as_dict(io, "FAIL", error=failed("broker gone"))
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"] == "RuntimeError: broker gone"
    assert error["programmingLanguage"] == "python" and "Traceback" in error["stackTrace"]
    parent = as_dict(io, parent=ol.Parent("orders__ingest_job", DAGSTER_RUN))["run"]["facets"]
    assert parent["parent"]["run"]["runId"] == DAGSTER_RUN
    assert parent["parent"]["job"] == {"namespace": "conflux", "name": "orders__ingest_job",
                                       "facets": {}}


def test_run_ids_are_uuid7_and_the_job_namespace_comes_from_the_environment():
    run_id = ol.uuid7()
    assert uuid.UUID(run_id).version == 7 and uuid.UUID(run_id).variant == uuid.RFC_4122
    assert ol.job_namespace({"OPENLINEAGE_NAMESPACE": "prod"}) == "prod"
    assert ol.job_namespace({}) == "conflux"


def test_the_validator_catches_what_breaks_the_spec():
    event = as_dict(all_ios()["join"])
    event["run"]["runId"] = "run-1"
    event["eventTime"] = "yesterday"
    event["outputs"][0]["facets"]["schema"]["fields"][0]["name"] = 3
    event["outputs"][0]["facets"]["columnLineage"]["fields"]["revenue"]["inputFields"][0].pop(
        "field")
    event["job"]["facets"]["jobType"].pop("integration")
    event["inputs"][0]["facets"]["schemas"] = event["inputs"][0]["facets"]["schema"]
    event["run"]["facets"]["custom"] = {"_producer": "urn:x", "_schemaURL": "https://x/y.json"}
    errors = "\n".join(event_errors(event))
    for expected in ("'run-1' is not a 'uuid'", "'yesterday' is not a 'date-time'",
                     "3 is not of type 'string'", "'field' is a required property",
                     "'integration' is a required property", "not 'schemas'",
                     "'https://x/y.json' is not in the vendored spec"):
        assert expected in errors


def test_the_vendored_spec_is_the_one_the_client_writes():
    """Each facet class the client offers points at a spec document; where that facet is
    vendored, it must be the same version (a client upgrade that moves a facet fails here)."""
    from openlineage.client import facet_v2

    vendored = {url.rsplit("/", 1)[1]: url for url in spec_documents()}
    checked = 0
    for module_name in dir(facet_v2):
        module = getattr(facet_v2, module_name)
        for cls in vars(module).values() if hasattr(module, "__dict__") else ():
            get = getattr(cls, "_get_schema", None)
            if not (isinstance(cls, type) and get and cls.__name__.endswith("Facet")):
                continue
            url = get().partition("#")[0]
            if url.rsplit("/", 1)[1] in vendored:
                assert url == vendored[url.rsplit("/", 1)[1]]
                checked += 1
    assert checked >= 13


# --- sending --------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    """No OPENLINEAGE_* setting, and none left behind (the client adds aliases of its own)."""
    import os

    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    yield monkeypatch
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        del os.environ[key]


@pytest.fixture
def file_transport(clean_env, tmp_path):
    path = tmp_path / "lineage.jsonl"
    clean_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    clean_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    clean_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")

    def events() -> list[dict]:
        assert ol.flush(10)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return events


def test_lineage_is_off_by_default(clean_env):
    called = []
    assert not ol.enabled()
    assert ol.open_run(lambda: called.append(1)) is ol.OFF
    with ol.lineage_run(lambda: called.append(1)) as run:
        run.add_rows(ol.DATA, 5)
    assert called == []  # not even the datasets are described
    clean_env.setenv("OPENLINEAGE_URL", "http://127.0.0.1:1")
    clean_env.setenv("OPENLINEAGE_DISABLED", "true")
    assert not ol.enabled()
    clean_env.delenv("OPENLINEAGE_DISABLED")
    assert ol.enabled()


def test_runs_emit_start_then_complete_or_fail_through_the_file_transport(file_transport):
    io = all_ios()["join"]
    with ol.lineage_run(io, parent=ol.Parent("revenue_by_nation_job", DAGSTER_RUN)) as run:
        run.add_rows(ol.DATA, 42)
    with pytest.raises(KeyError, match="n_name"):  # the error is re-raised, unchanged
        with ol.lineage_run(io):
            raise KeyError("n_name")
    events = file_transport()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "FAIL"]
    for event in events:
        assert_valid(event)  # the client's own additions (the tags facet) included
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"] != events[2]["run"]["runId"]
    assert events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 42
    assert "KeyError: 'n_name'" in events[3]["run"]["facets"]["errorMessage"]["message"]


def test_a_micro_batch_run_starts_once_and_completes_only_if_started(file_transport):
    run = ol.open_run(all_ios()["micro_batch"], flush_timeout=None)
    run.complete()  # a tick that applied nothing is no run
    assert file_transport() == []
    for rows in (3, 4):
        run.start()
        run.add_rows(ol.DATA, rows)
    run.complete()
    run.complete()
    events = file_transport()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 7


def test_a_failing_transport_never_fails_the_pipeline(clean_env, tmp_path, caplog):
    clean_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    clean_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(tmp_path / "no" / "dir" / "x"))
    clean_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    ol.WARN_EVERY_S, saved = 0.0, ol.WARN_EVERY_S
    try:
        with caplog.at_level(logging.WARNING, logger="conflux.openlineage"):
            with ol.lineage_run(all_ios()["table_load"]) as run:
                run.add_rows(ol.DATA, 1)
            assert ol.flush(10)
    finally:
        ol.WARN_EVERY_S = saved
    assert "could not send START of nation" in caplog.text
    assert "could not send COMPLETE of nation" in caplog.text


def test_events_reach_an_http_endpoint_set_by_openlineage_url(clean_env):
    received: list[tuple[str, dict]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clean_env.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{server.server_port}")
        with ol.lineage_run(all_ios()["ingest"]) as run:
            run.add_rows(ol.DATA, 2)
        assert ol.flush(15)
    finally:
        server.shutdown()
    assert [path for path, _ in received] == ["/api/v1/lineage"] * 2
    assert [e["eventType"] for _, e in received] == ["START", "COMPLETE"]
    for _, event in received:
        assert_valid(event)


def test_the_stack_passes_openlineage_settings_to_every_dagster_process(clean_env):
    from conflux.core.settings import Settings
    from conflux.stack.dagster import dagster_env

    clean_env.setenv("OPENLINEAGE_URL", "http://127.0.0.1:5000")
    clean_env.setenv("OPENLINEAGE_NAMESPACE", "prod")
    env = dagster_env(Settings.from_env())
    assert env["OPENLINEAGE_URL"] == "http://127.0.0.1:5000"
    assert env["OPENLINEAGE_NAMESPACE"] == "prod"
    assert ol.enabled(env)
