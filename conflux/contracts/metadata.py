"""One helper for the metadata every asset and materialization carries, on both paths
(house rule 4), so the keys stay consistent."""

from __future__ import annotations

from typing import Any

import dagster as dg

from conflux.contracts.lineage import column_types, contract_fingerprint, derive_column_lineage
from conflux.core.declarations import BatchDataset, Dataset

LAST_UPDATED = "dagster/last_updated_timestamp"  # read by Dagster's freshness checks


def column_schema(ds: Dataset) -> dg.TableSchema:
    """``dagster/column_schema`` from the contract."""
    return dg.TableSchema(columns=[
        dg.TableColumn(name=name, type=kind, description=desc,
                       constraints=dg.TableColumnConstraints(nullable=nullable))
        for name, kind, desc, nullable in column_types(ds.contract)
    ])


def column_lineage(ds: Dataset, catalog: dict[str, Dataset]) -> dg.TableColumnLineage | None:
    """``dagster/column_lineage`` of a batch join, where derivable."""
    if not isinstance(ds, BatchDataset) or not ds.upstream:
        return None
    lineage = derive_column_lineage(ds.fields, {u: catalog[u].fields for u in ds.upstream},
                                    ds.lineage)
    if not lineage:
        return None
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=dg.AssetKey(up), column_name=fld) for up, fld in deps]
        for column, deps in lineage.items()
    })


def definition_metadata(ds: Dataset, catalog: dict[str, Dataset]) -> dict[str, Any]:
    """Static metadata of the asset definition (shown before anything materializes)."""
    meta: dict[str, Any] = {
        "dagster/column_schema": column_schema(ds),
        "conflux/mode": ds.mode,
        "conflux/contract": f"{ds.subject} ({ds.contract.__name__})",
        "conflux/contract_fingerprint": contract_fingerprint(ds.contract)[:16],
        "conflux/key": ", ".join(ds.key),
    }
    if ds.freshness is not None:
        meta["conflux/freshness_seconds"] = int(ds.freshness.total_seconds())
    topics = getattr(ds, "topics", None)
    if topics:
        meta["conflux/topics"] = ", ".join(topics)
        meta["conflux/dlq_topic"] = ds.dlq_topic
    if getattr(ds, "source_table", None):
        meta["conflux/source_table"] = ds.source_table
    lineage = column_lineage(ds, catalog)
    if lineage is not None:
        meta["dagster/column_lineage"] = lineage
    return meta


def materialization_metadata(ds: Dataset, *, rows: int, contract_version: str | None = None,
                             with_schema: bool = True, current_as_of: float | None = None,
                             **extra: Any) -> dict[str, Any]:
    """Metadata of one materialization: rows, schema, contract, plus path-specific extras
    (``source_ranges``, ``dead_lettered``, ...), each under ``conflux/<name>``.

    ``with_schema=False`` leaves the column schema to the asset definition: the event path
    records a materialization per partition per micro-batch, and serialising the schema into
    each one cost more than the rest of the event (measured).

    ``current_as_of`` (epoch seconds): how current the data is — on the event path the time of
    the newest record applied — as ``dagster/last_updated_timestamp``, which Dagster's freshness
    checks read instead of the time the event was stored.
    """
    meta: dict[str, Any] = {"dagster/row_count": rows}
    if current_as_of is not None:
        meta[LAST_UPDATED] = dg.MetadataValue.timestamp(current_as_of)
    if with_schema:
        meta["dagster/column_schema"] = column_schema(ds)
    meta.update({
        "conflux/mode": ds.mode,
        "conflux/contract_version": contract_version or f"{ds.subject}@unregistered",
    })
    for key, value in extra.items():
        meta[f"conflux/{key}"] = value
    return meta
