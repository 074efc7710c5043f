"""The schema registry on the real Postgres of the test stack."""

import multiprocessing as mp
import uuid

import pytest

from conflux.core.errors import IncompatibleSchemaError
from conflux.contracts.compat import Mode
from conflux.io.schema_registry import SchemaRegistry, UnknownSubjectError, UnknownVersionError


def schema(*optional: str, required=("id",)) -> dict:
    props = {"id": {"type": "integer"}, **{f: {"type": "string"} for f in optional}}
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


@pytest.fixture
def subject():
    return f"test_{uuid.uuid4().hex[:10]}"


def test_versions_are_dense_and_identical_schemas_reuse_their_version(registry, subject):
    v1 = registry.register(subject, schema())
    v2 = registry.register(subject, schema("a"))
    again = registry.register(subject, schema())
    assert (v1.version.version, v2.version.version) == (1, 2)
    assert v1.created and v2.created and not again.created
    assert again.version.version == 1
    assert registry.get(subject).ref == f"{subject}@2"
    assert registry.get(subject, 1).fingerprint == v1.version.fingerprint
    assert [v.version for v in registry.versions(subject)] == [1, 2]


def test_breaking_change_is_rejected_listing_every_incompatibility(registry, subject):
    registry.register(subject, schema("a", "b"))
    breaking = schema(required=("id", "c"))  # removes a and b, adds required c
    breaking["properties"]["c"] = {"type": "string"}
    with pytest.raises(IncompatibleSchemaError) as exc:
        registry.register(subject, breaking)
    text = str(exc.value)
    assert f"subject '{subject}'" in text and "BACKWARD" in text
    assert "#/properties/a" in text and "#/properties/b" in text and "c" in text
    assert [v.version for v in registry.versions(subject)] == [1], "nothing was registered"


def test_modes_are_per_subject(registry, subject):
    registry.register(subject, schema("a"))
    registry.set_mode(subject, Mode.NONE)
    assert registry.register(subject, schema()).version.version == 2
    registry.set_mode(subject, "forward")
    assert registry.mode(subject) is Mode.FORWARD


def test_transitive_mode_checks_the_whole_history(registry, subject):
    registry.register(subject, schema("x"))                      # v1: x is a string
    registry.set_mode(subject, Mode.NONE)
    registry.register(subject, schema())                         # v2: x removed
    new = schema()
    new["properties"]["x"] = {"type": "integer"}                 # x comes back as an integer
    registry.set_mode(subject, Mode.BACKWARD)
    assert registry.check(subject, new) == [], "compatible with the latest version"
    registry.set_mode(subject, Mode.BACKWARD_TRANSITIVE)
    problems = registry.check(subject, new)
    assert problems and all("version 1" in p.rule for p in problems)
    with pytest.raises(IncompatibleSchemaError, match="BACKWARD_TRANSITIVE"):
        registry.register(subject, new)


def test_unknown_subject_and_version_are_typed_errors(registry, subject):
    with pytest.raises(UnknownSubjectError):
        registry.get(subject)
    registry.register(subject, schema())
    with pytest.raises(UnknownVersionError):
        registry.get(subject, 7)


def _register_many(url: str, subject: str, fields: list[str], out) -> None:
    reg = SchemaRegistry(url)
    got = []
    for i in range(1, len(fields) + 1):
        got.append(reg.register(subject, schema(*fields[:i])).version.version)
    out.put(got)


def test_concurrent_registration_never_duplicates_or_skips_versions(registry, subject, stack):
    """Six processes race to register the same growing chain of compatible schemas."""
    fields = [f"f{i}" for i in range(8)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(stack.settings.postgres_url, subject,
                                                      fields, out)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    versions = registry.versions(subject)
    assert [v.version for v in versions] == list(range(1, 9))
    assert len({v.fingerprint for v in versions}) == 8
    assert all(r == list(range(1, 9)) for r in results), results
