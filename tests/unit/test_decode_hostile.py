"""What the hostile-input fuzzer found in decoding and dead-lettering, pinned down."""

import hashlib
import json

import pytest
from pydantic import BaseModel, field_validator

from pipelines.contracts import LedgerEvent, Order
from conflux.event import decode as d
from conflux.event.ingest import _lineage_id
from conflux.io.kafka import Record

GOOD = {"o_orderkey": 1, "o_custkey": 2, "o_orderstatus": "O", "o_totalprice": 10.5,
        "o_orderdate": "1995-03-01", "o_orderpriority": "1-URGENT", "o_clerk": "Clerk#1",
        "o_shippriority": 0}
RESOLVER = d.ContractResolver("orders", current_version=1, known_versions=[1, 2])


def rec(value, offset=0, headers=(), key=b"k"):
    raw = value if isinstance(value, (bytes, type(None))) else json.dumps(value).encode()
    return Record("tpch.orders", 0, offset, 0, key, raw, tuple(headers))


def decode(records, contract=Order, key=("o_orderkey",)):
    return d.decode_batch(records, contract, key, RESOLVER)


def order(k):
    return {**GOOD, "o_orderkey": k}


def test_a_value_holding_two_objects_neither_is_kept_nor_shifts_its_neighbours():
    smuggled = json.dumps(order(99)).encode() + b"," + json.dumps(order(98)).encode()
    batch = [rec(order(1), 0), rec(smuggled, 1), rec(order(2), 2), rec(order(3), 3)]
    out = decode(batch)
    assert [(r.offset, row["o_orderkey"]) for r, row in zip(out.records, out.rows)] == [
        (0, 1), (2, 2), (3, 3)]
    assert [(x.record.offset, x.code) for x in out.dead] == [(1, d.INVALID_JSON)]


def test_a_value_whose_string_runs_into_the_next_record_is_not_merged_with_it():
    runs_on = json.dumps(order(5)).encode()[:-1] + b',"o_comment":"}'
    tail = b'{","o_orderkey":6,"o_custkey":2,"o_orderstatus":"O","o_totalprice":1.0,' \
           b'"o_orderdate":"1995-03-01","o_orderpriority":"1","o_clerk":"c","o_shippriority":0}'
    out = decode([rec(runs_on, 0), rec(tail, 1), rec(order(7), 2)])
    assert [row["o_orderkey"] for row in out.rows] == [7]
    assert {x.record.offset: x.code for x in out.dead} == {0: d.INVALID_JSON, 1: d.INVALID_JSON}


@pytest.mark.parametrize("value", [b"", b"  \n"])
def test_an_empty_value_alone_is_dead_lettered_not_dropped(value):
    out = decode([rec(value)])
    assert out.rows == [] and [x.code for x in out.dead] == [d.INVALID_JSON]


@pytest.mark.parametrize("header", ["orders@\u00b2", "orders@\u0661", "orders@01",
                                    "orders@" + "9" * 5000, "orders@1 ", "orders@"])
def test_malformed_versions_are_unknown_schemas_never_exceptions(header):
    out = decode([rec(GOOD, headers=[("contract", header.encode())]), rec(order(2), 1)])
    assert [x.code for x in out.dead] == [d.UNKNOWN_SCHEMA]
    assert len(out.dead[0].message) < 400 and len(out.dead[0].contract) < 300
    assert [row["o_orderkey"] for row in out.rows] == [2]


def test_different_contract_headers_are_ambiguous_identical_ones_are_not():
    out = decode([rec(GOOD, 0, [("contract", b"orders@1"), ("contract", b"orders@999")]),
                  rec(order(2), 1, [("contract", b"orders@1"), ("contract", b"orders@1")])])
    assert [(x.record.offset, x.code) for x in out.dead] == [(0, d.UNKNOWN_SCHEMA)]
    assert "different" in out.dead[0].message and out.contracts == ["orders@1"]


@pytest.mark.parametrize("field, raw, code", [
    ("o_custkey", b"9223372036854775808", d.CONTRACT_VIOLATION),   # > int64: the lake's type
    ("o_custkey", b"100000000000000000000000000000", d.CONTRACT_VIOLATION),
    ("o_totalprice", b"NaN", d.INVALID_JSON),                      # not JSON
    ("o_totalprice", b"-Infinity", d.INVALID_JSON),
    ("o_totalprice", b"1e999", d.CONTRACT_VIOLATION),              # JSON, but not a float64
    ("o_custkey", b'"2"', d.CONTRACT_VIOLATION),                   # JSON Schema types: strict
    ("o_custkey", b"true", d.CONTRACT_VIOLATION),
    ("o_custkey", b"2.0e0", d.CONTRACT_VIOLATION),
    ("o_totalprice", b'"10.5"', d.CONTRACT_VIOLATION),
    ("o_orderdate", b"794016000", d.CONTRACT_VIOLATION),           # epoch seconds for a date
    ("o_orderdate", b'"1995-03-01T00:00:00"', d.CONTRACT_VIOLATION),
])
def test_values_the_json_schema_or_the_lake_cannot_hold_are_rejected(field, raw, code):
    value = json.dumps({**GOOD, field: "MARK"}).encode().replace(b'"MARK"', raw)
    out = decode([rec(value, 0), rec(order(2), 1)])
    assert [x.code for x in out.dead] == [code], out.dead
    assert [row["o_orderkey"] for row in out.rows] == [2]


def test_range_edges_and_json_numbers_that_are_fine_are_kept():
    out = decode([rec({**GOOD, "o_custkey": 2 ** 63 - 1, "o_totalprice": 10}, 0)])
    assert out.dead == [] and out.rows[0]["o_custkey"] == 2 ** 63 - 1
    assert out.rows[0]["o_totalprice"] == 10.0 and isinstance(out.rows[0]["o_totalprice"], float)


def test_timestamps_with_an_offset_are_stored_as_utc_without_zone():
    base = {"event_id": "e", "c_custkey": 1, "kind": "deposit", "amount": 1.0}
    out = d.decode_batch([rec({**base, "event_id": "a", "occurred_at": "2026-01-01T05:30:00+05:30"}),
                          rec({**base, "event_id": "b", "occurred_at": "2026-01-01T00:00:00"}, 1)],
                         LedgerEvent, ("event_id",), d.ContractResolver("l", 1, [1]))
    assert [str(r["occurred_at"]) for r in out.rows] == ["2026-01-01 00:00:00"] * 2
    assert all(r["occurred_at"].tzinfo is None for r in out.rows)


class Fragile(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def explode(cls, v):
        if v == 13:
            raise RuntimeError("unlucky")
        return v


def test_a_validator_that_raises_something_unexpected_dead_letters_only_its_record():
    out = d.decode_batch([rec({"n": 1}, 0), rec({"n": 13}, 1), rec({"n": 2}, 2)], Fragile, ("n",),
                         d.ContractResolver("f", None, []))
    assert [row["n"] for row in out.rows] == [1, 2]
    assert [(x.record.offset, x.code) for x in out.dead] == [(1, d.VALIDATION_FAILED)]
    assert "RuntimeError: unlucky" in out.dead[0].message


def letter(record, code=d.OVERSIZE):
    return d.DeadLetter(record, code, "why", "orders@1")


def test_a_dead_letter_that_fits_carries_the_original_and_the_real_reason_first():
    original = rec(b"{bad", 7, headers=[("correlation_id", b"c"), ("conflux.error.code", b"OK")])
    key, value, headers = d.dead_letter(letter(original, d.INVALID_JSON), dataset="o", run_id="r")
    assert (key, value) == (b"k", b"{bad")
    names = [n for n, _ in headers]
    assert names[:2] == ["correlation_id", "conflux.original.conflux.error.code"]
    assert dict(headers)["conflux.error.code"] == b"INVALID_JSON"
    assert "conflux.error.truncated" not in names


def test_what_the_producer_refuses_is_made_sendable():
    key, value, headers = d.dead_letter(letter(rec(None, headers=[("x", None)], key=None),
                                               d.NULL_VALUE), dataset="o", run_id="r")
    assert key == b"" and value is None and dict(headers)["x"] == b""


def test_a_dead_letter_too_big_to_send_is_cut_to_fit_and_says_so():
    value = b"v" * (8 * 1024 * 1024 - 2048)
    big = rec(value, headers=[("fuzz.id", b"h1"), ("x-junk", b"j" * 500_000)], key=b"K" * 100_000)
    key, cut, headers = d.dead_letter(letter(big), dataset="o", run_id="r")
    named = dict(headers)
    assert d._size(key, cut, headers) <= d.MAX_DEAD_LETTER_BYTES
    assert cut == value[:len(cut)] and len(cut) > 7_000_000
    assert len(key) == 65_536 and named["fuzz.id"] == b"h1" and "x-junk" not in named
    assert named["conflux.error.code"] == b"OVERSIZE"
    assert named["conflux.error.value_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert named["conflux.error.value_bytes"] == str(len(value)).encode()
    note = named["conflux.error.truncated"].decode()
    assert "value cut from" in note and "x-junk" in note and "key cut" in note


def test_lineage_headers_are_bounded_and_printable():
    assert _lineage_id(b"c" * 300) == "" and _lineage_id(None) == "" and _lineage_id(b"") == ""
    assert _lineage_id(b"abc-1") == "abc-1"
    assert _lineage_id(b"\x00\xff x") == "\ufffd\ufffd x"
