"""A project of a user's own, outside this repository, end to end on the real stack.

`conflux init` generates a project whose domain is not TPC-H; Conflux is installed into its own
venv the documented way (`pip install -e .` of a project that depends on `conflux @ file://...`),
and from that folder the stack, the contracts, the sensor, a backfill, lag, dlq, trace and
replay all follow its catalog, with the state folder inside the project.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conflux.cli import dagster_api as api

REPO = Path(__file__).resolve().parents[2]
PORTS = {"CONFLUX_KAFKA_PORT": "24092", "CONFLUX_KAFKA_CONTROLLER_PORT": "24093",
         "CONFLUX_PG_PORT": "24432", "CONFLUX_DAGSTER_PORT": "24000"}
DAY = "2026-03-14"
TOPIC = "cold_chain.readings"

PUBLISH = f"""
import datetime as dt
from conflux import KafkaResource, Settings, event_headers, publish_all, records_for
from cold_chain.producer import sample_readings

settings = Settings.from_env()
readings = sample_readings(40, dt.date.fromisoformat("{DAY}"), seed=3)
producer = KafkaResource.from_env(settings).producer()
records = records_for("{TOPIC}", readings, ["reading_id"])
publish_all(producer, records + records, progress=False)  # every reading twice
row = readings.iloc[0].to_dict()
import json
producer.send("{TOPIC}", key=b"traced", value=json.dumps({{**row, "reading_id": "traced", "temperature_c": 35.0}}).encode(),
              headers=event_headers("cold-chain-trace-1"))
producer.send("{TOPIC}", key=b"bad", value=b'{{"reading_id": "bad"}}')  # missing fields
producer.flush()
producer.close()
counts = readings.groupby("device_id")["reading_id"].count()
counts[row["device_id"]] += 1  # the traced reading
print(json.dumps({{d: int(n) for d, n in counts.items()}}))
"""


def run(cmd, *, cwd, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n"
                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def project():
    """The generated project, with its own venv holding Conflux installed from this checkout."""
    # under the repository's state folder: as root, the stack's Postgres runs as the postgres
    # user, who cannot enter pytest's private temporary folders
    base = REPO / ".conflux" / "user-project"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    folder = base / "cold-chain"
    run([str(Path(sys.executable).parent / "conflux"), "init", str(folder),
         "--conflux", f"conflux @ {REPO.as_uri()}"], cwd=folder.parent, env=dict(os.environ))
    run([sys.executable, "-m", "venv", str(folder / ".venv")], cwd=folder, env=dict(os.environ))
    run([str(folder / ".venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         "-e", ".[test]"], cwd=folder, env=dict(os.environ), timeout=900)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONFLUX_", "KAFKA_", "DAGSTER_"))}
    env.update(PORTS)
    env["PATH"] = f"{folder / '.venv' / 'bin'}:{env['PATH']}"
    yield folder, env
    run([str(folder / ".venv" / "bin" / "conflux"), "stack", "down"], cwd=folder, env=env,
        check=False)


@pytest.fixture(scope="module")
def dev(project):
    """`conflux dev` in the project's folder: its stack, UI, daemon and its own producer."""
    folder, env = project
    log = (folder / "dev.log").open("w")
    proc = subprocess.Popen([str(folder / ".venv" / "bin" / "conflux"), "dev", "--rate", "10"],
                            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while "Conflux is up" not in (folder / "dev.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"conflux dev did not come up:\n{(folder / 'dev.log').read_text()[-4000:]}")
        time.sleep(2)
    yield proc, folder / "dev.log"
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=180)
    log.close()


def conflux(project, *args, check=True, timeout=300):
    folder, env = project
    return run([str(folder / ".venv" / "bin" / "conflux"), *args], cwd=folder, env=env,
               check=check, timeout=timeout)


def test_the_project_venv_has_conflux_installed_and_no_demo_modules(project):
    folder, env = project
    python = str(folder / ".venv" / "bin" / "python")
    where = run([python, "-c", "import conflux; print(conflux.__file__)"], cwd=folder, env=env)
    assert str(folder / ".venv") in where.stdout  # installed, not this checkout's source
    for generic in ("pipelines", "resources", "sensors", "contracts"):
        res = run([python, "-c", f"import {generic}"], cwd="/", env=env, check=False)
        assert res.returncode != 0, f"{generic} is installed into site-packages"
    res = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, env=env)
    assert " passed" in res.stdout


def test_dev_the_sensor_and_the_cli_follow_the_projects_catalog(project, dev):
    folder, env = project
    proc, log = dev
    up = log.read_text()
    assert f"created topic {TOPIC}" in up
    assert "registry: 2 contracts registered" in up
    assert (folder / ".conflux" / "postgres").is_dir()  # state inside the project
    assert "orders" not in up and "tpch" not in up
    exports = conflux(project, "stack", "env").stdout
    assert f"DAGSTER_HOME={folder / '.conflux' / 'dagster_home'}" in exports
    assert conflux(project, "contracts", "check").returncode == 0

    # the Dagster UI shows the project's datasets (and only them)
    url = f"http://127.0.0.1:{PORTS['CONFLUX_DAGSTER_PORT']}/graphql"
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
    request = urllib.request.Request(url, query, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        nodes = json.load(response)["data"]["assetNodes"]
    # the two datasets and the project's own Dagster asset (hot_devices)
    assert {n["assetKey"]["path"][0] for n in nodes} == {"readings", "daily_temperature",
                                                         "hot_devices"}

    stats = json.loads(run([str(folder / ".venv" / "bin" / "python"), "-c", PUBLISH],
                           cwd=folder, env={**env, **_client_env(project)}).stdout)
    deadline = time.monotonic() + 180
    while len(_read(project, "readings", DAY)) < 41:
        assert time.monotonic() < deadline, "the readings sensor did not apply the readings"
        time.sleep(3)
    lag = json.loads(conflux(project, "lag", "readings", "--json").stdout)
    assert lag[0]["dataset"] == "readings" and lag[0]["partitions"], lag
    # the project's own dev producer publishes today's readings meanwhile
    today = dt.date.today().isoformat()
    assert len(_read(project, "readings", today)) > 0

    # a backfill of the join, launched through the UI's API, from the project's folder
    conflux(project, "backfill", "daily_temperature", "--start", DAY, "--end", DAY, "--wait",
            "--timeout", "300", timeout=400)
    rows = _read(project, "daily_temperature", DAY)
    # each reading counted once although published twice; the invalid one is not among them
    assert {r["device_id"]: r["readings"] for r in rows} == stats
    readings = _read(project, "readings", DAY)
    assert len(readings) == 41  # 40 twice + 1: duplicates upserted away; the bad one routed

    # the project's own Dagster asset reads the join through Dagster's input loading, in a run
    # launched through the UI's API and executed by the stack's daemon
    url_root = url.removesuffix("/graphql")
    backfill = api.launch_backfill(url_root, "hot_devices", DAY, DAY)
    api.wait(lambda: (lambda s: (s.done, s.status))(api.backfill_state(url_root, backfill)),
             timeout=300)
    final = api.backfill_state(url_root, backfill)
    assert final.succeeded, final
    hot = _load(project, "hot_devices", DAY)
    assert hot and hot == sorted(r["device_id"] for r in rows if r["max_c"] > 30.0)
    # and Definitions.load_asset_value returns a dataset's rows, read from the stack's lake
    assert _load(project, "daily_temperature", DAY) == sorted(r["device_id"] for r in rows)

    dlq = json.loads(conflux(project, "dlq", "list", TOPIC, "--json").stdout)
    assert dlq["total"] == 1, dlq
    traced = conflux(project, "trace", "cold-chain-trace-1", "--json")
    assert "readings" in traced.stdout and DAY in traced.stdout
    plan = conflux(project, "replay", "readings", "--since", "2000-01-01", "--dry-run")
    assert TOPIC in plan.stdout


def _client_env(project) -> dict:
    out = {}
    for line in conflux(project, "stack", "env").stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = value.strip("'")
    return out


def _read(project, dataset: str, day: str) -> list[dict]:
    folder, env = project
    code = ("import json, sys\nfrom conflux import LakeResource, Settings\n"
            "lake = LakeResource.for_stack(Settings.from_env())\n"
            f"df = lake.read({dataset!r}, {day!r})\n"
            "print(df.to_json(orient='records', date_format='iso') if df is not None else '[]')")
    res = run([str(folder / ".venv" / "bin" / "python"), "-c", code], cwd=folder,
              env={**env, **_client_env(project)})
    return json.loads(res.stdout)


def test_dev_stops_what_it_started(project, dev):
    proc, log = dev
    proc.terminate()
    assert proc.wait(timeout=180) == 0
    assert "stopping what conflux dev started" in log.read_text()
    status = conflux(project, "stack", "status", check=False)
    assert status.returncode == 1 and "running" not in status.stdout, status.stdout


def _load(project, asset: str, day: str) -> list[str]:
    """``defs.load_asset_value`` in the project's venv: the sorted device ids of the rows."""
    folder, env = project
    code = ("import json\nfrom cold_chain.definitions import defs\n"
            f"df = defs.load_asset_value({asset!r}, partition_key={day!r})\n"
            "print(json.dumps(sorted(df.device_id)))")
    res = run([str(folder / ".venv" / "bin" / "python"), "-c", code], cwd=folder,
              env={**env, **_client_env(project)})
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_folder_without_a_project_is_told_how_to_get_one(tmp_path):
    res = subprocess.run([str(Path(sys.executable).parent / "conflux"), "lag"], cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "CONFLUX_PROJECT"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no catalog" in res.stderr and "conflux init" in res.stderr
    assert "Traceback" not in res.stderr
    assert dt.date.fromisoformat(DAY)  # the day the test publishes is a valid partition key
