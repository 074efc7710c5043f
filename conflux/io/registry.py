"""The schema registry as a Dagster resource, with a per-process cache of resolved versions."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from conflux.io.schema_registry import SchemaRegistry, SchemaVersion


class SchemaRegistryResource(dg.ConfigurableResource):
    """Schema registry on the platform's Postgres (``CONFLUX_POSTGRES_URL``)."""

    url: str = Field(description="libpq URL of the platform database holding the registry.")
    _cache: dict = PrivateAttr(default_factory=dict)

    @property
    def client(self) -> SchemaRegistry:
        return SchemaRegistry(self.url)

    def get(self, subject: str, version: int | None = None) -> SchemaVersion:
        """A version (latest when None); immutable versions are cached, "latest" is not."""
        if version is None:
            return self.client.get(subject)
        key = (subject, version)
        if key not in self._cache:
            self._cache[key] = self.client.get(subject, version)
        return self._cache[key]
