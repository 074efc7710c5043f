"""One helper for the metadata every materialization carries, on both paths (house rule 4)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from pipelines.datasets import Dataset


def contract_columns(ds: Dataset) -> dg.TableSchema:
    """``dagster/column_schema`` from the contract's JSON Schema."""
    schema = ds.contract.model_json_schema()
    required = set(schema.get("required", []))
    cols = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("format") or prop.get("type") or "/".join(
            str(alt.get("format") or alt.get("type")) for alt in prop.get("anyOf", []))
        cols.append(dg.TableColumn(name=name, type=str(kind or "any"),
                                   description=prop.get("description"),
                                   constraints=dg.TableColumnConstraints(nullable=name not in required)))
    return dg.TableSchema(columns=cols)


def materialization_metadata(ds: Dataset, *, rows: int, **extra: Any) -> dict[str, Any]:
    """Metadata keys shared by both paths: rows, schema, contract, plus path-specific extras."""
    meta: dict[str, Any] = {
        "dagster/row_count": rows,
        "dagster/column_schema": contract_columns(ds),
        "conflux/mode": ds.mode,
        "conflux/contract": ds.contract.__name__,
    }
    for key, value in extra.items():
        meta[f"conflux/{key}"] = value
    return meta
