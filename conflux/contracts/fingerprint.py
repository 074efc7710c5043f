"""A schema's identity: its canonical JSON text and the sha256 of it (pure)."""

from __future__ import annotations

import hashlib
import json


def canonical(schema: dict) -> str:
    """Canonical JSON text of a schema (sorted keys, no spaces): what the fingerprint hashes."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def fingerprint(schema: dict) -> str:
    """sha256 of the canonical JSON text."""
    return hashlib.sha256(canonical(schema).encode()).hexdigest()
