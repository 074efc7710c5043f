"""A local Kafka cluster's configuration (``CONFLUX_KAFKA_BROKERS``), checked without starting
anything: ports, folders, quorum, replication, service names."""

import json

import pytest

from conflux.core.errors import ConfigError, StackError
from conflux.core.settings import Settings
from conflux.stack import Stack, select
from conflux.stack.kafka import Kafka, render_server_properties, replication


def settings(tmp_path, **env):
    return Settings.from_env({"CONFLUX_HOME": str(tmp_path), **env})


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_one_broker_by_default_configured_as_before(tmp_path):
    s = settings(tmp_path)
    assert s.kafka_brokers == 1 and s.kafka_heap == "1g"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    p = props(render_server_properties(s, tmp_path / "d"))
    assert p["node.id"] == "1"
    assert p["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert "controller.quorum.voters" not in p
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "1"
    assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "1"


def test_three_brokers_have_ports_folders_and_one_bootstrap_list(tmp_path):
    s = settings(tmp_path, CONFLUX_KAFKA_BROKERS="3", CONFLUX_KAFKA_PORT="31092",
                 CONFLUX_KAFKA_CONTROLLER_PORT="31093")
    assert s.kafka_heap == "512m"  # three JVMs on a small box
    assert [s.kafka_node_ports(i) for i in s.kafka_nodes] == [(31092, 31093), (31094, 31095),
                                                             (31096, 31097)]
    assert s.kafka_bootstrap == "127.0.0.1:31092,127.0.0.1:31094,127.0.0.1:31096"
    assert s.client_env()["KAFKA_BOOTSTRAP_SERVERS"] == s.kafka_bootstrap
    nodes = [Kafka(s, i) for i in s.kafka_nodes]
    assert [n.name for n in nodes] == ["kafka", "kafka-2", "kafka-3"]
    assert [n.data_dir for n in nodes] == [tmp_path / "kafka" / "data",  # a single broker's
                                           tmp_path / "kafka" / "node-2" / "data",
                                           tmp_path / "kafka" / "node-3" / "data"]
    assert len({n.log for n in nodes}) == len({n.pidfile.path for n in nodes}) == 3
    assert len({n.marker() for n in nodes}) == 3  # a pid file names its own node's process
    with pytest.raises(ConfigError, match="no node 4"):
        Kafka(s, 4)


def test_a_cluster_node_has_static_voters_and_replicates_three_times(tmp_path):
    s = settings(tmp_path, CONFLUX_KAFKA_BROKERS="3", CONFLUX_KAFKA_PORT="31092",
                 CONFLUX_KAFKA_CONTROLLER_PORT="31093")
    p = props(render_server_properties(s, tmp_path / "d2", node=2))
    assert p["node.id"] == "2"
    assert p["controller.quorum.voters"] == \
        "1@127.0.0.1:31093,2@127.0.0.1:31095,3@127.0.0.1:31097"
    assert "controller.quorum.bootstrap.servers" not in p
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:31094,CONTROLLER://127.0.0.1:31095"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:31094"
    assert p["log.dirs"] == str(tmp_path / "d2")
    for name in ("default.replication.factor", "offsets.topic.replication.factor",
                 "transaction.state.log.replication.factor",
                 "share.coordinator.state.topic.replication.factor"):
        assert p[name] == "3", name
    for name in ("min.insync.replicas", "transaction.state.log.min.isr",
                 "share.coordinator.state.topic.min.isr"):
        assert p[name] == "2", name


def test_replication_follows_the_number_of_nodes():
    assert [replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]


@pytest.mark.parametrize("value", ["0", "6", "three", "-1", "2.5"])
def test_a_bad_broker_count_is_refused_by_name(tmp_path, value):
    with pytest.raises(ConfigError, match="CONFLUX_KAFKA_BROKERS"):
        settings(tmp_path, CONFLUX_KAFKA_BROKERS=value)


def test_node_ports_must_not_collide_with_each_other_or_the_stack(tmp_path):
    # node 2's client port would be 9094, the configured controller port
    with pytest.raises(ConfigError, match="ports must differ.*CONFLUX_KAFKA_BROKERS=3"):
        settings(tmp_path, CONFLUX_KAFKA_BROKERS="3", CONFLUX_KAFKA_CONTROLLER_PORT="9094")
    with pytest.raises(ConfigError, match="ports must differ"):  # node 3's on Dagster's port
        settings(tmp_path, CONFLUX_KAFKA_BROKERS="3", CONFLUX_DAGSTER_PORT="9096")
    with pytest.raises(ConfigError, match="beyond 65535"):
        settings(tmp_path, CONFLUX_KAFKA_BROKERS="3", CONFLUX_KAFKA_PORT="65533",
                 CONFLUX_KAFKA_CONTROLLER_PORT="65530")
    assert settings(tmp_path, CONFLUX_KAFKA_CONTROLLER_PORT="9094").kafka_brokers == 1


def test_kafka_selects_every_node_and_kafka_n_one(tmp_path):
    assert select(["kafka"], 3) == ["kafka", "kafka-2", "kafka-3"]
    assert select(["kafka-2"], 3) == ["kafka-2"]
    assert select(["kafka-1"], 3) == ["kafka"]
    assert select(None, 3) == ["postgres", "kafka", "kafka-2", "kafka-3", "dagster-webserver",
                               "dagster-daemon", "conflux-metrics", "conflux-schema-registry"]
    assert select(["kafka"]) == ["kafka"]
    with pytest.raises(ConfigError, match="unknown service 'kafka-2'"):
        select(["kafka-2"])
    stack = Stack(settings(tmp_path, CONFLUX_KAFKA_BROKERS="3"))
    assert [st.name for st in stack.status()] == select(None, 3)
    assert stack.kafka_nodes == ["kafka", "kafka-2", "kafka-3"]


def test_a_storage_formatted_for_another_node_count_is_refused(tmp_path):
    one = Kafka(settings(tmp_path), 1)
    one.data_dir.mkdir(parents=True)
    one.format_record.write_text(json.dumps({"security": "plaintext", "scram_user": None}))
    one.check_format(None)  # formatted for one node, used by one
    three = Kafka(settings(tmp_path, CONFLUX_KAFKA_BROKERS="3"), 1)
    with pytest.raises(StackError, match="formatted for 1 Kafka node.*CONFLUX_KAFKA_BROKERS=3"):
        three.check_format(None)
    three.format_record.write_text(json.dumps({"security": "plaintext", "brokers": 3}))
    three.check_format(None)
    with pytest.raises(StackError, match="formatted for 3 Kafka node.*CONFLUX_KAFKA_BROKERS=1"):
        one.check_format(None)
