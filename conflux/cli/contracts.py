"""``conflux contracts register | check | diff``: the schema registry from the command line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from conflux.core.errors import IncompatibleSchemaError, SchemaError
from conflux.contracts.compat import Mode, check_compatibility, load_schema_file
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry, describe_rejection

def load_catalog(spec: str | None = None):
    """The project's dataset declarations (``spec``: a ``module:attribute`` override from the
    command line, ``--catalog``: one that cannot be loaded is a ``UsageError``)."""
    from conflux.core.errors import ConfigError, UsageError
    from conflux.core.project import Project

    project = Project.find()
    if spec is None:
        return project.load_catalog()
    try:
        return project.load_catalog(spec)
    except ConfigError as exc:
        raise UsageError(f"--catalog: {exc.args[0]}") from None


def register_all(registry: SchemaRegistry, datasets, report: Callable[[str], None] = print) -> dict[str, str]:
    """Register every declared contract (idempotent); returns subject → subject@version. Each
    event dataset's topics name it in the Schema Registry API too: ``<topic>-value``
    (Confluent's TopicNameStrategy) is an alias of its subject (docs/schema-registry.md).

    Raises IncompatibleSchemaError listing every incompatibility of every rejected contract.
    """
    registry.ensure_schema()
    refs, failures = {}, []
    for ds in datasets:
        for topic in getattr(ds, "topics", ()):
            registry.set_alias(f"{topic}-value", ds.subject)
        try:
            reg = registry.register(ds.subject, contract_schema(ds.contract))
        except IncompatibleSchemaError as exc:
            failures.append(str(exc).removeprefix(f"[{exc.code}] "))
            continue
        refs[ds.subject] = reg.version.ref
        report(f"{reg.version.ref:<28} {'registered' if reg.created else 'unchanged'}"
               f"  ({ds.contract.__name__}, fingerprint {reg.version.fingerprint[:12]})")
    if failures:
        raise IncompatibleSchemaError("\n".join(failures))
    return refs


def check_all(registry: SchemaRegistry, datasets, report: Callable[[str], None] = print) -> int:
    """Check declared contracts against the registered history; returns how many break."""
    registry.ensure_schema()
    broken = 0
    for ds in datasets:
        history = registry.versions(ds.subject)
        if not history:
            report(f"{ds.subject:<28} new subject (not registered yet): OK")
            continue
        mode = registry.mode(ds.subject)
        problems = check_compatibility(contract_schema(ds.contract), [v.schema for v in history], mode)
        if problems:
            broken += 1
            report(describe_rejection(ds.subject, mode, history[-1].version, problems))
        else:
            same = registry.lookup(ds.subject, contract_schema(ds.contract))
            state = f"registered as {same.ref}" if same else f"compatible ({mode.value}) with v{history[-1].version}"
            report(f"{ds.subject:<28} {state}: OK")
    return broken


def diff_files(old_path: str, new_path: str, mode_text: str) -> int:
    """Exit code of ``contracts diff``: 0 compatible, 1 incompatible, 2 usage / invalid schema."""
    try:
        mode = Mode.parse(mode_text)
    except ValueError as exc:
        print(f"conflux: {exc}", file=sys.stderr)
        return 2
    try:
        old, new = load_schema_file(old_path), load_schema_file(new_path)
    except SchemaError as exc:
        print(f"conflux: {exc}", file=sys.stderr)
        return 2
    problems = check_compatibility(new, [old], mode)
    if not problems:
        print(f"compatible under {mode.value}: {new_path} can replace {old_path}")
        return 0
    print(f"incompatible under {mode.value}: {len(problems)} problem(s)")
    for p in problems:
        print(f"  - {p}")
    return 1
