"""The local stack: Kafka, Postgres, Dagster webserver and daemon, the metrics endpoint, the
Schema Registry API, started and stopped by PID.

With ``CONFLUX_KAFKA_BROKERS=N`` Kafka is N services, ``kafka`` (node 1) and ``kafka-2`` ..
``kafka-N``; selecting ``kafka`` means all of them, ``kafka-1`` node 1 alone. They are launched
together, then awaited one by one, and stopped together (a KRaft quorum needs most of its
voters running to start, and to let its brokers shut down cleanly).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from conflux.core.errors import ConfigError, UsageError
from conflux.core.settings import Settings
from conflux.stack.dagster import DagsterDaemon, DagsterWebserver
from conflux.stack.kafka import Kafka, node_name
from conflux.stack.metrics import MetricsExporter
from conflux.stack.postgres import ExternalPostgres, Postgres
from conflux.stack.schema_registry import SchemaRegistryApi
from conflux.stack.service import Service, ServiceStatus

SERVICE_NAMES = ("postgres", "kafka", "dagster-webserver", "dagster-daemon", "conflux-metrics",
                 "conflux-schema-registry")
GROUPS = {"dagster": ("dagster-webserver", "dagster-daemon"), "all": SERVICE_NAMES}


def service_names(brokers: int = 1) -> tuple[str, ...]:
    """The services of a stack with ``brokers`` Kafka nodes, in start order."""
    nodes = tuple(node_name(i) for i in range(1, brokers + 1))
    return ("postgres", *nodes, "dagster-webserver", "dagster-daemon", "conflux-metrics",
            "conflux-schema-registry")


def select(names: Iterable[str] | None, brokers: int = 1) -> list[str]:
    """Expand a service selection ("all", "dagster", "kafka" — every Kafka node —, or names) in
    start order; ``None`` means all of them and an empty selection none (``down(started)``
    after an ``up`` that started nothing must stop nothing)."""
    universe = service_names(brokers)
    groups = {**GROUPS, "all": universe, "kafka": tuple(n for n in universe if n.startswith("kafka"))}
    if brokers > 1:
        groups["kafka-1"] = ("kafka",)
    wanted: set[str] = set()
    for name in ["all"] if names is None else list(names):
        if name in groups:
            wanted.update(groups[name])
        elif name in universe:
            wanted.add(name)
        else:
            raise UsageError(f"unknown service {name!r}; choose from "
                             f"{', '.join(dict.fromkeys([*groups, *universe]))}")
    return [n for n in universe if n in wanted]


class Stack:
    """The services of one ``CONFLUX_HOME``."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        pg: Service = (ExternalPostgres(self.settings) if self.settings.external_pg_url
                       else Postgres(self.settings))
        self.kafka_nodes = [node_name(i) for i in self.settings.kafka_nodes]
        self.services: dict[str, Service] = {
            "postgres": pg,
            **{node_name(i): Kafka(self.settings, i) for i in self.settings.kafka_nodes},
            "dagster-webserver": DagsterWebserver(self.settings),
            "dagster-daemon": DagsterDaemon(self.settings),
            "conflux-metrics": MetricsExporter(self.settings),
            "conflux-schema-registry": SchemaRegistryApi(self.settings),
        }

    @property
    def names(self) -> tuple[str, ...]:
        return service_names(self.settings.kafka_brokers)

    def select(self, names: Iterable[str] | None) -> list[str]:
        return select(names, self.settings.kafka_brokers)

    def up(self, names: Iterable[str] | None = None, report: Callable[[str], None] = print) -> list[str]:
        """Start the selected services (idempotent); returns the names this call started. When
        a service fails to start (or Ctrl-C comes), the ones this call had started are stopped
        again before the error goes on: a failed start leaves nothing of its own running."""
        from conflux.stack.platform import ensure_platform_topics, register_contracts

        started: list[str] = []
        selected = self.select(names)
        nodes = [n for n in selected if n in self.kafka_nodes]
        try:
            for name in selected:
                if name in nodes:
                    if name == nodes[0]:
                        started += self._up_kafka(nodes, report)
                        ensure_platform_topics(self.settings, report)
                    continue
                service = self.services[name]
                was_running = service.status().running
                report(service.up())
                if not was_running and not isinstance(service, ExternalPostgres):
                    started.append(name)
                if name == "postgres":
                    register_contracts(self.settings, report)
        except BaseException:
            if started:
                report(f"start failed: stopping what it had started ({', '.join(started)})")
                self.down(started, report=report)
            raise
        return started

    def gone(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` whose process has exited, by pid file alone (cheap enough to poll
        every few seconds); an external Postgres is never gone."""
        return [n for n in names if not isinstance(self.services[n], ExternalPostgres)
                and self.services[n].pidfile.live_pid() is None]

    def _up_kafka(self, nodes: list[str], report: Callable[[str], None]) -> list[str]:
        """Launch the Kafka ``nodes``, then wait for each (no node of a 3-voter quorum is
        healthy alone); returns the nodes started. On a failure the nodes this call spawned
        are stopped again."""
        services = [self.services[n] for n in nodes]
        launches = []
        try:
            for service in services:
                launches.append(service.launch())
            for service, launch in zip(services, launches):
                report(service.await_up(launch))
        except BaseException:
            for service, launch in zip(services, launches):
                service.abort(launch)
            raise
        return [n for n, launch in zip(nodes, launches) if launch.proc is not None]

    def down(self, names: Iterable[str] | None = None, report: Callable[[str], None] = print) -> None:
        selected = self.select(names)
        nodes = [n for n in selected if n in self.kafka_nodes]
        for name in reversed(selected):
            if name not in nodes:
                report(self.services[name].down())
            elif name == nodes[-1]:  # all together: the last voters would wait for a quorum
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(len(nodes)) as pool:
                    for line in pool.map(lambda n: self.services[n].down(), nodes):
                        report(line)
        if strays := self.end_strays():
            report(f"dagster: ended {len(strays)} stray process(es) of this stack "
                   f"(pids {', '.join(map(str, strays))})")

    def end_strays(self) -> list[int]:
        """Once neither Dagster service runs: end the orphaned processes that still carry this
        stack's ``DAGSTER_HOME`` — code servers whose daemon or webserver was killed (seen
        hung, deaf to SIGTERM, an hour later) and compute-log tails of killed run workers.
        Returns their pids."""
        from conflux.stack.procs import orphans_with, stop_pid

        if any(self.services[n].status().running for n in ("dagster-webserver", "dagster-daemon")):
            return []
        # a service restarted by a client of the stack (the chaos harness) inherits its
        # DAGSTER_HOME and is orphaned when that client exits: it is still a service, not a stray
        services = {s.pidfile.live_pid() for s in self.services.values()}
        strays = [pid for pid in orphans_with(f"DAGSTER_HOME={self.settings.dagster_home}")
                  if pid not in services]
        for pid in strays:
            stop_pid(pid, timeout=5)
        return strays

    def status(self) -> list[ServiceStatus]:
        return [self.services[n].status() for n in self.names]

    def reset(self, report: Callable[[str], None] = print) -> None:
        """Stop everything and wipe broker data, the local databases and the lake. A lake on
        object storage (``CONFLUX_LAKE_PATH=s3://...``) is not touched: it may be shared, and
        its prefix is the store's business; the report says so."""
        if self.settings.external_pg_url:
            raise ConfigError("stack reset wipes the local Postgres cluster only; with "
                              "CONFLUX_POSTGRES_URL set, drop that database yourself")
        self.down(report=report)
        s = self.settings
        # every node's data a cluster of any size left, and its shared id
        (s.kafka_dir / "cluster.id").unlink(missing_ok=True)
        nodes = [(f"kafka {d.parent.name} data", d) for d in sorted(s.kafka_dir.glob("node-*/data"))]
        for what, path in [("kafka data", s.kafka_dir / "data"), *nodes,
                           ("postgres cluster", s.pg_dir), ("lake", s.lake_path),
                           ("dagster storage", s.dagster_home)]:
            existed = path.exists()
            shutil.rmtree(path, ignore_errors=True)
            report(f"reset: {'wiped' if existed else 'nothing to wipe in'} {what} ({path})")
        if s.lake_url:
            report(f"reset: left the object-store lake {s.lake_url} alone (not wiped; delete "
                   "that prefix with your store's tools if you mean to)")
