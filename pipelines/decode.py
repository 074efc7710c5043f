"""Decode → resolve contract version → validate, for one batch of records (no Dagster).

Bad records are never fatal: each becomes a :class:`DeadLetter` with a stable reason code, and
the good records of the same batch are kept. Validation runs on the whole batch at once
(``TypeAdapter(list[Model]).validate_json`` on a JSON array) and only falls back to one record
at a time when the batch holds a bad record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, TypeAdapter, ValidationError

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

    @property
    def default_ref(self) -> str:
        latest = max(self.known) if self.known else None
        return f"{self.subject}@{latest}" if latest else f"{self.subject}@unregistered"

    def resolve(self, header: bytes | None) -> tuple[str | None, str | None, str]:
        """``(error_code, message, ref)``; error_code is None when readable."""
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
            else:
                try:
                    rec.value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    code, msg = UNDECODABLE, f"value is not UTF-8: {exc.reason} at byte {exc.start}"
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
                good.append(((rec, ref), single.validate_json(rec.value)))
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                json_bad = any(e["type"] in ("json_invalid", "json_type") for e in errors)
                code = INVALID_JSON if json_bad else CONTRACT_VIOLATION
                text = "; ".join(_message(e) for e in errors[:5])
                out.dead.append(DeadLetter(rec, code, text, ref))
    rows = adapter.dump_python([m for _, m in good])
    for ((rec, ref), _), row in zip(good, rows):
        missing = [k for k in key if row.get(k) is None]
        if missing:
            out.dead.append(DeadLetter(rec, MISSING_KEY, f"key field(s) {missing} are null", ref))
            continue
        out.rows.append(row)
        out.records.append(rec)
        out.contracts.append(ref)
    return out


_ADAPTERS: dict = {}


def _list_adapter(contract: type[BaseModel]) -> TypeAdapter:
    if (contract, list) not in _ADAPTERS:
        _ADAPTERS[(contract, list)] = TypeAdapter(list[contract])
    return _ADAPTERS[(contract, list)]


def _single_adapter(contract: type[BaseModel]) -> TypeAdapter:
    if (contract, None) not in _ADAPTERS:
        _ADAPTERS[(contract, None)] = TypeAdapter(contract)
    return _ADAPTERS[(contract, None)]


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
