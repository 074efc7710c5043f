"""The lake as a Dagster IO manager: any asset reads Conflux datasets through Dagster's own input
loading, and a Dagster asset declared as a batch dataset's ``compute`` stores its output in the
lake under the dataset's contract.

``build_definitions`` registers :class:`LakeIOManager` as the code location's default IO manager
(``"io_manager"``), the one every Conflux asset uses, so nothing names it::

    @dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="1992-01-01", end_offset=1))
    def big_orders(orders: pd.DataFrame) -> pd.DataFrame:   # the run's partitions of orders
        return orders[orders.o_totalprice > 100_000]

    defs.load_asset_value("orders", partition_key="1995-01-01")                # pandas
    defs.load_asset_value("orders", partition_key="1995-01-01", python_type=pa.Table)  # Arrow

It is the default rather than a key of its own because an input is loaded by the IO manager of
the output it comes from: a user asset run together with a Conflux batch asset reads it through
that asset's output manager, and a Conflux asset materialized with hand-picked resources (tests,
``dg.materialize``) needs no extra key. Assets and ops that are not Conflux datasets (no
``conflux/mode`` definition metadata) are stored as Dagster's default does: pickled files under
``base_dir`` (the instance's storage folder by default).

Loading reads the partitions the input depends on (all of them for an unpartitioned asset
downstream of a partitioned dataset; the whole dataset when it is unpartitioned), pending event
deltas merged, as the contract's columns (the Kafka provenance columns left out); an input with
``AssetIn(metadata={"columns": [...]})`` reads only those. A parameter annotated ``pa.Table``
gets an Arrow table, anything else a pandas DataFrame. Nothing stored yet gives an empty table
with the contract's columns.

Storing: ``None`` is left alone (Conflux's own batch assets write the lake themselves and return
``MaterializeResult``). A DataFrame or Arrow table must hold exactly the contract's columns; each
of the run's partitions is replaced by the rows whose event time falls on it (an empty partition
is written empty, so a recomputed day loses rows that are gone), a row outside the run's
partitions is an error.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from conflux.core.errors import OutputContractError  # noqa: F401  (re-exported)
from conflux.io.lake import LakeResource

IO_MANAGER_KEY = "io_manager"  # Dagster's default key: see the module docstring
MODE = "conflux/mode"  # definition metadata every Conflux dataset's asset carries
COLUMN_SCHEMA = "dagster/column_schema"
EVENT_TIME = "conflux/event_time"
_ARROW_TYPES = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(),
                "date": pa.date32(), "boolean": pa.bool_(),
                "date-time": pa.timestamp("us", tz="UTC")}


def dataset_name(key: dg.AssetKey) -> str:
    """The lake dataset of an asset key (a Conflux dataset's key is its name)."""
    return key.path[0] if len(key.path) == 1 else key.to_python_identifier()


def contract_schema(metadata: dict[str, Any] | None) -> pa.Schema | None:
    """The Arrow schema of a dataset's contract, from its ``dagster/column_schema`` definition
    metadata (None when the asset declares none)."""
    value = (metadata or {}).get(COLUMN_SCHEMA)
    table_schema = value.schema if isinstance(value, dg.TableSchemaMetadataValue) else value
    if not isinstance(table_schema, dg.TableSchema):
        return None
    fields = []
    for column in table_schema.columns:
        base = column.type.split(" ")[0].split("/")[0]
        nullable = column.constraints.nullable if column.constraints else True
        fields.append(pa.field(column.name, _ARROW_TYPES.get(base, pa.string()), nullable=nullable))
    return pa.schema(fields)


def _wants_arrow(context: dg.InputContext) -> bool:
    wanted = context.dagster_type.typing_type if context.dagster_type else None
    return isinstance(wanted, type) and issubclass(wanted, pa.Table)


def _shape(table: pa.Table | None, schema: pa.Schema | None,
           columns: list[str] | None) -> pa.Table:
    """The columns a reader gets: the asked ones, else the contract's, else all but the
    provenance columns (``__*``); a column not stored yet comes as nulls of its contract type."""
    if columns is None:
        columns = (schema.names if schema is not None else
                   [c for c in (table.column_names if table is not None else [])
                    if not c.startswith("__")])
    types = {f.name: f.type for f in schema} if schema is not None else {}
    if table is None:
        return pa.schema([pa.field(c, types.get(c, pa.null())) for c in columns]).empty_table()
    arrays = [table[c] if c in table.column_names
              else pa.nulls(len(table), types.get(c, pa.null())) for c in columns]
    return pa.table(arrays, names=columns)


def _conform(data: Any, schema: pa.Schema | None, name: str) -> pa.Table:
    """An asset's output as an Arrow table of its contract's columns, in contract order, cast to
    the contract's types; OutputContractError naming what is off."""
    if isinstance(data, pd.DataFrame):
        table = pa.Table.from_pandas(data, preserve_index=False)
    elif isinstance(data, pa.Table):
        table = data
    else:
        raise OutputContractError(f"dataset {name!r}: the asset returned a "
                                  f"{type(data).__name__}; return a pandas DataFrame or a "
                                  f"pyarrow Table (or None when it wrote nothing)")
    if schema is None:
        return table
    missing = [c for c in schema.names if c not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise OutputContractError(
            f"dataset {name!r}: the asset's output does not match its contract: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"not in the contract: {', '.join(extra)}" if extra else "") if part))
    arrays = []
    for fld in schema:
        column = table[fld.name]
        if column.type != fld.type and not pa.types.is_null(fld.type):
            try:
                column = column.cast(fld.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise OutputContractError(
                    f"dataset {name!r}: column {fld.name!r} is {column.type}, not convertible "
                    f"to the contract's {fld.type}: {exc}") from None
        arrays.append(column)
    return pa.table(arrays, names=schema.names)


def split_days(table: pa.Table, event_time: str) -> dict[str, pa.Table]:
    """Rows of ``table`` by the daily partition (``YYYY-MM-DD``) of their ``event_time``."""
    days = table[event_time]
    if not pa.types.is_date32(days.type):
        days = pc.cast(days, pa.date32())
    keys = pc.cast(days, pa.string())
    return {day: table.filter(pc.equal(keys, day))
            for day in pc.unique(keys).to_pylist() if day is not None}


class LakeIOManager(dg.ConfigurableIOManagerFactory):
    """Reads and writes Conflux datasets in the lake for Dagster's input loading and outputs;
    everything else is pickled like Dagster's default IO manager does.

    ``build_definitions`` registers it as the default IO manager (``"io_manager"``) on the
    platform's ``lake`` resource. Loading gives a pandas DataFrame, or a ``pyarrow.Table`` when
    the input is annotated ``pa.Table``; see the module docstring.

    Examples:
        >>> lake = LakeResource(path=dg.EnvVar("CONFLUX_LAKE_PATH"))
        >>> dg.materialize([orders_spec, my_asset], partition_key="1995-01-01",
        ...                resources={"io_manager": LakeIOManager(lake=lake)})
    """

    lake: LakeResource = Field(description="The lake the datasets are stored in.")
    base_dir: str | None = Field(
        default=None, description="Where outputs of assets and ops that are not Conflux "
                                  "datasets are pickled (default: the Dagster instance's "
                                  "storage folder, as with Dagster's default IO manager).")

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        fallback = dg.FilesystemIOManager(base_dir=self.base_dir).create_io_manager(context)
        return DatasetIOManager(self.lake, fallback)


class DatasetIOManager(dg.IOManager):
    """What :class:`LakeIOManager` creates: the lake for Conflux datasets, ``fallback`` for the
    rest."""

    def __init__(self, lake: LakeResource, fallback: dg.IOManager):
        self.lake = lake
        self.fallback = fallback

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        meta = (upstream.definition_metadata if upstream is not None else None) or {}
        if not (context.has_asset_key and MODE in meta):
            return self.fallback.load_input(context)
        name = dataset_name(context.asset_key)
        schema = contract_schema(meta)
        asked = (context.definition_metadata or {}).get("columns")
        columns = list(asked) if asked else (schema.names if schema is not None else None)
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        table = _shape(self.lake.read_partitions(name, partitions, columns=columns), schema,
                       columns)
        return table if _wants_arrow(context) else table.to_pandas()

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        meta = context.definition_metadata or {}
        if not (context.has_asset_key and MODE in meta):
            self.fallback.handle_output(context, obj)
            return
        if obj is None:  # the asset wrote the lake itself (Conflux's own batch assets)
            return
        name = dataset_name(context.asset_key)
        table = _conform(obj, contract_schema(meta), name)
        if not context.has_asset_partitions:
            commit = self.lake.write(name, table)
            context.add_output_metadata({"dagster/row_count": len(table), **commit.metadata()})
            return
        keys = list(context.asset_partition_keys)
        event_time = meta.get(EVENT_TIME)
        if event_time:
            groups = split_days(table, str(event_time))
        elif len(keys) == 1:
            groups = {keys[0]: table}
        else:
            raise OutputContractError(f"dataset {name!r}: a run of {len(keys)} partitions needs "
                                      f"the event-time field ({EVENT_TIME} metadata) to split "
                                      f"its output")
        outside = sorted(set(groups) - set(keys))
        if outside:
            raise OutputContractError(
                f"dataset {name!r}: the output holds rows of {len(outside)} partition(s) outside "
                f"the run's {keys[0]}..{keys[-1]} (first: {outside[0]})")
        commit = self.lake.write_many(name, {k: groups.get(k, table.slice(0, 0)) for k in keys})
        context.add_output_metadata({"dagster/row_count": len(table),
                                     "conflux/partitions_written": len(keys), **commit.metadata()})
