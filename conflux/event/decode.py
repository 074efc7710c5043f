"""Decode → resolve contract version → validate, for one batch of records (no Dagster).

A record names its contract version with a ``contract: subject@version`` header, with Confluent's
wire format (magic byte 0, a 4-byte big-endian schema id, then the JSON payload), with both (they
must agree), or not at all (read as the latest version). JSON never starts with byte 0, so
framing is told apart from plain JSON by its first byte alone.

Bad records are never fatal: each becomes a :class:`DeadLetter` with a stable reason code, and
the good records of the same batch are kept. Validation runs on the whole batch at once
(``TypeAdapter(list[Model]).validate_json`` on a JSON array) and only falls back to one record
at a time when the batch holds a bad record.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import Annotated, NotRequired, Required, TypedDict

from conflux.io.kafka import Record

CONTRACT_HEADER = "contract"
MAX_VALUE_BYTES = 1_000_000
# a dead letter must fit what the producer may send (KafkaResource.producer's max_request_size
# and the local broker's message.max.bytes are 8 MiB); the margin covers the record overhead
MAX_DEAD_LETTER_BYTES = 8 * 1024 * 1024 - 65_536
MAX_HEADER_SHOWN = 200  # characters of a header value quoted in a reason or dead-letter header
INT64 = (-(2 ** 63), 2 ** 63 - 1)  # what the lake stores integers as

# stable reason codes, carried in the dead-letter headers
NULL_VALUE = "NULL_VALUE"
OVERSIZE = "OVERSIZE"
UNDECODABLE = "UNDECODABLE_BYTES"
INVALID_JSON = "INVALID_JSON"
CONTRACT_VIOLATION = "CONTRACT_VIOLATION"
UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
UNSUPPORTED_VERSION = "UNSUPPORTED_SCHEMA_VERSION"
MISSING_KEY = "MISSING_KEY"
BAD_FRAMING = "BAD_FRAMING"              # magic byte 0, but no 4-byte schema id and payload
UNKNOWN_SCHEMA_ID = "UNKNOWN_SCHEMA_ID"  # the framed id is no version of the dataset's subject
CONTRACT_CONFLICT = "CONTRACT_CONFLICT"  # the contract header and the framed id disagree
VALIDATION_FAILED = "VALIDATION_FAILED"  # the validator itself raised: a bug, never a crash


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    code: str
    message: str
    contract: str | None = None


@dataclass
class Decoded:
    rows: list[dict] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)  # the record each row came from
    contracts: list[str] = field(default_factory=list)   # subject@version each row was read as
    dead: list[DeadLetter] = field(default_factory=list)


MAGIC_BYTE = 0
FRAME_BYTES = 5  # magic byte + 4-byte schema id
MAX_ID_LOOKUPS = 16  # registry look-ups per resolver of ids that are not the subject's


class ContractResolver:
    """Maps a record's ``contract`` header, or its Confluent schema id, to the subject@version it
    is read with.

    Args:
        subject: the dataset's subject.
        current_version: registry version of the contract this code validates with.
        known_versions: every registered version of the subject, soft-deleted ones included
            (records written with them stay readable, by header as by id).
        latest: the version untagged records read as (default: the highest known); the
            latest live one, so a soft-deleted newest version is not applied to new records.
        ids: global schema id → version of the subject, for every version of it.
        registered_as: the ``subject@version`` refs a schema id is registered as (other
            subjects'), asked only to say so in a dead letter's message, at most
            ``MAX_ID_LOOKUPS`` times per resolver.
    A missing header reads as the latest registered version (plain-JSON producers are valid).
    """

    def __init__(self, subject: str, current_version: int | None, known_versions: Sequence[int],
                 ids: Mapping[int, int] | None = None,
                 registered_as: Callable[[int], Sequence[str]] | None = None,
                 latest: int | None = None):
        self.subject = subject
        self.current = current_version
        self.known = set(known_versions)
        self.latest = latest if latest is not None else max(self.known, default=None)
        self.ids = dict(ids or {})
        self._registered_as = registered_as
        self._lookups = 0
        self._memo: dict[bytes | None, tuple[str | None, str | None, str]] = {}
        self._id_memo: dict[int, tuple[str | None, str | None, str]] = {}

    def resolve(self, header: bytes | None) -> tuple[str | None, str | None, str]:
        """``(error_code, message, ref)``; error_code is None when readable (memoised: a
        stream carries a handful of distinct header values)."""
        found = self._memo.get(header)
        if found is None:
            found = self._resolve(header)
            if len(self._memo) < 1024 and (header is None or len(header) <= 256):
                self._memo[header] = found  # (hostile headers can be megabytes: not kept)
        return found

    @property
    def default_ref(self) -> str:
        latest = self.latest
        return f"{self.subject}@{latest}" if latest else f"{self.subject}@unregistered"

    def _resolve(self, header: bytes | None) -> tuple[str | None, str | None, str]:
        if header is None:
            return None, None, self.default_ref
        try:
            text = header.decode()
        except UnicodeDecodeError:
            return UNKNOWN_SCHEMA, "contract header is not UTF-8", repr(header[:40])
        shown = _shown(text)
        subject, sep, version = text.rpartition("@")
        # canonical versions only: ASCII digits without leading zeros ("²".isdigit() is True
        # but int("²") raises; "01" would name version 1 under another spelling)
        if (not sep or not (version.isascii() and version.isdigit())
                or (version.startswith("0") and version != "0")):
            return (UNKNOWN_SCHEMA, f"malformed contract header {shown!r}; expected "
                    "subject@version", shown)
        if subject != self.subject:
            return (UNKNOWN_SCHEMA, f"record declares subject {_shown(subject)!r}, dataset "
                    f"reads {self.subject!r}", shown)
        if len(version) > 18 or int(version) not in self.known:  # (int() of 5,000 digits raises)
            return (UNKNOWN_SCHEMA, f"subject {subject!r} has no registered version "
                    f"{_shown(version)}", shown)
        return self._readable(int(version), text)

    def _readable(self, version: int, ref: str) -> tuple[str | None, str | None, str]:
        if self.current is not None and version > self.current:
            return (UNSUPPORTED_VERSION, f"{ref} is newer than the contract this code reads "
                    f"({self.subject}@{self.current}); deploy the new contract first", ref)
        return None, None, ref

    def resolve_framed(self, value: bytes,
                       header: bytes | None) -> tuple[str | None, str | None, str | None]:
        """``(error_code, message, ref)`` of a value starting with the magic byte; a
        ``contract`` header beside the framing must name the same version."""
        if len(value) <= FRAME_BYTES:
            return (BAD_FRAMING, f"value starts with the Confluent magic byte 0 but is "
                    f"{len(value)} byte(s) long: a framed record is the magic byte, a 4-byte "
                    "schema id and a JSON payload", None)
        code, msg, ref = self.resolve_id(int.from_bytes(value[1:FRAME_BYTES], "big"))
        if code is not None or header is None:
            return code, msg, ref
        code, msg, declared = self.resolve(header)
        if code is not None:
            return code, msg, declared
        if declared != ref:
            return (CONTRACT_CONFLICT, f"contract header says {declared} but the framed schema "
                    f"id {value[1:FRAME_BYTES].hex()} is {ref}", f"{declared} / {ref}")
        return None, None, ref

    def resolve_id(self, schema_id: int) -> tuple[str | None, str | None, str]:
        """``(error_code, message, ref)`` of a Confluent schema id (memoised)."""
        found = self._id_memo.get(schema_id)
        if found is None:
            found = self._resolve_id(schema_id)
            if len(self._id_memo) < 1024:
                self._id_memo[schema_id] = found
        return found

    def _resolve_id(self, schema_id: int) -> tuple[str | None, str | None, str]:
        version = self.ids.get(schema_id)
        if version is not None:
            return self._readable(version, f"{self.subject}@{version}")
        shown = f"schema id {schema_id}"
        where = None
        if self._registered_as is not None and self._lookups < MAX_ID_LOOKUPS:
            self._lookups += 1
            try:
                where = list(self._registered_as(schema_id))
            except Exception:  # noqa: BLE001 - only the message depends on it
                where = None
        if where is None:
            why = (f"is no version of subject {self.subject!r} (not registered, or another "
                   "subject's)")
        elif where:
            why = (f"is registered as {', '.join(where[:5])}, not as a version of subject "
                   f"{self.subject!r} (the dataset's): register the same schema under it, "
                   "then replay")
        else:
            why = "is not registered in this registry"
        return UNKNOWN_SCHEMA_ID, f"{shown} {why}", shown


def _shown(text: str) -> str:
    """``text`` cut to what a reason may quote."""
    return text if len(text) <= MAX_HEADER_SHOWN else text[:MAX_HEADER_SHOWN] + "…"


def _message(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(record)"
    return f"{loc}: {err.get('msg')}"


def decode_batch(records: Sequence[Record], contract: type[BaseModel], key: Sequence[str],
                 resolver: ContractResolver, max_bytes: int = MAX_VALUE_BYTES) -> Decoded:
    """Split ``records`` into validated rows and dead letters (rows in input order).

    Values are read as JSON with the contract's JSON Schema meaning (strict types: a number in
    a string, a bool for a number, a timestamp for a date are violations; NaN and Infinity are
    not JSON; integers must fit the lake's int64). Any exception a record causes becomes its
    dead letter; none escapes.
    """
    out = Decoded()
    candidates: list[tuple[int, Record, str, bytes]] = []  # (index, record, ref, JSON payload)
    for i, rec in enumerate(records):
        header, declared = None, 0  # (inlined: this loop runs for every record)
        for name, hvalue in rec.headers:
            if name == CONTRACT_HEADER and hvalue is not None and hvalue != header:
                header, declared = hvalue, declared + 1
        value = rec.value
        framed = bool(value) and value[0] == MAGIC_BYTE  # Confluent wire format
        if declared > 1:
            code, msg, ref = (UNKNOWN_SCHEMA, f"record carries different "
                              f"{CONTRACT_HEADER!r} headers; which contract applies is "
                              "ambiguous", None)
        elif framed:
            code, msg, ref = resolver.resolve_framed(value, header)
        else:
            code, msg, ref = resolver.resolve(header)
        if code is None:
            if value is None:
                code, msg = NULL_VALUE, "record has no value (tombstone or null)"
            elif len(value) > max_bytes:
                code, msg = OVERSIZE, f"value is {len(value)} bytes; the limit is {max_bytes}"
            # (bytes that are not UTF-8 fail the batch validation and are classified below)
        if code is not None:
            out.dead.append(DeadLetter(rec, code, msg, ref))
        else:
            candidates.append((i, rec, ref, value[FRAME_BYTES:] if framed else value))
    if not candidates:
        return out
    adapter = _list_adapter(contract)
    # One JSON array validated at once. Its elements are only trusted to be the values, one
    # each, when every value starts with "{" and ends with "}" and the array holds exactly one
    # element per value: the ",\n" separator cannot sit inside a JSON string (raw newlines are
    # invalid there), a value holding two objects ("{..},{..}") changes the count, and a value
    # could only run on into the next inside an array — which fails validation when every
    # field of the contract is a scalar (otherwise records are validated one at a time).
    batchable, singles = [], []
    if _adapters(contract)[3]:
        for c in candidates:
            value = c[3]
            (batchable if value[:1] == b"{" and value[-1:] == b"}" else singles).append(c)
    else:
        singles = candidates
    good: list[tuple[tuple[int, Record, str, bytes], object]] = []
    if batchable:
        try:
            models = adapter.validate_json(
                b"[" + b",\n".join([c[3] for c in batchable]) + b"]", strict=True)
        except Exception:  # noqa: BLE001 - any failure: one record at a time, below
            models = ()
        if len(models) == len(batchable):
            good = list(zip(batchable, models))
        else:
            singles = candidates
    if singles:
        single = _single_adapter(contract)
        for cand in singles:
            _, rec, ref, value = cand
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.dead.append(DeadLetter(rec, UNDECODABLE, f"value is not UTF-8: {exc.reason} "
                                                             f"at byte {exc.start}", ref))
                continue
            try:
                good.append((cand, single.validate_json(value, strict=True)))
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                code = _classify(errors, value)
                text = "; ".join(_message(e) for e in errors[:5])
                out.dead.append(DeadLetter(rec, code, text, ref))
            except Exception as exc:  # noqa: BLE001 - e.g. RecursionError in a validator
                out.dead.append(DeadLetter(rec, VALIDATION_FAILED, f"validating the record "
                                           f"raised {type(exc).__name__}: {exc}"[:2000], ref))
        if len(good) > 1 and len(singles) < len(candidates):
            good.sort(key=lambda g: g[0][0])  # batched and single rows back in input order
    validated = [m for _, m in good]
    # TypedDict rows are plain dicts already; model instances are dumped to dicts
    rows = validated if not validated or isinstance(validated[0], dict) else adapter.dump_python(validated)
    defaults = _adapters(contract)[2]
    if defaults:  # fields left out by the producer take the contract's defaults
        n_fields = len(contract.model_fields)
        for row in rows:
            if len(row) < n_fields:
                for name, value in defaults.items():
                    row.setdefault(name, value)
    nullable = [k for k in key if _nullable(contract, k)]
    if not nullable:  # the contract itself guarantees every key field: no per-row check
        out.rows = rows
        out.records = [c[1] for c, _ in good]
        out.contracts = [c[2] for c, _ in good]
        return out
    for ((_, rec, ref, _), _), row in zip(good, rows):
        missing = [k for k in nullable if row.get(k) is None]
        if missing:
            out.dead.append(DeadLetter(rec, MISSING_KEY, f"key field(s) {missing} are null", ref))
            continue
        out.rows.append(row)
        out.records.append(rec)
        out.contracts.append(ref)
    return out


def _classify(errors: list[dict], value: bytes) -> str:
    """INVALID_JSON when the bytes are not JSON (RFC 8259), else CONTRACT_VIOLATION."""
    types = {e["type"] for e in errors}
    if types & {"json_invalid", "json_type"}:
        return INVALID_JSON
    if "finite_number" in types and _has_non_json_number(value):
        return INVALID_JSON  # NaN / Infinity literals, which the JSON parser tolerates
    return CONTRACT_VIOLATION


def _has_non_json_number(value: bytes) -> bool:
    def refuse(literal: str):
        raise ValueError(literal)
    try:
        json.loads(value, parse_constant=refuse)
    except ValueError:
        return True
    except Exception:  # noqa: BLE001 - anything else: not this rule's business
        return False
    return False


def _nullable(contract: type[BaseModel], name: str) -> bool:
    field_info = contract.model_fields.get(name)
    return field_info is None or not field_info.is_required() or "None" in str(field_info.annotation)


_ADAPTERS: dict = {}


def _row_type(contract: type[BaseModel]):
    """The contract as a closed TypedDict with the same field types and constraints.

    Validating into plain dicts is ~2x faster than building model instances and dumping them
    (measured: 211k vs 90k orders/s). Contracts with custom validators keep the model itself.
    """
    decorators = contract.__pydantic_decorators__
    if any((decorators.validators, decorators.field_validators, decorators.model_validators)):
        return contract, {}
    fields, defaults = {}, {}
    for name, info in contract.model_fields.items():
        if info.is_required():
            fields[name] = Required[Annotated[info.annotation, info, *_storable(info)]]
        else:
            fields[name] = NotRequired[Annotated[info.annotation, info, *_storable(info)]]
            defaults[name] = info.get_default(call_default_factory=True)
    row = TypedDict(f"{contract.__name__}Row", fields)
    # floats are finite: NaN / Infinity are not JSON, and 1e999 overflows to inf
    row.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)
    return row, defaults


def _utc_naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _storable(info) -> tuple:
    """Constraints that make a value storable in the lake as the other rows of its column:
    ``int`` fields within int64 (unless the field bounds itself), ``datetime`` fields as UTC
    without a zone (a UTC offset is applied, a naive time is UTC) — a bigger integer would fail
    the write, and a zone-aware value would change the column's type, instead of the record."""
    if info.annotation is dt.datetime:
        return (AfterValidator(_utc_naive),)
    return _int64_bounds(info)


def _int64_bounds(info) -> tuple:
    """The int64 range as constraints of an ``int`` field that does not bound itself."""
    if info.annotation is not int:
        return ()
    has_low = any(isinstance(m, (Ge, Gt)) for m in info.metadata)
    has_high = any(isinstance(m, (Le, Lt)) for m in info.metadata)
    return ((() if has_low else (Ge(INT64[0]),)) + (() if has_high else (Le(INT64[1]),)))


def _adapters(contract: type[BaseModel]) -> tuple[TypeAdapter, TypeAdapter, dict, bool]:
    """(list adapter, single adapter, defaults, whether batches can be validated at once)."""
    if contract not in _ADAPTERS:
        row, defaults = _row_type(contract)
        _ADAPTERS[contract] = (TypeAdapter(list[row]), TypeAdapter(row), defaults,
                               all(_scalar(f.annotation) for f in contract.model_fields.values()))
    return _ADAPTERS[contract]


_SCALARS = (int, float, str, bool, dt.date, dt.datetime, dt.time, decimal.Decimal, type(None))


def _scalar(annotation) -> bool:
    """True for a scalar type, a Literal, or a union / Annotated of those."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        args = typing.get_args(annotation)
        return all(_scalar(a) for a in (args[:1] if origin is typing.Annotated else args))
    return annotation in _SCALARS


def _list_adapter(contract: type[BaseModel]) -> TypeAdapter:
    return _adapters(contract)[0]


def _single_adapter(contract: type[BaseModel]) -> TypeAdapter:
    return _adapters(contract)[1]


def dead_letter_headers(dead: DeadLetter, *, dataset: str, run_id: str) -> list[tuple[str, bytes]]:
    """Original headers plus the reason, in the spirit of Kafka Connect's ``__connect.errors.*``.
    An original header that looks like a reason (``conflux.error.*``, forged or left over) is
    kept as ``conflux.original.<name>``, so the reason a reader finds first is the real one."""
    rec = dead.record
    extra = {
        "conflux.error.code": dead.code,
        "conflux.error.message": dead.message[:2000],
        "conflux.error.topic": rec.topic,
        "conflux.error.partition": str(rec.partition),
        "conflux.error.offset": str(rec.offset),
        "conflux.error.contract": _shown(dead.contract or ""),
        "conflux.error.dataset": dataset,
        "conflux.error.run_id": run_id,
    }
    original = [(f"conflux.original.{k}", v) if k.startswith("conflux.error.") else (k, v)
                for k, v in rec.headers]
    return [*original, *((k, v.encode()) for k, v in extra.items())]


def _size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> int:
    """Upper bound of a record's size on the wire (without the batch overhead)."""
    return (64 + (len(key) if key else 0) + (len(value) if value else 0)
            + sum(16 + len(k.encode("utf-8", "replace")) + (len(v) if v else 0) for k, v in headers))


def dead_letter(dead: DeadLetter, *, dataset: str, run_id: str,
                limit: int = MAX_DEAD_LETTER_BYTES) -> tuple[bytes | None, bytes | None,
                                                             list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the dead letter of ``dead``: the original record plus the
    reason headers — cut to fit ``limit`` when the original is too big to be sent again with
    them (a value near the broker's maximum, megabytes of headers or key). Null header values
    are sent as empty ones and a record with neither key nor value gets an empty key: the
    producer refuses both.

    A cut letter keeps the reason headers, the original headers of at most 4 KiB each (64 KiB
    in all), at most 64 KiB of the key and as much of the value as fits; it says what was cut
    in ``conflux.error.truncated`` and carries the original value's length and SHA-256
    (``conflux.error.value_bytes``, ``conflux.error.value_sha256``), so it can be matched with
    the original, which stays in the source topic until retention removes it.
    """
    rec = dead.record
    # what the producer refuses is made sendable: a header with a null value (Java clients can
    # write one) is re-sent empty, a record with neither key nor value gets an empty key
    headers = [(k, b"" if v is None else v)
               for k, v in dead_letter_headers(dead, dataset=dataset, run_id=run_id)]
    if rec.key is None and rec.value is None:
        rec = rec._replace(key=b"")
    if _size(rec.key, rec.value, headers) <= limit:
        return rec.key, rec.value, headers
    n_original = len(rec.headers)
    kept, dropped, used = [], [], 0
    for name, value in headers[:n_original]:
        size = _size(None, None, [(name, value)])
        if size <= 4096 and used + size <= 65_536:
            kept.append((name, value))
            used += size
        else:
            dropped.append(f"{_shown(name)[:80]} ({len(value) if value else 0} bytes)")
    notes = []
    key = rec.key
    if key is not None and len(key) > 65_536:
        key = key[:65_536]
        notes.append(f"key cut from {len(rec.key)} to {len(key)} bytes")
    if dropped:
        notes.append(f"{len(dropped)} header(s) dropped: {', '.join(dropped)}"[:1500])
    value = rec.value
    room = limit - _size(key, None, kept + headers[n_original:]) - 4096  # 4096: the notes below
    if value is not None and len(value) > room:
        value = value[:max(room, 0)]
        notes.append(f"value cut from {len(rec.value)} to {len(value)} bytes")
    extra = [("conflux.error.truncated", "; ".join(notes).encode())]
    if rec.value is not None:
        extra += [("conflux.error.value_bytes", str(len(rec.value)).encode()),
                  ("conflux.error.value_sha256", hashlib.sha256(rec.value).hexdigest().encode())]
    return key, value, [*kept, *headers[n_original:], *extra]
