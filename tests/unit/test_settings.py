import pytest

from conflux.core.errors import ConfigError
from conflux.core.settings import Settings, to_psycopg2_url


def test_defaults_are_loopback_and_documented_ports(tmp_path):
    s = Settings.from_env({"CONFLUX_HOME": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.postgres_url == "postgresql://conflux@127.0.0.1:15432/conflux"
    assert s.dagster_url == "http://127.0.0.1:3000"
    assert s.lake_path == tmp_path / "lake"
    assert s.dagster_home == tmp_path / "dagster_home"


def test_client_env_names_every_variable_a_client_needs(tmp_path):
    env = Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_KAFKA_PORT": "19092"}).client_env()
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster_home")
    assert env["CONFLUX_LAKE_PATH"] == str(tmp_path / "lake")
    assert env["CONFLUX_POSTGRES_URL"].startswith("postgresql://")
    assert env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")


def test_external_postgres_url_replaces_the_local_cluster(tmp_path):
    url = "postgresql://u:secret@db.internal:5432/conflux"
    s = Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_POSTGRES_URL": url})
    assert s.postgres_url == url
    assert s.dagster_pg_url == "postgresql+psycopg2://u:secret@db.internal:5432/conflux"


@pytest.mark.parametrize("name,value", [
    ("CONFLUX_KAFKA_PORT", "abc"), ("CONFLUX_PG_PORT", "0"), ("CONFLUX_DAGSTER_PORT", "70000"),
    ("CONFLUX_KAFKA_HEAP", "lots"),
])
def test_bad_values_are_rejected_with_the_variable_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_clashing_ports_are_rejected():
    with pytest.raises(ConfigError, match="must differ"):
        Settings.from_env({"CONFLUX_KAFKA_PORT": "3000"})


def test_psycopg2_url_rewrites_any_driver_and_rejects_other_schemes():
    assert to_psycopg2_url("postgresql+psycopg://a@h/d") == "postgresql+psycopg2://a@h/d"
    assert to_psycopg2_url("postgres://a@h/d") == "postgresql+psycopg2://a@h/d"
    with pytest.raises(ConfigError):
        to_psycopg2_url("mysql://a@h/d")
