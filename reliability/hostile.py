"""Hostile input for the demo event datasets: a pure, seeded generator (no Dagster, no Kafka).

**Hostile** means: a record the contract must reject. A record is read as its dataset's contract
— the registered JSON Schema of ``subject@version``, checked by ``conflux/event/decode.py`` — so it
is hostile when

* its ``contract`` header does not name a readable version of the dataset's subject (unknown,
  newer than the running code, malformed, not UTF-8, another subject, or several different
  ``contract`` headers) → ``UNKNOWN_SCHEMA`` / ``UNSUPPORTED_SCHEMA_VERSION``;
* it has no value (a tombstone) → ``NULL_VALUE``; a value over 1,000,000 bytes → ``OVERSIZE``;
* its value is not UTF-8 → ``UNDECODABLE_BYTES``; is not one JSON text (RFC 8259: truncated,
  trailing data, NaN / Infinity, lone surrogate escapes, comments, recursion bombs, numbers of
  thousands of digits, a BOM, ...) → ``INVALID_JSON``;
* its JSON is not an object of the contract: wrong types with the JSON Schema's meaning (a
  number in a string, a bool for a number, a timestamp for a date, 1.5 for an integer), a value
  out of the field's range (including integers beyond int64 and floats beyond float64), a
  missing required field, a field the closed contract does not have, a null key field →
  ``CONTRACT_VIOLATION``.

The rules are checked in that order, so each variant below has exactly one expected reason.

A record that is only **odd** is valid and must be **kept**, with exactly its values: no Kafka
key, no headers at all, garbage (non-UTF-8, over-long, duplicated, forged ``conflux.error.*``)
lineage headers, a huge unrelated header or key, JSON with unusual whitespace, key order,
escapes or raw non-ASCII text, an integer for a float, an exponent, duplicate JSON names whose
*last* value is valid (RFC 8259 allows them; every mainstream parser keeps the last), an
omitted optional field (its default is stored), a value of exactly the size limit, boundary
values of a field's range, a timestamp with a UTC offset (stored as UTC).

Each record carries a ``fuzz.id`` header (unique) and a ``fuzz.label`` header
(``category/variant``), except the "no headers" variant; the expected outcome travels with it:
``expected_code`` for a hostile record, ``expected_row`` (JSON types) for a kept one.

What kafka-python refuses to send is left out: a header with a null value and a record with
neither key nor value (their dead letters are unit-tested in ``tests/unit/test_decode_hostile``),
and a header *name* that is not UTF-8 — which librdkafka clients can write, and which
kafka-python cannot read back (``CorruptRecordError`` for the whole record batch: a known,
unfixed limitation of the read path).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.demo.tpch import TpchGenerator, ledger

# reason codes (the values of conflux.event.decode's constants; not imported: no platform code here)
NULL_VALUE = "NULL_VALUE"
OVERSIZE = "OVERSIZE"
UNDECODABLE = "UNDECODABLE_BYTES"
INVALID_JSON = "INVALID_JSON"
CONTRACT_VIOLATION = "CONTRACT_VIOLATION"
UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
UNSUPPORTED_VERSION = "UNSUPPORTED_SCHEMA_VERSION"

MAX_VALUE_BYTES = 1_000_000  # the platform's value limit
BROKER_MAX_BYTES = 8 * 1024 * 1024  # the local broker's message.max.bytes
ID_HEADER = "fuzz.id"
LABEL_HEADER = "fuzz.label"
GOOD_DAYS = 8  # good rows' event times fall on this many days (few lake partitions)


@dataclass(frozen=True)
class Target:
    """A demo event dataset as the fuzzer sees it (no platform import)."""

    dataset: str
    key: tuple[str, ...]
    event_time: str | None
    ints: tuple[str, ...]        # integer fields (first: a non-key one to corrupt)
    floats: tuple[str, ...]
    dates: tuple[str, ...]       # date (or datetime, for the ledger) fields
    text: str                    # a free-text field with a max length
    text_max: int
    literal: str                 # a Literal field
    optional: str | None         # a field with a default, and the default


TARGETS = {
    "orders": Target("orders", ("o_orderkey",), "o_orderdate",
                     ints=("o_custkey", "o_orderkey", "o_shippriority"),
                     floats=("o_totalprice",), dates=("o_orderdate",), text="o_comment",
                     text_max=79, literal="o_orderstatus", optional="o_comment"),
    "lineitem": Target("lineitem", ("l_orderkey", "l_linenumber"), "o_orderdate",
                       ints=("l_partkey", "l_orderkey", "l_suppkey"),
                       floats=("l_quantity", "l_extendedprice"),
                       dates=("l_shipdate", "o_orderdate"), text="l_comment", text_max=44,
                       literal="l_returnflag", optional="l_comment"),
    "customer_ledger": Target("customer_ledger", ("event_id",), None, ints=("c_custkey",),
                              floats=("amount",), dates=("occurred_at",), text="event_id",
                              text_max=64, literal="kind", optional=None),
}


@dataclass(frozen=True)
class Fuzzed:
    """One record to publish and what must become of it."""

    id: str
    label: str                   # category/variant
    hostile: bool
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    expected_code: str | None = None      # hostile: the reason it must be dead-lettered with
    expected_row: dict | None = None      # kept: the row the dataset must hold (JSON types)

    @property
    def category(self) -> str:
        return self.label.split("/", 1)[0]

    @property
    def size(self) -> int:
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v) for k, v in self.headers))


@dataclass
class Batch:
    """What the generator made for one dataset, in publishing order."""

    target: Target
    subject: str
    records: list[Fuzzed] = field(default_factory=list)

    @property
    def hostile(self) -> list[Fuzzed]:
        return [r for r in self.records if r.hostile]

    @property
    def kept(self) -> list[Fuzzed]:
        return [r for r in self.records if not r.hostile]

    def expected_rows(self) -> dict[tuple, dict]:
        """Key → the row the dataset must hold (keys are unique among kept records)."""
        return {tuple(r.expected_row[k] for k in self.target.key): r.expected_row
                for r in self.kept}


# --- good rows ------------------------------------------------------------------------------

def _jsonable(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def good_rows(dataset: str, n: int, seed: int) -> list[dict]:
    """``n`` valid rows of ``dataset`` from the TPC-H generator (JSON types), unique keys, event
    times spread over ``GOOD_DAYS`` days from 1995-06-01."""
    scale = max(0.001, n / 1_500_000 * 1.2)
    gen = TpchGenerator(scale, seed=seed)
    if dataset == "orders":
        df = gen.orders().head(n).copy()
    elif dataset == "lineitem":
        df = gen.lineitem(gen.orders().head(max(1, n // 3))).head(n).copy()
        while len(df) < n:  # (at least one line per order: more orders when short)
            scale *= 2
            gen = TpchGenerator(scale, seed=seed)
            df = gen.lineitem(gen.orders()).head(n).copy()
    else:
        df = ledger(gen.customer(), per_customer=max(1.0, n / max(1, len(gen.customer())) + 1),
                    seed=seed).head(n).copy()
    if len(df) < n:
        raise ValueError(f"generator gave {len(df)} {dataset} rows, {n} wanted")
    rows = [{k: _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    start = dt.date(1995, 6, 1)
    by_order: dict = {}
    for i, row in enumerate(rows):
        if "o_orderdate" in row:  # lineitems of one order keep one order date
            anchor = row.get("o_orderkey", row.get("l_orderkey"))
            day = by_order.setdefault(anchor, start + dt.timedelta(days=len(by_order) % GOOD_DAYS))
            row["o_orderdate"] = day.isoformat()
    return rows


def dumps(row: dict, **kw) -> bytes:
    return json.dumps(row, separators=(",", ":"), **kw).encode()


# --- variants ------------------------------------------------------------------------------
# A variant is (label, expected code or None for kept, weight, cap, make) where
# make(row, ctx) -> (key, value, extra headers, expected_row or None); ``row`` is a good row.

@dataclass
class Ctx:
    rng: random.Random
    target: Target
    subject: str
    current: int = 1     # the version the running code reads
    newer: int = 2       # a registered version newer than that

    @property
    def ref(self) -> str:
        return f"{self.subject}@{self.current}"


def _kf(row, t: Target) -> bytes:
    return "|".join(str(row[k]) for k in t.key).encode()


def _set(row, name, value) -> dict:
    return {**row, name: value}


def _raw_field(row, name, raw: bytes, t: Target | None = None) -> bytes:
    """The row's JSON with ``name``'s value replaced by the raw bytes ``raw``."""
    marker = "\u2063MARK\u2063"
    text = dumps({**row, name: marker}, ensure_ascii=False)
    return text.replace(json.dumps(marker, ensure_ascii=False).encode(), raw)


def _string_with(row, t: Target, raw: bytes) -> bytes:
    """The row with raw bytes inside its free-text field's string."""
    return _raw_field(row, t.text, b'"ok' + raw + b'ok"')


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


V = Callable[[dict, Ctx], tuple]


def _body(fn: Callable[[dict, Ctx], bytes]) -> V:
    """A variant that only changes the value; key and headers as a good record's."""
    return lambda row, c: (_kf(row, c.target), fn(row, c), [("contract", c.ref.encode())], None)


def _hdr(header_values: list[bytes]) -> V:
    """A valid body with the given ``contract`` header value(s)."""
    return lambda row, c: (_kf(row, c.target), dumps(row),
                           [("contract", v.replace(b"{S}", c.subject.encode())) for v in header_values],
                           None)


def _kept(fn: Callable[[dict, Ctx], tuple]) -> V:
    return fn


def _cut_random(row, c: Ctx) -> bytes:
    raw = dumps(row)
    return raw[:c.rng.randrange(1, len(raw))]


def _cut_in_string(row, c: Ctx) -> bytes:
    raw = dumps(_set(row, c.target.text, "abcdef"))
    return raw[:raw.index(b'"abcdef"') + 4]


def _cut_multibyte(row, c: Ctx) -> bytes:
    raw = dumps(_set(row, c.target.text, "ab€€"), ensure_ascii=False)
    return raw[:raw.index("€".encode()) + 1]  # inside the first 3-byte sequence


def _huge_int(row, c: Ctx, value: int) -> bytes:
    return _raw_field(row, c.target.ints[0], str(value).encode())


def _pad_to(raw: bytes, size: int) -> bytes:
    """``raw`` (a JSON object) padded with whitespace before its closing brace to ``size``."""
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def _drop(row, name) -> dict:
    return {k: v for k, v in row.items() if k != name}


def _dup_names(row, name, first: bytes, last: bytes) -> bytes:
    """The row with ``name`` twice: ``first`` then ``last`` (raw JSON values)."""
    body = dumps(_drop(row, name))
    return b"{" + json.dumps(name).encode() + b":" + first + b"," + body[1:-1] + b"," \
        + json.dumps(name).encode() + b":" + last + b"}"


def _shuffled(row, c: Ctx) -> dict:
    items = list(row.items())
    c.rng.shuffle(items)
    return dict(items)


def _date_field(t: Target) -> str:
    return t.dates[0]


def _bad_date(value: str) -> V:
    return _body(lambda row, c: dumps(_set(row, _date_field(c.target), value)))


def _pretty(row, c: Ctx) -> bytes:
    return ("\r\n\t " + json.dumps(row, indent="\t") + " \n").encode()


def _odd_text(row, c: Ctx, text: str, ascii_: bool):
    r = _set(row, c.target.text, text) if c.target.text != "event_id" else \
        _set(row, "event_id", row["event_id"] + text)
    return _kf(r, c.target), dumps(r, ensure_ascii=ascii_), [("contract", c.ref.encode())], r


def _dup_keep_last(row, c: Ctx):
    name = c.target.floats[0]
    return (_kf(row, c.target), _dup_names(row, name, b'"not a number"', json.dumps(row[name]).encode()),
            [("contract", c.ref.encode())], row)


def _exact_limit(row, c: Ctx):
    return _kf(row, c.target), _pad_to(dumps(row), MAX_VALUE_BYTES), [], row


def _int_for_float(row, c: Ctx):
    name = c.target.floats[0]
    r = _set(row, name, float(int(row[name])))
    return _kf(r, c.target), _raw_field(r, name, str(int(row[name])).encode()), [], r


def _exponent(row, c: Ctx):
    name = c.target.floats[0]
    value = row[name]
    return _kf(row, c.target), _raw_field(row, name, f"{value * 100:.17g}e-2".encode()), [], \
        _set(row, name, float(f"{value * 100:.17g}e-2"))


def _boundary_int(row, c: Ctx):
    if c.target.dataset == "customer_ledger":
        r = _set(row, "c_custkey", 2 ** 63 - 1)
    else:
        r = _set(row, c.target.ints[0], 2 ** 63 - 1)
    return _kf(r, c.target), dumps(r), [], r


def _omitted_optional(row, c: Ctx):
    if c.target.optional is None:  # the ledger has no optional field: a plain record instead
        return _kf(row, c.target), dumps(row), [], row
    r = _set(row, c.target.optional, "")
    return _kf(r, c.target), dumps(_drop(row, c.target.optional)), [], r


def _utc_offset(row, c: Ctx):
    if c.target.dataset != "customer_ledger":  # dates have no offset: an explicit version
        return _kf(row, c.target), dumps(row), [("contract", c.ref.encode())], row
    t = dt.datetime.fromisoformat(row["occurred_at"])
    shifted = (t + dt.timedelta(hours=5, minutes=30)).isoformat() + "+05:30"
    return _kf(row, c.target), dumps(_set(row, "occurred_at", shifted)), [], row


def _max_text(row, c: Ctx):
    t = c.target
    if t.text == "event_id":
        text = (row["event_id"] + "-ü" * 40)[:t.text_max]
    else:
        text = ("é😀中" * 40)[:t.text_max]
    r = _set(row, t.text, text)
    return _kf(r, t), dumps(r, ensure_ascii=False), [], r


HOSTILE: list[tuple[str, str, float, int | None, V]] = [
    # --- truncated ------------------------------------------------------------------------
    ("truncated/random_cut", INVALID_JSON, 6, None, _body(_cut_random)),
    ("truncated/inside_string", INVALID_JSON, 1, None, _body(_cut_in_string)),
    ("truncated/after_name", INVALID_JSON, 1, None,
     _body(lambda row, c: dumps(row)[:dumps(row).index(b":") + 1])),
    ("truncated/open_brace", INVALID_JSON, 0.5, None, _body(lambda row, c: b"{")),
    ("truncated/mid_utf8_sequence", UNDECODABLE, 1, None, _body(_cut_multibyte)),
    # --- invalid UTF-8 -----------------------------------------------------------------------
    ("invalid_utf8/lone_continuation", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\x80"))),
    ("invalid_utf8/ff_fe", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xff\xfe"))),
    ("invalid_utf8/overlong_slash", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xc0\xaf"))),
    ("invalid_utf8/overlong_nul", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xc0\x80"))),
    ("invalid_utf8/overlong_3byte", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xe0\x80\xaf"))),
    ("invalid_utf8/encoded_surrogate", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xed\xa0\x80"))),
    ("invalid_utf8/cesu8_pair", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xed\xa0\xbd\xed\xb8\x80"))),
    ("invalid_utf8/beyond_u10ffff", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xf4\x90\x80\x80"))),
    ("invalid_utf8/five_byte_form", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xf8\x88\x80\x80\x80"))),
    ("invalid_utf8/truncated_sequence", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\xe2\x82"))),
    ("invalid_utf8/latin1_text", UNDECODABLE, 1, None, _body(lambda r, c: _string_with(r, c.target, b"caf\xe9"))),
    ("invalid_utf8/outside_string", UNDECODABLE, 0.5, None, _body(lambda r, c: b"\xfe" + dumps(r))),
    ("invalid_utf8/utf16_with_bom", UNDECODABLE, 0.5, None,
     _body(lambda r, c: b"\xff\xfe" + json.dumps(r).encode("utf-16-le"))),
    # --- invalid JSON ------------------------------------------------------------------------
    ("invalid_json/nan", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.floats[0], b"NaN"))),
    ("invalid_json/infinity", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.floats[0], b"Infinity"))),
    ("invalid_json/minus_infinity", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.floats[0], b"-Infinity"))),
    ("invalid_json/lone_high_surrogate", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\\ud800"))),
    ("invalid_json/lone_low_surrogate", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\\udc00"))),
    ("invalid_json/reversed_surrogates", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\\ude00\\ud83d"))),
    ("invalid_json/trailing_garbage", INVALID_JSON, 1, None, _body(lambda r, c: dumps(r) + b"x")),
    ("invalid_json/trailing_brace", INVALID_JSON, 1, None, _body(lambda r, c: dumps(r) + b"}")),
    ("invalid_json/two_objects_comma", INVALID_JSON, 2, None, _body(lambda r, c: dumps(r) + b"," + dumps(r))),
    ("invalid_json/two_objects_glued", INVALID_JSON, 1, None, _body(lambda r, c: dumps(r) + dumps(r))),
    ("invalid_json/string_runs_on", INVALID_JSON, 1, None,
     _body(lambda r, c: dumps(_drop(r, c.target.text))[:-1] + f',"{c.target.text}":"'.encode() + b"}")),
    ("invalid_json/single_quotes", INVALID_JSON, 1, None, _body(lambda r, c: dumps(r).replace(b'"', b"'"))),
    ("invalid_json/unquoted_names", INVALID_JSON, 1, None,
     _body(lambda r, c: b"{" + b",".join(k.encode() + b":" + json.dumps(v).encode() for k, v in r.items()) + b"}")),
    ("invalid_json/trailing_comma", INVALID_JSON, 1, None, _body(lambda r, c: dumps(r)[:-1] + b",}")),
    ("invalid_json/comment", INVALID_JSON, 1, None, _body(lambda r, c: b"/* hi */" + dumps(r))),
    ("invalid_json/recursion_bomb", INVALID_JSON, 1, None, _body(lambda r, c: _nested(20_000))),
    ("invalid_json/recursion_bomb_in_field", INVALID_JSON, 1, None,
     _body(lambda r, c: _raw_field(r, c.target.ints[0], _nested(10_000)))),
    ("invalid_json/object_bomb", INVALID_JSON, 1, None,
     _body(lambda r, c: b'{"a":' * 5_000 + b"1" + b"}" * 5_000)),
    ("invalid_json/raw_control_char", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\x01"))),
    ("invalid_json/raw_newline_in_string", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\n"))),
    ("invalid_json/bad_escape", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\\x41"))),
    ("invalid_json/short_unicode_escape", INVALID_JSON, 1, None, _body(lambda r, c: _string_with(r, c.target, b"\\u12G4"))),
    ("invalid_json/leading_zero", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.ints[0], b"0123"))),
    ("invalid_json/plus_sign", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.ints[0], b"+5"))),
    ("invalid_json/bare_fraction", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.floats[0], b".5"))),
    ("invalid_json/hex_number", INVALID_JSON, 1, None, _body(lambda r, c: _raw_field(r, c.target.ints[0], b"0x1F"))),
    ("invalid_json/5000_digit_number", INVALID_JSON, 1, None,
     _body(lambda r, c: _raw_field(r, c.target.ints[0], b"1" + b"0" * 5000))),
    ("invalid_json/utf8_bom", INVALID_JSON, 1, None, _body(lambda r, c: b"\xef\xbb\xbf" + dumps(r))),
    ("invalid_json/empty_value", INVALID_JSON, 1, None, _body(lambda r, c: b"")),
    ("invalid_json/whitespace_only", INVALID_JSON, 0.5, None, _body(lambda r, c: b" \n\t ")),
    ("invalid_json/plain_text", INVALID_JSON, 0.5, None, _body(lambda r, c: b"hello world")),
    ("invalid_json/xml", INVALID_JSON, 0.5, None, _body(lambda r, c: b"<order id='1'/>")),
    # --- wrong types and out-of-range values ------------------------------------------------
    ("wrong_type/int_as_string", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], str(r[c.target.ints[0]]))))),
    ("wrong_type/float_as_string", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.floats[0], str(r[c.target.floats[0]]))))),
    ("wrong_type/int_as_bool", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], True)))),
    ("wrong_type/float_as_bool", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.floats[0], False)))),
    ("wrong_type/int_as_object", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], {"value": 1})))),
    ("wrong_type/int_as_array", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], [1])))),
    ("wrong_type/string_as_number", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.literal, 42)))),
    ("wrong_type/string_as_array", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.text, ["a"])))),
    ("wrong_type/fraction_for_int", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], 1.5)))),
    ("wrong_type/exponent_for_int", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _raw_field(r, c.target.ints[0], b"1e3"))),
    ("wrong_type/required_null", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], None)))),
    ("wrong_type/int_over_int64", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _huge_int(r, c, 2 ** 63))),
    ("wrong_type/int_over_uint64", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _huge_int(r, c, 2 ** 64 + 1))),
    ("wrong_type/int_10e30", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _huge_int(r, c, 10 ** 30))),
    ("wrong_type/int_below_range", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.ints[0], 0)))),
    ("wrong_type/int_below_int64", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _huge_int(r, c, -(2 ** 63) - 1))),
    ("wrong_type/float_overflow", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: _raw_field(r, c.target.floats[0], b"1e999"))),
    ("wrong_type/literal_not_allowed", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.literal, "X")))),
    ("wrong_type/literal_wrong_case", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: dumps(_set(r, c.target.literal, str(r[c.target.literal]).swapcase() + "_"))))
    ,
    ("wrong_type/text_too_long", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: dumps(_set(r, c.target.text, "y" * (c.target.text_max + 1))))),
    ("wrong_type/date_feb_30", CONTRACT_VIOLATION, 1, None, _bad_date("1995-02-30")),
    ("wrong_type/date_month_13", CONTRACT_VIOLATION, 1, None, _bad_date("1995-13-01")),
    ("wrong_type/date_words", CONTRACT_VIOLATION, 1, None, _bad_date("yesterday")),
    ("wrong_type/date_empty", CONTRACT_VIOLATION, 1, None, _bad_date("")),
    ("wrong_type/date_two_digit_year", CONTRACT_VIOLATION, 1, None, _bad_date("95-06-01")),
    ("wrong_type/date_as_epoch_number", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: dumps(_set(r, _date_field(c.target), 801_964_800)))),
    ("wrong_type/top_level_array", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: b"[" + dumps(r) + b"]")),
    ("wrong_type/top_level_null", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: b"null")),
    ("wrong_type/top_level_number", CONTRACT_VIOLATION, 0.5, None, _body(lambda r, c: b"42")),
    ("wrong_type/top_level_string", CONTRACT_VIOLATION, 0.5, None, _body(lambda r, c: json.dumps(dumps(r).decode()).encode())),
    ("wrong_type/duplicate_name_last_invalid", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: _dup_names(r, c.target.floats[0], json.dumps(r[c.target.floats[0]]).encode(), b'"abc"'))),
    # --- missing and extra fields -------------------------------------------------------------
    ("missing_field/key_field", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_drop(r, c.target.key[0])))),
    ("missing_field/random_required", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: dumps(_drop(r, c.rng.choice(sorted(set(r) - {c.target.optional})))))),
    ("missing_field/empty_object", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: b"{}")),
    ("missing_field/only_the_key", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps({k: r[k] for k in c.target.key}))),
    ("missing_field/name_case_changed", CONTRACT_VIOLATION, 1, None,
     _body(lambda r, c: dumps({(k.upper() if k == c.target.key[0] else k): v for k, v in r.items()}))),
    ("extra_field/unknown", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, "surprise", 1)))),
    ("extra_field/null", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, "surprise", None)))),
    ("extra_field/nested_object", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, "meta", {"a": [1, {"b": 2}]})))),
    ("extra_field/provenance_column", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, "__topic", "forged")))),
    ("extra_field/proto", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, "__proto__", {"admin": True})))),
    ("extra_field/name_with_space", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.key[0] + " ", 1)))),
    # --- null key fields in the JSON ---------------------------------------------------------
    ("null_key/first_key_field", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.key[0], None)))),
    ("null_key/last_key_field", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.key[-1], None)))),
    ("null_key/empty_string_key", CONTRACT_VIOLATION, 1, None, _body(lambda r, c: dumps(_set(r, c.target.key[0], "")))),
    # --- size ---------------------------------------------------------------------------------
    ("size/one_byte_over", OVERSIZE, 0.3, 3, _body(lambda r, c: _pad_to(dumps(r), MAX_VALUE_BYTES + 1))),
    ("size/1_5_mb_text", OVERSIZE, 0.2, 2,
     _body(lambda r, c: dumps(_set(r, c.target.text, "z" * 1_500_000)))),
    ("size/4_mb_binary", OVERSIZE, 0.1, 1, _body(lambda r, c: c.rng.randbytes(4 * 1024 * 1024))),
    ("size/near_broker_max", OVERSIZE, 0.1, 1,
     _body(lambda r, c: _pad_to(dumps(r), BROKER_MAX_BYTES - 2048))),
    # --- null / empty values ------------------------------------------------------------------
    ("null_value/tombstone", NULL_VALUE, 1, None, lambda r, c: (_kf(r, c.target), None, [], None)),
    ("null_value/tombstone_with_contract", NULL_VALUE, 1, None,
     lambda r, c: (_kf(r, c.target), None, [("contract", c.ref.encode())], None)),
    ("null_value/tombstone_no_headers", NULL_VALUE, 0.5, None, lambda r, c: (b"k", None, [], None)),
    # --- contract header (schema versions) ----------------------------------------------------
    ("schema/unknown_version", UNKNOWN_SCHEMA, 2, None, _hdr([b"{S}@999"])),
    ("schema/newer_version", UNSUPPORTED_VERSION, 2, None, _hdr([b"{S}@2"])),
    ("schema/version_zero", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@0"])),
    ("schema/negative_version", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@-1"])),
    ("schema/no_version", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@"])),
    ("schema/no_at", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}"])),
    ("schema/empty_header", UNKNOWN_SCHEMA, 1, None, _hdr([b""])),
    ("schema/leading_zero", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@01"])),
    ("schema/decimal_version", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@1.0"])),
    ("schema/space_in_version", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@ 1"])),
    ("schema/trailing_nul", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@1\x00"])),
    ("schema/superscript_digit", UNKNOWN_SCHEMA, 1, None, _hdr(["{S}@\u00b2".encode()])),
    ("schema/arabic_indic_digit", UNKNOWN_SCHEMA, 1, None, _hdr(["{S}@\u0661".encode()])),
    ("schema/5000_digit_version", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@" + b"7" * 5000])),
    ("schema/other_subject", UNKNOWN_SCHEMA, 1, None, _hdr([b"customer@1"])),
    ("schema/subject_case", UNKNOWN_SCHEMA, 1, None, lambda r, c: _hdr([f"{c.subject.upper()}@1".encode()])(r, c)),
    ("schema/subject_prefix", UNKNOWN_SCHEMA, 1, None, _hdr([b"x{S}@1"])),
    ("schema/at_in_subject", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@x@1"])),
    ("schema/not_utf8", UNKNOWN_SCHEMA, 1, None, _hdr([b"\xff\xfe@1"])),
    ("schema/huge_header", UNKNOWN_SCHEMA, 0.5, None, _hdr([b"{S}@1" + b"x" * 50_000])),
    ("schema/conflicting_headers", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@1", b"{S}@999"])),
    ("schema/conflicting_headers_reversed", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@999", b"{S}@1"])),
    ("schema/conflicting_valid_garbage", UNKNOWN_SCHEMA, 1, None, _hdr([b"{S}@1", b"\xff"])),
    ("schema/unknown_version_oversize_value", UNKNOWN_SCHEMA, 0.2, 2,
     lambda r, c: (_kf(r, c.target), _pad_to(dumps(r), MAX_VALUE_BYTES + 100),
                   [("contract", f"{c.subject}@999".encode())], None)),
    # --- garbage headers on a bad body (the dead letter must carry them) ------------------------
    ("garbage_headers/non_utf8_correlation_id", INVALID_JSON, 1, None,
     lambda r, c: (_kf(r, c.target), dumps(r)[:10], [("correlation_id", b"\xff\xfe\x00\x01")], None)),
    ("garbage_headers/huge_header", CONTRACT_VIOLATION, 0.3, 2,
     lambda r, c: (_kf(r, c.target), dumps(_set(r, "surprise", 1)), [("x-junk", b"j" * 2_000_000)], None)),
    ("garbage_headers/headers_near_broker_max", INVALID_JSON, 0.1, 1,
     lambda r, c: (_kf(r, c.target), b"{" * 2000,
                   [(f"x-junk-{i}", c.rng.randbytes(1_041_000)) for i in range(8)], None)),
    ("garbage_headers/many_headers", CONTRACT_VIOLATION, 1, None,
     lambda r, c: (_kf(r, c.target), dumps(_set(r, c.target.ints[0], "1")),
                   [(f"h{i % 7}", str(i).encode()) for i in range(300)], None)),
    ("garbage_headers/forged_error_code", INVALID_JSON, 1, None,
     lambda r, c: (_kf(r, c.target), b"{nope", [("conflux.error.code", b"OK"),
                                               ("conflux.error.message", b"")], None)),
    ("garbage_headers/non_utf8_key", UNDECODABLE, 1, None,
     lambda r, c: (b"\xff\xfe\xfd", _string_with(r, c.target, b"\xff"), [], None)),
    ("garbage_headers/null_kafka_key", CONTRACT_VIOLATION, 1, None,
     lambda r, c: (None, dumps(_drop(r, c.target.key[0])), [], None)),
    ("garbage_headers/huge_key", INVALID_JSON, 0.3, 3,
     lambda r, c: (b"k" * 300_000, b"[", [], None)),
    ("garbage_headers/unicode_header_names", CONTRACT_VIOLATION, 1, None,
     lambda r, c: (_kf(r, c.target), b"{}", [("ключ", b"1"), ("", b"empty name"), ("\u0000", b"nul")], None)),
]

KEPT: list[tuple[str, float, int | None, V]] = [
    ("plain/with_contract", 10, None, _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("contract", c.ref.encode())], r))),
    ("plain/no_contract_header", 4, None, _kept(lambda r, c: (_kf(r, c.target), dumps(r), [], r))),
    ("odd/null_kafka_key", 1, None, _kept(lambda r, c: (None, dumps(r), [], r))),
    ("odd/no_headers_at_all", 1, None, _kept(lambda r, c: (_kf(r, c.target), dumps(r), None, r))),
    ("odd/non_utf8_correlation_id", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("correlation_id", b"\xff\xfe\xc0\xaf")], r))),
    ("odd/huge_correlation_id", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("correlation_id", b"c" * 100_000)], r))),
    ("odd/garbage_traceparent", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("traceparent", b"\x00\xff not-w3c")], r))),
    ("odd/duplicate_lineage_headers", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("correlation_id", b"first"), ("correlation_id", b"second"),
                                                        ("traceparent", b"a"), ("traceparent", b"b"),
                                                        ("contract", c.ref.encode()), ("contract", c.ref.encode())], r))),
    ("odd/forged_error_headers", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("conflux.error.code", b"INVALID_JSON")], r))),
    ("odd/huge_unrelated_header", 0.3, 3,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("x-blob", b"b" * 500_000)], r))),
    ("odd/unicode_header_names", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [("ключ", b"1"), ("", b"empty name")], r))),
    ("odd/many_headers", 1, None,
     _kept(lambda r, c: (_kf(r, c.target), dumps(r), [(f"h{i % 5}", str(i).encode()) for i in range(200)], r))),
    ("odd/huge_kafka_key", 0.3, 3, _kept(lambda r, c: (b"K" * 200_000, dumps(r), [], r))),
    ("odd/non_utf8_kafka_key", 1, None, _kept(lambda r, c: (b"\xff\xfe\x00", dumps(r), [], r))),
    ("odd/pretty_whitespace", 1, None, _kept(lambda r, c: (_kf(r, c.target), _pretty(r, c), [], r))),
    ("odd/shuffled_names", 1, None, _kept(lambda r, c: (_kf(r, c.target), dumps(_shuffled(r, c)), [], r))),
    ("odd/escaped_unicode", 1, None, _kept(lambda r, c: _odd_text(r, c, "é😀\u0000\"\\/", True))),
    ("odd/raw_unicode", 1, None, _kept(lambda r, c: _odd_text(r, c, "é😀中עברית\u200f", False))),
    ("odd/max_length_multibyte_text", 1, None, _kept(_max_text)),
    ("odd/duplicate_name_last_valid", 1, None, _kept(_dup_keep_last)),
    ("odd/int_for_float", 1, None, _kept(_int_for_float)),
    ("odd/exponent_float", 1, None, _kept(_exponent)),
    ("odd/int64_max", 1, None, _kept(_boundary_int)),
    ("odd/optional_field_omitted", 1, None, _kept(_omitted_optional)),
    ("odd/utc_offset_timestamp", 1, None, _kept(_utc_offset)),
    ("odd/value_exactly_at_limit", 0.2, 2, _kept(_exact_limit)),
]

CATEGORIES = sorted({label.split("/")[0] for label, *_ in HOSTILE})


def generate(dataset: str, *, hostile: int, seed: int, subject: str | None = None,
             good_every: int = 1, odd_share: float = 0.3, huge: bool = True) -> Batch:
    """Hostile and kept records for ``dataset``, interleaved, deterministic for ``seed``.

    Args:
        dataset: ``orders``, ``lineitem`` or ``customer_ledger``.
        hostile: how many hostile records (every variant at least once when there are enough;
            the rest drawn by weight, the huge ones capped per call).
        seed: everything (variants, cut points, order) follows from it.
        subject: the registry subject the records' ``contract`` headers name (default the
            dataset); ``subject@1`` is what the code reads, ``subject@2`` is registered and
            newer, no other version exists.
        good_every: one kept record after every ``good_every`` hostile ones.
        odd_share: the share of kept records that are "odd" rather than plain.
        huge: include the variants of megabytes (the capped ones: values and headers of 1 to
            8 MiB, huge keys); without them a batch is a few MB instead of ~50.

    Returns:
        A :class:`Batch`: the records in publishing order, each with its expected outcome.
    """
    target = TARGETS[dataset]
    rng = random.Random(f"{seed}:{dataset}")
    ctx = Ctx(rng, target, subject or dataset)
    n_kept = math.ceil(hostile / max(1, good_every))
    rows = good_rows(dataset, n_kept + max(1, hostile // 4), seed)
    kept_rows, spare = rows[:n_kept], rows[n_kept:]

    hostile_labels = _draw([(l, w, cap) for l, _, w, cap, _ in HOSTILE if huge or cap is None],
                           hostile, rng)
    odd = [k for k in KEPT if not k[0].startswith("plain/") and (huge or k[2] is None)]
    plain = [k for k in KEPT if k[0].startswith("plain/")]
    n_odd = min(n_kept, max(len(odd), int(n_kept * odd_share))) if n_kept else 0
    kept_labels = (_draw([(l, w, cap) for l, w, cap, _ in odd], n_odd, rng)
                   + _draw([(l, w, cap) for l, w, cap, _ in plain], n_kept - n_odd, rng))
    rng.shuffle(kept_labels)

    by_label = {l: (code, make) for l, code, _, _, make in HOSTILE}
    kept_make = {l: make for l, _, _, make in KEPT}
    out = Batch(target, ctx.subject)
    hostile_recs = []
    for i, label in enumerate(hostile_labels):
        code, make = by_label[label]
        # half derive from a kept row (same key: a leak would overwrite it), half from a spare
        base = kept_rows[rng.randrange(len(kept_rows))] if kept_rows and i % 2 else \
            spare[i % len(spare)]
        key, value, headers, _ = make(dict(base), ctx)
        hostile_recs.append(_record(f"h{i:06d}", label, True, key, value, headers, code=code))
    kept_recs = []
    for i, (label, row) in enumerate(zip(kept_labels, kept_rows)):
        key, value, headers, expected = kept_make[label](dict(row), ctx)
        kept_recs.append(_record(f"g{i:06d}", label, False, key, value, headers, row=expected))
    rng.shuffle(hostile_recs)
    k = 0
    for i, rec in enumerate(hostile_recs):
        out.records.append(rec)
        if (i + 1) % max(1, good_every) == 0 and k < len(kept_recs):
            out.records.append(kept_recs[k])
            k += 1
    out.records += kept_recs[k:]
    return out


def _record(id_: str, label: str, hostile: bool, key, value, headers, *, code=None,
            row=None) -> Fuzzed:
    if headers is None:  # the "no headers at all" variant
        heads: tuple = ()
    else:
        heads = ((ID_HEADER, id_.encode()), (LABEL_HEADER, label.encode()), *headers)
    return Fuzzed(id_, label, hostile, key, value, heads, expected_code=code, expected_row=row)


def _draw(variants: list[tuple[str, float, int | None]], n: int, rng: random.Random) -> list[str]:
    """``n`` labels: each variant once (while n allows), then by weight within the caps."""
    labels = [label for label, _, _ in variants][:n]
    counts = Counter(labels)
    open_ = list(variants)
    while len(labels) < n:
        open_ = [(l, w, cap) for l, w, cap in open_ if cap is None or counts[l] < cap]
        names, weights = [l for l, _, _ in open_], [w for _, w, _ in open_]
        capped = any(cap is not None for _, _, cap in open_)
        # draw in blocks; a capped variant's block ends at its cap (then the pool is rebuilt)
        for label in rng.choices(names, weights=weights, k=min(n - len(labels),
                                                              64 if capped else n)):
            labels.append(label)
            counts[label] += 1
            cap = next((c for l, _, c in open_ if l == label), None) if capped else None
            if cap is not None and counts[label] >= cap:
                break
    return labels


def summary(batches: list[Batch]) -> dict:
    """Counts by category and by expected reason (what the fuzz script prints)."""
    hostile = [r for b in batches for r in b.hostile]
    return {
        "hostile": len(hostile),
        "kept": sum(len(b.kept) for b in batches),
        "by_category": dict(sorted(Counter(r.category for r in hostile).items())),
        "by_expected_reason": dict(sorted(Counter(r.expected_code for r in hostile).items())),
        "bytes": sum(r.size for b in batches for r in b.records),
    }


def iter_variants() -> Iterator[tuple[str, str | None]]:
    """Every variant label and its expected reason (None: kept)."""
    for label, code, *_ in HOSTILE:
        yield label, code
    for label, *_ in KEPT:
        yield label, None
