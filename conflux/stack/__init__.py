"""The local stack: Kafka, Postgres, Dagster webserver and daemon, started and stopped by PID."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from conflux.errors import ConfigError
from conflux.settings import Settings
from conflux.stack.dagster import DagsterDaemon, DagsterWebserver
from conflux.stack.kafka import Kafka
from conflux.stack.postgres import ExternalPostgres, Postgres
from conflux.stack.service import Service, ServiceStatus

SERVICE_NAMES = ("postgres", "kafka", "dagster-webserver", "dagster-daemon")
GROUPS = {"dagster": ("dagster-webserver", "dagster-daemon"), "all": SERVICE_NAMES}


def select(names: Iterable[str] | None) -> list[str]:
    """Expand a service selection ("all", "dagster", or names) in start order; ``None`` means
    all of them and an empty selection none (``down(started)`` after an ``up`` that started
    nothing must stop nothing)."""
    wanted: set[str] = set()
    for name in ["all"] if names is None else list(names):
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SERVICE_NAMES:
            wanted.add(name)
        else:
            raise ConfigError(f"unknown service {name!r}; choose from "
                              f"{', '.join([*GROUPS, *SERVICE_NAMES])}")
    return [n for n in SERVICE_NAMES if n in wanted]


class Stack:
    """The services of one ``CONFLUX_HOME``."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        pg: Service = (ExternalPostgres(self.settings) if self.settings.external_pg_url
                       else Postgres(self.settings))
        self.services: dict[str, Service] = {
            "postgres": pg,
            "kafka": Kafka(self.settings),
            "dagster-webserver": DagsterWebserver(self.settings),
            "dagster-daemon": DagsterDaemon(self.settings),
        }

    def up(self, names: Iterable[str] | None = None, report: Callable[[str], None] = print) -> list[str]:
        """Start the selected services (idempotent); returns the names this call started."""
        started = []
        for name in select(names):
            service = self.services[name]
            was_running = service.status().running
            report(service.up())
            if name == "kafka":
                from conflux.platform import ensure_platform_topics

                ensure_platform_topics(self.settings, report)
            if name == "postgres":
                from conflux.platform import register_contracts

                register_contracts(self.settings, report)
            if not was_running and not isinstance(service, ExternalPostgres):
                started.append(name)
        return started

    def down(self, names: Iterable[str] | None = None, report: Callable[[str], None] = print) -> None:
        for name in reversed(select(names)):
            report(self.services[name].down())
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
        strays = orphans_with(f"DAGSTER_HOME={self.settings.dagster_home}")
        for pid in strays:
            stop_pid(pid, timeout=5)
        return strays

    def status(self) -> list[ServiceStatus]:
        return [self.services[n].status() for n in SERVICE_NAMES]

    def reset(self, report: Callable[[str], None] = print) -> None:
        """Stop everything and wipe broker data, the local databases and the lake."""
        if self.settings.external_pg_url:
            raise ConfigError("stack reset wipes the local Postgres cluster only; with "
                              "CONFLUX_POSTGRES_URL set, drop that database yourself")
        self.down(report=report)
        s = self.settings
        for what, path in [("kafka data", s.kafka_dir / "data"), ("postgres cluster", s.pg_dir),
                           ("lake", s.lake_path), ("dagster storage", s.dagster_home)]:
            existed = path.exists()
            shutil.rmtree(path, ignore_errors=True)
            report(f"reset: {'wiped' if existed else 'nothing to wipe in'} {what} ({path})")
