"""Where the local stack lives and how to reach it, from environment variables.

Read only when called (never at import time). Every setting has a loopback default so that a
fresh clone works with no configuration; each can be overridden for another port, another state
folder, or an existing Postgres server.

| variable | default | meaning |
|---|---|---|
| ``CONFLUX_PROJECT`` | the nearest folder above the working directory whose ``pyproject.toml`` has ``[tool.conflux]`` | the user project: its catalog, workspace and state folder (``conflux.core.project``) |
| ``CONFLUX_HOME`` | ``<project>/.conflux`` | state folder: pid files, logs, broker data, Postgres cluster, lake |
| ``CONFLUX_CACHE`` | ``~/.cache/conflux`` | downloads reused across clones (the Kafka jars) |
| ``CONFLUX_KAFKA_PORT`` | 9092 | broker listener on 127.0.0.1 |
| ``CONFLUX_KAFKA_CONTROLLER_PORT`` | 9093 | KRaft controller listener on 127.0.0.1 |
| ``CONFLUX_KAFKA_HEAP`` | ``1g`` (``512m`` per node of a cluster) | broker ``-Xmx`` (and ``-Xms`` half of it) |
| ``CONFLUX_KAFKA_BROKERS`` | 1 | local KRaft nodes (1..5; 3 for a cluster that survives a broker's loss): node *i* listens on ``CONFLUX_KAFKA_PORT + 2(i-1)`` and its controller on ``CONFLUX_KAFKA_CONTROLLER_PORT + 2(i-1)`` |
| ``CONFLUX_PG_PORT`` | 15432 | local Postgres on 127.0.0.1 (not 5432, to leave a system server alone) |
| ``CONFLUX_POSTGRES_URL`` | (local cluster) | use an existing server instead of starting one |
| ``CONFLUX_DAGSTER_PORT`` | 3000 | Dagster webserver on 127.0.0.1 |
| ``CONFLUX_METRICS_PORT`` | ``CONFLUX_DAGSTER_PORT`` + 100 (3100) | the Prometheus metrics endpoint (``conflux-metrics``) on 127.0.0.1; its URL, ``http://127.0.0.1:$CONFLUX_METRICS_PORT/metrics``, is ``CONFLUX_METRICS_URL`` in ``conflux stack env`` (``docs/metrics.md``) |
| ``CONFLUX_SCHEMA_REGISTRY_PORT`` | ``CONFLUX_DAGSTER_PORT`` + 200 (3200) | the Confluent-compatible Schema Registry API (``conflux-schema-registry``) on 127.0.0.1; its URL, ``http://127.0.0.1:$CONFLUX_SCHEMA_REGISTRY_PORT``, is ``CONFLUX_SCHEMA_REGISTRY_URL`` in ``conflux stack env`` (``docs/schema-registry.md``) |
| ``CONFLUX_SCHEMA_REGISTRY_USER`` | (none: no authentication) | with ``CONFLUX_SCHEMA_REGISTRY_PASSWORD``, the HTTP basic credentials the Schema Registry API requires on every request; unset, the API is unauthenticated and reachable from this machine only (loopback) |
| ``CONFLUX_SCHEMA_REGISTRY_PASSWORD`` | (none) | its password: a secret, read from the environment of the service only, never printed or put on a command line; required when ``CONFLUX_SCHEMA_REGISTRY_USER`` is set |
| ``CONFLUX_BIND_HOST`` | ``127.0.0.1`` | address every local server binds to |
| ``CONFLUX_WORKSPACE`` | ``<project>/workspace.yaml``, else one made from ``[tool.dagster] module_name`` in ``$CONFLUX_HOME`` | workspace the Dagster webserver and daemon load (they run from the project folder) |
| ``CONFLUX_KAFKA_SECURITY`` | ``plaintext`` | the local broker's client listener: ``plaintext``, ``sasl_plaintext`` (SASL/SCRAM) or ``sasl_ssl`` (SASL/SCRAM over TLS, with a local CA under ``$CONFLUX_HOME/kafka/tls``), and then ACLs on and the controller listener on SASL/PLAIN (``docs/security.md``); the controller listener stays on loopback |
| ``KAFKA_SECURITY_PROTOCOL`` | from ``CONFLUX_KAFKA_SECURITY`` | how clients reach Kafka: ``PLAINTEXT``, ``SASL_PLAINTEXT``, ``SASL_SSL`` or ``SSL`` |
| ``KAFKA_SASL_MECHANISM`` | ``SCRAM-SHA-512`` | ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` or ``PLAIN`` (SASL protocols only) |
| ``KAFKA_SASL_USERNAME`` | (none) | SASL user of the clients: the platform's principal (sensors, runs, the CLI); with a secured local broker, the stack creates its SCRAM credential and least-privilege ACLs at every start (``docs/security.md``) |
| ``KAFKA_SASL_PASSWORD`` | (none) | its password: a secret, read from the environment only (Dagster resources get it through ``dg.EnvVar``), never printed, logged, written to disk or put on a command line by Conflux |
| ``CONFLUX_KAFKA_ADMIN_USERNAME`` | ``conflux-admin`` | a secured local broker's admin principal: its only super user, the broker's own login (inter-broker and controller listeners), used by the stack alone to create topics, SCRAM users and ACLs (never by sensors, runs or the CLI); fixed when the storage is formatted |
| ``CONFLUX_KAFKA_ADMIN_PASSWORD`` | (none; required with ``CONFLUX_KAFKA_SECURITY`` other than ``plaintext``) | its password: a secret, read from the environment of ``conflux stack up`` only (the broker reads it through Kafka's ``EnvVarConfigProvider``), never written to disk or put on a command line |
| ``CONFLUX_KAFKA_PRODUCERS`` | (none) | producer teams' principals the secured local broker grants ``WRITE`` and ``DESCRIBE`` on their topics at every start: ``user=topic[,topic...]`` entries separated by ``;`` (e.g. ``team-orders=tpch.orders``); their SCRAM users are created by whoever holds the admin password (``docs/security.md``) |
| ``KAFKA_SSL_CAFILE`` | the local CA with ``sasl_ssl``, else the system's trust store | PEM file of the CA(s) that signed the brokers' certificates (``SSL``/``SASL_SSL``) |
| ``CONFLUX_LAKE_PATH`` | ``$CONFLUX_HOME/lake`` | an ``s3://bucket/prefix`` URL puts the stack's lake on S3 or an S3-compatible store (a local path here is ignored: the local lake is always the state folder's); concurrent writers are serialized by Delta's commit protocol (conditional PUT on S3), no lock service |
| ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` | (AWS defaults) | how an ``s3://`` lake is reached (``conflux/io/lake.py``); not read here, passed unchanged to every Dagster process the stack starts |
| ``CONFLUX_LAKE_MAINTENANCE`` | ``on`` | ``off``: the lake maintenance schedules (``lake_optimize_schedule``, ``lake_vacuum_schedule``, ``lake_checkpoint_schedule``) start STOPPED instead of RUNNING; the jobs stay defined and can be run (or the schedules turned on) from the UI (``docs/lake-maintenance.md``) |
| ``CONFLUX_AUTOMATION`` | ``on`` | ``off``: the ``conflux_automation`` sensor, which evaluates the code location's declarative automation (batch datasets declared with ``automation=True`` — joins refreshed as their upstream partitions change, late events included), starts STOPPED instead of RUNNING; it can be turned on (and off) from the UI's *Automation* page, and the schedules and backfills work either way (``docs/architecture.md``) |
| ``CONFLUX_AUTOMATION_INTERVAL_SECONDS`` | 30 | least time between two evaluations of ``conflux_automation`` by the daemon's asset loop (at least 5, which is that loop's own period): each evaluation requests at most one run (or one backfill of single runs) per stale asset, so this bounds how often joins are re-run while events flow |
| ``CONFLUX_LAKE_VACUUM_RETENTION_HOURS`` | 168 (7 days) | default retention of the ``lake_vacuum`` job: files a table stopped referencing longer ago than this are deleted, so time travel reaches back this far and no further; at least 1 (a run may set its own ``retention_hours``) |
| ``CONFLUX_RUN_WORKERS`` | ``local`` for the stack's Dagster processes, else unset | ``local``: run workers are processes of the machine the sensors run on, so the ``conflux_run_workers`` sensor marks a started run failed when its worker's pid is gone (killed); unset (Docker, Kubernetes, other machines), that sensor only skips and the run launcher watches its workers (``conflux/observe/run_workers.py``) |
| ``CONFLUX_NOTIFY_WEBHOOK_URL`` | (off) | an ``http(s)://`` webhook taking Slack-compatible JSON (a Slack incoming webhook, Mattermost, a relay): failed runs, failing ``dead_letters`` / ``freshness_check`` / ``matches_batch_source`` checks and Kafka sensors that stop catching up are posted there, each with a link to its UI page, by the ``conflux_notify`` and ``conflux_notify_run_failures`` sensors, which exist only when this is set (``docs/notifications.md``); not read here, passed unchanged to every Dagster process the stack starts |
| ``CONFLUX_UI_URL`` | ``http://127.0.0.1:$CONFLUX_DAGSTER_PORT`` | the Dagster UI's address as the people notified reach it (behind a proxy or an ingress): notifications link to its pages |
| ``CONFLUX_NOTIFY_STALL_SECONDS`` | 120 | an event dataset whose Kafka sensor made no observation, or none caught up, for this long is notified as not catching up (and again when it catches up); at least 30 (the sensors observe every 10-15 s) |
| ``OPENLINEAGE_URL`` or ``OPENLINEAGE__TRANSPORT__*`` or ``OPENLINEAGE_CONFIG`` | (off) | OpenLineage run events (``conflux/observe/openlineage.py``: HTTP endpoint, file, ...); not read here, passed unchanged to every Dagster process the stack starts (daemon, webserver, their code servers and runs) |
| ``OPENLINEAGE_NAMESPACE`` | ``conflux`` | namespace of Conflux's jobs in OpenLineage events |
| ``OPENLINEAGE_DISABLED`` | (unset) | ``true``: no OpenLineage events, whatever else is set |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conflux.core.errors import ConfigError
from conflux.core.project import Project

KAFKA_VERSION = "4.1.1"
MAX_KAFKA_BROKERS = 5


def _int_env(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None
    if not 0 < value < 65536:
        raise ConfigError(f"{name}={value} is outside 1..65535")
    return value


# CONFLUX_KAFKA_SECURITY → the client listener's security protocol
KAFKA_SECURITY_MODES = {"plaintext": "PLAINTEXT", "sasl_plaintext": "SASL_PLAINTEXT",
                        "sasl_ssl": "SASL_SSL"}


def _metrics_default(dagster_port: int) -> int:
    """The metrics port of a stack without CONFLUX_METRICS_PORT: beside its Dagster port, so
    stacks apart by their Dagster ports are apart by this one too."""
    return dagster_port + 100 if dagster_port + 100 <= 65535 else dagster_port - 100


def _schema_registry_default(dagster_port: int) -> int:
    """The Schema Registry API's port without CONFLUX_SCHEMA_REGISTRY_PORT: the Dagster port
    + 200 (one per stack, like the metrics port)."""
    return dagster_port + 200 if dagster_port + 200 <= 65535 else dagster_port - 200


def to_psycopg2_url(url: str) -> str:
    """``postgresql://...`` (any driver suffix) → ``postgresql+psycopg2://...``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {url.split('@')[-1]!r}")
    return f"postgresql+psycopg2://{rest}"


DEFAULT_VACUUM_RETENTION_HOURS = 168  # 7 days: time travel a week back keeps working
MIN_VACUUM_RETENTION_HOURS = 1  # below it, vacuum could delete files a running writer just added


def vacuum_retention_hours(value: int | str, what: str = "CONFLUX_LAKE_VACUUM_RETENTION_HOURS"
                           ) -> int:
    """A vacuum retention in whole hours, refused below ``MIN_VACUUM_RETENTION_HOURS``."""
    try:
        hours = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what}={value!r} is not a number of hours") from None
    if hours < MIN_VACUUM_RETENTION_HOURS:
        raise ConfigError(
            f"{what}={hours} is below the minimum of {MIN_VACUUM_RETENTION_HOURS} hour: vacuum "
            "would delete files that running writers and readers may still need, and time "
            f"travel would end there; use {DEFAULT_VACUUM_RETENTION_HOURS} (7 days, the default) "
            "or at least 1")
    return hours


def on_off(env: Mapping[str, str], name: str) -> bool:
    """An ``on``/``off`` switch (default ``on``), refused with the variable named otherwise."""
    switch = (env.get(name) or "on").strip().lower()
    if switch not in ("on", "off"):
        raise ConfigError(f"{name}={switch!r} must be 'on' or 'off'")
    return switch == "on"


def seconds_env(env: Mapping[str, str], name: str, default: int, minimum: int,
                why: str = "") -> int:
    """A whole number of seconds of at least ``minimum`` (``default`` when unset), refused with
    the variable named otherwise."""
    raw = (env.get(name) or "").strip() or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name}={raw!r} must be a whole number of seconds, at least "
                          f"{minimum}" + (f" ({why})" if why else ""))
    return int(raw)


_PRINCIPAL = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # SCRAM user names the stack accepts
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names


def producer_principals(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``CONFLUX_KAFKA_PRODUCERS`` (``user=topic[,topic];...``) as ``((user, topics), ...)``,
    refused with the variable named when an entry is malformed."""
    found: dict[str, list[str]] = {}
    for entry in (e.strip() for e in raw.split(";")):
        if not entry:
            continue
        user, sep, topics = (part.strip() for part in entry.partition("="))
        names = [t.strip() for t in topics.split(",") if t.strip()]
        if not sep or not _PRINCIPAL.match(user) or not names or not all(map(_TOPIC.match, names)):
            raise ConfigError(f"CONFLUX_KAFKA_PRODUCERS: {entry!r} is not user=topic[,topic...] "
                              "(user: 1-128 of A-Z a-z 0-9 . _ -; entries separated by ;)")
        found.setdefault(user, []).extend(n for n in names if n not in found.get(user, []))
    return tuple((user, tuple(topics)) for user, topics in found.items())


DEFAULT_AUTOMATION_INTERVAL_SECONDS = 30
MIN_AUTOMATION_INTERVAL_SECONDS = 5  # the daemon's asset loop runs every 5 s at best


@dataclass(frozen=True)
class Automation:
    """Declarative automation's settings (``conflux.dagster.automation``)."""

    enabled: bool = True  # CONFLUX_AUTOMATION: the sensor starts RUNNING (else STOPPED)
    interval_seconds: int = DEFAULT_AUTOMATION_INTERVAL_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Automation":
        """Only the two ``CONFLUX_AUTOMATION*`` variables (what the Dagster definitions need)."""
        env = os.environ if env is None else env
        interval = seconds_env(env, "CONFLUX_AUTOMATION_INTERVAL_SECONDS",
                               DEFAULT_AUTOMATION_INTERVAL_SECONDS, MIN_AUTOMATION_INTERVAL_SECONDS,
                               "the daemon evaluates automation every 5 s at best")
        return cls(enabled=on_off(env, "CONFLUX_AUTOMATION"), interval_seconds=interval)


@dataclass(frozen=True)
class LakeMaintenance:
    """The lake maintenance jobs' settings (``conflux.dagster.maintenance``)."""

    enabled: bool = True  # CONFLUX_LAKE_MAINTENANCE: the schedules start RUNNING (else STOPPED)
    vacuum_retention_hours: int = DEFAULT_VACUUM_RETENTION_HOURS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LakeMaintenance":
        """Only the two ``CONFLUX_LAKE_*`` maintenance variables (what the Dagster definitions
        need, without the rest of the stack's settings)."""
        env = os.environ if env is None else env
        raw = env.get("CONFLUX_LAKE_VACUUM_RETENTION_HOURS") or ""
        hours = vacuum_retention_hours(raw) if raw.strip() else DEFAULT_VACUUM_RETENTION_HOURS
        return cls(enabled=on_off(env, "CONFLUX_LAKE_MAINTENANCE"), vacuum_retention_hours=hours)


@dataclass(frozen=True)
class Settings:
    """Resolved locations and ports of the local stack."""

    home: Path
    cache: Path
    bind_host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str
    pg_port: int
    external_pg_url: str | None
    dagster_port: int
    workspace: Path
    metrics_port: int = 3100  # CONFLUX_METRICS_PORT, else dagster_port + 100 (one per stack)
    # CONFLUX_SCHEMA_REGISTRY_PORT, else dagster_port + 200; CONFLUX_SCHEMA_REGISTRY_USER: basic
    # auth on (its password is read from the environment by the service only)
    schema_registry_port: int = 3200
    schema_registry_user: str | None = None
    kafka_security: str = "plaintext"  # CONFLUX_KAFKA_SECURITY: the local broker's listener
    # how clients reach Kafka (KAFKA_* variables, else derived from kafka_security); never the
    # password, which is read from the environment when a client is built
    kafka_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_brokers: int = 1  # CONFLUX_KAFKA_BROKERS: local KRaft nodes (broker + controller each)
    kafka_admin_username: str = "conflux-admin"  # CONFLUX_KAFKA_ADMIN_USERNAME (secured broker)
    # CONFLUX_KAFKA_PRODUCERS: (user, topics) granted WRITE on those topics by a secured broker
    kafka_producers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    lake_url: str | None = None  # CONFLUX_LAKE_PATH when it is an object-store URL (s3://...)
    project_root: Path = Path(".")  # the user project (CONFLUX_PROJECT, else found from cwd)
    lake_maintenance: LakeMaintenance = LakeMaintenance()  # CONFLUX_LAKE_MAINTENANCE, ..._HOURS
    automation: Automation = Automation()  # CONFLUX_AUTOMATION, ..._INTERVAL_SECONDS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        project = Project.find(env)
        home = Path(env.get("CONFLUX_HOME") or project.root / ".conflux").expanduser().resolve()
        cache = Path(env.get("CONFLUX_CACHE") or Path.home() / ".cache" / "conflux").expanduser()
        brokers_raw = (env.get("CONFLUX_KAFKA_BROKERS") or "1").strip()
        if not brokers_raw.isdigit() or not 1 <= int(brokers_raw) <= MAX_KAFKA_BROKERS:
            raise ConfigError(f"CONFLUX_KAFKA_BROKERS={brokers_raw!r} must be a number of local "
                              f"Kafka nodes from 1 to {MAX_KAFKA_BROKERS} (3 for a cluster that "
                              "survives the loss of one broker)")
        brokers = int(brokers_raw)
        heap = env.get("CONFLUX_KAFKA_HEAP") or ("1g" if brokers == 1 else "512m")
        if not heap[:-1].isdigit() or heap[-1].lower() not in "mg":
            raise ConfigError(f"CONFLUX_KAFKA_HEAP={heap!r} must look like 512m or 1g")
        security = (env.get("CONFLUX_KAFKA_SECURITY") or "plaintext").strip().lower()
        if security not in KAFKA_SECURITY_MODES:
            raise ConfigError(f"CONFLUX_KAFKA_SECURITY={security!r} must be one of "
                              f"{', '.join(KAFKA_SECURITY_MODES)}")
        lake = (env.get("CONFLUX_LAKE_PATH") or "").strip()
        cafile = env.get("KAFKA_SSL_CAFILE") or None
        if cafile is None and security == "sasl_ssl":
            cafile = str(home / "kafka" / "tls" / "ca.pem")
        settings = cls(
            home=home,
            cache=cache.resolve(),
            bind_host=env.get("CONFLUX_BIND_HOST", "127.0.0.1"),
            kafka_port=_int_env(env, "CONFLUX_KAFKA_PORT", 9092),
            kafka_controller_port=_int_env(env, "CONFLUX_KAFKA_CONTROLLER_PORT", 9093),
            kafka_heap=heap,
            pg_port=_int_env(env, "CONFLUX_PG_PORT", 15432),
            external_pg_url=env.get("CONFLUX_POSTGRES_URL") or None,
            dagster_port=_int_env(env, "CONFLUX_DAGSTER_PORT", 3000),
            metrics_port=_int_env(env, "CONFLUX_METRICS_PORT",
                                  _metrics_default(_int_env(env, "CONFLUX_DAGSTER_PORT", 3000))),
            schema_registry_port=_int_env(
                env, "CONFLUX_SCHEMA_REGISTRY_PORT",
                _schema_registry_default(_int_env(env, "CONFLUX_DAGSTER_PORT", 3000))),
            schema_registry_user=(env.get("CONFLUX_SCHEMA_REGISTRY_USER") or "").strip() or None,
            workspace=Path(env.get("CONFLUX_WORKSPACE") or project.workspace_file
                           or home / "workspace.yaml").resolve(),
            kafka_security=security,
            kafka_protocol=(env.get("KAFKA_SECURITY_PROTOCOL") or KAFKA_SECURITY_MODES[security]
                            ).strip().upper(),
            kafka_sasl_mechanism=(env.get("KAFKA_SASL_MECHANISM") or "SCRAM-SHA-512").strip().upper(),
            kafka_sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            kafka_ssl_cafile=cafile,
            kafka_brokers=brokers,
            kafka_admin_username=(env.get("CONFLUX_KAFKA_ADMIN_USERNAME") or "conflux-admin").strip(),
            kafka_producers=producer_principals(env.get("CONFLUX_KAFKA_PRODUCERS") or ""),
            lake_url=lake if lake.startswith("s3://") else None,
            project_root=project.root,
            lake_maintenance=LakeMaintenance.from_env(env),
            automation=Automation.from_env(env),
        )
        node_ports = [p for i in settings.kafka_nodes for p in settings.kafka_node_ports(i)]
        if max(node_ports) > 65535:
            raise ConfigError(f"CONFLUX_KAFKA_BROKERS={brokers} needs ports up to "
                              f"{max(node_ports)}, beyond 65535")
        ports = [*node_ports, settings.dagster_port, settings.metrics_port,
                 settings.schema_registry_port]
        if settings.external_pg_url is None:
            ports.append(settings.pg_port)
        if len(set(ports)) != len(ports):
            shifted = (f" (with CONFLUX_KAFKA_BROKERS={brokers}, Kafka node i uses the Kafka "
                       "ports + 2(i-1))" if brokers > 1 else "")
            raise ConfigError(f"the stack's ports must differ, got {sorted(ports)}{shifted}")
        return settings

    # --- derived locations -------------------------------------------------------------------
    @property
    def kafka_nodes(self) -> range:
        """The local Kafka node ids, 1-based."""
        return range(1, self.kafka_brokers + 1)

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """(client, controller) port of local Kafka node ``node``: the configured pair shifted
        by 2 per node after the first."""
        return self.kafka_port + 2 * (node - 1), self.kafka_controller_port + 2 * (node - 1)

    def kafka_node_dir(self, node: int) -> Path:
        """Configuration and data of node ``node`` (node 1 keeps the single broker's folder)."""
        return self.kafka_dir if node == 1 else self.kafka_dir / f"node-{node}"

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"{self.bind_host}:{self.kafka_node_ports(i)[0]}" for i in self.kafka_nodes)

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def kafka_tls_dir(self) -> Path:
        """The local broker's CA and server certificate (``sasl_ssl``)."""
        return self.kafka_dir / "tls"

    @property
    def kafka_libs(self) -> Path:
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def pg_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def postgres_url(self) -> str:
        if self.external_pg_url:
            return self.external_pg_url
        return f"postgresql://conflux@{self.bind_host}:{self.pg_port}/conflux"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def lake_path(self) -> Path:
        """The local lake folder (used unless ``lake_url`` is set)."""
        return self.home / "lake"

    @property
    def lake_location(self) -> str:
        """Where the stack's lake is: the ``s3://`` URL of ``CONFLUX_LAKE_PATH``, else the
        local folder."""
        return self.lake_url or str(self.lake_path)

    @property
    def run_dir(self) -> Path:
        """Pid files."""
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def dagster_url(self) -> str:
        return f"http://{self.bind_host}:{self.dagster_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.bind_host}:{self.metrics_port}/metrics"

    @property
    def schema_registry_url(self) -> str:
        """Base URL of the Confluent-compatible Schema Registry API (``conflux-schema-registry``)."""
        return f"http://{self.bind_host}:{self.schema_registry_port}"

    @property
    def dagster_pg_url(self) -> str:
        """The same database for dagster-postgres, through the psycopg2 driver.

        SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, whose server-side parameter binding
        breaks statements dagster-postgres sends (``NOTIFY ..., :id``); psycopg2 binds on the
        client and works.
        """
        return to_psycopg2_url(self.postgres_url)

    def kafka_client_env(self) -> dict[str, str]:
        """How a client reaches Kafka, minus the password (``KAFKA_SASL_PASSWORD``, which
        stays in the environment it came from)."""
        env = {"KAFKA_SECURITY_PROTOCOL": self.kafka_protocol}
        if self.kafka_protocol.startswith("SASL_"):
            env["KAFKA_SASL_MECHANISM"] = self.kafka_sasl_mechanism
            if self.kafka_sasl_username:
                env["KAFKA_SASL_USERNAME"] = self.kafka_sasl_username
        if self.kafka_protocol.endswith("SSL") and self.kafka_ssl_cafile:
            env["KAFKA_SSL_CAFILE"] = self.kafka_ssl_cafile
        return env

    def client_env(self) -> dict[str, str]:
        """The variables a client of this stack needs (printed by ``conflux stack env``)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            **self.kafka_client_env(),
            "CONFLUX_POSTGRES_URL": self.postgres_url,
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "DAGSTER_HOME": str(self.dagster_home),
            "CONFLUX_LAKE_PATH": self.lake_location,
            "CONFLUX_DAGSTER_URL": self.dagster_url,
            "CONFLUX_METRICS_URL": self.metrics_url,
            "CONFLUX_SCHEMA_REGISTRY_URL": self.schema_registry_url,
        }
