"""`conflux stack up` twice, `down` twice, and `kill -9` of the broker then `up`: each behaves."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(stack):
    """A second, separate stack (own home and ports) driven through the real CLI."""
    env = dict(os.environ)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "CONFLUX_POSTGRES_URL", "DAGSTER_PG_URL", "DAGSTER_HOME",
                 "CONFLUX_LAKE_PATH", "CONFLUX_DAGSTER_URL"):
        env.pop(name, None)
    env.update({"CONFLUX_HOME": str(REPO / ".conflux" / "test-lifecycle"),
                "CONFLUX_KAFKA_PORT": "29092", "CONFLUX_KAFKA_CONTROLLER_PORT": "29093",
                "CONFLUX_PG_PORT": "25432", "CONFLUX_DAGSTER_PORT": "23000"})
    yield env
    conflux(env, "stack", "down", "postgres", "kafka")


def conflux(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "conflux"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def pid_of(env, service) -> int:
    return int((Path(env["CONFLUX_HOME"]) / "run" / f"{service}.pid").read_text().split()[0])


def test_up_twice_down_twice_and_recovery_after_kill_9(cli_env):
    services = ("postgres", "kafka")
    conflux(cli_env, "stack", "reset", "--yes")
    first = conflux(cli_env, "stack", "up", *services)
    assert first.returncode == 0, first.stderr
    assert "kafka: started" in first.stdout and "postgres: started" in first.stdout

    second = conflux(cli_env, "stack", "up", *services)
    assert second.returncode == 0, second.stderr
    assert "kafka: already running" in second.stdout and "postgres: already running" in second.stdout

    # crash the broker and the database hard: stale pid files, unclean storage
    broker, db = pid_of(cli_env, "kafka"), pid_of(cli_env, "postgres")
    os.kill(broker, signal.SIGKILL)
    os.kill(db, signal.SIGKILL)
    status = conflux(cli_env, "stack", "status")
    assert status.returncode == 1 and "kafka" in status.stdout

    third = conflux(cli_env, "stack", "up", *services)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "kafka: started" in third.stdout and "postgres: started" in third.stdout
    assert pid_of(cli_env, "kafka") != broker

    down1 = conflux(cli_env, "stack", "down", *services)
    assert "kafka: stopped" in down1.stdout and "postgres: stopped" in down1.stdout
    down2 = conflux(cli_env, "stack", "down", *services)
    assert "kafka: not running" in down2.stdout and "postgres: not running" in down2.stdout

    # a format that died half-way leaves a data dir without meta.properties: wiped, formatted again
    data = Path(cli_env["CONFLUX_HOME"]) / "kafka" / "data"
    (data / "meta.properties").unlink()
    fourth = conflux(cli_env, "stack", "up", "kafka")
    assert fourth.returncode == 0 and "kafka: started" in fourth.stdout, fourth.stderr
    assert (data / "meta.properties").exists()


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(stack, monkeypatch, tmp_path):
    """Random base64 ids start with '-' one time in 64; the format tool must not read it as a flag."""
    import shutil
    import uuid

    import conflux.stack.kafka as kafka_mod
    from conflux.core.settings import Settings

    home = REPO / ".conflux" / "test-format"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings.from_env({**os.environ, "CONFLUX_HOME": str(home),
                                  "CONFLUX_KAFKA_PORT": "29192",
                                  "CONFLUX_KAFKA_CONTROLLER_PORT": "29193"})
    monkeypatch.setattr(kafka_mod.uuid, "uuid4", lambda: uuid.UUID(bytes=bytes([0xFB]) + bytes(15)))
    broker = kafka_mod.Kafka(settings)
    broker.prepare()
    assert (broker.data_dir / "meta.properties").read_text().count("cluster.id=-") == 1
    shutil.rmtree(home, ignore_errors=True)
