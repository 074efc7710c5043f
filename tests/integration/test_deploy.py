"""The production topology, run here: ``deploy/dagster.yaml`` and ``deploy/workspace.yaml`` with
the Dagster webserver, the daemon and Conflux's code location as three separate processes.

Only the run launcher differs from production: this machine has no Docker engine and no
Kubernetes cluster, so runs start through Dagster's default launcher — which, with a gRPC code
location, asks the code server to start them; and the storage does not require TLS, which the
local Postgres does not offer. Everything else is the file operators deploy:
Postgres storage from ``DAGSTER_PG_*``, the queued coordinator, run monitoring and retries.
The webserver and daemon get no platform variable at all (no Kafka, no lake, no platform
database): only their storage and the code server's address, as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import psycopg
import pytest
import yaml

from conflux.cli import dagster_api
from conflux.stack.procs import port_open, spawn, stop_pid, wait_for
from conflux.stack.sockets import descendants

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DATABASE = "dagster_deploy"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    """A bare process environment: none of the test stack's variables leak in."""
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}


def fresh_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")


@pytest.fixture
def topology(stack, tmp_path):
    """Code server, webserver and daemon, each its own process, on the deploy files."""
    settings = stack.settings
    fresh_database(settings.postgres_url)
    url = urlsplit(settings.postgres_url)
    storage_env = {"DAGSTER_PG_HOST": url.hostname, "DAGSTER_PG_PORT": str(url.port),
                   "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                   "DAGSTER_PG_DB": DATABASE}
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    # the changes: no container engine here (module docstring), and the throwaway local Postgres
    # has no TLS, so the storage cannot require it
    instance["run_launcher"] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
    assert instance["storage"]["postgres"]["postgres_db"].pop("params") == {"sslmode": "require"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    code_port, web_port = free_port(), free_port()
    dagster_env = {**base_env(), **storage_env, "DAGSTER_HOME": str(home)}
    lake = tmp_path / "lake"
    code_env = {**dagster_env, "CONFLUX_POSTGRES_URL": settings.postgres_url,
                "CONFLUX_LAKE_PATH": str(lake),
                # a closed loopback port: this instance's Kafka sensors must not consume (or
                # requeue into) the shared test stack's topics; their ticks skip, runs still run
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    serving_env = {**dagster_env, "CONFLUX_CODE_SERVER_HOST": "127.0.0.1",
                   "CONFLUX_CODE_SERVER_PORT": str(code_port)}
    logs = tmp_path / "logs"
    # once per Dagster version, before the serving processes start (deploy/dagster.yaml)
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=dagster_env, cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    procs = {}
    try:
        procs["code"] = spawn([str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                               "-p", str(code_port), "-m", "pipelines.definitions", "-a", "defs",
                               "--location-name", "conflux"],
                              log=logs / "code.log", env=code_env, cwd=REPO)
        wait_for(lambda: port_open("127.0.0.1", code_port), service="code server", log=logs / "code.log",
                 timeout=120, proc=procs["code"])
        workspace = str(DEPLOY / "workspace.yaml")
        procs["web"] = spawn([str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1",
                              "-p", str(web_port)], log=logs / "web.log", env=serving_env, cwd=tmp_path)
        procs["daemon"] = spawn([str(BIN / "dagster-daemon"), "run", "-w", workspace],
                                log=logs / "daemon.log", env=serving_env, cwd=tmp_path)
        base = f"http://127.0.0.1:{web_port}"
        wait_for(lambda: _answers(f"{base}/server_info"), service="webserver",
                 log=logs / "web.log", timeout=120, proc=procs["web"])
        yield {"url": base, "lake": lake, "pids": {k: p.pid for k, p in procs.items()},
               "code_port": code_port, "home": home, "env": dagster_env}
    finally:
        for proc in reversed(list(procs.values())):
            stop_pid(proc.pid, timeout=20)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def test_webserver_daemon_and_code_location_run_apart_on_the_production_files(stack, topology):
    from pipelines.demo.producer import load_ops, tpch_tables
    from conflux.io.lake import LakeResource

    tables = tpch_tables(0.0005, seed=5)  # the same data the other modules load
    load_ops(stack.settings.postgres_url, tables)

    # the daemon dequeues (queued coordinator) and the code server starts the run
    run_id = dagster_api.launch_run(topology["url"], "region__job", {})
    dagster_api.wait(lambda: ((s := dagster_api.run_status(topology["url"], run_id)) in
                              ("SUCCESS", "FAILURE", "CANCELED"), s), timeout=180)
    assert dagster_api.run_status(topology["url"], run_id) == "SUCCESS"

    stored = LakeResource(path=str(topology["lake"])).read("region")
    expected = tables["region"]
    assert sorted(stored["r_regionkey"]) == sorted(expected["r_regionkey"])
    pd.testing.assert_series_equal(
        stored.sort_values("r_regionkey")["r_name"].reset_index(drop=True),
        expected.sort_values("r_regionkey")["r_name"].reset_index(drop=True), check_names=False)

    # the run came from the gRPC code location, and neither serving process loaded the code
    with pytest.MonkeyPatch.context() as mp:
        for name, value in topology["env"].items():
            mp.setenv(name, value)
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            run = instance.get_run_by_id(run_id)
            origin = run.remote_job_origin.repository_origin.code_location_origin
            assert type(origin).__name__ == "GrpcServerCodeLocationOrigin"
            assert (origin.host, origin.port) == ("127.0.0.1", topology["code_port"])
            assert run.status == dg.DagsterRunStatus.SUCCESS
    for name in ("web", "daemon"):
        children = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    for pid in descendants(topology["pids"][name])
                    if Path(f"/proc/{pid}/cmdline").exists()]
        assert not [c for c in children if "pipelines.definitions" in c or "api grpc" in c], children
