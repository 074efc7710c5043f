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
