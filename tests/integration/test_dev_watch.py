"""`conflux dev` exits 1 naming the service when one it runs on stops (`conflux stack down` from
another shell), and a `conflux stack up` that fails half-way stops what it had started.

Both drive the real CLI on a stack of their own (state folder and ports below).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conflux.stack.procs import pid_alive, port_open

REPO = Path(__file__).resolve().parents[2]
CONFLUX = str(Path(sys.executable).parent / "conflux")
STACK = {"CONFLUX_HOME": str(REPO / ".conflux" / "test-h2"),
         "CONFLUX_KAFKA_PORT": "17092", "CONFLUX_KAFKA_CONTROLLER_PORT": "17093",
         "CONFLUX_PG_PORT": "17432", "CONFLUX_DAGSTER_PORT": "17300",
         "CONFLUX_NOTIFY_WEBHOOK_URL": "http://127.0.0.1:17098/hook",
         "CONFLUX_AUTOMATION": "off", "CONFLUX_LAKE_MAINTENANCE": "off"}
SERVICES = ("postgres", "kafka", "dagster-webserver", "dagster-daemon", "conflux-metrics",
            "conflux-schema-registry")


def conflux(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CONFLUX, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def env():
    """This module's stack, down before and after each test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONFLUX_", "KAFKA_", "DAGSTER_", "OPENLINEAGE"))}
    env.update(STACK)
    conflux(env, "stack", "down")
    yield env
    conflux(env, "stack", "down")


@pytest.mark.timeout(420)
def test_dev_exits_naming_the_service_stopped_from_another_shell(env):
    log_path = Path(STACK["CONFLUX_HOME"]) / "dev-watch.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        dev = subprocess.Popen([CONFLUX, "dev", "--no-producer"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        start = time.monotonic()
        while "Conflux is up" not in log_path.read_text():
            assert dev.poll() is None, f"conflux dev ended:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() - start < 300, log_path.read_text()[-4000:]
            time.sleep(1)
        down = conflux(env, "stack", "down")  # "another shell"
        assert down.returncode == 0, down.stdout + down.stderr
        code = dev.wait(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
    text = log_path.read_text()
    last = text.strip().splitlines()[-1]
    assert code == 1, text[-4000:]
    assert "Traceback" not in text
    assert last.startswith("conflux: [STACK_SERVICE_FAILED] ") and "no longer running" in last
    assert any(name in last.split(" no longer running")[0] for name in SERVICES), last


@pytest.mark.timeout(300)
def test_a_start_that_fails_half_way_stops_what_it_started(env, tmp_path):
    """The webserver refuses a workspace file that does not exist, after Postgres and Kafka
    started: both are stopped again, and the error is one line saying why."""
    missing = tmp_path / "no-such-workspace.yaml"
    res = conflux({**env, "CONFLUX_WORKSPACE": str(missing)}, "stack", "up")
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert err[0].startswith("conflux: [STACK_SERVICE_FAILED] dagster-webserver exited"), err
    assert str(missing) in err[0] and "does not exist" in err[0], err
    pids = {name: int(pid) for name, pid in re.findall(r"(postgres|kafka): started \(pid (\d+)\)",
                                                       res.stdout)}
    assert set(pids) == {"postgres", "kafka"}, res.stdout
    assert "start failed: stopping what it had started (postgres, kafka)" in res.stdout
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still runs"
    for port in (STACK["CONFLUX_PG_PORT"], STACK["CONFLUX_KAFKA_PORT"]):
        assert not port_open("127.0.0.1", int(port))
    status = conflux(env, "stack", "status")
    assert status.returncode == 1 and "running" not in status.stdout, status.stdout
