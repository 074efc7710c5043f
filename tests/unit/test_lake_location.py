"""Where the stack's lake is: ``CONFLUX_LAKE_PATH=s3://...`` reaches every Dagster process with
the AWS_* variables; a local path never replaces the state folder's lake; an object-store lake
is not wiped by ``stack reset``; the platform's lake resource is locked through Postgres."""

from conflux.core.settings import Settings
from conflux.stack.dagster import dagster_env
from conflux.io.lake import LakeResource, is_object_store, lock_key


def test_an_s3_lake_reaches_the_dagster_processes_with_the_aws_environment(tmp_path, monkeypatch):
    env = {"CONFLUX_HOME": str(tmp_path), "CONFLUX_LAKE_PATH": "s3://bucket/lake"}
    settings = Settings.from_env(env)
    assert settings.lake_location == "s3://bucket/lake"
    assert settings.client_env()["CONFLUX_LAKE_PATH"] == "s3://bucket/lake"
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
        assert dagster_env(settings)[name] == value
    assert dagster_env(settings)["CONFLUX_LAKE_PATH"] == "s3://bucket/lake"
    assert LakeResource.for_stack(settings).lock_url == settings.postgres_url


def test_a_local_lake_path_in_the_environment_does_not_move_the_stacks_lake(tmp_path):
    settings = Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_LAKE_PATH": "/elsewhere"})
    assert settings.lake_url is None and settings.lake_location == str(tmp_path / "lake")
    assert not is_object_store("/x") and not is_object_store("file:///x")
    assert is_object_store("s3://b/x")


def test_reset_leaves_an_object_store_lake_alone_and_says_so(tmp_path):
    from conflux.stack import Stack

    settings = Settings.from_env({"CONFLUX_HOME": str(tmp_path), "CONFLUX_LAKE_PATH": "s3://b/l",
                                  "CONFLUX_KAFKA_PORT": "39092",
                                  "CONFLUX_KAFKA_CONTROLLER_PORT": "39093",
                                  "CONFLUX_PG_PORT": "39432", "CONFLUX_DAGSTER_PORT": "39000"})
    settings.lake_path.mkdir(parents=True)
    lines = []
    Stack(settings).reset(report=lines.append)
    assert any("left the object-store lake s3://b/l alone" in line for line in lines)


def test_lock_keys_are_stable_and_distinct_per_partition():
    key = lock_key("s3://b/l", "orders", "1995-01-01")
    assert key == lock_key("s3://b/l", "orders", "1995-01-01") and -2**63 <= key < 2**63
    assert len({key, lock_key("s3://b/l", "orders", "1995-01-02"),
                lock_key("s3://b/other", "orders", "1995-01-01"),
                lock_key("s3://b/l", "lineitem", "1995-01-01")}) == 4


def test_the_platform_lake_is_locked_through_the_platform_postgres():
    import dagster as dg

    from conflux.dagster.resources import platform_resources

    lake = platform_resources()["lake"]
    assert isinstance(lake.lock_url, dg.EnvVar) and lake.lock_url.env_var_name == "CONFLUX_POSTGRES_URL"
    assert isinstance(lake.path, dg.EnvVar) and lake.path.env_var_name == "CONFLUX_LAKE_PATH"
