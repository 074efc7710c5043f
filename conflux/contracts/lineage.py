"""Lineage and identity helpers shared by both paths (no Dagster): contract fingerprints, code
versions, column types and column lineage derived from declarations."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping

from pydantic import BaseModel

from conflux.contracts.fingerprint import fingerprint


def contract_schema(contract: type[BaseModel]) -> dict:
    """The JSON Schema registered for a contract."""
    return contract.model_json_schema()


def contract_fingerprint(contract: type[BaseModel]) -> str:
    return fingerprint(contract_schema(contract))


def code_version(contract: type[BaseModel], compute: Callable | None = None) -> str:
    """Changes whenever the contract's schema (or the compute function's source) changes."""
    digest = hashlib.sha256(contract_fingerprint(contract).encode())
    if compute is not None:
        try:
            digest.update(inspect.getsource(compute).encode())
        except (OSError, TypeError):
            digest.update(compute.__qualname__.encode())
    return digest.hexdigest()[:16]


def column_types(contract: type[BaseModel]) -> list[tuple[str, str, str | None, bool]]:
    """``(name, type, description, nullable)`` per contract field, from its JSON Schema."""
    schema = contract_schema(contract)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        alts = prop.get("anyOf", [prop])
        kinds = [a.get("format") or a.get("type") or ("enum" if "enum" in a else "any")
                 for a in alts]
        nullable = "null" in kinds or name not in required
        kind = "/".join(str(k) for k in kinds if k != "null") or "null"
        if "enum" in prop:
            kind = f"{kind} enum({', '.join(map(str, prop['enum']))})"
        out.append((name, kind, prop.get("description"), nullable))
    return out


def derive_column_lineage(
    fields: tuple[str, ...],
    upstream_fields: Mapping[str, tuple[str, ...]],
    explicit: Mapping[str, tuple[str, ...]],
) -> dict[str, list[tuple[str, str]]]:
    """Column lineage of a join: ``{column: [(upstream, field), ...]}``.

    A column named like a field of exactly one upstream comes from it; declared ``explicit``
    lineage (``"upstream.field"`` strings) is added for computed columns.
    """
    lineage: dict[str, list[tuple[str, str]]] = {}
    for column in fields:
        sources = [(up, column) for up, up_fields in upstream_fields.items() if column in up_fields]
        if len(sources) == 1:
            lineage[column] = sources
    for column, refs in explicit.items():
        deps = lineage.setdefault(column, [])
        for ref in refs:
            up, _, fld = ref.partition(".")
            if (up, fld) not in deps:
                deps.append((up, fld))
    return lineage


_ARROW_TYPES = {"integer": "int64", "number": "float64", "string": "string", "date": "date32",
                "boolean": "bool"}


def arrow_schema(contract: type[BaseModel]):
    """The Arrow schema of a contract's rows (used for typed empty tables)."""
    import pyarrow as pa

    fields = []
    for name, kind, _, nullable in column_types(contract):
        base = kind.split(" ")[0].split("/")[0]
        if base == "date-time":
            arrow = pa.timestamp("us", tz="UTC")
        else:
            arrow = pa.type_for_alias(_ARROW_TYPES.get(base, "string"))
        fields.append(pa.field(name, arrow, nullable=nullable))
    return pa.schema(fields)
