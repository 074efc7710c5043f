"""The deployment files under ``deploy/`` loaded as data, and the checks of their hardening.

Each ``*_problems`` function takes a :class:`Deploy` (the files parsed with PyYAML, or a copy a
test has altered) and returns what is wrong with it, one sentence per problem: the unit tests
assert the real files have none and that each reverted piece of hardening is reported
(``tests/unit/test_deploy_hardening.py``). Nothing here needs Docker or Kubernetes: the run pod is
rendered by ``dagster_k8s``'s own ``construct_dagster_k8s_job`` from ``deploy/k8s/dagster.yaml``,
the function ``K8sRunLauncher.launch_run`` calls, and the Docker run container's settings go
through the Docker SDK's own argument mapping.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
HOME = "/opt/dagster/dagster_home"
ENV_EXAMPLES = ("dagster.env.example", "platform.env.example", "ui-auth.env.example")
# files where an example Postgres URL may appear (deploy/ and the docs about deploying)
URL_FILES = (*(f"deploy/{name}" for name in ENV_EXAMPLES), "deploy/README.md",
             "docs/security.md", "docs/scale.md")
RUN = "run"  # the run pod's name in the secrets table
SOCKET_PROXY = "docker-api"  # the one compose service allowed the Docker socket (as root)
NON_ROOT = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


@dataclass
class Deploy:
    """Every deployment file, parsed; ``texts`` holds the ones read as text (by relative path)."""

    k8s: list[dict]                 # the objects of every resource kustomization.yaml lists
    kustomization: dict
    k8s_instance: dict
    docker_instance: dict
    compose: dict
    texts: dict[str, str] = field(default_factory=dict)

    def copy(self) -> "Deploy":
        return copy.deepcopy(self)

    def objects(self, kind: str) -> dict[str, dict]:
        return {o["metadata"]["name"]: o for o in self.k8s if o["kind"] == kind}


def load() -> Deploy:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = [doc for name in kustomization["resources"]
               for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    texts = {path: (REPO / path).read_text()
             for path in (*URL_FILES, "deploy/Dockerfile")}
    return Deploy(k8s=objects, kustomization=kustomization,
                  k8s_instance=yaml.safe_load((K8S / "dagster.yaml").read_text()),
                  docker_instance=yaml.safe_load((DEPLOY / "dagster.yaml").read_text()),
                  compose=yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text()),
                  texts=texts)


def platform_env_names() -> set[str]:
    """Every variable the platform's Dagster resources read (``dg.EnvVar``), with every optional
    Kafka security setting switched on."""
    import pytest

    from conflux.dagster.resources import platform_resources
    from conflux.io.kafka import SECURITY_ENV

    names: set[str] = set()
    with pytest.MonkeyPatch.context() as mp:
        for name in SECURITY_ENV.values():
            mp.setenv(name, "set")
        for resource in platform_resources().values():
            for value in resource._get_non_default_public_field_values().values():
                if getattr(value, "env_var_name", None):
                    names.add(value.env_var_name)
    return names


# --- the workloads ------------------------------------------------------------------------------

def render_run_pod(instance: dict) -> dict:
    """The pod template of the Job ``K8sRunLauncher`` would create for a run, from the instance
    file's launcher config, as the Kubernetes API would receive it (camelCase)."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (DagsterK8sJobConfig, UserDefinedDagsterK8sConfig,
                                 construct_dagster_k8s_job)

    config = dict(instance["run_launcher"]["config"])
    context_keys = ("image_pull_policy", "image_pull_secrets", "service_account_name",
                    "env_config_maps", "env_secrets", "env_vars", "volume_mounts", "volumes",
                    "labels", "resources", "scheduler_name", "security_context")
    context = K8sContainerContext(
        namespace="conflux",
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("run_k8s_config", {})),
        **{k: config[k] for k in context_keys if k in config})
    job_config = DagsterK8sJobConfig(job_image="registry.example.com/conflux:0.1.0",
                                     dagster_home=config.get("dagster_home", HOME),
                                     instance_config_map=config["instance_config_map"],
                                     postgres_password_secret=config.get("postgres_password_secret"))
    job = construct_dagster_k8s_job(job_config=job_config, args=["dagster", "api", "execute_run"],
                                    job_name="dagster-run-0123", component="run_worker",
                                    user_defined_k8s_config=context.run_k8s_config,
                                    labels={"dagster/run-id": "0123"})
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)["spec"]["template"]


def pods(d: Deploy) -> dict[str, dict]:
    """Every pod template: each Deployment's by its name, and the run pod as ``run``."""
    found = {name: o["spec"]["template"] for name, o in d.objects("Deployment").items()}
    found[RUN] = render_run_pod(d.k8s_instance)
    return found


def containers(d: Deploy) -> dict[str, tuple[dict, dict]]:
    """``<deployment>/<container>`` (``run`` for the run pod's one) -> (container, pod spec)."""
    found = {}
    for name, pod in pods(d).items():
        spec = pod["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            found[RUN if name == RUN else f"{name}/{c['name']}"] = (c, spec)
    return found


def secret_refs(container: dict) -> set[str]:
    """``<Secret>/<key>`` of each secretKeyRef in the container's environment."""
    return {f"{ref['name']}/{ref['key']}" for e in container.get("env", [])
            if (ref := (e.get("valueFrom") or {}).get("secretKeyRef"))}


def documented_secrets(readme: str) -> dict[str, set[str]]:
    """The table of ``deploy/README.md``'s "Secrets per process": container -> Secret/key."""
    section = readme.split("## Secrets per process", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.startswith("|"):
            continue
        name = re.match(r"`([\w-]+/[\w-]+)`", cells[0])
        if name or cells[0].startswith("run pods"):
            table[name.group(1) if name else RUN] = set(re.findall(r"`([a-z0-9-]+/[A-Z0-9_]+)`",
                                                                   cells[2]))
    return table


# --- the checks ---------------------------------------------------------------------------------

def _context_problems(where: str, context: dict | None) -> list[str]:
    context = context or {}
    problems = [f"{where}: securityContext.{key} is {context.get(key)!r}, not {want!r}"
                for key, want in NON_ROOT.items() if context.get(key) != want]
    if not isinstance(context.get("runAsUser"), int) or context["runAsUser"] == 0:
        problems.append(f"{where}: runAsUser {context.get('runAsUser')!r} is not a non-root uid")
    if context.get("privileged"):
        problems.append(f"{where}: privileged")
    return problems


def _compose_user_problems(where: str, service: dict) -> list[str]:
    problems = []
    user = str(service.get("user", "root")).split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.append(f"{where}: runs as {service.get('user', 'the image user')!r}, not a non-root uid")
    if service.get("read_only") is not True:
        problems.append(f"{where}: root filesystem writable")
    if service.get("cap_drop") != ["ALL"] or service.get("cap_add"):
        problems.append(f"{where}: capabilities not all dropped")
    if "no-new-privileges:true" not in service.get("security_opt", []):
        problems.append(f"{where}: no no-new-privileges")
    if service.get("privileged"):
        problems.append(f"{where}: privileged")
    return problems


def non_root_problems(d: Deploy) -> list[str]:
    """Every container runs as a non-root uid, unprivileged, read-only, without capabilities."""
    from docker.models.containers import _create_container_args

    problems = []
    for name, (container, spec) in containers(d).items():
        problems += _context_problems(name, container.get("securityContext"))
        pod_context = spec.get("securityContext") or {}
        if pod_context.get("runAsNonRoot") is not True or pod_context.get("runAsUser") in (None, 0):
            problems.append(f"{name}: the pod's securityContext does not forbid root")
    for name, service in d.compose["services"].items():
        if name != SOCKET_PROXY:
            problems += _compose_user_problems(f"compose {name}", service)
    kwargs = d.docker_instance["run_launcher"]["config"].get("container_kwargs", {})
    # the Docker SDK's own mapping of containers.create() arguments: an unknown one raises
    mapped = _create_container_args({"image": "conflux", **kwargs, "version": "1.43"})
    host = mapped["host_config"]
    run = {"user": mapped.get("user"), "read_only": host.get("ReadonlyRootfs"),
           "cap_drop": host.get("CapDrop"), "security_opt": host.get("SecurityOpt", []),
           "privileged": host.get("Privileged")}
    problems += _compose_user_problems("Docker run container", run)
    users = re.findall(r"^USER\s+(\S+)", d.texts["deploy/Dockerfile"], re.MULTILINE)
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        problems.append(f"Dockerfile: final USER {users[-1:]} is not a numeric non-root uid")
    return problems


def secret_problems(d: Deploy) -> list[str]:
    """No container takes a whole Secret (envFrom), and each one's secretKeyRefs are exactly the
    keys the README's table documents for its process."""
    documented = documented_secrets(d.texts["deploy/README.md"])
    problems = []
    found = containers(d)
    for name, (container, _) in found.items():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                problems.append(f"{name}: envFrom the whole Secret {source['secretRef']['name']}")
        if name not in documented:
            problems.append(f"{name}: not in deploy/README.md's secrets table")
        elif secret_refs(container) != documented[name]:
            problems.append(f"{name}: secret keys {sorted(secret_refs(container))}, documented "
                            f"{sorted(documented[name])}")
    problems += [f"{name}: documented but no such container" for name in set(documented) - set(found)]
    if d.k8s_instance["run_launcher"]["config"].get("env_secrets"):
        problems.append("K8sRunLauncher env_secrets hands run pods whole Secrets")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer(peer: dict) -> str:
    if "ipBlock" in peer:
        return f"ip:{peer['ipBlock']['cidr']}"
    parts = [f"{kind}:{','.join(f'{k}={v}' for k, v in sorted((peer[kind].get('matchLabels') or {}).items())) or '*'}"
             for kind in ("namespaceSelector", "podSelector") if kind in peer]
    return " ".join(parts)


def ingress_allowed(d: Deploy, labels: dict) -> set[tuple[str, object]] | None:
    """(peer, port) pairs the namespace's NetworkPolicies let in to a pod with these labels
    (peer ``*`` / port ``*``: any); None when no policy isolates its ingress (all allowed)."""
    allowed, isolated = set(), False
    for policy in d.objects("NetworkPolicy").values():
        spec = policy["spec"]
        if not _selects(spec.get("podSelector") or {}, labels):
            continue
        if "Ingress" in spec.get("policyTypes", ["Ingress"]):
            isolated = True
        for rule in spec.get("ingress") or []:
            peers = [_peer(p) for p in rule.get("from") or []] or ["*"]
            ports = [p.get("port") for p in rule.get("ports") or []] or ["*"]
            allowed |= {(peer, port) for peer in peers for port in ports}
    return allowed if isolated else None


def network_problems(d: Deploy) -> list[str]:
    """Default deny; the code server's gRPC port open to the webserver and daemon only, the UI's
    proxy to the ingress controller only, nothing at all to the daemon and run pods."""
    want = {
        "conflux-code": {("podSelector:app=dagster-webserver", 4000),
                         ("podSelector:app=dagster-daemon", 4000)},
        "dagster-webserver": {("namespaceSelector:kubernetes.io/metadata.name=ingress-nginx", 4180)},
        "dagster-daemon": set(),
        RUN: set(),
    }
    problems = []
    policies = d.objects("NetworkPolicy").values()
    if not any(p["spec"].get("podSelector") in ({}, None) and not p["spec"].get("ingress")
               and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
               for p in policies):
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rule)")
    for name, pod in pods(d).items():
        allowed = ingress_allowed(d, pod["metadata"].get("labels") or {})
        if name in want and allowed != want[name]:
            problems.append(f"{name}: ingress allowed from {sorted(allowed, key=str) if allowed is not None else 'anyone'}, "
                            f"expected {sorted(want[name], key=str)}")
    return problems


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def exposure_problems(d: Deploy) -> list[str]:
    """No host access, no Docker socket in a Dagster container, Services cluster-internal, the
    webserver on loopback behind the login proxy, which the Ingress routes to."""
    problems = []
    for name, pod in pods(d).items():
        spec = pod["spec"]
        for volume in spec.get("volumes") or []:
            if "hostPath" in volume:
                problems.append(f"{name}: hostPath volume {volume['hostPath'].get('path')}")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{name}: {key}")
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if any(p.get("hostPort") for p in c.get("ports", [])):
                problems.append(f"{name}/{c['name']}: hostPort")
    if "docker.sock" in yaml.safe_dump(d.k8s) + yaml.safe_dump(d.k8s_instance):
        problems.append("a Kubernetes file mentions docker.sock")
    for name, service in d.objects("Service").items():
        if service["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {name} is {service['spec']['type']}, not ClusterIP")

    web = d.objects("Deployment")["dagster-webserver"]["spec"]["template"]["spec"]["containers"]
    by_name = {c["name"]: c for c in web}
    server, proxy = by_name.get("webserver"), by_name.get("oauth2-proxy")
    if server is None or proxy is None:
        return [*problems, "the webserver pod lacks the webserver or the oauth2-proxy container"]
    if _arg(server["args"], "-h") != "127.0.0.1":
        problems.append(f"the webserver binds {_arg(server['args'], '-h')}, not the pod's loopback")
    if f"--upstream=http://127.0.0.1:{_arg(server['args'], '-p')}/" not in proxy["args"]:
        problems.append("oauth2-proxy does not forward to the webserver's loopback port")
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy.get("ports", [])}
    service = d.objects("Service")["dagster-webserver"]["spec"]
    target = service["ports"][0]["targetPort"]
    if proxy_ports.get(target, target) not in proxy_ports.values():
        problems.append(f"Service dagster-webserver targets {target!r}, not the login proxy's port")
    backends = [path["backend"]["service"] for ingress in d.objects("Ingress").values()
                for rule in ingress["spec"].get("rules", []) for path in rule["http"]["paths"]]
    if not backends:
        problems.append("no Ingress routes to the UI")
    for backend in backends:
        port = backend["port"].get("name") or backend["port"].get("number")
        if backend["name"] != "dagster-webserver" or port not in (service["ports"][0].get("name"),
                                                                  service["ports"][0]["port"]):
            problems.append(f"an Ingress routes to {backend}, not to the dagster-webserver Service")

    for name, svc in d.compose["services"].items():
        sockets = [v for v in svc.get("volumes", []) if "docker.sock" in str(v)]
        if sockets and name != SOCKET_PROXY:
            problems.append(f"compose {name} mounts the Docker socket")
        if svc.get("ports") and name != "ui-auth":
            problems.append(f"compose {name} publishes {svc['ports']}")
    auth = d.compose["services"].get("ui-auth", {})
    if not all(str(p).startswith("127.0.0.1:") for p in auth.get("ports", [None])):
        problems.append("compose ui-auth is published beyond the host's loopback")
    if "--upstream=http://dagster-webserver:3000/" not in auth.get("command", []):
        problems.append("compose ui-auth does not forward to the webserver")
    proxy_env = d.compose["services"].get(SOCKET_PROXY, {}).get("environment", {})
    if {k for k, v in proxy_env.items() if str(v) == "1"} != {"CONTAINERS", "IMAGES", "POST"}:
        problems.append(f"the Docker socket proxy allows {proxy_env}")
    networks = d.compose.get("networks", {})
    joined = {n for n, s in d.compose["services"].items() if "docker-api" in s.get("networks", [])}
    if not (networks.get("docker-api") or {}).get("internal") or joined != {
            SOCKET_PROXY, "dagster-daemon", "dagster-webserver"}:
        problems.append(f"the docker-api network is not internal to the daemon and webserver: {joined}")
    if "no login of its own" not in d.texts["deploy/README.md"]:
        problems.append("deploy/README.md does not say the UI has no login of its own")
    return problems


POSTGRES_URL = re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^\s`'\"|)]+")


def postgres_tls_problems(d: Deploy) -> list[str]:
    """Every example Postgres URL requires TLS, and so does Dagster's storage."""
    problems = []
    for path in URL_FILES:
        urls = [u for u in POSTGRES_URL.findall(d.texts[path]) if "@" in u]
        problems += [f"{path}: {url} without sslmode=require" for url in urls
                     if not re.search(r"[?&]sslmode=(require|verify-ca|verify-full)\b", url)]
    for name, instance in (("dagster.yaml", d.docker_instance), ("k8s/dagster.yaml", d.k8s_instance)):
        params = instance["storage"]["postgres"]["postgres_db"].get("params") or {}
        if params.get("sslmode") not in ("require", "verify-ca", "verify-full"):
            problems.append(f"{name}: Dagster's storage sslmode is {params.get('sslmode')!r}")
    return problems
