"""Where the stack's lake is: ``CONFLUX_LAKE_PATH=s3://...`` reaches every Dagster process with
the AWS_* variables, and delta-rs gets them as its storage options; a local path never replaces
the state folder's lake; an object-store lake is not wiped by ``stack reset``; the platform's lake
resource takes its path from the environment (and nothing else: no lock database)."""

from conflux.core.settings import Settings
from conflux.stack.dagster import dagster_env
from conflux.io.lake import LakeResource, is_object_store, storage_options


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
    lake = LakeResource.for_stack(settings)
    assert lake.path == "s3://bucket/lake" and lake.uri("orders") == "s3://bucket/lake/orders"


def test_delta_rs_gets_the_endpoint_and_region_of_the_aws_environment(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert storage_options("/local/lake") == {} and storage_options("file:///x") == {}
    assert "AWS_ENDPOINT_URL" not in storage_options("s3://b/l")  # real S3: the default endpoint
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.net")
    options = storage_options("s3://b/l")
    assert options["AWS_REGION"] == "eu-west-1"
    assert options["AWS_ENDPOINT_URL"] == "https://s3.example.net"
    assert "AWS_ALLOW_HTTP" not in options
    monkeypatch.setenv("AWS_REGION", "us-east-2")  # the S3-specific endpoint and AWS_REGION win
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    options = storage_options("s3://b/l")
    assert options["AWS_REGION"] == "us-east-2"
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert options["AWS_ALLOW_HTTP"] == "true"
    # credentials stay in the environment (delta-rs reads them there): never copied around
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    assert "s3cr3t" not in storage_options("s3://b/l").values()
    assert LakeResource(path="s3://b/l/").root() == "s3://b/l"


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


def test_the_platform_lake_takes_its_path_from_the_environment():
    import dagster as dg

    from conflux.dagster.resources import platform_resources

    lake = platform_resources()["lake"]
    assert isinstance(lake.path, dg.EnvVar) and lake.path.env_var_name == "CONFLUX_LAKE_PATH"
    assert "lock_url" not in LakeResource.model_fields  # no lock database to configure
