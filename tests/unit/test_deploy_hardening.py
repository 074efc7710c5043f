"""Issue 20.6: the deployment files expose no more than they must.

Every container non-root, read-only and without capabilities; each process given only the secret
keys it reads (one secretKeyRef each, as ``deploy/README.md`` documents); NetworkPolicies that let
only the webserver and daemon reach the code server's gRPC port and only the ingress controller
reach the UI's login proxy; no Docker socket or host path on Kubernetes; the UI behind oauth2-proxy
with the webserver on its pod's loopback; TLS required to Postgres. Config-level (PyYAML, the
``dagster_k8s`` job renderer, the Docker SDK's argument mapping): no engine or cluster is needed.

Each check is also run on a copy of the files with one piece of hardening reverted, and must
report it: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests import deploy_files as df
from tests.deploy_files import Deploy

STORAGE_SECRET = "conflux-dagster-storage/DAGSTER_PG_PASSWORD"


@pytest.fixture(scope="module")
def deploy() -> Deploy:
    return df.load()


@pytest.mark.parametrize("check", [df.non_root_problems, df.secret_problems, df.network_problems,
                                   df.exposure_problems, df.postgres_tls_problems],
                         ids=lambda f: f.__name__)
def test_the_deployment_files_pass(deploy, check):
    assert check(deploy) == []


def k8s_model(obj: dict):
    """The object as the Kubernetes Python client's model of its kind: an unknown or misspelt
    field (``readOnlyRootFilesytem``, an ingress rule's ``form``) or a missing required one is
    an error, where PyYAML alone would let it silently weaken the policy."""
    import kubernetes
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

    model = getattr(kubernetes.client, "V1" + obj["kind"])
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, obj))


def test_every_manifest_is_a_valid_kubernetes_object(deploy):
    kinds = {obj["kind"] for obj in deploy.k8s}
    assert {"Deployment", "Service", "NetworkPolicy", "Ingress"} <= kinds
    for obj in deploy.k8s:
        assert k8s_model(obj).metadata.name == obj["metadata"]["name"]
    misspelt = deploy.copy().objects("NetworkPolicy")["conflux-code"]
    rule = misspelt["spec"]["ingress"][0]
    rule["form"] = rule.pop("from")
    with pytest.raises(Exception, match="form"):
        k8s_model(misspelt)


def test_the_run_pod_is_rendered_from_the_launcher_config(deploy):
    """The checks above see the run pod the launcher would create (not the config's wording)."""
    pod = df.render_run_pod(deploy.k8s_instance)
    assert pod["metadata"]["labels"]["app"] == "conflux-run"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "conflux-runs"
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {df.HOME, "/tmp"}
    assert STORAGE_SECRET in df.secret_refs(container)


def test_each_process_gets_the_secrets_it_reads_and_no_other(deploy):
    """The README's table (which the manifests must match) against what the code reads: the
    serving processes read Dagster's storage only; the code server and the runs also read the
    platform's secrets (the resources' dg.EnvVar); notifications are sent by sensors, which
    evaluate in the code server, so runs do not get the webhook."""
    from conflux.observe.notify import WEBHOOK_ENV

    table = df.documented_secrets(deploy.texts["deploy/README.md"])
    for name in ("dagster-webserver/webserver", "dagster-webserver/migrate", "dagster-daemon/daemon"):
        assert table[name] == {STORAGE_SECRET}, name
    read_by_resources = {n for n in df.platform_env_names() if re.search(r"PASSWORD|_URL$", n)
                         and n != "CONFLUX_LAKE_PATH"}
    assert read_by_resources == {"CONFLUX_POSTGRES_URL", "KAFKA_SASL_PASSWORD"}
    lake = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # read by pyarrow's S3 filesystem
    for name in ("conflux-code/code", df.RUN):
        keys = {ref.split("/")[1] for ref in table[name]}
        assert {"DAGSTER_PG_PASSWORD", *read_by_resources, *lake} <= keys, name
    assert WEBHOOK_ENV in {r.split("/")[1] for r in table["conflux-code/code"]}
    assert WEBHOOK_ENV not in {r.split("/")[1] for r in table[df.RUN]}
    proxy = table["dagster-webserver/oauth2-proxy"]
    assert {r.split("/")[0] for r in proxy} == {"conflux-ui-auth"}
    assert not any(r.startswith("conflux-ui-auth/") for n, refs in table.items()
                   if n != "dagster-webserver/oauth2-proxy" for r in refs)


def test_the_compose_file_gives_each_service_only_its_env_files(deploy):
    services = deploy.compose["services"]
    files = {name: set(s.get("env_file", [])) for name, s in services.items()}
    assert files["dagster-webserver"] == files["dagster-migrate"] == {"dagster.env"}
    assert files["conflux-code"] == {"dagster.env", "platform.env"}
    # DockerRunLauncher copies the runs' variables from the daemon's environment (README)
    assert files["dagster-daemon"] == {"dagster.env", "platform.env"}
    assert files["ui-auth"] == {"ui-auth.env"}
    assert files[df.SOCKET_PROXY] == set()


# --- reverting any piece of hardening is caught -------------------------------------------------

def _container(d: Deploy, deployment: str, name: str) -> dict:
    spec = d.objects("Deployment")[deployment]["spec"]["template"]["spec"]
    return next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name)


def _pod(d: Deploy, deployment: str) -> dict:
    return d.objects("Deployment")[deployment]["spec"]["template"]["spec"]


def _set(target: dict, key: str, value) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def _drop_policy(d: Deploy, name: str) -> None:
    d.k8s = [o for o in d.k8s if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name)]


def _replace_text(d: Deploy, path: str, old: str, new: str) -> None:
    assert old in d.texts[path]
    d.texts[path] = d.texts[path].replace(old, new)


REVERTS: list[tuple[str, Callable[[Deploy], None], Callable[[Deploy], list[str]]]] = [
    ("daemon as root", lambda d: _set(_container(d, "dagster-daemon", "daemon")["securityContext"],
                                       "runAsUser", 0), df.non_root_problems),
    ("code server writable root", lambda d: _set(_container(d, "conflux-code", "code")["securityContext"],
                                                  "readOnlyRootFilesystem", None), df.non_root_problems),
    ("proxy keeps capabilities", lambda d: _set(_container(d, "dagster-webserver", "oauth2-proxy")[
        "securityContext"], "capabilities", None), df.non_root_problems),
    ("migrate may escalate", lambda d: _set(_container(d, "dagster-webserver", "migrate")[
        "securityContext"], "allowPrivilegeEscalation", True), df.non_root_problems),
    ("no seccomp on the webserver", lambda d: _set(_container(d, "dagster-webserver", "webserver")[
        "securityContext"], "seccompProfile", None), df.non_root_problems),
    ("pod allows root", lambda d: _set(_pod(d, "dagster-daemon"), "securityContext", None),
     df.non_root_problems),
    ("run pods without securityContext", lambda d: _set(d.k8s_instance["run_launcher"]["config"],
                                                         "security_context", None), df.non_root_problems),
    ("compose daemon as root", lambda d: _set(d.compose["services"]["dagster-daemon"], "user", "root"),
     df.non_root_problems),
    ("Docker run containers as image user", lambda d: _set(
        d.docker_instance["run_launcher"]["config"]["container_kwargs"], "user", None), df.non_root_problems),
    ("Dockerfile without USER", lambda d: _replace_text(d, "deploy/Dockerfile", "USER 10001:10001", ""),
     df.non_root_problems),
    ("one Secret for all", lambda d: _container(d, "dagster-daemon", "daemon").setdefault(
        "envFrom", []).append({"secretRef": {"name": "conflux-platform"}}), df.secret_problems),
    ("webserver given a platform key", lambda d: _container(d, "dagster-webserver", "webserver")[
        "env"].append({"name": "KAFKA_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": "conflux-platform", "key": "KAFKA_SASL_PASSWORD"}}}), df.secret_problems),
    ("run pods envFrom a Secret", lambda d: _set(d.k8s_instance["run_launcher"]["config"],
                                                  "env_secrets", ["conflux-platform"]), df.secret_problems),
    ("no default deny", lambda d: _drop_policy(d, "default-deny"), df.network_problems),
    ("code server open to all", lambda d: _drop_policy(d, "conflux-code") or _drop_policy(d, "default-deny"),
     df.network_problems),
    ("code server open to run pods", lambda d: d.objects("NetworkPolicy")["conflux-code"]["spec"][
        "ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app": "conflux-run"}}}),
     df.network_problems),
    ("UI open to the namespace", lambda d: d.objects("NetworkPolicy")["dagster-webserver"]["spec"][
        "ingress"].append({"from": [{"podSelector": {}}]}), df.network_problems),
    ("daemon mounts the Docker socket", lambda d: _pod(d, "dagster-daemon")["volumes"].append(
        {"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}}), df.exposure_problems),
    ("webserver on all addresses", lambda d: _replace_text_args(
        _container(d, "dagster-webserver", "webserver"), "127.0.0.1", "0.0.0.0"), df.exposure_problems),
    ("UI Service public", lambda d: _set(d.objects("Service")["dagster-webserver"]["spec"], "type",
                                         "LoadBalancer"), df.exposure_problems),
    ("Service past the proxy", lambda d: _set(d.objects("Service")["dagster-webserver"]["spec"][
        "ports"][0], "targetPort", 3000), df.exposure_problems),
    ("no Ingress", lambda d: setattr(d, "k8s", [o for o in d.k8s if o["kind"] != "Ingress"]),
     df.exposure_problems),
    # (a new list: the services share the anchor's volumes list)
    ("compose daemon with the socket", lambda d: _set(d.compose["services"]["dagster-daemon"], "volumes", [
        *d.compose["services"]["dagster-daemon"].get("volumes", []),
        "/var/run/docker.sock:/var/run/docker.sock"]), df.exposure_problems),
    ("compose webserver published", lambda d: _set(d.compose["services"]["dagster-webserver"], "ports",
                                                   ["127.0.0.1:3000:3000"]), df.exposure_problems),
    ("socket proxy allows exec", lambda d: d.compose["services"][df.SOCKET_PROXY]["environment"].update(
        EXEC="1"), df.exposure_problems),
    ("README silent on the login", lambda d: _replace_text(d, "deploy/README.md", "no login of its own",
                                                           "a login"), df.exposure_problems),
    ("example URL without TLS", lambda d: _replace_text(d, "deploy/platform.env.example",
                                                        "/conflux?sslmode=require", "/conflux"),
     df.postgres_tls_problems),
    ("README URL without TLS", lambda d: _replace_text(d, "deploy/README.md", "?sslmode=require'", "'"),
     df.postgres_tls_problems),
    ("storage without TLS", lambda d: d.k8s_instance["storage"]["postgres"]["postgres_db"].pop("params"),
     df.postgres_tls_problems),
]


def _replace_text_args(container: dict, old: str, new: str) -> None:
    assert old in container["args"]
    container["args"] = [new if a == old else a for a in container["args"]]


@pytest.mark.parametrize(("mutate", "check"), [r[1:] for r in REVERTS], ids=[r[0] for r in REVERTS])
def test_reverting_the_hardening_is_caught(deploy, mutate, check):
    reverted = deploy.copy()
    mutate(reverted)
    assert check(reverted), "the check passed a copy with the hardening reverted"
