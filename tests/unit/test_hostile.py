"""The hostile-input generator (``reliability/hostile.py``): pure, seeded, covering every
category, and every variant classified by ``decode_batch`` as the generator expects."""

import datetime as dt
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipelines import contracts as tpch
from conflux.event import decode as d
from reliability import hostile as H
from conflux.io.kafka import Record

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = {"orders": tpch.Order, "lineitem": tpch.LineItem, "customer_ledger": tpch.LedgerEvent}
N_VARIANTS = len(H.HOSTILE)


def as_json(value):
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def test_the_generator_imports_neither_dagster_nor_kafka():
    code = ("import sys, reliability.hostile as h; h.generate('orders', hostile=5, seed=1); "
            "print(sorted(m for m in ('dagster', 'kafka') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dataset", sorted(H.TARGETS))
def test_every_category_and_variant_is_generated_with_an_expected_outcome(dataset):
    batch = H.generate(dataset, hostile=N_VARIANTS + 50, seed=3, subject="subj")
    labels = Counter(r.label for r in batch.records)
    assert {label for label, *_ in H.HOSTILE} <= set(labels)
    assert {label for label, *_ in H.KEPT} <= set(labels)
    assert {r.category for r in batch.hostile} == set(H.CATEGORIES) == {
        "truncated", "invalid_utf8", "invalid_json", "wrong_type", "missing_field",
        "extra_field", "null_key", "size", "null_value", "schema", "garbage_headers"}
    assert len(batch.hostile) == N_VARIANTS + 50
    assert all(r.expected_code and r.expected_row is None for r in batch.hostile)
    assert all(r.expected_row is not None and r.expected_code is None for r in batch.kept)
    ids = [r.id for r in batch.records]
    assert len(ids) == len(set(ids))
    for r in batch.records:
        if r.label != "odd/no_headers_at_all":
            assert r.headers[0] == (H.ID_HEADER, r.id.encode())
            assert r.headers[1] == (H.LABEL_HEADER, r.label.encode())
    # kept rows have unique keys: the lake must hold exactly these
    assert len(batch.expected_rows()) == len(batch.kept)
    # huge variants are capped per call
    assert labels["size/near_broker_max"] == 1 and labels["size/4_mb_binary"] == 1


def test_kept_records_follow_every_k_hostile_ones():
    batch = H.generate("orders", hostile=300, seed=4, good_every=3)
    pattern = "".join("h" if r.hostile else "k" for r in batch.records)
    assert pattern == "hhhk" * 100
    assert len(batch.kept) == 100


def test_the_same_seed_gives_the_same_records_and_another_seed_others():
    a = H.generate("lineitem", hostile=400, seed=9, subject="s")
    b = H.generate("lineitem", hostile=400, seed=9, subject="s")
    c = H.generate("lineitem", hostile=400, seed=10, subject="s")
    assert a.records == b.records
    assert [r.value for r in a.records] != [r.value for r in c.records]


def decode(dataset, records, one_at_a_time=False):
    resolver = d.ContractResolver("subj", current_version=1, known_versions=[1, 2])
    key = H.TARGETS[dataset].key
    recs = [Record("t", 0, i, 0, r.key, r.value, r.headers) for i, r in enumerate(records)]
    if not one_at_a_time:
        return d.decode_batch(recs, CONTRACTS[dataset], key, resolver)
    outs = [d.decode_batch([rec], CONTRACTS[dataset], key, resolver) for rec in recs]
    return d.Decoded(rows=[r for o in outs for r in o.rows],
                     records=[r for o in outs for r in o.records],
                     dead=[x for o in outs for x in o.dead])


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batched", "single"])
@pytest.mark.parametrize("dataset", sorted(H.TARGETS))
def test_decode_batch_dead_letters_each_hostile_variant_with_its_reason_and_keeps_the_rest(
        dataset, one_at_a_time):
    batch = H.generate(dataset, hostile=N_VARIANTS * 2, seed=5, subject="subj")
    out = decode(dataset, batch.records, one_at_a_time)
    codes = {dead.record.offset: dead.code for dead in out.dead}
    wrong = {(r.label, r.expected_code, codes.get(i)) for i, r in enumerate(batch.records)
             if r.hostile and codes.get(i) != r.expected_code}
    assert wrong == set()
    kept = [i for i, r in enumerate(batch.records) if not r.hostile]
    assert [rec.offset for rec in out.records] == kept, "kept rows, in input order"
    for rec, row in zip(out.records, out.rows):
        expected = batch.records[rec.offset].expected_row
        assert {k: as_json(v) for k, v in row.items()} == expected, batch.records[rec.offset].label
