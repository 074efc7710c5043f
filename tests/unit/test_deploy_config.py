"""The production deployment files under ``deploy/``: valid for the Dagster this project pins,
consistent with each other, passing every variable the platform reads, holding no secret.

The run launchers are checked against their own classes' config schemas (the Docker one is also
built); launching real containers or Kubernetes Jobs needs an engine or a cluster this machine
does not have (README, "Running at scale"). ``tests/integration/test_deploy.py`` runs the same
files as separate webserver, daemon and code-server processes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import ENV_EXAMPLES, platform_env_names

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTANCE_FILES = [DEPLOY / "dagster.yaml", DEPLOY / "k8s" / "dagster.yaml"]
PROD_ENV = {"DAGSTER_PG_HOST": "pg.internal", "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "s3cret",
            "DAGSTER_PG_DB": "dagster", "CONFLUX_DOCKER_NETWORK": "conflux",
            "CONFLUX_K8S_NAMESPACE": "conflux", "CONFLUX_CODE_SERVER_HOST": "conflux-code",
            "CONFLUX_CODE_SERVER_PORT": "4000"}
# Dagster's own storage (deploy/dagster.yaml), needed by every Dagster process and run
STORAGE = {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
           "DAGSTER_PG_DB"}
# read by client libraries rather than Conflux's resources; optional in production
OPTIONAL = {"KAFKA_SSL_CAFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "OPENLINEAGE_URL",
            "OPENLINEAGE_NAMESPACE"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_the_instance_files_validate_against_dagsters_schema(path, monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster._serdes import ConfigurableClassData
    from dagster._serdes.config_class import class_from_code_pointer

    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    config = load(path)
    result = process_config(resolve_to_config_type(dagster_instance_config_schema()), config)
    assert result.success, [e.message for e in result.errors]
    storage = config["storage"]["postgres"]["postgres_db"]
    assert storage["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert storage["scheme"] == "postgresql+psycopg2"  # not psycopg 3 (deploy/dagster.yaml)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]

    launcher = config["run_launcher"]
    data = ConfigurableClassData(launcher["module"], launcher["class"],
                                 yaml.safe_dump(launcher["config"]))
    klass = class_from_code_pointer(launcher["module"], launcher["class"])  # imports it
    checked = process_config(resolve_to_config_type(klass.config_type()), launcher["config"])
    assert checked.success, [e.message for e in checked.errors]
    if launcher["class"] == "DockerRunLauncher":  # builds without a Docker engine
        built = data.rehydrate()
        assert built.networks == ["conflux"]
        assert "KAFKA_SASL_PASSWORD" in built.env_vars


def test_a_misspelt_instance_setting_is_refused_by_the_same_check():
    """The schema check above can fail: a typo in a key is an error, not ignored."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config_schema

    config = load(INSTANCE_FILES[0])
    config["run_coordinator"]["config"]["max_concurent_runs"] = 3
    result = process_config(resolve_to_config_type(dagster_instance_config_schema()), config)
    assert not result.success


def test_docker_and_kubernetes_instances_differ_only_in_the_run_launcher():
    docker, k8s = (load(p) for p in INSTANCE_FILES)
    assert docker.pop("run_launcher")["class"] == "DockerRunLauncher"
    assert k8s.pop("run_launcher")["class"] == "K8sRunLauncher"
    assert docker == k8s


def test_run_containers_get_every_variable_the_platform_reads():
    """A variable a resource reads but the launcher does not pass fails every run in production
    only; the env example documents each of them."""
    needed = platform_env_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CONFLUX_POSTGRES_URL", "CONFLUX_LAKE_PATH"} <= needed
    passed = set(load(DEPLOY / "dagster.yaml")["run_launcher"]["config"]["env_vars"])
    assert (needed - OPTIONAL) | STORAGE <= passed
    examples = "\n".join((DEPLOY / name).read_text() for name in ENV_EXAMPLES)
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", examples, re.MULTILINE))
    assert needed | STORAGE | OPTIONAL | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= documented


def test_no_deployment_file_holds_a_secret():
    """Secrets come from the environment: every password/secret/token setting is an env
    reference (or, on Kubernetes, a reference to a Secret's key, never a value), and the env
    examples' secret values are placeholders."""
    secret_name = re.compile(r"(?i)password|secret|token|access_key")

    def walk(node, path=""):
        if isinstance(node, dict):
            if secret_name.search(str(node.get("name", ""))):  # a Kubernetes env entry
                assert "value" not in node, f"{path}: {node['name']} has a value"
            for key, value in node.items():
                if key in ("secretKeyRef", "secretRef"):  # names a Secret (and a key)
                    assert set(value) <= {"name", "key", "optional"}, f"{path}.{key}"
                elif key == "secretName":
                    assert isinstance(value, str), f"{path}.{key}"
                elif secret_name.search(str(key)) and not isinstance(value, (list, bool)):
                    assert isinstance(value, dict) and set(value) == {"env"}, f"{path}.{key}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    for path in [*INSTANCE_FILES, DEPLOY / "workspace.yaml", DEPLOY / "docker-compose.yaml"]:
        walk(load(path))
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc, path.name)
    lines = [line for name in ENV_EXAMPLES for line in (DEPLOY / name).read_text().splitlines()]
    for line in lines:
        name, _, value = line.partition("=")
        if re.search(r"PASSWORD|SECRET|ACCESS_KEY", name) and not line.startswith("#"):
            assert value == "change-me", line
        if name == "CONFLUX_POSTGRES_URL":
            assert ":change-me@" in value


def test_the_workspace_reaches_the_code_location_over_grpc(monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.workspace.config_schema import WORKSPACE_CONFIG_SCHEMA

    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    config = load(DEPLOY / "workspace.yaml")
    result = process_config(resolve_to_config_type(WORKSPACE_CONFIG_SCHEMA), config)
    assert result.success, [e.message for e in result.errors]
    server = result.value["load_from"][0]["grpc_server"]
    assert (server["host"], server["port"], server["location_name"]) == ("conflux-code", 4000, "conflux")


def test_kubernetes_manifests_agree_with_the_instance_and_the_workspace():
    """Names the pieces use to find each other (ConfigMaps, Secrets, ports, service accounts)
    match, and every variable the platform reads reaches the code server and the run pods from
    their ConfigMaps or the Secrets that deploy/README.md creates. (Rendering with ``kubectl
    kustomize deploy/k8s`` needs kubectl, which the project does not install; applying needs a
    cluster.)"""
    from tests.deploy_files import containers, load as load_deploy, secret_refs

    deploy = load_deploy()
    kustomization = deploy.kustomization
    docs = {(d["kind"], d["metadata"]["name"]): d for d in deploy.k8s}
    launcher = deploy.k8s_instance["run_launcher"]["config"]
    maps = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert maps[launcher["instance_config_map"]]["files"] == ["dagster.yaml"]
    assert set(launcher["env_config_maps"]) <= set(maps)
    literals = {name: dict(line.split("=", 1) for line in maps[name].get("literals", []))
                for name in maps}

    found = containers(deploy)
    for name, (container, pod) in found.items():
        maps_used = {ref["configMapRef"]["name"] for ref in container.get("envFrom", [])}
        assert maps_used <= set(maps), name
        if name.endswith("oauth2-proxy"):
            continue
        assert "conflux-dagster-config" in maps_used, name  # every Dagster process: its storage
        if name != "run":
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            instance = mounts["/opt/dagster/dagster_home/dagster.yaml"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[instance["name"]]["configMap"]["name"] == launcher["instance_config_map"]
            assert instance["subPath"] == "dagster.yaml"
    # the code server and the runs get the platform's settings and secrets, nobody else
    for name in ("conflux-code/code", "run"):
        container = found[name][0]
        env = {k for ref in container.get("envFrom", [])
               for k in literals[ref["configMapRef"]["name"]]}
        env |= {e["name"] for e in container.get("env", [])}
        assert (platform_env_names() - OPTIONAL) | STORAGE <= env, name

    args = docs[("Deployment", "conflux-code")]["spec"]["template"]["spec"]["containers"][0]["args"]
    service = docs[("Service", "conflux-code")]["spec"]["ports"][0]
    dagster_config = literals["conflux-dagster-config"]
    assert args[args.index("-p") + 1] == dagster_config["CONFLUX_CODE_SERVER_PORT"] == str(service["port"])
    assert dagster_config["CONFLUX_CODE_SERVER_HOST"] == "conflux-code"
    assert ("ServiceAccount", launcher["service_account_name"]) in docs
    launching = docs[("RoleBinding", "conflux-launch-runs")]["subjects"][0]["name"]
    for name in ("dagster-webserver", "dagster-daemon"):  # start and stop run Jobs
        assert docs[("Deployment", name)]["spec"]["template"]["spec"]["serviceAccountName"] == launching
    jobs = docs[("Role", "conflux-launch-runs")]["rules"][0]
    assert "jobs" in jobs["resources"] and "create" in jobs["verbs"]

    # every Secret key a container names is created by the README's commands, and no secret is
    # a ConfigMap literal
    readme = (DEPLOY / "README.md").read_text()
    created = {f"{secret}/{key}" for secret, body in re.findall(
        r"create secret generic ([a-z0-9-]+) \\\n((?:.*\\\n)*.*)", readme)
        for key in re.findall(r"--from-literal=([A-Z_0-9]+)=", body)}
    referenced = {ref for container, _ in found.values() for ref in secret_refs(container)}
    optional = {"conflux-platform/OPENLINEAGE_API_KEY", "conflux-platform/CONFLUX_NOTIFY_WEBHOOK_URL"}
    assert referenced - optional <= created, referenced - optional - created
    secrets = {"DAGSTER_PG_PASSWORD", "KAFKA_SASL_PASSWORD", "CONFLUX_POSTGRES_URL",
               "AWS_SECRET_ACCESS_KEY", "OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET"}
    assert secrets <= {ref.split("/")[1] for ref in created}
    assert not secrets & {k for values in literals.values() for k in values}


def test_the_image_copies_what_exists_and_loads_the_uninstalled_demo_from_its_folder():
    """Every COPY source exists in the repository; the demo platform is not installed, so the
    code server must load it with the copy's folder as its working directory."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    sources = [part for line in dockerfile.splitlines() if line.startswith("COPY ")
               for part in line.split()[1:-1]]
    assert sources and all((REPO / s).exists() for s in sources), sources
    for demo in ("pipelines", "sensors", "resources"):
        assert f"COPY {demo} " in dockerfile
    workdir = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("WORKDIR"))
    for text in (dockerfile, (REPO / "deploy" / "k8s" / "conflux.yaml").read_text()):
        assert f'"-d", "{workdir}"' in text
