"""`conflux lake migrate`: a lake written by the pre-Delta lake code (tests/fixtures/legacy_lake,
see its README) becomes Delta tables holding exactly the rows the old code read — base files
merged with their pending delta files (newest by __ts/__offset; the earliest write for an
append-only dataset), no superseded versions, no duplicates — for the new LakeResource and for
an outside Delta reader alike; checkpoints survive; the old files are kept in _legacy/; a
second run, a dry run change nothing; an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from tests.delta import read_delta
from conflux.core.errors import LakeError
from conflux.io.lake import LakeResource
from conflux.io.lake_legacy import LegacyLake, is_legacy_dataset
from conflux.io.lake_migrate import migrate_lake

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_lake"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
DATASETS = sorted(EXPECTED)
CONFLUX = str(Path(sys.executable).with_name("conflux"))


@pytest.fixture
def lake_dir(tmp_path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(FIXTURE, lake, ignore=shutil.ignore_patterns("expected.json", "README.md"))
    return lake


def run_cli(lake: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONFLUX_LAKE_PATH": str(lake)}
    return subprocess.run([CONFLUX, "lake", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def canon(rows) -> list[str]:
    """Rows as sorted JSON lines: equal lists mean the same rows, duplicates included."""
    def plain(v):
        return v.isoformat() if isinstance(v, (dt.datetime, dt.date)) else v
    return sorted(json.dumps({k: plain(v) for k, v in r.items()}, sort_keys=True) for r in rows)


def expected_rows(dataset: str, partition: str) -> list[str]:
    return canon(EXPECTED[dataset]["partitions"][partition]["rows"])


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_fixture_holds_what_the_migration_must_get_right():
    """Guards the fixture itself: pending delta files the merge must resolve, and expected
    rows in which superseded, stale and duplicated versions already lost."""
    assert list((FIXTURE / "events").glob("*.delta/*.parquet"))
    assert list((FIXTURE / "ledger_log").glob("*.delta/*.parquet"))
    events = {r["k"]: r["v"] for p in EXPECTED["events"]["partitions"].values() for r in p["rows"]}
    assert events == {1: "a1-new", 2: "a2", 3: "b3-new", 4: "b4", 5: "c5-v3", 6: "c6", 7: "b7",
                      8: "c8", 9: "a9-late"}
    log = {r["k"]: r["v"] for p in EXPECTED["ledger_log"]["partitions"].values() for r in p["rows"]}
    assert log == {1: "open", 2: "debit", 3: "credit", 4: "fee", 5: "x"}
    assert EXPECTED["balances"]["partitions"]["_all"]["checkpoint"]["folded"] == [
        {"event_id": "e1"}, {"event_id": "e2"}, {"event_id": "e3"}]


def test_the_legacy_reader_reads_what_the_old_code_read(lake_dir):
    old = LegacyLake.open(str(lake_dir))
    assert old.datasets() == DATASETS
    for name in DATASETS:
        assert old.partitions(name) == sorted(EXPECTED[name]["partitions"])
        for partition, want in EXPECTED[name]["partitions"].items():
            assert canon(old.read_partition(name, partition).to_pylist()) == canon(want["rows"])
            checkpoint = old.checkpoint(name, partition)
            assert (checkpoint is None) == (want["checkpoint"] is None)


def test_the_new_lake_refuses_an_old_format_dataset_with_the_command_to_run(lake_dir):
    lake = LakeResource(path=str(lake_dir))
    for name in DATASETS:
        assert is_legacy_dataset(str(lake_dir), name)
    assert not is_legacy_dataset(str(lake_dir), "nothing_here")
    with pytest.raises(LakeError) as exc:
        lake.read_table("events", "1995-03-01")
    assert exc.value.args[0] == (f"lake {lake_dir}: dataset events is in the pre-Delta format; "
                                 "run `conflux lake migrate` to convert it")


def test_migrate_keeps_exactly_the_old_rows_for_the_lake_and_outside_readers(lake_dir):
    done = run_cli(lake_dir, "migrate")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name in DATASETS:
        assert f"{name}: " in done.stdout
    assert "events/1995-03-02: 3 rows" in done.stdout  # progress per partition
    assert "delete _legacy/ once you have checked" in done.stdout

    lake = LakeResource(path=str(lake_dir))
    for name in DATASETS:
        spec = EXPECTED[name]
        assert not is_legacy_dataset(str(lake_dir), name)
        assert (lake_dir / "_legacy" / name).is_dir()  # the backup is kept
        assert (lake_dir / name / "_delta_log").is_dir()
        outside = read_delta(str(lake_dir / name))
        if spec["partitioned"]:
            assert lake.partitions(name) == sorted(spec["partitions"])
            assert sorted(set(outside["__day"].to_pylist())) == sorted(spec["partitions"])
        else:
            assert lake.partitions(name) == ["_all"] and "__day" not in outside.schema.names
        for partition, want in spec["partitions"].items():
            target = partition if spec["partitioned"] else None
            table = lake.read_table(name, target)
            assert table.schema.names == spec["columns"], name
            assert canon(table.to_pylist()) == canon(want["rows"]), f"{name}/{partition}"
            assert lake.row_count(name, target) == len(want["rows"])
            mine = (outside.filter(pc.equal(outside["__day"], partition)).drop_columns(["__day"])
                    if spec["partitioned"] else outside)
            assert canon(mine.to_pylist()) == canon(want["rows"]), f"outside {name}/{partition}"
            _, ident, tables = lake.read_checkpointed(name, target)
            if want["checkpoint"] is None:
                assert ident is None
            else:
                assert ident is not None
                assert {t: canon(v.to_pylist()) for t, v in tables.items()} == {
                    t: canon(v) for t, v in want["checkpoint"].items()}, f"{name}/{partition}"
    events = lake.read_table("events", "1995-03-01").schema
    assert events.field("__partition").type == pa.int32()
    assert events.field("__offset").type == pa.int64() and events.field("__ts").type == pa.int64()


def test_a_second_run_and_a_dry_run_change_nothing(lake_dir):
    before = tree(lake_dir)
    dry = run_cli(lake_dir, "migrate", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] and [d["dataset"] for d in report["datasets"]] == DATASETS
    assert {d["dataset"]: d["rows"] for d in report["datasets"]} == {
        n: sum(len(p["rows"]) for p in EXPECTED[n]["partitions"].values()) for n in DATASETS}
    assert tree(lake_dir) == before  # nothing moved, nothing written

    assert run_cli(lake_dir, "migrate").returncode == 0
    lake = LakeResource(path=str(lake_dir))
    versions = {n: lake.version(n) for n in DATASETS}
    after = tree(lake_dir)
    again = run_cli(lake_dir, "migrate", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["datasets"] == []
    assert run_cli(lake_dir, "migrate", "--dataset", "events").returncode == 0
    assert {n: lake.version(n) for n in DATASETS} == versions
    assert tree(lake_dir) == after
    text = run_cli(lake_dir, "migrate")
    assert text.returncode == 0 and "nothing to migrate" in text.stdout


def test_an_interrupted_migration_resumes(lake_dir, monkeypatch):
    lake = LakeResource(path=str(lake_dir))
    real_write = LakeResource.write
    calls = []

    def failing_write(self, dataset, data, partition=None, **kw):
        calls.append(partition)
        if len(calls) == 2:
            raise OSError("disk unplugged")
        return real_write(self, dataset, data, partition, **kw)

    monkeypatch.setattr(LakeResource, "write", failing_write)
    with pytest.raises(LakeError) as exc:
        migrate_lake(lake, datasets=["events"])
    message = exc.value.args[0]
    assert "dataset events" in message and "1995-03-02" in message and "_legacy/events" in message
    assert (lake_dir / "_legacy" / "events").is_dir() and not (lake_dir / "events" / "_delta_log"
                                                               / "00000000000000000001.json").exists()
    monkeypatch.setattr(LakeResource, "write", real_write)

    dry = migrate_lake(lake, dry_run=True)
    assert {d.dataset: d.resumed for d in dry.datasets}["events"] is True
    lines = []
    report = migrate_lake(lake, progress=lines.append)
    assert [d.dataset for d in report.datasets] == DATASETS
    assert {d.dataset: d.resumed for d in report.datasets} == {n: n == "events" for n in DATASETS}
    assert any(line.startswith("events: resuming from") for line in lines)
    for partition, want in EXPECTED["events"]["partitions"].items():
        assert canon(lake.read_table("events", partition).to_pylist()) == canon(want["rows"])
    assert migrate_lake(lake).datasets == []


def test_a_failed_check_exits_1_naming_the_dataset_and_keeps_the_old_files(lake_dir, monkeypatch,
                                                                            capsys):
    from conflux.cli.main import main

    monkeypatch.setenv("CONFLUX_LAKE_PATH", str(lake_dir))
    monkeypatch.setattr(LakeResource, "row_count", lambda self, dataset, partition=None: 0)
    assert main(["lake", "migrate", "--dataset", "customer"]) == 1
    err = capsys.readouterr().err
    assert "dataset customer" in err and "holds 0 rows, the old format 3" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (lake_dir / "_legacy" / "customer" / "_all.parquet").is_file()
    assert not (lake_dir / "_legacy" / "customer" / ".migrated").exists()
    assert is_legacy_dataset(str(lake_dir), "events")  # not asked for: untouched


def test_usage_errors_and_unknown_datasets(lake_dir):
    assert run_cli(lake_dir).returncode == 2
    assert run_cli(lake_dir, "migrate", "--bogus").returncode == 2
    unknown = run_cli(lake_dir, "migrate", "--dataset", "nosuch")
    assert unknown.returncode == 1
    assert "dataset nosuch" in unknown.stderr and "Traceback" not in unknown.stderr
    assert is_legacy_dataset(str(lake_dir), "events")


def test_migrate_an_s3_lake(s3_server, s3_lake_url):
    import pyarrow.fs as pafs

    old = LegacyLake.open(s3_lake_url)
    pafs.copy_files(str(FIXTURE), old.root, destination_filesystem=old.fs)
    old.fs.delete_file(f"{old.root}/expected.json")
    assert is_legacy_dataset(s3_lake_url, "events")
    lake = LakeResource(path=s3_lake_url)
    report = migrate_lake(lake)
    assert [d.dataset for d in report.datasets] == DATASETS
    assert not old.datasets() and not is_legacy_dataset(s3_lake_url, "events")
    assert old.exists(f"{old.root}/_legacy/events/_merge.json")
    for name in DATASETS:
        spec = EXPECTED[name]
        for partition, want in spec["partitions"].items():
            target = partition if spec["partitioned"] else None
            assert canon(lake.read_table(name, target).to_pylist()) == canon(want["rows"])
        _, ident, _ = lake.read_checkpointed("balances")
        assert ident is not None
    assert migrate_lake(lake).datasets == []


def test_an_interrupted_move_on_s3_is_repaired(s3_server, s3_lake_url):
    """S3 has no rename: a move is a copy, a `.copied` marker, then a delete. A copy cut short
    is started over from the intact dataset folder; a delete cut short is finished."""
    import pyarrow.fs as pafs

    old = LegacyLake.open(s3_lake_url)
    pafs.copy_files(str(FIXTURE), old.root, destination_filesystem=old.fs)
    # events: the copy was cut short (no marker); customer: copied, the delete was cut short
    old.fs.copy_file(f"{old.root}/events/_merge.json", f"{old.root}/_legacy/events/_merge.json")
    pafs.copy_files(f"{old.root}/customer", f"{old.root}/_legacy/customer",
                    source_filesystem=old.fs, destination_filesystem=old.fs)
    old.write_text(f"{old.root}/_legacy/customer/.copied", "")
    lake = LakeResource(path=s3_lake_url)
    report = migrate_lake(lake, datasets=["events", "customer"])
    assert {d.dataset: d.resumed for d in report.datasets} == {"events": False, "customer": True}
    assert not is_legacy_dataset(s3_lake_url, "customer")
    assert old.exists(f"{old.root}/_legacy/events/1995-03-01.delta")
    for name in ("events", "customer"):
        spec = EXPECTED[name]
        for partition, want in spec["partitions"].items():
            target = partition if spec["partitioned"] else None
            assert canon(lake.read_table(name, target).to_pylist()) == canon(want["rows"])
