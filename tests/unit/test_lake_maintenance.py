"""Lake maintenance jobs (conflux/dagster/maintenance.py), compiled into a tiny catalog's
definitions and run in-process against a real lake of real Delta tables on tmp_path."""

import datetime as dt
import glob
import json
import os
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import BaseModel

from tests.delta import read_delta
from conflux.core.declarations import BatchDataset, EventDataset
from conflux.core.errors import ConfigError
from conflux.core.settings import LakeMaintenance, Settings
from conflux.dagster.compile import build_definitions
from conflux.dagster.maintenance import (MAINTENANCE_TAG, days_to_compact, maintenance_definitions,
                                         optimize_figures)
from conflux.io.lake import LakeResource

DAY1, DAY2 = "2024-01-01", "2024-01-02"


class Reading(BaseModel):
    k: int
    v: str
    day: dt.date


class Dim(BaseModel):
    k: int
    v: str


EVENTS = EventDataset(name="readings", contract=Reading, key=("k",), event_time="day",
                      topics=("t.readings",), start=DAY1)
DIM = BatchDataset(name="dim", contract=Dim, key=("k",), source_table="ops.dim")
NEVER_WRITTEN = BatchDataset(name="never_written", contract=Dim, key=("k",),
                             source_table="ops.never_written")
CATALOG = [EVENTS, DIM, NEVER_WRITTEN]


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch):
    monkeypatch.delenv("CONFLUX_LAKE_MAINTENANCE", raising=False)
    monkeypatch.delenv("CONFLUX_LAKE_VACUUM_RETENTION_HOURS", raising=False)


@pytest.fixture
def lake(tmp_path) -> LakeResource:
    """Real Delta tables written in small appends: ``readings`` 6 files over 2 days (3 each),
    ``dim`` 3 files, ``never_written`` no table."""
    root = tmp_path / "lake"
    for i in range(6):
        day = DAY1 if i % 2 == 0 else DAY2
        write_deltalake(str(root / "readings"),
                        pa.table({"k": [i], "v": [f"r{i}"], "__day": [day]}),
                        mode="append", partition_by=["__day"])
    for i in range(3):
        write_deltalake(str(root / "dim"), pa.table({"k": [i], "v": [f"d{i}"]}), mode="append")
    return LakeResource(path=str(root))


def table_path(lake: LakeResource, name: str) -> str:
    return os.path.join(lake.path, name)


def files(lake: LakeResource, name: str, day: str | None = None) -> list[str]:
    uris = DeltaTable(table_path(lake, name)).file_uris()
    return [u for u in uris if day is None or f"__day={day}/" in u]


def rows(lake: LakeResource, name: str, version: int | None = None) -> list[dict]:
    table = read_delta(table_path(lake, name), version=version)
    return sorted(table.to_pylist(), key=lambda r: r["k"])


def run(defs: dg.Definitions, job: str, config: dict | None = None):
    """One run of a job, with its own instance, in a thread of its own (a run is a process of
    its own in the stack; the lake keeps open tables per thread). Returns (result, instance)."""
    instance = dg.DagsterInstance.ephemeral()
    run_config = {"ops": {next(iter(defs.get_job_def(job).graph.node_dict)): {"config": config}}
                  } if config else None
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(lambda: defs.get_job_def(job).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False)).result()
    return result, instance


def per_dataset(result) -> dict[str, dict]:
    """The op's output metadata table, row by dataset."""
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    table = output.event_specific_data.metadata["tables"]
    return {r.data["dataset"]: r.data for r in table.records}


def messages(result, instance) -> str:
    return "\n".join(e.user_message for e in instance.all_logs(result.run_id))


def failure(result) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.event_specific_data.error.message


def backdate_removals(lake: LakeResource, name: str, hours: float) -> int:
    """Age the table's tombstones by ``hours`` (as if its optimize ran that long ago): vacuum
    judges a removed file by the deletion time its log records. Returns the files aged."""
    aged = 0
    for path in glob.glob(os.path.join(table_path(lake, name), "_delta_log", "*.json")):
        with open(path) as f:
            actions = [json.loads(line) for line in f if line.strip()]
        for action in actions:
            if "remove" in action:
                action["remove"]["deletionTimestamp"] -= int(hours * 3600 * 1000)
                aged += 1
        with open(path, "w") as f:
            f.write("".join(json.dumps(a) + "\n" for a in actions))
    return aged


# --- optimize ----------------------------------------------------------------------------------

def test_optimize_compacts_every_table_keeps_its_rows_and_reports_per_dataset(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    before = {name: rows(lake, name) for name in ("readings", "dim")}
    assert (len(files(lake, "readings")), len(files(lake, "dim"))) == (6, 3)

    result, instance = run(defs, "lake_optimize")

    assert result.success
    assert (len(files(lake, "readings")), len(files(lake, "dim"))) == (2, 1)  # a file per day
    assert {name: rows(lake, name) for name in before} == before
    report = per_dataset(result)
    assert report["readings"]["status"] == "done"
    assert (report["readings"]["files_removed"], report["readings"]["files_added"]) == (6, 2)
    assert report["readings"]["bytes_removed"] > 0 and report["readings"]["bytes_added"] > 0
    assert report["readings"]["version"] == DeltaTable(table_path(lake, "readings")).version()
    assert (report["dim"]["files_removed"], report["dim"]["files_added"]) == (3, 1)
    assert report["never_written"]["status"] == "skipped"
    log = messages(result, instance)
    assert "optimize readings: files_added 2, files_removed 6" in log
    assert "optimize never_written: skipped, no Delta table yet" in log


def test_optimize_can_be_restricted_to_datasets_and_days(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    result, _ = run(defs, "lake_optimize", {"datasets": ["readings"], "partitions": [DAY1]})
    assert result.success
    assert (len(files(lake, "readings", DAY1)), len(files(lake, "readings", DAY2))) == (1, 3)
    assert len(files(lake, "dim")) == 3  # not selected
    assert set(per_dataset(result)) == {"readings"}

    result, _ = run(defs, "lake_optimize", {"datasets": ["readings", "nope"]})
    assert not result.success
    assert "unknown dataset(s) 'nope'" in failure(result)
    assert len(files(lake, "readings", DAY2)) == 3  # nothing done


def test_days_to_compact():
    assert days_to_compact([], 0) is None
    assert days_to_compact([DAY2, DAY1, DAY2], 0) == [DAY1, DAY2]
    assert days_to_compact([], 3, today=dt.date(2024, 3, 1)) == ["2024-02-28", "2024-02-29",
                                                                  "2024-03-01"]
    for partitions, last_days, message in [(["1/1/2024"], 0, "is not a day"),
                                           ([DAY1], 2, "not both"), ([], -1, "must be 0")]:
        with pytest.raises(dg.Failure, match=message):
            days_to_compact(partitions, last_days)


def test_optimize_figures_sum_delta_rs_metrics():
    metrics = {"numFilesAdded": 1, "numFilesRemoved": 3, "partitionsOptimized": 1,
               "filesAdded": '{"totalFiles":1,"totalSize":500}',
               "filesRemoved": {"totalFiles": 3, "totalSize": 900}}
    assert optimize_figures([metrics, metrics, {}]) == {
        "files_added": 2, "files_removed": 6, "bytes_added": 1000, "bytes_removed": 1800,
        "partitions_optimized": 2}


def test_a_failing_table_does_not_stop_the_others_and_fails_the_run_naming_it(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    os.remove(files(lake, "readings")[0].removeprefix("file://"))  # a data file lost

    result, instance = run(defs, "lake_optimize")

    assert not result.success
    assert len(files(lake, "dim")) == 1  # compacted after readings failed
    report = per_dataset(result)
    assert report["readings"]["status"] == "failed" and report["readings"]["error"]
    assert report["dim"]["status"] == "done"
    message = failure(result)
    assert "lake_optimize failed for 1 of 3 dataset(s): readings (" in message
    assert "dim" not in message
    assert "optimize readings: FAILED" in messages(result, instance)


# --- vacuum ------------------------------------------------------------------------------------

def test_vacuum_keeps_time_travel_within_the_retention_and_deletes_older_files(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    first = rows(lake, "readings", version=0)
    latest = rows(lake, "readings")
    assert run(defs, "lake_optimize")[0].success
    assert backdate_removals(lake, "readings", hours=2) == 6  # compacted two hours ago
    on_disk = lambda: len(glob.glob(os.path.join(table_path(lake, "readings"), "*", "*.parquet")))
    assert on_disk() == 8

    result, _ = run(defs, "lake_vacuum")  # default: 168 h
    assert result.success
    assert per_dataset(result)["readings"]["files_removed"] == 0
    assert rows(lake, "readings", version=0) == first  # time travel to before the optimize
    through_lake = lake.read_table("readings", version=0).select(["k", "v"]).to_pylist()
    assert through_lake == [{"k": r["k"], "v": r["v"]} for r in first]  # through the lake too
    assert on_disk() == 8

    result, instance = run(defs, "lake_vacuum", {"retention_hours": 1})
    assert result.success
    report = per_dataset(result)
    assert report["readings"]["files_removed"] == 6
    assert report["never_written"]["status"] == "skipped"
    assert "vacuum retention 1 h" in messages(result, instance)
    assert on_disk() == 2
    assert rows(lake, "readings") == latest  # the current version is whole
    with pytest.raises(Exception):  # its files are gone: time travel ends at the retention
        rows(lake, "readings", version=0)


def test_vacuum_refuses_a_retention_under_one_hour(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    before_optimize = rows(lake, "readings", version=5)
    assert run(defs, "lake_optimize")[0].success
    backdate_removals(lake, "readings", hours=2)

    result, _ = run(defs, "lake_vacuum", {"retention_hours": 0})

    assert not result.success
    assert "retention_hours=0 is below the minimum of 1 hour" in failure(result)
    assert rows(lake, "readings", version=5) == before_optimize  # nothing deleted


def test_vacuum_retention_defaults_to_the_setting(lake, monkeypatch):
    monkeypatch.setenv("CONFLUX_LAKE_VACUUM_RETENTION_HOURS", "1")
    defs = build_definitions(CATALOG, resources={"lake": lake})
    assert run(defs, "lake_optimize")[0].success
    backdate_removals(lake, "readings", hours=2)

    result, _ = run(defs, "lake_vacuum")

    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert output.event_specific_data.metadata["retention_hours"].value == 1
    assert per_dataset(result)["readings"]["files_removed"] == 6


@pytest.mark.parametrize("env, message", [
    ({"CONFLUX_LAKE_VACUUM_RETENTION_HOURS": "0"}, "below the minimum of 1 hour"),
    ({"CONFLUX_LAKE_VACUUM_RETENTION_HOURS": "a week"}, "is not a number of hours"),
    ({"CONFLUX_LAKE_MAINTENANCE": "maybe"}, "must be 'on' or 'off'"),
])
def test_bad_settings_are_refused_with_the_variable_named(env, message, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as error:
        maintenance_definitions(CATALOG)
    assert next(iter(env)) in str(error.value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_settings():
    assert LakeMaintenance.from_env({}) == LakeMaintenance(enabled=True,
                                                           vacuum_retention_hours=168)
    env = {"CONFLUX_LAKE_MAINTENANCE": "OFF", "CONFLUX_LAKE_VACUUM_RETENTION_HOURS": "24"}
    assert Settings.from_env(env).lake_maintenance == LakeMaintenance(False, 24)


# --- checkpoint --------------------------------------------------------------------------------

def test_checkpoint_job_writes_a_delta_log_checkpoint_of_each_table(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    assert not glob.glob(os.path.join(lake.path, "*", "_delta_log", "*.checkpoint.parquet"))

    result, _ = run(defs, "lake_checkpoint")

    assert result.success
    report = per_dataset(result)
    for name, version in [("readings", 5), ("dim", 2)]:
        log = os.path.join(table_path(lake, name), "_delta_log")
        assert os.path.exists(os.path.join(log, f"{version:020d}.checkpoint.parquet")), name
        assert json.load(open(os.path.join(log, "_last_checkpoint")))["version"] == version
        assert report[name]["version"] == version
    assert report["never_written"]["status"] == "skipped"
    assert len(rows(lake, "readings")) == 6


# --- definitions -------------------------------------------------------------------------------

def test_jobs_and_schedules_are_in_the_definitions_running_by_default(lake):
    defs = build_definitions(CATALOG, resources={"lake": lake})
    expected = {"lake_optimize_schedule": ("lake_optimize", "17 * * * *"),
                "lake_checkpoint_schedule": ("lake_checkpoint", "47 * * * *"),
                "lake_vacuum_schedule": ("lake_vacuum", "30 3 * * *")}
    for name, (job, cron) in expected.items():
        schedule = defs.resolve_schedule_def(name)
        assert (schedule.job_name, schedule.cron_schedule) == (job, cron)
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert schedule.execution_timezone == "UTC"
        job_def = defs.get_job_def(job)
        assert job_def.tags[MAINTENANCE_TAG] == job.removeprefix("lake_")
        assert not job_def.asset_layer.executable_asset_keys  # an ordinary job: no asset
    assert not any(s.name.startswith("lake_") for s in defs.sensors)


def test_maintenance_off_makes_the_schedules_start_stopped(lake, monkeypatch):
    monkeypatch.setenv("CONFLUX_LAKE_MAINTENANCE", "off")
    defs = build_definitions(CATALOG, resources={"lake": lake})
    names = ["lake_optimize_schedule", "lake_checkpoint_schedule", "lake_vacuum_schedule"]
    assert [defs.resolve_schedule_def(n).default_status for n in names] == \
        [dg.DefaultScheduleStatus.STOPPED] * 3
    assert defs.get_job_def("lake_optimize") is not None  # still runnable by hand


def test_run_config_is_typed_with_defaults_for_the_launchpad():
    jobs, _ = maintenance_definitions(CATALOG, settings=LakeMaintenance(vacuum_retention_hours=72))
    by_name = {j.name: j for j in jobs}
    fields = by_name["lake_vacuum"].run_config_schema.config_type.fields["ops"].config_type \
        .fields["vacuum_tables"].config_type.fields["config"].config_type.fields
    assert fields["retention_hours"].default_value == 72
    assert "time travel" in fields["retention_hours"].description
    assert fields["datasets"].default_value == []
    fields = by_name["lake_optimize"].run_config_schema.config_type.fields["ops"].config_type \
        .fields["optimize_tables"].config_type.fields["config"].config_type.fields
    assert {"datasets", "partitions", "last_days"} <= set(fields)
    assert all(f.description for f in fields.values())
