"""The one Definitions object loads, and its asset keys are the dataset names."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipelines.catalog import DATASETS
from pipelines.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def test_asset_keys_are_the_dataset_names():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {ds.name for ds in DATASETS}


def test_every_event_dataset_has_a_sensor_and_an_ingest_job():
    names = {s.name for s in defs.sensors}
    for ds in DATASETS:
        if ds.mode == "event":
            assert f"{ds.name}__kafka" in names
            assert defs.resolve_job_def(f"{ds.name}__ingest_job") is not None


def test_assets_carry_the_contract_columns():
    spec = defs.resolve_assets_def("orders").specs_by_key[dg.AssetKey("orders")]
    cols = [c.name for c in spec.metadata["dagster/column_schema"].columns]
    assert cols[:2] == ["o_orderkey", "o_custkey"] and "o_orderdate" in cols


def test_dagster_definitions_validate_passes():
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    res = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                          "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Validation successful for code location conflux" in res.stdout + res.stderr
