"""Operations launched as the launchpad launches them — the webserver's GraphQL API, on the live
test platform (Kafka, Postgres, Dagster daemon + webserver) — change the data as they say:

* ``orders__reconcile_job`` over a day: a dry run changes nothing, the run repairs the day; a bad
  date fails the run with a message naming the field;
* executing ``matches_batch_source`` on a divergent day fails the check and writes nothing;
  materializing that day of ``orders`` (a backfill of one partition) repairs it;
* ``orders__dlq_replay_job`` by reason and since: re-publishes exactly the chosen dead letters,
  once (a second replay, from the CLI, skips them and takes only the new letter the still-bad
  replayed record became);
* ``customer_balance__ledger_rebuild_job``: replaces the projection (recorded in its run), then
  a check (the default) on a tampered projection fails listing the difference, and a replace
  mends it.

(Replay from a point in time, through ``orders__replay_job``: ``test_batch_path.py``.)
"""

import json
import random
import time

import dagster as dg
import pytest
from conflux.batch.fallback import CHECK_NAME
from conflux.cli import dagster_api as api
from conflux.cli import main
from conflux.cli.jobs import JobRun, follow, launch_job
from conflux.io.kafka import KafkaResource
from pipelines.demo.producer import build_stream, corrupt

TIMEOUT = 400  # a run may wait for a worker, and its retry, on a loaded machine
pytestmark = pytest.mark.timeout(600)


def run_job(url: str, job: str, op: str, config: dict) -> JobRun:
    return launch_job(url, job, op, config, what=job, wait=True, timeout=TIMEOUT,
                      report=lambda line: None)


def keys_on(lake, day: str) -> list[int]:
    stored = lake.read("orders", day)
    return sorted(stored.o_orderkey) if stored is not None else []


def source_keys(data, day: str) -> list[int]:
    orders = data["tables"]["orders"]
    return sorted(orders[orders.o_orderdate.astype(str) == day].o_orderkey)


def order_days(data) -> list[str]:
    orders = data["tables"]["orders"]
    return sorted(orders.o_orderdate.astype(str).unique())


def test_the_reconcile_job_repairs_a_range_and_a_dry_run_changes_nothing(platform_data):
    data, lake, url = platform_data, platform_data["lake"], platform_data["url"]
    day = order_days(data)[1]
    expected = source_keys(data, day)
    lake.rewrite("orders", day, lambda current: None)  # the dataset lost a day

    dry = run_job(url, "orders__reconcile_job", "orders__reconcile",
                  {"start": day, "end": day, "dry_run": True})
    assert dry.succeeded and keys_on(lake, day) == []
    assert any(f"missing={len(expected)}" in line for line in dry.lines), dry.lines

    fixed = run_job(url, "orders__reconcile_job", "orders__reconcile", {"start": day, "end": day})
    assert fixed.succeeded and keys_on(lake, day) == expected

    bad = run_job(url, "orders__reconcile_job", "orders__reconcile", {"start": "1995-13-01"})
    assert bad.status == "FAILURE"
    assert any("start '1995-13-01' is not a date (YYYY-MM-DD)" in f for f in bad.failures), \
        bad.failures


def test_the_check_is_read_only_and_materializing_the_day_repairs_it(platform_data):
    data, lake, url = platform_data, platform_data["lake"], platform_data["url"]
    day = order_days(data)[2]
    expected = source_keys(data, day)
    lake.rewrite("orders", day, lambda current: None)

    # Execute on the check, as the UI's button does: it fails and writes nothing
    run = follow(url, JobRun(api.launch_check(
        url, "orders", CHECK_NAME,
        {"ops": {"orders__matches_batch_source": {"config": {"start": day, "end": day}}}})),
        timeout=TIMEOUT, report=lambda line: None)
    assert run.succeeded  # the run did its job: the check's verdict is the failure
    [execution] = [e for e in api.check_executions(url, "orders", CHECK_NAME, limit=5)
                   if e["runId"] == run.run_id]
    assert execution["evaluation"]["success"] is False
    missing = {m["label"]: m.get("intValue") for m in execution["evaluation"]["metadataEntries"]}
    assert missing["conflux/missing"] == len(expected)
    assert keys_on(lake, day) == []

    # Materialize the day (a backfill of one partition): repaired from ops.orders
    backfill_id = api.launch_backfill(url, "orders", day, day)
    api.wait(lambda: (api.backfill_state(url, backfill_id).done, ""), timeout=TIMEOUT,
             report=lambda line: None)
    assert api.backfill_state(url, backfill_id).succeeded
    assert keys_on(lake, day) == expected
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("orders"))
        meta = event.asset_materialization.metadata
        assert event.asset_materialization.partition == day
        assert meta["conflux/materialized_by"].value == "repair from the batch source"
        assert meta["conflux/missing"].value == len(expected)


def _dead_letters(kafka: KafkaResource, since_ms: int) -> list:
    from conflux.observe.dlq_replay import scan

    return [x for x in scan(kafka, "tpch.orders.dlq", since_ms).letters()]


def test_dead_letters_are_replayed_by_reason_and_only_once(platform_data, capsys):
    data, url = platform_data, platform_data["url"]
    kafka = KafkaResource.from_env(data["settings"])
    since_ms = int(time.time() * 1000) - 1000
    df = data["tables"]["orders"].head(2).assign(o_orderkey=[93_000_001, 93_000_002])
    good = build_stream("tpch.orders", df, None)
    rng = random.Random(3)
    bad = [corrupt(good[0], "wrong_type", rng), corrupt(good[1], "invalid_json", rng)]
    kafka.send_raw("tpch.orders", [(b.key, b.value, b.headers) for b in bad])
    deadline = time.monotonic() + 90  # dead-lettered by the live sensor
    while len(_dead_letters(kafka, since_ms)) < 2:
        assert time.monotonic() < deadline, "the sensor did not dead-letter the records"
        time.sleep(1)
    codes = sorted(x.code for x in _dead_letters(kafka, since_ms))
    assert codes == ["CONTRACT_VIOLATION", "INVALID_JSON"]
    ends = kafka.end_offsets("tpch.orders")

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_ms / 1000))
    first = run_job(url, "orders__dlq_replay_job", "orders__dlq_replay",
                    {"reasons": ["contract_violation"], "since": since})
    assert first.succeeded, first.failures
    assert (first.report["selected"], first.report["published"]) == (1, 1)
    replayed = [r for r in kafka.read_ranges([("tpch.orders", p, ends[p], end)
                                              for p, end in kafka.end_offsets("tpch.orders").items()])
                if r.header("conflux.replay.of")]
    assert len(replayed) == 1 and replayed[0].header("conflux.replay.reason") == b"CONTRACT_VIOLATION"
    assert replayed[0].value == bad[0].value

    # still bad (the contract did not change): the sensor dead-letters it again, as a new letter
    # naming the one it replays
    deadline = time.monotonic() + 90
    while not [x for x in _dead_letters(kafka, since_ms) if x.replay_of]:
        assert time.monotonic() < deadline, "the replayed record was not dead-lettered again"
        time.sleep(1)

    # the CLI launches the same job through the webserver: the first letter is skipped (replayed
    # already), only the new one is re-published
    assert main(["dlq", "replay", "tpch.orders", "--reason", "CONTRACT_VIOLATION", "--since",
                 since, "--json"]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    assert (second["selected"], second["skipped"], second["published"]) == (2, 1, 1)
    assert "orders__dlq_replay_job launched" in captured.err and "/runs/" in captured.err


def test_the_ledger_rebuild_job_replaces_then_checks_the_projection(platform_data):
    from pipelines.demo.tpch import ledger as ledger_events
    from tests.integration.test_ledger import publish

    data, lake, url = platform_data, platform_data["lake"], platform_data["url"]
    kafka = KafkaResource.from_env(data["settings"])
    customers = data["tables"]["customer"][["c_custkey", "c_acctbal"]].head(5)
    publish(kafka, "ledger.customer",
            ledger_events(customers, per_customer=2, seed=9, start_id=930_000))
    job, op = "customer_balance__ledger_rebuild_job", "customer_balance__ledger_rebuild"

    replaced = run_job(url, job, op, {"replace": True})
    assert replaced.succeeded, replaced.failures
    assert replaced.report == {"projection": "customer_balance", "replaced": True}
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("customer_balance"))
        assert event.run_id == replaced.run_id
        assert event.asset_materialization.metadata["conflux/fold"].value == \
            "rebuilt from offset zero"

    # a balance altered behind the platform's back: the check fails, naming the customer
    content, _, _ = lake.read_checkpointed("customer_balance")
    tampered = content.to_pandas()
    victim = int(tampered.c_custkey.iloc[0])
    tampered.loc[tampered.c_custkey == victim, "balance"] += 100.0
    lake.rewrite_checkpointed("customer_balance", lambda current, ck: (tampered, ck))
    checked = run_job(url, job, op, {})  # the default only checks
    assert checked.status == "FAILURE"
    assert any(f"customer {victim}: balance stored" in line for line in checked.lines)
    assert any("differs from the rebuild" in f for f in checked.failures)

    mended = run_job(url, job, op, {"replace": True})
    assert mended.succeeded and any("replaced customer_balance" in line for line in mended.lines)
    lake.drop("customer_balance")  # leave the shared lake as found
