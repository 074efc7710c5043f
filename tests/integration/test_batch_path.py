"""The batch path on the live test platform (Postgres, Kafka, Dagster webserver + daemon):
``revenue_by_nation`` backfilled from the CLI through the UI's API as one run, every partition
equal to DuckDB's answer on the same inputs — also after late events and a second backfill —
and an event dataset replayed from Kafka with ``offsets_for_times`` (one run of its replay job,
launched through the webserver by ``conflux replay``)."""

import datetime as dt
import time

import pandas as pd
import pytest

from conflux.cli import dagster_api as api
from conflux.cli import main
from pipelines.demo.producer import build_stream
from conflux.io.kafka import KafkaResource
from tests.platform_data import assert_same, duckdb_revenue, stored_revenue


def test_backfill_from_the_cli_is_one_run_and_every_partition_matches_duckdb(platform_data, capsys):
    data = platform_data
    assert main(["backfill", "revenue_by_nation", "--start", data["first"], "--end", data["last"],
                 "--wait", "--timeout", "600"]) == 0
    out = capsys.readouterr().out
    backfill_id = out.split("backfill ", 1)[1].split()[0]
    state = api.backfill_state(data["url"], backfill_id)
    assert state.succeeded and len(state.runs) == 1  # BackfillPolicy.single_run
    assert "succeeded" in out and "run(s) finished" in out
    assert_same(stored_revenue(data["lake"], data["first"], data["last"]),
                duckdb_revenue(data["lake"]))


def test_late_events_then_a_backfill_of_their_day_still_match_duckdb(platform_data):
    data = platform_data
    lake, tables = data["lake"], data["tables"]
    day = data["first"]
    # a late order of an old day, with two lines, arrives through Kafka
    order = tables["orders"].head(1).assign(o_orderkey=90_000_001, o_orderdate=dt.date.fromisoformat(day))
    lines = tables["lineitem"].head(2).assign(l_orderkey=90_000_001, l_linenumber=[1, 2],
                                              o_orderdate=dt.date.fromisoformat(day))
    kafka = KafkaResource.from_env(data["settings"])
    producer = kafka.producer()
    for topic, df in (("tpch.orders", order), ("tpch.lineitem", lines)):
        for rec in build_stream(topic, df, None):
            producer.send(topic, key=rec.key, value=rec.value, headers=rec.headers)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 90  # the live sensors apply them within seconds
    while time.monotonic() < deadline:
        got_lines = lake.read("lineitem", day)
        if got_lines is not None and (got_lines.l_orderkey == 90_000_001).sum() == 2:
            break
        time.sleep(1)
    else:
        pytest.fail("the late events were not applied by the live sensors within 90 s")
    assert main(["backfill", "revenue_by_nation", "--start", day, "--end", day, "--wait",
                 "--timeout", "300"]) == 0
    assert_same(stored_revenue(lake, data["first"], data["last"]), duckdb_revenue(lake))


def test_replay_from_a_point_in_time_restores_an_event_dataset(platform_data, capsys):
    data = platform_data
    lake = data["lake"]
    kafka = KafkaResource.from_env(data["settings"])
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    df = data["tables"]["orders"].head(20).assign(
        o_orderkey=range(91_000_001, 91_000_021), o_orderdate=dt.date(1993, 3, 3))
    producer = kafka.producer()
    for rec in build_stream("tpch.orders", df, None):
        producer.send("tpch.orders", key=rec.key, value=rec.value, headers=rec.headers)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stored = lake.read("orders", "1993-03-03")
        if stored is not None and stored.o_orderkey.between(91_000_001, 91_000_020).sum() == 20:
            break
        time.sleep(1)
    else:
        pytest.fail("the orders were not applied by the live sensor within 90 s")
    # lose the partition, then replay what arrived since just before the orders were sent
    lake.rewrite("orders", "1993-03-03", lambda current: None)
    assert lake.read("orders", "1993-03-03") is None
    assert main(["replay", "orders", "--since", since.isoformat(), "--wait",
                 "--timeout", "300"]) == 0
    out = capsys.readouterr().out  # one run of the replay job, launched through the webserver
    assert "micro-batch(es)" in out and "run " in out and "of orders__replay_job launched" in out
    assert "applied" in out and "succeeded" in out
    restored = lake.read("orders", "1993-03-03")
    assert sorted(restored.o_orderkey) == list(range(91_000_001, 91_000_021))
    # a dry run plans without launching anything
    assert main(["replay", "orders", "--since", since.isoformat(), "--dry-run"]) == 0
    assert "launched" not in capsys.readouterr().out


def test_replay_over_a_retention_gap_rebuilds_from_the_batch_source(platform_data, capsys):
    """When retention has removed records of the window, replaying what Kafka still holds would
    leave holes: the replay says so and rebuilds the dataset from ops.orders instead."""
    data = platform_data
    lake = data["lake"]
    kafka = KafkaResource.from_env(data["settings"])
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    df = data["tables"]["orders"].head(5).assign(o_orderkey=range(92_000_001, 92_000_006))
    producer = kafka.producer()
    for rec in build_stream("tpch.orders", df, None):
        producer.send("tpch.orders", key=rec.key, value=rec.value, headers=rec.headers)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 90  # applied by the live sensor first, as in production
    while time.monotonic() < deadline:
        stored = lake.read_partitions("orders", None, ["o_orderkey"]).column("o_orderkey")
        if pd.Series(stored).between(92_000_001, 92_000_005).sum() == 5:
            break
        time.sleep(1)
    else:
        pytest.fail("the orders were not applied by the live sensor within 90 s")
    # what retention.ms would do: the log of every partition now starts at its end
    kafka.delete_records("tpch.orders", kafka.end_offsets("tpch.orders"))
    day = data["first"]
    orders = data["tables"]["orders"]
    expected = sorted(orders[orders.o_orderdate.astype(str) == day].o_orderkey)
    lake.rewrite("orders", day, lambda current: None)  # the dataset lost a day

    assert main(["replay", "orders", "--since", since.isoformat(), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "retention removed records" in out and "launched" not in out
    assert main(["replay", "orders", "--since", since.isoformat(), "--wait",
                 "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    assert "rebuilding from the batch source ops.orders instead" in out
    assert "of orders__replay_job launched" in out and "succeeded" in out
    assert sorted(lake.read("orders", day).o_orderkey) == expected
    stored = lake.read_partitions("orders", None, ["o_orderkey"]).column("o_orderkey").to_pylist()
    assert sorted(stored) == sorted(data["tables"]["orders"].o_orderkey), \
        "the batch source is the truth: keys only Kafka had are gone with it"
