"""Configuration the tooling writes, checked without starting anything."""

from pathlib import Path

import yaml

from conflux.core.settings import Settings
from conflux.stack.dagster import render_dagster_yaml
from conflux.stack.kafka import heap_flags, render_log4j2, render_server_properties
from conflux.stack.postgres import server_args


def settings(tmp_path, **env):
    return Settings.from_env({"CONFLUX_HOME": str(tmp_path), **env})


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_kafka_listens_on_loopback_only_with_kraft_and_no_auto_create(tmp_path):
    p = props(render_server_properties(settings(tmp_path, CONFLUX_KAFKA_PORT="19092"), tmp_path / "d"))
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:9093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert p["process.roles"] == "broker,controller"
    assert p["auto.create.topics.enable"] == "false"
    assert p["log.dirs"] == str(tmp_path / "d")
    assert p["offsets.topic.replication.factor"] == "1"


def test_kafka_heap_is_sized_from_the_setting():
    assert heap_flags("1g") == ["-Xmx1024m", "-Xms512m"]
    assert heap_flags("256m") == ["-Xmx256m", "-Xms128m"]


def test_kafka_logs_go_to_the_named_file(tmp_path):
    cfg = yaml.safe_load(render_log4j2(tmp_path / "kafka.log"))
    assert cfg["Configuration"]["Appenders"]["File"]["fileName"] == str(tmp_path / "kafka.log")


def test_dagster_instance_uses_postgres_from_env_and_never_writes_the_url(tmp_path):
    s = settings(tmp_path, CONFLUX_POSTGRES_URL="postgresql://u:hunter2@db:5432/x")
    text = render_dagster_yaml(s)
    cfg = yaml.safe_load(text)
    assert cfg["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert "hunter2" not in text
    assert cfg["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert cfg["telemetry"]["enabled"] is False


def test_postgres_binds_loopback_without_unix_socket(tmp_path):
    args = server_args(Path("/data"), "127.0.0.1", 15432)
    assert args[:2] == ["-D", "/data"]
    assert "listen_addresses=127.0.0.1" in args
    assert "port=15432" in args
    assert "unix_socket_directories=" in args


def test_a_service_selection_of_none_is_everything_and_an_empty_one_nothing():
    from conflux.stack import SERVICE_NAMES, select

    assert select(None) == list(SERVICE_NAMES)
    assert select([]) == []  # down(started) after an up that started nothing stops nothing
    assert select(["dagster", "postgres"]) == ["postgres", "dagster-webserver", "dagster-daemon"]
