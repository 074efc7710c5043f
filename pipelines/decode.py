"""Decode → resolve contract version → validate, for one batch of records (no Dagster).

Bad records are never fatal: each becomes a :class:`DeadLetter` with a stable reason code, and
the good records of the same batch are kept. Validation runs on the whole batch at once
(``TypeAdapter(list[Model]).validate_json`` on a JSON array) and only falls back to one record
at a time when the batch holds a bad record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import Annotated, NotRequired, Required, TypedDict

from resources.kafka import Record

CONTRACT_HEADER = "contract"
MAX_VALUE_BYTES = 1_000_000

# stable reason codes, carried in the dead-letter headers
NULL_VALUE = "NULL_VALUE"
OVERSIZE = "OVERSIZE"
UNDECODABLE = "UNDECODABLE_BYTES"
INVALID_JSON = "INVALID_JSON"
CONTRACT_VIOLATION = "CONTRACT_VIOLATION"
UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
UNSUPPORTED_VERSION = "UNSUPPORTED_SCHEMA_VERSION"
MISSING_KEY = "MISSING_KEY"


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


class ContractResolver:
    """Maps a record's ``contract`` header to the subject@version it is read with.

    Args:
        subject: the dataset's subject.
        current_version: registry version of the contract this code validates with.
        known_versions: every registered version of the subject.
    A missing header reads as the latest registered version (plain-JSON producers are valid).
    """

    def __init__(self, subject: str, current_version: int | None, known_versions: Sequence[int]):
        self.subject = subject
        self.current = current_version
        self.known = set(known_versions)
        self._memo: dict[bytes | None, tuple[str | None, str | None, str]] = {}

    def resolve(self, header: bytes | None) -> tuple[str | None, str | None, str]:
        """``(error_code, message, ref)``; error_code is None when readable (memoised: a
        stream carries a handful of distinct header values)."""
        found = self._memo.get(header)
        if found is None:
            found = self._resolve(header)
            if len(self._memo) < 1024:
                self._memo[header] = found
        return found

    @property
    def default_ref(self) -> str:
        latest = max(self.known) if self.known else None
        return f"{self.subject}@{latest}" if latest else f"{self.subject}@unregistered"

    def _resolve(self, header: bytes | None) -> tuple[str | None, str | None, str]:
        if header is None:
            return None, None, self.default_ref
        try:
            text = header.decode()
        except UnicodeDecodeError:
            return UNKNOWN_SCHEMA, "contract header is not UTF-8", repr(header[:40])
        subject, sep, version = text.rpartition("@")
        if not sep or not version.isdigit():
            return UNKNOWN_SCHEMA, f"malformed contract header {text!r}; expected subject@version", text
        if subject != self.subject:
            return UNKNOWN_SCHEMA, f"record declares subject {subject!r}, dataset reads {self.subject!r}", text
        v = int(version)
        if v not in self.known:
            return UNKNOWN_SCHEMA, f"subject {subject!r} has no registered version {v}", text
        if self.current is not None and v > self.current:
            return (UNSUPPORTED_VERSION, f"{text} is newer than the contract this code reads "
                    f"({self.subject}@{self.current}); deploy the new contract first", text)
        return None, None, text


def _message(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(record)"
    return f"{loc}: {err.get('msg')}"


def decode_batch(records: Sequence[Record], contract: type[BaseModel], key: Sequence[str],
                 resolver: ContractResolver, max_bytes: int = MAX_VALUE_BYTES) -> Decoded:
    """Split ``records`` into validated rows and dead letters (order kept)."""
    out = Decoded()
    candidates: list[tuple[Record, str]] = []
    for rec in records:
        code, msg, ref = resolver.resolve(rec.header(CONTRACT_HEADER))
        if code is None:
            if rec.value is None:
                code, msg = NULL_VALUE, "record has no value (tombstone or null)"
            elif len(rec.value) > max_bytes:
                code, msg = OVERSIZE, f"value is {len(rec.value)} bytes; the limit is {max_bytes}"
            # (bytes that are not UTF-8 fail the batch validation and are classified below)
        if code is not None:
            out.dead.append(DeadLetter(rec, code, msg, ref))
        else:
            candidates.append((rec, ref))
    if not candidates:
        return out
    adapter = _list_adapter(contract)
    try:
        models = adapter.validate_json(b"[" + b",".join(r.value for r, _ in candidates) + b"]")
        good = list(zip(candidates, models))
    except ValidationError:
        good = []
        single = _single_adapter(contract)
        for rec, ref in candidates:
            try:
                rec.value.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.dead.append(DeadLetter(rec, UNDECODABLE, f"value is not UTF-8: {exc.reason} "
                                                             f"at byte {exc.start}", ref))
                continue
            try:
                good.append(((rec, ref), single.validate_json(rec.value)))
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                json_bad = any(e["type"] in ("json_invalid", "json_type") for e in errors)
                code = INVALID_JSON if json_bad else CONTRACT_VIOLATION
                text = "; ".join(_message(e) for e in errors[:5])
                out.dead.append(DeadLetter(rec, code, text, ref))
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
        out.records = [rec for (rec, _), _ in good]
        out.contracts = [ref for (_, ref), _ in good]
        return out
    for ((rec, ref), _), row in zip(good, rows):
        missing = [k for k in nullable if row.get(k) is None]
        if missing:
            out.dead.append(DeadLetter(rec, MISSING_KEY, f"key field(s) {missing} are null", ref))
            continue
        out.rows.append(row)
        out.records.append(rec)
        out.contracts.append(ref)
    return out


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
            fields[name] = Required[Annotated[info.annotation, info]]
        else:
            fields[name] = NotRequired[Annotated[info.annotation, info]]
            defaults[name] = info.get_default(call_default_factory=True)
    row = TypedDict(f"{contract.__name__}Row", fields)
    row.__pydantic_config__ = ConfigDict(extra="forbid")
    return row, defaults


def _adapters(contract: type[BaseModel]) -> tuple[TypeAdapter, TypeAdapter, dict]:
    if contract not in _ADAPTERS:
        row, defaults = _row_type(contract)
        _ADAPTERS[contract] = (TypeAdapter(list[row]), TypeAdapter(row), defaults)
    return _ADAPTERS[contract]


def _list_adapter(contract: type[BaseModel]) -> TypeAdapter:
    return _adapters(contract)[0]


def _single_adapter(contract: type[BaseModel]) -> TypeAdapter:
    return _adapters(contract)[1]


def dead_letter_headers(dead: DeadLetter, *, dataset: str, run_id: str) -> list[tuple[str, bytes]]:
    """Original headers plus the reason, in the spirit of Kafka Connect's ``__connect.errors.*``."""
    rec = dead.record
    extra = {
        "conflux.error.code": dead.code,
        "conflux.error.message": dead.message[:2000],
        "conflux.error.topic": rec.topic,
        "conflux.error.partition": str(rec.partition),
        "conflux.error.offset": str(rec.offset),
        "conflux.error.contract": dead.contract or "",
        "conflux.error.dataset": dataset,
        "conflux.error.run_id": run_id,
    }
    return [*rec.headers, *((k, v.encode()) for k, v in extra.items())]
