"""The schema registry, on Postgres: subjects, versions and compatibility modes.

Tables live in the ``registry`` schema of the platform database:

- ``registry.subjects(subject, compatibility, created_at)``
- ``registry.versions(subject, version, schema, fingerprint, created_at)`` with
  ``unique(subject, version)`` and ``unique(subject, fingerprint)``.

Registering takes a row lock on the subject, so two processes registering at once are
serialised: versions are dense (1, 2, 3, ...) and an identical schema registered twice returns
the existing version. A schema that breaks the subject's mode is rejected with every
incompatibility listed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from conflux.core.errors import ConfluxError, IncompatibleSchemaError
from conflux.contracts.compat import Incompatibility, Mode, check_compatibility
from conflux.contracts.fingerprint import canonical, fingerprint  # noqa: F401  (re-exported)

DDL = """
create schema if not exists registry;
create table if not exists registry.subjects (
    subject       text primary key,
    compatibility text not null default 'BACKWARD',
    created_at    timestamptz not null default now()
);
create table if not exists registry.versions (
    subject     text not null references registry.subjects(subject),
    version     integer not null,
    schema      jsonb not null,
    fingerprint text not null,
    created_at  timestamptz not null default now(),
    primary key (subject, version),
    unique (subject, fingerprint)
);
"""


class UnknownSubjectError(ConfluxError):
    """An event or a lookup names a subject the registry does not know."""

    code = "SCHEMA_UNKNOWN_SUBJECT"


class UnknownVersionError(ConfluxError):
    """An event or a lookup names a version the registry does not hold for its subject."""

    code = "SCHEMA_UNKNOWN_VERSION"


@dataclass(frozen=True)
class SchemaVersion:
    subject: str
    version: int
    schema: dict
    fingerprint: str
    created_at: dt.datetime

    @property
    def ref(self) -> str:
        """``subject@version``, as carried in event headers."""
        return f"{self.subject}@{self.version}"


@dataclass(frozen=True)
class Registration:
    version: SchemaVersion
    created: bool  # False when an identical schema was already registered


def parse_ref(ref: str) -> tuple[str, int]:
    """``"orders@3"`` → ``("orders", 3)``; raises UnknownVersionError on a malformed ref."""
    subject, sep, version = ref.rpartition("@")
    if not sep or not subject or not version.isdigit() or int(version) < 1:
        raise UnknownVersionError(f"malformed schema reference {ref!r}; expected subject@version")
    return subject, int(version)


class SchemaRegistry:
    """Client of the registry tables. Every method opens its own short transaction."""

    def __init__(self, url: str, connect_timeout: int = 5):
        self.url = url
        self.connect_timeout = connect_timeout

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, connect_timeout=self.connect_timeout)

    def ensure_schema(self) -> None:
        with self._connect() as conn:
            conn.execute("select pg_advisory_xact_lock(hashtext('conflux.registry.ddl'))")
            conn.execute(DDL)

    # --- subjects ----------------------------------------------------------------------------
    def set_mode(self, subject: str, mode: Mode | str) -> None:
        mode = Mode.parse(mode) if isinstance(mode, str) else mode
        with self._connect() as conn:
            conn.execute(
                "insert into registry.subjects (subject, compatibility) values (%s, %s) "
                "on conflict (subject) do update set compatibility = excluded.compatibility",
                (subject, mode.value))

    def mode(self, subject: str) -> Mode:
        with self._connect() as conn:
            row = conn.execute("select compatibility from registry.subjects where subject = %s",
                               (subject,)).fetchone()
        return Mode.parse(row[0]) if row else Mode.BACKWARD

    def subjects(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("select subject from registry.subjects order by 1")]

    # --- versions ----------------------------------------------------------------------------
    def versions(self, subject: str) -> list[SchemaVersion]:
        """All versions of ``subject``, oldest first (empty when unknown)."""
        with self._connect() as conn:
            rows = conn.execute(
                "select subject, version, schema, fingerprint, created_at from registry.versions "
                "where subject = %s order by version", (subject,)).fetchall()
        return [SchemaVersion(*row) for row in rows]

    def get(self, subject: str, version: int | None = None) -> SchemaVersion:
        """One version (the latest when ``version`` is None)."""
        with self._connect() as conn:
            if version is None:
                row = conn.execute(
                    "select subject, version, schema, fingerprint, created_at from registry.versions "
                    "where subject = %s order by version desc limit 1", (subject,)).fetchone()
            else:
                row = conn.execute(
                    "select subject, version, schema, fingerprint, created_at from registry.versions "
                    "where subject = %s and version = %s", (subject, version)).fetchone()
        if row is None:
            if version is None or not self.versions(subject):
                raise UnknownSubjectError(f"subject {subject!r} is not registered")
            raise UnknownVersionError(f"subject {subject!r} has no version {version}")
        return SchemaVersion(*row)

    def lookup(self, subject: str, schema: dict) -> SchemaVersion | None:
        """The version holding exactly ``schema``, if registered."""
        with self._connect() as conn:
            row = conn.execute(
                "select subject, version, schema, fingerprint, created_at from registry.versions "
                "where subject = %s and fingerprint = %s", (subject, fingerprint(schema))).fetchone()
        return SchemaVersion(*row) if row else None

    def check(self, subject: str, schema: dict) -> list[Incompatibility]:
        """Incompatibilities ``schema`` would have with the subject's history and mode."""
        history = [v.schema for v in self.versions(subject)]
        return check_compatibility(schema, history, self.mode(subject)) if history else []

    def register(self, subject: str, schema: dict) -> Registration:
        """Register ``schema`` under ``subject``; raises IncompatibleSchemaError when it breaks
        the subject's mode (the message lists every incompatibility)."""
        fp = fingerprint(schema)
        with self._connect() as conn:
            conn.execute("insert into registry.subjects (subject) values (%s) "
                         "on conflict (subject) do nothing", (subject,))
            # serialise registrations of this subject until commit
            (mode_text,) = conn.execute(
                "select compatibility from registry.subjects where subject = %s for update",
                (subject,)).fetchone()
            rows = conn.execute(
                "select subject, version, schema, fingerprint, created_at from registry.versions "
                "where subject = %s order by version", (subject,)).fetchall()
            history = [SchemaVersion(*r) for r in rows]
            for existing in history:
                if existing.fingerprint == fp:
                    return Registration(existing, created=False)
            problems = check_compatibility(schema, [v.schema for v in history], Mode.parse(mode_text))
            if problems:
                raise IncompatibleSchemaError(describe_rejection(subject, Mode.parse(mode_text),
                                                                 history[-1].version, problems))
            version = (history[-1].version if history else 0) + 1
            row = conn.execute(
                "insert into registry.versions (subject, version, schema, fingerprint) "
                "values (%s, %s, %s, %s) returning subject, version, schema, fingerprint, created_at",
                (subject, version, Jsonb(schema), fp)).fetchone()
        return Registration(SchemaVersion(*row), created=True)


def describe_rejection(subject: str, mode: Mode, latest: int, problems: list[Incompatibility]) -> str:
    """A message a new user understands: what was refused, why, and each broken rule."""
    lines = [f"subject {subject!r}: the new schema breaks compatibility mode {mode.value} "
             f"(latest registered version {latest}); {len(problems)} incompatibilit"
             f"{'y' if len(problems) == 1 else 'ies'}:"]
    lines += [f"  - {p}" for p in problems]
    lines.append("Make the change compatible (e.g. add fields as optional with a default instead "
                 "of renaming or removing them), or register it under a new subject.")
    return "\n".join(lines)
