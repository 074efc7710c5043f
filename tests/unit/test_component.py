"""Datasets declared in YAML (the ``ConfluxDatasets`` Dagster component) load through Dagster's
own component loading into the same declarations and definitions as the Python API, and fail
with the same errors."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

import conflux
from conflux.core.declarations import (BatchDataset, BatchFallback, DeadLetterPolicy,
                                       EventDataset, validate_catalog)
from conflux.core.errors import DeclarationError
from conflux.dagster.compile import asset_specs, daily_partitions
from conflux.dagster.component import SCAFFOLD_TEMPLATE, ConfluxDatasets, datasets_from_yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "yaml_project"

CONTRACTS = '''
import datetime as dt
from pydantic import BaseModel


class Reading(BaseModel):
    reading_id: str
    device_id: str
    day: dt.date
    temperature_c: float


class DailyTemperature(BaseModel):
    day: dt.date
    device_id: str
    readings: int
    mean_c: float
'''

JOINS = '''
import pandas as pd

NOT_A_FUNCTION = 42


def daily_temperature(inputs):
    readings = inputs["readings"]
    grouped = readings.groupby(["day", "device_id"], as_index=False)["temperature_c"]
    return grouped.agg(readings="count", mean_c="mean")
'''


def readings(pkg: str, **over) -> dict:
    return {"name": "readings", "mode": "event", "contract": f"{pkg}.contracts:Reading",
            "key": ["reading_id"], "event_time": "day", "topics": ["sensors.readings"], **over}


def daily(pkg: str, **over) -> dict:
    return {"name": "daily_temperature", "mode": "batch",
            "contract": f"{pkg}.contracts:DailyTemperature", "key": ["day", "device_id"],
            "event_time": "day", "upstream": ["readings"],
            "compute": f"{pkg}.joins:daily_temperature", "schedule": "15 * * * *", **over}


class Project:
    """A tiny dg project under tmp_path: a package with contracts and a join, and one
    ``defs/datasets/defs.yaml``; importable while the test runs."""

    def __init__(self, root: Path, package: str):
        self.root, self.package = root, package

    @property
    def defs_yaml(self) -> Path:
        return self.root / self.package / "defs" / "datasets" / "defs.yaml"

    def declare(self, datasets: list[dict], type_name: str = "conflux.ConfluxDatasets") -> None:
        self.defs_yaml.write_text(yaml.safe_dump(
            {"type": type_name, "attributes": {"datasets": datasets}}, sort_keys=False))

    def load_defs(self) -> dg.Definitions:
        """Through Dagster's real loading path (what the project's definitions.py runs)."""
        return dg.load_from_defs_folder(path_within_project=self.root)

    def component(self) -> ConfluxDatasets:
        tree = dg.ComponentTree.for_project(path_within_project=self.root)
        return tree.load_component("datasets", expected_type=ConfluxDatasets)

    def contract(self, name: str):
        return getattr(importlib.import_module(f"{self.package}.contracts"), name)

    def join(self):
        return importlib.import_module(f"{self.package}.joins").daily_temperature


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    package = f"yaml_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "proj"
    pkg = root / package
    (pkg / "defs" / "datasets").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{package}"
        version = "0.1.0"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "{package}"
        """))
    (pkg / "__init__.py").write_text("")
    (pkg / "defs" / "__init__.py").write_text("")
    (pkg / "contracts.py").write_text(CONTRACTS)
    (pkg / "joins.py").write_text(JOINS)
    monkeypatch.syspath_prepend(str(root))
    yield Project(root, package)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def declaration_error(exc: BaseException) -> DeclarationError:
    """The DeclarationError a failed load was caused by (Dagster wraps it)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, DeclarationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    raise AssertionError(f"no DeclarationError behind {exc!r}")


def python_error(datasets) -> str:
    with pytest.raises(DeclarationError) as info:
        validate_catalog(datasets)
    return str(info.value)


# --- the component loads what the Python API declares -----------------------------------------

def test_yaml_builds_the_same_declarations_as_python(project):
    project.declare([readings(project.package, owner="team:weather", group="weather",
                              description="Readings.", freshness="PT2M"),
                     daily(project.package, automation=True)])
    Reading, Daily = project.contract("Reading"), project.contract("DailyTemperature")
    python = (
        EventDataset(name="readings", contract=Reading, key=("reading_id",), event_time="day",
                     topics=("sensors.readings",), owner="team:weather", group="weather",
                     description="Readings.", freshness=dt.timedelta(minutes=2)),
        BatchDataset(name="daily_temperature", contract=Daily, key=("day", "device_id"),
                     event_time="day", upstream=("readings",), compute=project.join(),
                     schedule="15 * * * *", automation=True),
    )
    assert project.component().declarations() == python
    assert datasets_from_yaml(project.defs_yaml) == python


def test_definitions_hold_the_assets_kinds_partitions_and_wiring(project):
    project.declare([readings(project.package), daily(project.package)])
    defs = project.load_defs()
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"readings", "daily_temperature"}
    graph = defs.resolve_asset_graph()
    event = graph.get(dg.AssetKey("readings"))
    batch = graph.get(dg.AssetKey("daily_temperature"))
    assert {"event", "kafka", "parquet"} <= event.kinds
    assert {"batch", "pandas", "parquet"} <= batch.kinds
    assert event.partitions_def == daily_partitions() == batch.partitions_def
    assert {d for d in batch.parent_keys} == {dg.AssetKey("readings")}
    assert event.tags["conflux/mode"] == "event" and batch.tags["conflux/mode"] == "batch"
    assert defs.resolve_sensor_def("readings__kafka")
    assert defs.resolve_job_def("readings__ingest_job")
    assert defs.resolve_schedule_def("daily_temperature__schedule").cron_schedule == "15 0 * * *"
    assert set(defs.resources) >= {"kafka", "lake", "postgres", "registry"}


def test_specs_match_the_python_api(project):
    project.declare([readings(project.package), daily(project.package)])
    from_yaml = asset_specs(project.component().declarations())
    python = asset_specs([
        EventDataset(name="readings", contract=project.contract("Reading"),
                     key=("reading_id",), event_time="day", topics=("sensors.readings",)),
        BatchDataset(name="daily_temperature", contract=project.contract("DailyTemperature"),
                     key=("day", "device_id"), event_time="day", upstream=("readings",),
                     compute=project.join(), schedule="15 * * * *"),
    ])
    for name, spec in python.items():
        got = from_yaml[name]
        assert (got.key, got.kinds, got.tags, got.group_name, got.owners, got.code_version) == \
               (spec.key, spec.kinds, spec.tags, spec.group_name, spec.owners, spec.code_version)
        assert got.partitions_def == spec.partitions_def
        assert got.metadata.keys() == spec.metadata.keys()


def test_unpartitioned_table_load_fallback_and_dead_letter_policy(project):
    project.declare([
        readings(project.package, event_time=None, append_only=True, freshness=90,
                 fallback={"source_table": "ops.readings", "cron": "0 3 * * *"},
                 dlq={"window": "PT15M", "warn_rate": None, "error_count": 1}),
        {"name": "devices", "mode": "batch", "contract": f"{project.package}.contracts:Reading",
         "key": "reading_id", "source_table": "ops.devices", "schedule": "0 2 * * *",
         "backfill": "per_partition"},
    ])
    event, table = project.component().declarations()
    assert event.event_time is None and event.append_only
    assert event.freshness == dt.timedelta(seconds=90)
    assert event.fallback == BatchFallback(source_table="ops.readings", cron="0 3 * * *")
    assert event.dlq == DeadLetterPolicy(window=dt.timedelta(minutes=15), warn_rate=None,
                                         error_count=1)
    assert table.key == ("reading_id",) and table.source_table == "ops.devices"
    defs = project.load_defs()
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("readings")).partitions_def is None
    assert "postgres" in graph.get(dg.AssetKey("devices")).kinds
    assert defs.resolve_job_def("devices__job")


def test_start_is_a_date_quoted_or_not(project):
    project.defs_yaml.write_text(textwrap.dedent(f"""\
        type: conflux.ConfluxDatasets
        attributes:
          datasets:
            - {{name: readings, mode: event, contract: "{project.package}.contracts:Reading",
               key: [reading_id], event_time: day, topics: [a.b], start: 2024-03-01}}
            - {{name: others, mode: event, contract: "{project.package}.contracts:Reading",
               key: [reading_id], event_time: day, topics: [c.d], start: "2024-04-01"}}
        """))
    first, second = project.component().declarations()
    assert (first.start, second.start) == (dt.date(2024, 3, 1), dt.date(2024, 4, 1))


def test_both_type_names_load(project):
    project.declare([readings(project.package)],
                    type_name="conflux.dagster.component.ConfluxDatasets")
    assert {k.to_user_string() for k in project.load_defs().resolve_all_asset_keys()} == \
           {"readings"}
    assert conflux.ConfluxDatasets is ConfluxDatasets


# --- errors: the Python API's, or one naming the dataset and the field --------------------------

def test_an_invalid_declaration_fails_with_the_python_apis_error(project):
    project.declare([readings(project.package, key=["nope"])])
    expected = python_error([EventDataset(
        name="readings", contract=project.contract("Reading"), key=("nope",), event_time="day",
        topics=("sensors.readings",))])
    with pytest.raises(Exception) as info:
        project.load_defs()
    assert str(declaration_error(info.value)) == expected
    assert "key field 'nope' is not in contract Reading" in expected


def test_catalog_wide_errors_are_the_python_apis(project):
    project.declare([daily(project.package, upstream=["readings", "missing"]),
                     readings(project.package)])
    expected = python_error([
        BatchDataset(name="daily_temperature", contract=project.contract("DailyTemperature"),
                     key=("day", "device_id"), event_time="day",
                     upstream=("readings", "missing"), compute=project.join()),
        EventDataset(name="readings", contract=project.contract("Reading"),
                     key=("reading_id",), event_time="day", topics=("sensors.readings",))])
    with pytest.raises(Exception) as info:
        project.load_defs()
    assert str(declaration_error(info.value)) == expected
    assert "upstream 'missing' is not a declared dataset" in expected


@pytest.mark.parametrize("over,message", [
    ({"contract": "{pkg}.nowhere:Reading"},
     "dataset 'readings': contract '{pkg}.nowhere:Reading': module '{pkg}.nowhere' cannot be "
     "imported"),
    ({"contract": "{pkg}.contracts:Missing"},
     "dataset 'readings': contract '{pkg}.contracts:Missing': module '{pkg}.contracts' has no "
     "attribute 'Missing'"),
    ({"contract": "not a path"},
     "dataset 'readings': contract 'not a path' must be a Python path like "
     "'package.module:attribute'"),
    ({"freshness": "soon"},
     "dataset 'readings': freshness 'soon' must be seconds or an ISO 8601 duration"),
    ({"upstream": ["x"]},
     "dataset 'readings': upstream applies to batch datasets only (this one has mode: event)"),
])
def test_bad_event_fields_name_the_dataset_and_the_field(project, over, message):
    pkg = project.package
    project.declare([readings(pkg, **{k: v.replace("{pkg}", pkg) if isinstance(v, str) else v
                                      for k, v in over.items()})])
    with pytest.raises(Exception) as info:
        project.load_defs()
    assert message.replace("{pkg}", pkg) in str(declaration_error(info.value))


@pytest.mark.parametrize("compute,message", [
    ("{pkg}.joins:nope", "dataset 'daily_temperature': compute '{pkg}.joins:nope': module "
                         "'{pkg}.joins' has no attribute 'nope'"),
    ("{pkg}.joins:NOT_A_FUNCTION", "dataset 'daily_temperature': compute "
                                   "'{pkg}.joins:NOT_A_FUNCTION' is a int, not a function"),
    ("{pkg}.joins.daily_temperature", None),  # module.attribute works too
])
def test_bad_compute_paths_name_the_dataset_and_the_field(project, compute, message):
    pkg = project.package
    project.declare([readings(pkg), daily(pkg, compute=compute.replace("{pkg}", pkg))])
    if message is None:
        assert project.component().declarations()[1].compute is project.join()
        return
    with pytest.raises(Exception) as info:
        project.load_defs()
    assert message.replace("{pkg}", pkg) in str(declaration_error(info.value))


def test_unknown_attributes_are_refused_by_the_schema(project):
    project.declare([readings(project.package, topic="typo")])
    with pytest.raises(Exception) as info:
        project.load_defs()
    messages = []
    seen = info.value
    while seen is not None:
        messages.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    assert "topic" in "\n".join(messages) and "Extra inputs are not permitted" in \
           "\n".join(messages)


def test_the_scaffolded_defs_yaml_loads_and_a_second_catalog_is_refused(project):
    project.defs_yaml.write_text(SCAFFOLD_TEMPLATE.format(type_name="conflux.ConfluxDatasets"))
    assert not project.load_defs().resolve_all_asset_keys()
    project.declare([readings(project.package)])
    extra = project.defs_yaml.parent.parent / "more"
    extra.mkdir()
    (extra / "defs.yaml").write_text(SCAFFOLD_TEMPLATE.format(type_name="conflux.ConfluxDatasets"))
    with pytest.raises(Exception) as info:
        project.load_defs()
    assert "the project declares datasets in 2 ConfluxDatasets components" in \
           str(declaration_error(info.value))


# --- registration and the example -------------------------------------------------------------

def test_registered_as_a_dagster_component_library():
    entry = [ep for ep in importlib.metadata.entry_points(group="dagster_dg_cli.registry_modules")
             if ep.name == "conflux"]
    assert entry, "reinstall conflux (pip install -e .): its entry points are not registered"
    assert entry[0].load().ConfluxDatasets is ConfluxDatasets


def test_the_example_declares_readings_and_daily_temperature(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        datasets = datasets_from_yaml(EXAMPLE / "weather" / "defs" / "datasets" / "defs.yaml")
        assert [(d.name, d.mode) for d in datasets] == [("readings", "event"),
                                                        ("daily_temperature", "batch")]
    finally:
        for name in [m for m in sys.modules if m == "weather" or m.startswith("weather.")]:
            del sys.modules[name]


DG = Path(sys.executable).parent / "dg"


def test_dg_lists_and_checks_the_example_project(tmp_path):
    root = tmp_path / "yaml_project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONPATH")}
    env.update(PATH=f"{DG.parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(root),
               DAGSTER_HOME=str(tmp_path / "dagster_home"), NO_COLOR="1")
    (tmp_path / "dagster_home").mkdir()

    def dg_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(DG), *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=240)

    listed = dg_cli("list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    defs = json.loads(listed.stdout[listed.stdout.index("{"):])
    assets = {a["asset_key"]: a for a in defs["assets"]}
    assert set(assets) == {"readings", "daily_temperature"}
    assert {"event", "kafka"} <= set(assets["readings"]["kinds"])
    assert assets["daily_temperature"]["dependency_keys"] == ["readings"]
    assert {s["name"] for s in defs["sensors"]} >= {"readings__kafka"}

    components = dg_cli("list", "components", "--json")
    assert components.returncode == 0, components.stderr[-3000:]
    assert "conflux.dagster.component.ConfluxDatasets" in {
        c["key"] for c in json.loads(components.stdout[components.stdout.index("{"):])["items"]}

    checked = dg_cli("check", "defs")
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]

    defs_yaml = root / "weather" / "defs" / "datasets" / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text().replace("key: [reading_id]", "key: [nope]"))
    broken = dg_cli("check", "defs")
    assert broken.returncode != 0
    assert "[DECLARATION_INVALID] dataset 'readings': key field 'nope'" in \
           broken.stdout + broken.stderr
