"""The ``conflux-schema-registry`` service: the Confluent-compatible Schema Registry API
(``conflux.io.registry_api``) on ``CONFLUX_SCHEMA_REGISTRY_URL``, over the registry tables in the
stack's Postgres (docs/schema-registry.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conflux.stack.service import Service


class SchemaRegistryApi(Service):
    name = "conflux-schema-registry"
    start_timeout = 60.0

    @property
    def port(self) -> int:
        return self.settings.schema_registry_port

    def marker(self) -> str:
        return f"conflux.io.registry_api --host {self.settings.bind_host} --port {self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "conflux.io.registry_api",
                "--host", self.settings.bind_host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        """This stack's Postgres and basic-auth user; the password (a secret) only ever comes
        from the environment ``conflux stack up`` runs in."""
        env = dict(os.environ)
        env.update(self.settings.client_env())
        env["CONFLUX_SCHEMA_REGISTRY_USER"] = self.settings.schema_registry_user or ""
        return env

    def cwd(self) -> Path:
        return self.settings.project_root

    def describe(self) -> str:
        auth = "basic auth" if self.settings.schema_registry_user else "no authentication"
        return f"{self.settings.schema_registry_url} ({auth})"
