"""Reading a Delta table as an outside reader does (``deltalake``, not Conflux's lake code),
through pyarrow's native filesystem: deltalake's default Python filesystem handler can abort
the interpreter at exit (delta-io/delta-rs#2184), which would turn a green pytest run red."""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable

from conflux.io.lake import table_filesystem


def read_delta(uri: str, *, version: int | None = None,
               storage_options: dict | None = None) -> pa.Table:
    """A Delta table's current rows (or a version's), partition columns included."""
    table = DeltaTable(uri, version=version, storage_options=storage_options)
    return table.to_pyarrow_dataset(filesystem=table_filesystem(table.table_uri)).to_table()
