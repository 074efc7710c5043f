"""Dead-letter operations on the real broker, Postgres and Dagster of the test stack.

* ``conflux dlq list`` shows the reasons and samples of what the ingest path dead-lettered;
* after a fix, ``conflux dlq replay`` re-drives the chosen letters into the source topic — on
  their original partition, with their original timestamp — and the dataset ends up holding each
  key once, newest event winning; records still bad go back to the DLQ with their reason; a
  second replay re-publishes nothing; ``--reason`` filters; ``--dry-run`` changes nothing; two
  replays of one DLQ never run at once;
* the ``dead_letters`` check passes, warns and errors by the declared thresholds on real Kafka
  offsets, in a run and from the monitor sensor, and the daemon's ``dlq_monitor`` records it in
  the instance, where the UI (the webserver's GraphQL API) shows it on the asset.
"""

import dataclasses
import datetime as dt
import json
import time
import uuid

import dagster as dg
import pandas as pd
import pytest
from pydantic import Field

from conflux.cli import main
from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from pipelines import contracts as tpch
from conflux.contracts.lineage import contract_schema
from pipelines.catalog import ORDERS
from conflux.core.declarations import DeadLetterPolicy
from conflux.observe.dlq import evaluate
from conflux.observe.dlq_replay import ReplayLedger, window_counts
from conflux.event.ingest import apply_records, resolver_for
from conflux.io.kafka import Outgoing
from conflux.io.registry import SchemaRegistryResource
from conflux.observe.dlq_monitor import CHECK_NAME, build_dlq_check, build_dlq_sensor


class OrderV2(tpch.Order):
    """The fix: version 2 of the orders contract allows longer comments (compatible change)."""

    o_comment: str = Field(default="", max_length=200)


LONG = "x" * 120  # valid in v2 only


@pytest.fixture
def ds(kafka, topic, registry):
    """An orders-like dataset on this test's topic, contract v1 registered."""
    ds = dataclasses.replace(ORDERS, name=f"orders_dlq_{topic[-12:]}", topics=(topic,),
                             dlq_topic=f"{topic}.dlq", fallback=None)
    kafka.ensure_topic(ds.dlq_topic, 1)
    registry.register(ds.subject, contract_schema(ds.contract))
    return ds


@pytest.fixture
def catalog(ds, tmp_path, monkeypatch):
    """A catalog module declaring ``ds``, for the CLI's ``--catalog``."""
    name = f"dlq_catalog_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import dataclasses\nfrom pipelines.catalog import ORDERS\n"
        f"DATASETS = (dataclasses.replace(ORDERS, name={ds.name!r}, topics=({ds.topic!r},), "
        f"dlq_topic={ds.dlq_topic!r}, fallback=None),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:DATASETS"


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(capsys, *argv) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def ends_of(kafka, topic) -> dict[int, int]:
    return kafka.end_offsets(topic)


def apply_new(ds, kafka, lake, stack, since: dict[int, int]):
    """Apply what arrived on ``ds.topic`` after ``since`` (what the sensor would do)."""
    ends = ends_of(kafka, ds.topic)
    ranges = [(ds.topic, p, since.get(p, 0), e) for p, e in ends.items()]
    records = list(kafka.read_ranges(ranges))
    resolver = resolver_for(ds, SchemaRegistryResource(url=stack.settings.postgres_url))
    report = apply_records(ds, records, kafka=kafka, lake=lake, resolver=resolver,
                           origin="test", sources=[])
    return report, records, ends


def stored(lake, ds) -> pd.DataFrame:
    frames = [lake.read(ds.name, p) for p in lake.partitions(ds.name)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def test_list_then_replay_after_a_fix_keeps_each_key_once(ds, catalog, kafka, lake, stack,
                                                          registry, capsys):
    rows = list(json_rows(TpchGenerator(0.001, seed=21).orders().head(12)))
    key = lambda r: str(r["o_orderkey"]).encode()  # noqa: E731
    v1, v2 = f"{ds.subject}@1", f"{ds.subject}@2"
    base = int(time.time() * 1000) - 600_000
    good, early_bad = rows[:6], rows[6:10]        # k0..k5 good; k6..k9 written with v2
    k0_update = {**rows[0], "o_orderstatus": "F" if rows[0]["o_orderstatus"] != "F" else "O",
                 "o_comment": LONG}
    k9_newer = {**rows[9], "o_comment": "corrected by a newer v1 event"}
    violations = [{**r, "o_totalprice": "abc"} for r in rows[10:12]]
    out = [Outgoing(key(r), json.dumps(r).encode(), event_headers(contract=v1), None, base + i)
           for i, r in enumerate(good)]
    out += [Outgoing(key(r), json.dumps({**r, "o_comment": LONG}).encode(),
                     event_headers(contract=v2), None, base + 100 + i)
            for i, r in enumerate(early_bad)]
    out.append(Outgoing(key(k0_update), json.dumps(k0_update).encode(),
                        event_headers(contract=v2), None, base + 200))    # newer than k0
    out.append(Outgoing(key(k9_newer), json.dumps(k9_newer).encode(),
                        event_headers(contract=v1), None, base + 300))    # newer than bad k9
    out += [Outgoing(key(r), json.dumps(r).encode(), event_headers(contract=v1), None,
                     base + 400 + i) for i, r in enumerate(violations)]
    with kafka.publisher(ds.topic) as publish:
        acks = publish(out)
    source_of = {(p, o): o_ for (p, o), o_ in zip(acks, out)}

    report, _, ends = apply_new(ds, kafka, lake, stack, {})
    assert dict(report.dead) == {"UNKNOWN_SCHEMA": 5, "CONTRACT_VIOLATION": 2}

    # --- dlq list: reason histogram and samples, by source topic or DLQ topic
    listing = cli_json(capsys, "dlq", "list", ds.topic, "--catalog", catalog, "--limit", "3")
    assert listing["dlq_topic"] == ds.dlq_topic and listing["dataset"] == ds.name
    assert listing["total"] == 7
    assert listing["reasons"] == {"UNKNOWN_SCHEMA": 5, "CONTRACT_VIOLATION": 2}
    assert listing["replayed"] == {} and listing["retries"] == 0
    assert [s["reason"] for s in listing["samples"]] == ["CONTRACT_VIOLATION"] * 2 + ["UNKNOWN_SCHEMA"]
    newest = listing["samples"][0]
    assert newest["dlq"] == f"{ds.dlq_topic}[0]@6" and newest["source_topic"] == ds.topic
    assert "o_totalprice" in newest["message"] and '"abc"' in newest["value"]
    assert newest["correlation_id"] and newest["contract"] == v1
    only = cli_json(capsys, "dlq", "list", ds.dlq_topic, "--catalog", catalog,
                    "--reason", "CONTRACT_VIOLATION")
    assert only["total"] == 2 and only["reasons"] == {"CONTRACT_VIOLATION": 2}
    code, text, _ = cli(capsys, "dlq", "list", ds.dlq_topic, "--catalog", catalog)
    assert code == 0
    assert f"{ds.dlq_topic}: 7 dead letter(s) of {ds.name}" in text
    assert [line.split() for line in text.splitlines() if "UNKNOWN_SCHEMA" in line][0] == [
        "UNKNOWN_SCHEMA", "5", "0"]
    assert "newest 5 of 7:" in text and "message: o_totalprice" in text

    # --- part of the fix: v2 is registered, but this code still reads v1
    registry.register(ds.subject, contract_schema(OrderV2))
    dry = cli_json(capsys, "dlq", "replay", ds.topic, "--catalog", catalog,
                   "--reason", "UNKNOWN_SCHEMA", "--dry-run")
    assert dry["dry_run"] and dry["published"] == 5 and dry["selected"] == 5
    assert ends_of(kafka, ds.topic) == ends, "a dry run publishes nothing"
    assert ReplayLedger(stack.settings.postgres_url).replayed_refs(ds.dlq_topic) == set()

    time.sleep(0.05)
    mid = dt.datetime.now(dt.timezone.utc)
    first = cli_json(capsys, "dlq", "replay", ds.topic, "--catalog", catalog,
                     "--reason", "UNKNOWN_SCHEMA")
    assert (first["selected"], first["published"], first["skipped"]) == (5, 5, 0)
    assert first["reasons"] == {"UNKNOWN_SCHEMA": {"selected": 5, "already_replayed": 0,
                                                   "unroutable": 0, "published": 5}}
    assert first["targets"] == {ds.topic: 5} and first["original_time_missing"] == 0
    replayed = [r for p, e in ends_of(kafka, ds.topic).items()
                for r in kafka.read_range(ds.topic, p, ends.get(p, 0), e)]
    assert len(replayed) == 5, "only the UNKNOWN_SCHEMA letters went back"
    for rec in replayed:
        names = [n for n, _ in rec.headers]
        assert not any(n.startswith("conflux.error.") for n in names)
        assert rec.header("conflux.replay.id").decode() == first["replay_id"]
        assert rec.header("conflux.replay.reason") == b"UNKNOWN_SCHEMA"
        assert rec.header("conflux.replay.of").decode().startswith(f"{ds.dlq_topic}:0:")
        assert rec.header("correlation_id") and rec.header("contract") == v2.encode()
        original = [o for (p, _), o in source_of.items() if o.key == rec.key and o.value == rec.value]
        assert original and rec.timestamp_ms == original[0].timestamp_ms, "original time kept"
        assert rec.partition in {p for (p, _), o in source_of.items() if o.key == rec.key}

    # the old code still cannot read v2: the records go back to the DLQ, with their new reason
    before = stored(lake, ds)
    report, _, ends = apply_new(ds, kafka, lake, stack, ends)
    assert dict(report.dead) == {"UNSUPPORTED_SCHEMA_VERSION": 5} and report.rows_valid == 0
    pd.testing.assert_frame_equal(stored(lake, ds), before)
    again = cli_json(capsys, "dlq", "list", ds.topic, "--catalog", catalog,
                     "--since", mid.isoformat())
    assert again["total"] == 5 and again["retries"] == 5
    assert again["reasons"] == {"UNSUPPORTED_SCHEMA_VERSION": 5}
    assert all(s["attempt"] == 1 and s["replay_of"] for s in again["samples"])
    full = cli_json(capsys, "dlq", "list", ds.topic, "--catalog", catalog)
    assert full["total"] == 12 and full["replayed"] == {"UNKNOWN_SCHEMA": 5}

    # a second replay of the same letters re-publishes nothing
    second = cli_json(capsys, "dlq", "replay", ds.topic, "--catalog", catalog,
                      "--reason", "UNKNOWN_SCHEMA")
    assert (second["selected"], second["published"], second["skipped"]) == (5, 0, 5)
    assert ends_of(kafka, ds.topic) == ends

    # --- the whole fix: code reading v2 is deployed; replay what failed again
    fixed = dataclasses.replace(ds, contract=OrderV2)
    code, text, _ = cli(capsys, "dlq", "replay", ds.topic, "--catalog", catalog,
                        "--reason", "UNSUPPORTED_SCHEMA_VERSION")
    assert code == 0, text
    assert "re-published 5 dead letter(s)" in text
    assert [line.split() for line in text.splitlines() if line.strip().startswith("total")] == [
        ["total", "5", "0", "0", "5"]]
    report, _, ends = apply_new(fixed, kafka, lake, stack, ends)
    assert report.dead_lettered == 0 and report.rows_valid == 5

    table = stored(lake, ds)
    keys = table["o_orderkey"].tolist()
    assert len(keys) == len(set(keys)), "each key once"
    assert set(keys) == {r["o_orderkey"] for r in rows[:10]}
    by_key = table.set_index("o_orderkey")
    assert by_key.loc[rows[0]["o_orderkey"], "o_orderstatus"] == k0_update["o_orderstatus"], \
        "the replayed update is newer than the stored row: it wins"
    assert by_key.loc[rows[9]["o_orderkey"], "o_comment"] == k9_newer["o_comment"], \
        "the replayed record is older than the stored row: the newer event stays"
    for r in rows[6:9]:
        assert by_key.loc[r["o_orderkey"], "o_comment"] == LONG

    # nothing is re-published twice; --again would, and says so without doing it
    for reason in ("UNKNOWN_SCHEMA", "UNSUPPORTED_SCHEMA_VERSION"):
        done = cli_json(capsys, "dlq", "replay", ds.dlq_topic, "--catalog", catalog,
                        "--reason", reason)
        assert (done["published"], done["skipped"]) == (0, 5)
    forced = cli_json(capsys, "dlq", "replay", ds.topic, "--catalog", catalog, "--reason",
                      "UNSUPPORTED_SCHEMA_VERSION", "--again", "--dry-run")
    assert forced["published"] == 5
    assert ends_of(kafka, ds.topic) == ends
    ledger = ReplayLedger(stack.settings.postgres_url)
    assert len(ledger.replayed_refs(ds.dlq_topic)) == 10
    history = ledger.history(ds.dlq_topic)
    assert [h[4]["published"] for h in history if h[4]] == [0, 0, 5, 0, 5]

    # the contract violations were never replayed: the listing says so
    final = cli_json(capsys, "dlq", "list", ds.topic, "--catalog", catalog)
    assert final["replayed"] == {"UNKNOWN_SCHEMA": 5, "UNSUPPORTED_SCHEMA_VERSION": 5}
    assert final["reasons"]["CONTRACT_VIOLATION"] == 2


def test_one_replay_per_dlq_topic_at_a_time(ds, catalog, kafka, stack, capsys):
    kafka.send_raw(ds.dlq_topic, [(b"1", b"{}", [("conflux.error.code", b"INVALID_JSON"),
                                                 ("conflux.error.topic", ds.topic.encode())])])
    ledger = ReplayLedger(stack.settings.postgres_url)
    with ledger.session(ds.dlq_topic, write=True):
        code, _, err = cli(capsys, "dlq", "replay", ds.topic, "--catalog", catalog)
        assert code == 1
        assert f"[DLQ_OPERATION_FAILED] another replay of {ds.dlq_topic} is running" in err
    assert ledger.replayed_refs(ds.dlq_topic) == set()
    ok = cli_json(capsys, "dlq", "replay", ds.topic, "--catalog", catalog)
    assert ok["published"] == 1


def test_an_unknown_topic_and_a_missing_dlq_are_clear(ds, catalog, kafka, capsys):
    code, _, err = cli(capsys, "dlq", "list", "no.such.topic", "--catalog", catalog)
    assert code == 2 and "topic 'no.such.topic' is not a source or dead-letter topic" in err
    quiet = dataclasses.replace(ds, dlq_topic=f"{ds.topic}.never")
    counts = window_counts(quiet, kafka)
    assert counts.dead == 0 and counts.missing == (quiet.dlq_topic,)
    assert evaluate(counts, quiet.dlq).passed


def test_the_check_passes_warns_and_errors_on_real_offsets(ds, kafka, lake, stack, instance):
    rows = list(json_rows(TpchGenerator(0.001, seed=22).orders().head(30)))
    now = int(time.time() * 1000)
    with kafka.publisher(ds.topic) as publish:
        # ten records from two hours ago: outside the one-hour window
        publish([Outgoing(str(r["o_orderkey"]).encode(), json.dumps(r).encode(), [], None,
                          now - 7_200_000) for r in rows[:10]])
        publish([Outgoing(str(r["o_orderkey"]).encode(),
                          b"{not json" if i < 2 else json.dumps(r).encode(), [], None, now)
                 for i, r in enumerate(rows[10:])])
    report, _, _ = apply_new(ds, kafka, lake, stack, {})
    assert dict(report.dead) == {"INVALID_JSON": 2}

    counts = window_counts(ds, kafka)
    assert (counts.records_in, counts.dead, counts.dlq_retained) == (20, 2, 2)
    assert counts.reasons == {"INVALID_JSON": 2} and counts.sampled == 2
    policies = {
        "pass": DeadLetterPolicy(warn_rate=0.2, error_rate=0.5, min_records=1),
        "warn": DeadLetterPolicy(warn_rate=0.05, error_rate=0.2, min_records=1),
        "error": DeadLetterPolicy(warn_rate=0.01, error_rate=0.1, min_records=1),
        "error_count": DeadLetterPolicy(warn_rate=None, error_rate=None, error_count=2),
        "quiet": DeadLetterPolicy(),  # 2 over min_records=100: 2 % -> WARN
    }
    outcomes = {name: evaluate(counts, p).severity for name, p in policies.items()}
    assert outcomes == {"pass": None, "warn": "WARN", "error": "ERROR", "error_count": "ERROR",
                        "quiet": "WARN"}
    assert evaluate(counts, policies["warn"]).rate == pytest.approx(0.1)

    # executed as a check (what the UI's "Execute" runs): the result and metadata are stored
    warn_ds = dataclasses.replace(ds, dlq=policies["warn"])
    check = build_dlq_check(dataset=warn_ds)
    job = dg.define_asset_job("dlq_check_job", selection=dg.AssetSelection.checks(check))
    defs = dg.Definitions(assets=[dg.AssetSpec(warn_ds.name)], asset_checks=[check], jobs=[job],
                          resources={"kafka": kafka})
    result = defs.resolve_job_def(job.name).execute_in_process(instance=instance)
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert meta["conflux/dead_lettered"] == 2 and meta["conflux/records_in"] == 20
    assert meta["conflux/top_reasons"] == {"INVALID_JSON": 2}

    # evaluated by the monitor sensor: a runless evaluation per dataset, each on its cadence
    error_ds = dataclasses.replace(ds, name=f"{ds.name}_e", dlq=policies["error"])
    sensor = build_dlq_sensor(datasets=[warn_ds, error_ds])
    with dg.build_sensor_context(instance=instance, resources={"kafka": kafka}) as ctx:
        first = sensor(ctx)
    events = {e.asset_key.path[0]: e for e in first.asset_events}
    assert events[warn_ds.name].severity == dg.AssetCheckSeverity.WARN
    assert events[error_ds.name].severity == dg.AssetCheckSeverity.ERROR
    assert not any(e.passed for e in events.values())
    assert events[warn_ds.name].metadata["conflux/evaluated_by"].value == "sensor:dlq_monitor"
    with dg.build_sensor_context(instance=instance, resources={"kafka": kafka},
                                 cursor=first.cursor) as ctx:
        soon = sensor(ctx)
    assert soon.asset_events == [] and "no dataset due" in soon.skip_reason.skip_message

    # what the daemon does with the sensor's events: the instance holds the latest evaluation
    for event in first.asset_events:
        instance.report_runless_asset_event(event)
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey(error_ds.name), CHECK_NAME))
    stored_eval = record.event.dagster_event.event_specific_data
    assert not stored_eval.passed and stored_eval.severity == dg.AssetCheckSeverity.ERROR
    assert stored_eval.metadata["conflux/dead_lettered"].value == 2


ASSET_CHECKS = """
query($key: [String!]!) {
  assetNodes(assetKeys: [{path: $key}]) {
    assetChecksOrError { __typename ... on AssetChecks { checks { name description } } }
  }
  assetCheckExecutions(assetKey: {path: $key}, checkName: "dead_letters", limit: 1) {
    status
    evaluation { success severity description metadataEntries { label } }
  }
}"""


def test_the_daemon_evaluates_the_check_and_the_ui_shows_it(webserver):
    from conflux.cli.dagster_api import graphql

    url = webserver.settings.dagster_url
    deadline = time.monotonic() + 120
    while True:
        data = graphql(url, ASSET_CHECKS, {"key": ["orders"]})
        if data["assetCheckExecutions"] or time.monotonic() > deadline:
            break
        time.sleep(3)
    [node] = data["assetNodes"]
    checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
    assert "dead_letters" in checks
    assert "conflux dlq list tpch.orders" in checks["dead_letters"]["description"]
    assert data["assetCheckExecutions"], "dlq_monitor reported no evaluation of orders within 120 s"
    [execution] = data["assetCheckExecutions"]
    assert execution["status"] in {"SUCCEEDED", "FAILED"}
    labels = {m["label"] for m in execution["evaluation"]["metadataEntries"]}
    assert {"conflux/dead_lettered", "conflux/records_in", "conflux/dead_letter_rate",
            "conflux/top_reasons", "conflux/thresholds"} <= labels
    assert "in the last 1h" in execution["evaluation"]["description"]
