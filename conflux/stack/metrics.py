"""The ``conflux-metrics`` service: the Prometheus endpoint (``conflux.observe.metrics``) on
``CONFLUX_METRICS_URL``, reading the stack's Dagster instance and Kafka at each scrape."""

from __future__ import annotations

import sys
from pathlib import Path

from conflux.stack.dagster import dagster_env, ensure_storage
from conflux.stack.service import Service


class MetricsExporter(Service):
    name = "conflux-metrics"
    start_timeout = 60.0

    @property
    def port(self) -> int:
        return self.settings.metrics_port

    def marker(self) -> str:
        return f"conflux.observe.metrics --host {self.settings.bind_host} --port {self.port}"

    def prepare(self) -> None:
        ensure_storage(self.settings)  # the instance's dagster.yaml and tables

    def command(self) -> list[str]:
        return [sys.executable, "-m", "conflux.observe.metrics",
                "--host", self.settings.bind_host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return dagster_env(self.settings)

    def cwd(self) -> Path:
        return self.settings.project_root

    def describe(self) -> str:
        return self.settings.metrics_url
