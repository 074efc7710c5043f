"""``delta_dataset``: the lake's own pyarrow view of a Delta table (built from add actions)."""

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from conflux.core.errors import LakeError
from conflux.io.lake import DAY, delta_dataset


def _rows(dataset, **kw) -> list[dict]:
    return sorted(dataset.to_table(**kw).to_pylist(), key=lambda r: (r["k"], r[DAY]))


def test_same_rows_as_deltalake_reader_across_versions_and_encoded_paths(tmp_path):
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"k": [1, 2], DAY: ["2026-01-01", "a b%c/d"]}),
                    partition_by=[DAY])
    write_deltalake(uri, pa.table({"k": [3], DAY: ["2026-01-02"]}), partition_by=[DAY],
                    mode="append")
    write_deltalake(uri, pa.table({"k": [4], DAY: ["2026-01-01"]}), partition_by=[DAY],
                    mode="overwrite", predicate=f"{DAY} = '2026-01-01'")
    table = DeltaTable(uri)
    expected = sorted(table.to_pyarrow_dataset().to_table().to_pylist(),
                      key=lambda r: (r["k"], r[DAY]))
    assert _rows(delta_dataset(table)) == expected
    assert [r["k"] for r in expected] == [2, 3, 4]  # the overwritten row is gone

    only = delta_dataset(table, ["a b%c/d", "2026-01-02"])
    assert [(r["k"], r[DAY]) for r in _rows(only)] == [(2, "a b%c/d"), (3, "2026-01-02")]
    assert delta_dataset(table, []).count_rows() == 0
    assert [r["k"] for r in _rows(delta_dataset(DeltaTable(uri, version=0)))] == [1, 2]


def test_unpartitioned_table_and_partition_filter_ignored(tmp_path):
    uri = str(tmp_path / "u")
    write_deltalake(uri, pa.table({"k": [1, 2, 3]}))
    dataset = delta_dataset(DeltaTable(uri))
    assert sorted(dataset.to_table()["k"].to_pylist()) == [1, 2, 3]
    assert DAY not in dataset.schema.names
    assert delta_dataset(DeltaTable(uri), ["2026-01-01"]).count_rows() == 3


def test_refuses_deletion_vectors(tmp_path):
    uri = str(tmp_path / "dv")
    write_deltalake(uri, pa.table({"k": [1]}),
                    configuration={"delta.enableDeletionVectors": "true"})
    table = DeltaTable(uri)
    assert "deletionVectors" in (table.protocol().reader_features or [])
    with pytest.raises(LakeError, match="deletionVectors"):
        delta_dataset(table)


def test_an_update_rewrites_the_file_holding_its_key_not_the_whole_day(tmp_path):
    """Files are kept near TARGET_FILE_BYTES and key-ordered writes keep key ranges apart: a
    MERGE updating one key copies one file, and a MERGE of new keys (above every stored key)
    reads and rewrites nothing."""
    import base64
    import os

    from conflux.io.lake import TARGET_FILE_BYTES, LakeResource

    lake = LakeResource(path=str(tmp_path / "lake"))
    n = 3 * TARGET_FILE_BYTES // 150  # incompressible 150-byte rows: about 3 target files
    rows = pa.table({"k": pa.array(range(n), pa.int64()),
                     "blob": [base64.b64encode(os.urandom(110)).decode() for _ in range(n)],
                     "__ts": pa.array([1] * n, pa.int64())})
    lake.write("t", rows, "2026-01-01")
    table = DeltaTable(lake.uri("t"))
    assert table.metadata().configuration["delta.targetFileSize"] == str(TARGET_FILE_BYTES)
    files = len(table.file_uris())
    assert files >= 3

    update = pa.table({"k": pa.array([n - 1], pa.int64()), "blob": ["new"],
                       "__ts": pa.array([2], pa.int64())})
    commit = lake.upsert("t", update, ["k"], "2026-01-01", order_by=["__ts"])
    assert commit.rows == 1
    assert commit.metrics["num_target_files_removed"] == 1
    assert commit.metrics["num_target_rows_copied"] < n // 2

    new = pa.table({"k": pa.array([n, n + 1], pa.int64()), "blob": ["a", "b"],
                    "__ts": pa.array([2, 2], pa.int64())})
    commit = lake.upsert("t", new, ["k"], "2026-01-01", order_by=["__ts"])
    assert commit.metrics["num_target_files_removed"] == 0
    assert commit.metrics["num_target_files_scanned"] == 0
    assert lake.row_count("t") == n + 2
    stored = lake.read_table("t", "2026-01-01")
    assert stored.filter(pa.compute.equal(stored["k"], n - 1))["blob"].to_pylist() == ["new"]


def test_a_value_the_stored_column_cannot_hold_is_refused_naming_the_column():
    from conflux.io.lake import _cast_like

    stored = pa.schema([("k", pa.int64()), ("n", pa.int64())])
    widened = _cast_like(pa.table({"k": [1], "n": [None]}), stored)  # null → the stored type
    assert widened.schema == stored
    with pytest.raises(LakeError, match="column n: fractional values for the stored int64"):
        _cast_like(pa.table({"k": [1], "n": [5.5]}), stored)
    with pytest.raises(LakeError, match="column n: string values .* for the stored int64"):
        _cast_like(pa.table({"k": [1], "n": ["five"]}), stored)
