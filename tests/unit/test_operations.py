"""The operations jobs' typed config (defaults, descriptions, clear errors for bad dates) and
how they compile: every event dataset a materializable asset backfilled in one run, its replay
and dead-letter replay jobs, the reconcile job, the ledger rebuild job; the check read-only."""

import datetime as dt

import dagster as dg
import pytest
from pydantic import ValidationError

from conflux.batch.fallback import CHECK_NAME, build_fallback
from conflux.cli import main
from conflux.cli.jobs import validated
from conflux.core.errors import ConfigError
from conflux.core.opconfig import (DeadLetterReplayConfig, LedgerRebuildConfig, ReconcileConfig,
                                   ReplayConfig)
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from pipelines.catalog import CUSTOMER_LEDGER, ORDERS


def message(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_defaults_fill_every_field():
    assert ReconcileConfig().model_dump() == {"start": "", "end": "", "dry_run": False,
                                             "remove_extra": True}
    assert ReplayConfig().model_dump() == {"since": "1h", "dry_run": False}
    assert DeadLetterReplayConfig().model_dump() == {
        "reasons": [], "since": "", "source_topic": "", "again": False, "limit": 0,
        "dry_run": False}
    assert LedgerRebuildConfig().replace is False


@pytest.mark.parametrize("values, expected", [
    ({"start": "yesterday"}, "start 'yesterday' is not a date (YYYY-MM-DD)"),
    ({"end": "1995-13-01"}, "end '1995-13-01' is not a date (YYYY-MM-DD)"),
    ({"start": "1995-02-01", "end": "1995-01-31"}, "start 1995-02-01 is after end 1995-01-31"),
])
def test_bad_days_are_refused_naming_the_field(values, expected):
    with pytest.raises(ValidationError) as exc:
        ReconcileConfig(**values)
    assert expected in message(exc)


def test_days_parse_and_describe_the_range():
    config = ReconcileConfig(start=" 1995-01-01", end="1995-01-31")
    assert (config.first, config.last) == (dt.date(1995, 1, 1), dt.date(1995, 1, 31))
    assert config.describe() == "1995-01-01 .. 1995-01-31"
    assert ReconcileConfig().describe() == "beginning .. end"


@pytest.mark.parametrize("since, expected", [
    ("soon", "since 'soon' is neither an ISO date / date-time"),
    ("2999-01-01", "is in the future"),
])
def test_bad_times_are_refused(since, expected):
    with pytest.raises(ValidationError) as exc:
        ReplayConfig(since=since)
    assert expected in message(exc)
    with pytest.raises(ValidationError) as exc:
        DeadLetterReplayConfig(since=since)
    assert expected in message(exc)


def test_times_take_iso_or_durations_and_reasons_are_upper_cased():
    assert ReplayConfig(since="2026-11-28T09:00:00").when == dt.datetime(
        2026, 11, 28, 9, tzinfo=dt.timezone.utc)
    when = ReplayConfig(since="2h").when
    ago = dt.datetime.now(dt.timezone.utc) - when
    assert dt.timedelta(hours=2) - dt.timedelta(seconds=1) < ago < dt.timedelta(hours=2, minutes=1)
    assert DeadLetterReplayConfig(reasons=[" unknown_schema", ""]).reasons == ["UNKNOWN_SCHEMA"]
    with pytest.raises(ValidationError):
        DeadLetterReplayConfig(limit=-1)


def test_the_cli_checks_with_the_same_class_in_one_line():
    assert validated(ReplayConfig, "--since", since="2h")["since"] == "2h"
    with pytest.raises(ConfigError, match=r"^\[USAGE_INVALID\] --since: since .soon. is neither"):
        validated(ReplayConfig, "--since", since="soon")


def test_the_launchpad_shows_defaults_and_descriptions():
    from pipelines.definitions import defs

    job = defs.resolve_job_def("orders__reconcile_job")
    fields = job.graph.node_named("orders__reconcile").definition.config_schema.config_type.fields
    assert fields["start"].default_value == "" and "YYYY-MM-DD" in fields["start"].description
    assert fields["dry_run"].default_value is False and fields["dry_run"].description
    replay = defs.resolve_job_def("orders__replay_job").graph.node_named("orders__replay")
    assert replay.definition.config_schema.config_type.fields["since"].default_value == "1h"


def test_every_operation_is_a_job_of_the_platform():
    from pipelines.definitions import defs

    names = set(defs.get_repository_def().job_names)
    for ds in ("orders", "lineitem", "customer_ledger"):
        assert {f"{ds}__replay_job", f"{ds}__dlq_replay_job"} <= names
    assert {"orders__reconcile_job", "lineitem__reconcile_job",
            "customer_balance__ledger_rebuild_job"} <= names
    assert "customer_ledger__reconcile_job" not in names  # it has no batch source


def test_event_datasets_are_materializable_and_backfill_in_one_run():
    from pipelines.definitions import defs

    orders = defs.get_assets_def("orders")
    assert orders.is_executable and orders.is_materializable
    assert orders.backfill_policy == dg.BackfillPolicy.single_run()
    assert "reconcile with ops.orders and repair" in orders.descriptions_by_key[
        dg.AssetKey("orders")]
    ledger = defs.get_assets_def("customer_ledger")
    assert ledger.is_materializable and ledger.partitions_def is None
    assert "replay from ledger.customer" in ledger.descriptions_by_key[
        dg.AssetKey("customer_ledger")]


def test_materializing_one_day_or_a_range_works_on_those_days_only():
    """The UI's Materialize on one day launches a run of that partition, without the range tags
    of a backfill's run: the repair covers that day, not the whole dataset."""
    from conflux.dagster.operations import _days

    first, day = dt.date(1995, 1, 1), dt.date(1995, 1, 3)
    assert _days(dg.build_asset_context(partition_key="1995-01-03")) == (day, day)
    assert _days(dg.build_asset_context(partition_key_range=dg.PartitionKeyRange(
        "1995-01-01", "1995-01-03"))) == (first, day)
    assert _days(dg.build_asset_context()) == (None, None)  # unpartitioned: everything


def test_the_check_says_it_is_read_only():
    check, job, schedule = build_fallback(ORDERS)
    [spec] = check.check_specs
    assert spec.name == CHECK_NAME and "Read-only" in spec.description
    assert (job.name, schedule.name, schedule.job_name) == (
        "orders__reconcile_job", "orders__fallback", "orders__reconcile_job")


def test_a_bad_date_fails_the_run_at_start_with_the_message(tmp_path):
    _, job, _ = build_fallback(ORDERS)
    defs = dg.Definitions(jobs=[job], resources={
        "postgres": PostgresResource(url="postgresql://127.0.0.1:1/none"),
        "lake": LakeResource(path=str(tmp_path))})
    result = defs.resolve_job_def(job.name).execute_in_process(
        run_config={"ops": {"orders__reconcile": {"config": {"start": "yesterday"}}}},
        raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    text = error.message + str(error.cause and error.cause.message)
    assert "start 'yesterday' is not a date (YYYY-MM-DD)" in text


@pytest.mark.parametrize("argv, expected", [
    (["replay", "orders", "--since", "soon"], "is neither an ISO date"),
    (["backfill", "orders", "--start", "1995-13-01", "--end", "1995-12-31"], "is not a date"),
    (["backfill", "orders", "--start", "1995-02-01", "--end", "1995-01-01"], "is after"),
    (["backfill", "customer_ledger", "--start", "1995-01-01", "--end", "1995-01-02"],
     "not partitioned by day"),
])
def test_the_cli_refuses_bad_input_before_launching(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_a_webserver_that_is_down_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("CONFLUX_DAGSTER_PORT", "1")
    assert main(["ledger", "rebuild", "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not answer" in err[0] and "conflux stack up" in err[0]
    assert main(["dlq", "replay", "tpch.orders", "--reason", "INVALID_JSON"]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_unpartitioned_replays_keep_every_row_and_write_no_dead_letters():
    from conflux.event.decode import Decoded
    from conflux.event.ingest import _within

    decoded = Decoded(rows=[{"event_id": "a"}], records=["r"], contracts=["c"], dead=["d"])
    kept = _within(CUSTOMER_LEDGER, decoded, dt.date.min, dt.date.max)
    assert (kept.rows, kept.dead) == ([{"event_id": "a"}], [])
