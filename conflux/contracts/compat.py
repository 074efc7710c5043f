"""JSON Schema compatibility checks with Confluent Schema Registry's semantics.

The model
---------
Every check compares a *writer* schema (the one data was produced with) with a *reader* schema
(the one that must read that data). A change is compatible when no *incompatible difference* is
found between the two, using the rule set Confluent Schema Registry applies to JSON Schema (its
"strict" set). The compatibility modes only choose which pairs are compared:

* ``BACKWARD``: reader = the new schema, writer = the latest registered version
  (``BACKWARD_TRANSITIVE``: every registered version);
* ``FORWARD``: reader = the latest version (or every version), writer = the new schema;
* ``FULL`` / ``FULL_TRANSITIVE``: both directions; ``NONE``: nothing is checked.

Objects have a *content model*:

* **open** -- ``additionalProperties`` absent or ``true`` (and no ``patternProperties`` or
  ``unevaluatedProperties`` restriction): any extra property, with any value, may appear;
* **closed** -- ``additionalProperties: false``: only the declared properties may appear;
* **partially open** -- ``additionalProperties`` / ``patternProperties`` /
  ``unevaluatedProperties`` give a schema that the undeclared properties must match.

An open writer may already have produced a property of any name with any value, so a reader
that *adds* a property to an open model is incompatible unless the new property accepts anything.
Adding an optional property to a closed writer is fine (the writer never produced it), and a
partially open writer is fine when its schema for extra properties fits the new property.
Symmetrically, a reader may *drop* a property only when the reader is open (or covers the dropped
property with its partial model). Adding a *required* property without a default never works.
Tuples (``items: [...]`` or ``prefixItems``) follow the same rules with ``additionalItems``.

A schema object is first read the way Confluent's loader reads it: one JSON object can carry
several *facets* (``{"type": "string", "enum": [...]}`` is a string facet and an enum facet),
which then form an implicit ``allOf``; a ``type`` array is an implicit ``anyOf``. ``$ref`` is
resolved (``$defs`` and ``definitions``, recursion-safe). Annotations (title, description,
examples, ...) never matter.

Only incompatible differences are reported; compatible ones are computed internally.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urljoin

from conflux.core.errors import SchemaError

__all__ = [
    "Mode",
    "Incompatibility",
    "diff_schemas",
    "check_compatibility",
    "load_schema_file",
    "COMPATIBLE_KINDS",
]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


class Mode(str, enum.Enum):
    """A subject's compatibility mode (Confluent's names)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: "str | Mode") -> "Mode":
        """Read a mode name in any case (``backward-transitive`` works too)."""
        if isinstance(text, Mode):
            return text
        key = str(text).strip().upper().replace("-", "_").replace(" ", "_")
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown compatibility mode {text!r}; valid modes: {valid}") from None

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def checks_backward(self) -> bool:
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def checks_forward(self) -> bool:
        return self.value.startswith(("FORWARD", "FULL"))


@dataclass(frozen=True)
class Incompatibility:
    """One incompatible difference between a reader and a writer schema."""

    path: str  # JSON-pointer-like location in the schema, e.g. "#/properties/price/type"
    kind: str  # Confluent-style change kind, e.g. "TYPE_CHANGED"
    message: str  # one sentence naming the field
    rule: str = ""  # which mode, direction and version broke

    def __str__(self) -> str:
        text = f"{self.path}: {self.kind} — {self.message}"
        return f"{text} ({self.rule})" if self.rule else text


def diff_schemas(reader: dict | bool, writer: dict | bool) -> list[Incompatibility]:
    """Incompatible differences when `reader` reads data written with `writer` (empty list = compatible)."""
    writer_root = _load(writer, "writer schema")
    reader_root = _load(reader, "reader schema")
    changes = _Differ().compare(writer_root, reader_root)
    found: list[Incompatibility] = []
    seen: set[tuple[str, str]] = set()
    for change in changes:
        if change.kind in COMPATIBLE_KINDS:
            continue
        item = change.to_incompatibility()
        if (item.path, item.kind) not in seen:
            seen.add((item.path, item.kind))
            found.append(item)
    return found


def check_compatibility(new: dict, history: list[dict], mode: Mode | str) -> list[Incompatibility]:
    """Check `new` against the registered `history` (oldest first) under `mode`.

    Non-transitive modes compare with the latest version only, transitive modes with every
    version; FULL checks both directions, NONE checks nothing. Each result's ``rule`` names the
    mode, the direction and the (1-based) version.
    """
    mode = Mode.parse(mode)
    if mode is Mode.NONE or not history:
        return []
    latest = len(history)
    versions = range(1, latest + 1) if mode.transitive else [latest]
    found: list[Incompatibility] = []
    for version in versions:
        old = history[version - 1]
        if mode.checks_backward:
            rule = (f"{mode.value}: the new schema (reader) must read data written with "
                    f"version {version} (writer)")
            found += [replace(i, rule=rule) for i in diff_schemas(reader=new, writer=old)]
        if mode.checks_forward:
            rule = (f"{mode.value}: version {version} (reader) must read data written with "
                    f"the new schema (writer)")
            found += [replace(i, rule=rule) for i in diff_schemas(reader=old, writer=new)]
    return found


#: JSON nesting a schema file may have (the checks recurse: ~150 levels exhaust Python's stack)
MAX_SCHEMA_DEPTH = 64


def json_depth(value: object) -> int:
    """How deeply ``value``'s lists and objects nest (0 for a scalar); iterative, any depth."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in children)
    return deepest


def load_schema_file(path: str | Path) -> dict | bool:
    """Read and check a JSON Schema file; raise SchemaError naming the file when it is unusable."""
    path = Path(path)
    too_deep = f"schema file {path} nests deeper than {MAX_SCHEMA_DEPTH} levels"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"schema file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except RecursionError:
        raise SchemaError(too_deep) from None
    if json_depth(document) > MAX_SCHEMA_DEPTH:
        raise SchemaError(too_deep)
    try:
        _Document(document).validate()
    except _Problem as exc:
        raise SchemaError(f"schema file {path} is not a valid JSON Schema: {exc}") from exc
    return document


# ---------------------------------------------------------------------------------------------
# Change kinds
# ---------------------------------------------------------------------------------------------

#: Change kinds that do not break a reader (Confluent's strict set, plus SCHEMA_REMOVED-like
#: kinds this module adds). Every other kind is an incompatibility.
COMPATIBLE_KINDS = frozenset("""
    ID_CHANGED DESCRIPTION_CHANGED TITLE_CHANGED DEFAULT_CHANGED SCHEMA_REMOVED TYPE_EXTENDED
    MAX_LENGTH_INCREASED MAX_LENGTH_REMOVED MIN_LENGTH_DECREASED MIN_LENGTH_REMOVED PATTERN_REMOVED
    MAXIMUM_INCREASED MAXIMUM_REMOVED MINIMUM_DECREASED MINIMUM_REMOVED
    EXCLUSIVE_MAXIMUM_INCREASED EXCLUSIVE_MAXIMUM_REMOVED EXCLUSIVE_MINIMUM_DECREASED
    EXCLUSIVE_MINIMUM_REMOVED MULTIPLE_OF_REDUCED MULTIPLE_OF_REMOVED
    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED REQUIRED_ATTRIBUTE_REMOVED DEPENDENCY_ARRAY_NARROWED
    DEPENDENCY_ARRAY_REMOVED DEPENDENCY_SCHEMA_REMOVED MAX_PROPERTIES_INCREASED
    MAX_PROPERTIES_REMOVED MIN_PROPERTIES_DECREASED MIN_PROPERTIES_REMOVED
    ADDITIONAL_PROPERTIES_ADDED ADDITIONAL_PROPERTIES_EXTENDED UNEVALUATED_PROPERTIES_ADDED
    UNEVALUATED_PROPERTIES_EXTENDED PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL
    OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL
    PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL
    PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
    PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
    MAX_ITEMS_INCREASED MAX_ITEMS_REMOVED MIN_ITEMS_DECREASED MIN_ITEMS_REMOVED
    MAX_CONTAINS_INCREASED MAX_CONTAINS_REMOVED MIN_CONTAINS_DECREASED MIN_CONTAINS_REMOVED
    UNIQUE_ITEMS_REMOVED ADDITIONAL_ITEMS_ADDED ADDITIONAL_ITEMS_EXTENDED UNEVALUATED_ITEMS_ADDED
    UNEVALUATED_ITEMS_EXTENDED ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
    ITEM_ADDED_TO_CLOSED_CONTENT_MODEL ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL
    ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
    ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
    ENUM_ARRAY_EXTENDED COMBINED_TYPE_EXTENDED PRODUCT_TYPE_NARROWED SUM_TYPE_EXTENDED
    NOT_TYPE_NARROWED
""".split())

# One sentence per incompatible kind. {Field}/{field} name the field; {old} is the writer's
# value, {new} the reader's.
_MESSAGES = {
    "SCHEMA_ADDED": "{Field} accepts any value in the writer schema but the reader schema restricts it to {new}, so some written values cannot be read.",
    "TYPE_CHANGED": "{Field} is {old} in the writer schema but {new} in the reader schema, so written values cannot be read.",
    "TYPE_NARROWED": "{Field} is a number in the writer schema but must be an integer in the reader schema, so written decimals cannot be read.",
    "MAX_LENGTH_ADDED": "{Field} has no maximum length in the writer schema but at most {new} characters in the reader schema.",
    "MAX_LENGTH_DECREASED": "The maximum length of {field} drops from {old} to {new} characters, so longer written values cannot be read.",
    "MIN_LENGTH_ADDED": "{Field} has no minimum length in the writer schema but needs at least {new} characters in the reader schema.",
    "MIN_LENGTH_INCREASED": "The minimum length of {field} rises from {old} to {new} characters, so shorter written values cannot be read.",
    "PATTERN_ADDED": "{Field} must match the pattern {new} in the reader schema, which written values need not match.",
    "PATTERN_CHANGED": "The pattern of {field} changes from {old} to {new}, so written values may not match it.",
    "MAXIMUM_ADDED": "{Field} has no maximum in the writer schema but a maximum of {new} in the reader schema.",
    "MAXIMUM_DECREASED": "The maximum of {field} drops from {old} to {new}, so larger written values cannot be read.",
    "MINIMUM_ADDED": "{Field} has no minimum in the writer schema but a minimum of {new} in the reader schema.",
    "MINIMUM_INCREASED": "The minimum of {field} rises from {old} to {new}, so smaller written values cannot be read.",
    "EXCLUSIVE_MAXIMUM_ADDED": "{Field} has no exclusive maximum in the writer schema but must stay below {new} in the reader schema.",
    "EXCLUSIVE_MAXIMUM_DECREASED": "The exclusive maximum of {field} drops from {old} to {new}, so larger written values cannot be read.",
    "EXCLUSIVE_MINIMUM_ADDED": "{Field} has no exclusive minimum in the writer schema but must stay above {new} in the reader schema.",
    "EXCLUSIVE_MINIMUM_INCREASED": "The exclusive minimum of {field} rises from {old} to {new}, so smaller written values cannot be read.",
    "MULTIPLE_OF_ADDED": "{Field} must be a multiple of {new} in the reader schema, which written values need not be.",
    "MULTIPLE_OF_EXPANDED": "{Field} must be a multiple of {new} in the reader schema instead of {old}, so some written values cannot be read.",
    "MULTIPLE_OF_CHANGED": "{Field} must be a multiple of {new} in the reader schema instead of {old}, so some written values cannot be read.",
    "REQUIRED_ATTRIBUTE_ADDED": "{Field} becomes required (without a default) in the reader schema, but records written with the writer schema may omit it.",
    "MAX_PROPERTIES_ADDED": "{Field} may have at most {new} properties in the reader schema; the writer schema sets no limit.",
    "MAX_PROPERTIES_DECREASED": "The maximum number of properties of {field} drops from {old} to {new}.",
    "MIN_PROPERTIES_ADDED": "{Field} needs at least {new} properties in the reader schema; the writer schema sets no minimum.",
    "MIN_PROPERTIES_INCREASED": "The minimum number of properties of {field} rises from {old} to {new}.",
    "ADDITIONAL_PROPERTIES_REMOVED": "{Field} forbids extra properties in the reader schema (additionalProperties: false), but the writer schema allows them.",
    "ADDITIONAL_PROPERTIES_NARROWED": "{Field} allows extra properties of any value in the writer schema, but the reader schema restricts their values.",
    "UNEVALUATED_PROPERTIES_REMOVED": "{Field} forbids unevaluated properties in the reader schema, but the writer schema allows them.",
    "UNEVALUATED_PROPERTIES_NARROWED": "{Field} restricts unevaluated properties in the reader schema more than the writer schema does.",
    "DEPENDENCY_ARRAY_ADDED": "The reader schema requires {new} whenever {field} is present; written records need not satisfy this.",
    "DEPENDENCY_ARRAY_EXTENDED": "The reader schema requires more properties ({new} instead of {old}) whenever {field} is present.",
    "DEPENDENCY_ARRAY_CHANGED": "The properties required whenever {field} is present change from {old} to {new}.",
    "DEPENDENCY_SCHEMA_ADDED": "The reader schema adds a dependent schema that applies whenever {field} is present; written records need not satisfy it.",
    "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL": "{Field} is a new required property without a default, so records written with the writer schema (which lack it) cannot be read.",
    "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL": "{Field} is a new required property without a default, so records written with the writer schema (which lack it) cannot be read.",
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL": "{Field} is a new property, but the writer schema's object is open (extra properties allowed), so written records may already carry it with a value the reader rejects; close the writer model (additionalProperties: false) first.",
    "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL": "{Field} is a new property, but the writer schema's object is open (extra properties allowed), so written records may already carry it with a value the reader rejects; close the writer model (additionalProperties: false) first.",
    "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL": "{Field} is removed, but the reader schema's object is closed (additionalProperties: false), so written records that contain it cannot be read.",
    "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": "{Field} is a new property whose schema does not accept every value the writer schema allowed for such extra properties.",
    "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": "{Field} is removed, and the reader schema's rule for extra properties does not accept the values written for it.",
    "MAX_ITEMS_ADDED": "{Field} may hold at most {new} items in the reader schema; the writer schema sets no limit.",
    "MAX_ITEMS_DECREASED": "The maximum number of items of {field} drops from {old} to {new}.",
    "MIN_ITEMS_ADDED": "{Field} needs at least {new} items in the reader schema; the writer schema sets no minimum.",
    "MIN_ITEMS_INCREASED": "The minimum number of items of {field} rises from {old} to {new}.",
    "MAX_CONTAINS_ADDED": "{Field} may contain at most {new} matching items in the reader schema.",
    "MAX_CONTAINS_DECREASED": "The maxContains of {field} drops from {old} to {new}.",
    "MIN_CONTAINS_ADDED": "{Field} must contain at least {new} matching items in the reader schema.",
    "MIN_CONTAINS_INCREASED": "The minContains of {field} rises from {old} to {new}.",
    "UNIQUE_ITEMS_ADDED": "{Field} must hold unique items in the reader schema, but the writer schema allows duplicates.",
    "ADDITIONAL_ITEMS_REMOVED": "{Field} forbids extra items in the reader schema, but the writer schema allows them.",
    "ADDITIONAL_ITEMS_NARROWED": "{Field} allows extra items of any value in the writer schema, but the reader schema restricts them.",
    "UNEVALUATED_ITEMS_REMOVED": "{Field} forbids unevaluated items in the reader schema, but the writer schema allows them.",
    "UNEVALUATED_ITEMS_NARROWED": "{Field} restricts unevaluated items in the reader schema more than the writer schema does.",
    "ITEM_ADDED_TO_OPEN_CONTENT_MODEL": "{Field} is a new tuple position, but the writer schema allows any extra items, so written values there may not fit it.",
    "ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL": "{Field} is a removed tuple position, but the reader schema forbids extra items, so written arrays that have it cannot be read.",
    "ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": "{Field} is a new tuple position whose schema does not accept every extra item the writer schema allowed.",
    "ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": "{Field} is a removed tuple position, and the reader schema's rule for extra items does not accept the values written there.",
    "ENUM_ARRAY_NARROWED": "{Field} no longer allows {removed} in the reader schema, so written records with those values cannot be read.",
    "ENUM_ARRAY_CHANGED": "The allowed values of {field} change from {old} to {new}; written values {removed} are not accepted by the reader.",
    "COMBINED_TYPE_CHANGED": "{Field} changes from {old} to {new}, which does not accept everything the writer schema allowed.",
    "PRODUCT_TYPE_EXTENDED": "{Field} must match more allOf parts in the reader schema ({new} instead of {old}), so some written values cannot be read.",
    "SUM_TYPE_NARROWED": "{Field} offers fewer alternatives in the reader schema ({new} instead of {old}), so values written for a dropped alternative cannot be read.",
    "COMBINED_TYPE_SUBSCHEMAS_CHANGED": "Not every {old} alternative of {field} in the writer schema has a compatible alternative in the reader schema.",
    "NOT_TYPE_EXTENDED": "The 'not' schema of {field} excludes values in the reader schema that the writer schema allowed.",
    "CONDITIONAL_CHANGED": "The if/then/else rules of {field} change, so written values may no longer satisfy them.",
}


@dataclass(frozen=True)
class _Change:
    """A difference found while comparing; `loc` is relative to the pair being compared."""

    kind: str
    loc: tuple[str, ...] = ()  # location of the schema (instance structure), e.g. ("properties", "a")
    keyword: tuple[str, ...] = ()  # keyword inside it, e.g. ("maxLength",) or ("required", "a")
    detail: tuple[tuple[str, str], ...] = ()

    def under(self, prefix: tuple[str, ...]) -> "_Change":
        return replace(self, loc=prefix + self.loc) if prefix else self

    @property
    def compatible(self) -> bool:
        return self.kind in COMPATIBLE_KINDS

    def to_incompatibility(self) -> Incompatibility:
        path = "#" + "".join("/" + _escape(s) for s in self.loc + self.keyword)
        target = self.loc
        if self.keyword[:1] in (("required",), ("dependencies",)) and len(self.keyword) > 1:
            target = self.loc + ("properties", self.keyword[1])
        label = _field_label(target)
        values = {"field": label, "Field": label[0].upper() + label[1:], "old": "?", "new": "?",
                  "removed": "some values"}
        values.update(self.detail)
        template = _MESSAGES.get(self.kind, "{Field} changes incompatibly ({kind}).")
        return Incompatibility(path, self.kind, template.format(kind=self.kind, **values))


def _change(kind: str, keyword: tuple[str, ...] = (), loc: tuple[str, ...] = (), **detail: Any) -> _Change:
    return _Change(kind, loc, keyword, tuple((k, _show(v)) for k, v in detail.items()))


def _incompatible(changes: Iterable[_Change]) -> list[_Change]:
    return [c for c in changes if not c.compatible]


def _ok(changes: Iterable[_Change]) -> bool:
    return all(c.compatible for c in changes)


def _under(prefix: tuple[str, ...], changes: Iterable[_Change]) -> list[_Change]:
    return [c.under(prefix) for c in changes]


# ---------------------------------------------------------------------------------------------
# Reading schemas: JSON -> nodes (one node per facet, as Confluent's loader does)
# ---------------------------------------------------------------------------------------------


class _Problem(Exception):
    """The document is not a usable JSON Schema (turned into SchemaError at the API boundary)."""


_TYPES = ("string", "integer", "number", "boolean", "null", "array", "object")
_STRING_KWS = ("minLength", "maxLength", "pattern", "format")
_NUMBER_KWS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_OBJECT_KWS = ("properties", "required", "minProperties", "maxProperties", "dependencies",
               "patternProperties", "additionalProperties", "propertyNames",
               "unevaluatedProperties", "dependentRequired", "dependentSchemas")
_ARRAY_KWS = ("items", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
              "prefixItems", "unevaluatedItems", "minContains", "maxContains")
_CONDITIONAL_KWS = ("if", "then", "else")
# Keywords next to "$ref" that do not constrain anything.
_NON_CONSTRAINTS = {"$ref", "$id", "id", "$schema", "$defs", "definitions", "$anchor",
                    "$dynamicAnchor", "$vocabulary", "$comment", "title", "description",
                    "default", "examples", "deprecated", "readOnly", "writeOnly"}
_VALUE_KEYS = {"enum", "const", "default", "examples"}  # hold data, not schemas


@dataclass(eq=False, kw_only=True)
class _Node:
    pointer: str  # where in the document the node comes from (for errors)
    raw: Any = None  # the JSON it was read from
    has_default: bool = False


@dataclass(eq=False, kw_only=True)
class _Any(_Node):
    """`true`, `{}` or an annotation-only object: every value is valid."""


@dataclass(eq=False, kw_only=True)
class _Nothing(_Node):
    """`false`: no value is valid."""


@dataclass(eq=False, kw_only=True)
class _Null(_Node):
    pass


@dataclass(eq=False, kw_only=True)
class _Boolean(_Node):
    pass


@dataclass(eq=False, kw_only=True)
class _String(_Node):
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None


@dataclass(eq=False, kw_only=True)
class _Number(_Node):
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: Decimal | None = None


@dataclass(eq=False, kw_only=True)
class _Enum(_Node):
    values: list = field(default_factory=list)
    keyword: str = "enum"


@dataclass(eq=False, kw_only=True)
class _Const(_Enum):
    keyword: str = "const"


@dataclass(eq=False, kw_only=True)
class _Not(_Node):
    schema: _Node


@dataclass(eq=False, kw_only=True)
class _Conditional(_Node):
    parts: str = ""  # canonical JSON of if/then/else


@dataclass(eq=False, kw_only=True)
class _Combined(_Node):
    criterion: str  # "allOf" | "anyOf" | "oneOf"
    subschemas: list[_Node]
    synthetic: bool = False  # made by the loader (facets, type arrays), not written by the user


@dataclass(eq=False, kw_only=True)
class _Object(_Node):
    properties: dict[str, _Node] = field(default_factory=dict)
    required: set[str] = field(default_factory=set)
    min_properties: int | None = None
    max_properties: int | None = None
    additional_allowed: bool = True  # additionalProperties is not false
    additional_schema: _Node | None = None  # additionalProperties given as a (restricting) schema
    pattern_properties: list[tuple[str, _Node]] = field(default_factory=list)
    unevaluated: _Node | None = None  # unevaluatedProperties, None when absent/unrestricted
    property_dependencies: dict[str, frozenset[str]] = field(default_factory=dict)
    schema_dependencies: dict[str, _Node] = field(default_factory=dict)
    property_names: _Node | None = None


@dataclass(eq=False, kw_only=True)
class _Array(_Node):
    items: _Node | None = None  # one schema for every item
    tuple_items: list[_Node] = field(default_factory=list)  # items: [...] / prefixItems
    additional_allowed: bool = True
    additional_schema: _Node | None = None
    unevaluated: _Node | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool = False
    contains: _Node | None = None
    min_contains: int | None = None
    max_contains: int | None = None


@dataclass(eq=False, kw_only=True)
class _Ref(_Node):
    document: "_Document"
    ref: str
    scope: str
    _target: _Node | None = None

    @property
    def target(self) -> _Node:
        if self._target is None:
            self._target = self.document.resolve(self.ref, self.scope, self.pointer)
        return self._target


def _resolve(node: _Node) -> _Node:
    """Follow $ref chains to the schema they point at."""
    seen: set[int] = set()
    while isinstance(node, _Ref):
        if id(node) in seen:
            raise _Problem(f"at {node.pointer or '/'}: $ref '{node.ref}' is part of a loop of "
                           f"$refs that never reaches a schema")
        seen.add(id(node))
        node = node.target
    return node


def _has_default(node: _Node) -> bool:
    return node.has_default or (isinstance(node, _Ref) and _resolve(node).has_default)


def _load(schema: Any, role: str) -> _Node:
    try:
        document = _Document(schema)
        document.validate()
        return document.root
    except _Problem as exc:
        raise SchemaError(f"{role} is not a valid JSON Schema: {exc}") from exc


class _Document:
    """One schema document: parses nodes (cached by JSON pointer) and resolves $ref."""

    def __init__(self, raw: Any):
        if not isinstance(raw, (dict, bool)):
            raise _Problem(f"a JSON Schema must be an object or a boolean, not {_json_type(raw)}")
        self.raw = raw
        self._nodes: dict[str, _Node] = {}
        self._refs: list[_Ref] = []
        self._ids: dict[str, str] = {}  # $id (absolute and as written) -> pointer
        self._anchors: dict[str, str] = {}  # anchor name -> pointer
        self._base = raw.get("$id", "") if isinstance(raw, dict) and isinstance(raw.get("$id"), str) else ""
        self._index(raw, "", self._base)
        self.root = self._parse(raw, "", "")

    # -- $id / $anchor index and $ref resolution ----------------------------------------------

    def _index(self, value: Any, pointer: str, base: str) -> None:
        if isinstance(value, dict):
            ident = value.get("$id")
            if isinstance(ident, str) and pointer:
                if ident.startswith("#"):
                    self._anchors[ident[1:]] = pointer
                else:
                    base = urljoin(base, ident)
                    self._ids[base.rstrip("#")] = pointer
                    self._ids[ident.rstrip("#")] = pointer
            if isinstance(value.get("$anchor"), str):
                self._anchors[value["$anchor"]] = pointer
            for key, child in value.items():
                if key not in _VALUE_KEYS:
                    self._index(child, f"{pointer}/{_escape(key)}", base)
        elif isinstance(value, list):
            for i, child in enumerate(value):
                self._index(child, f"{pointer}/{i}", base)

    def resolve(self, ref: str, scope: str, at: str) -> _Node:
        base, _, fragment = ref.partition("#")
        start: str | None = scope
        if base:
            start = self._ids.get(urljoin(self._base, base).rstrip("#")) or self._ids.get(base)
            if start is None and self._base and urljoin(self._base, base) == self._base.rstrip("#"):
                start = ""
        fragment = unquote(fragment)
        if start is None:
            pointer = None
        elif not fragment:
            pointer = start
        elif fragment.startswith("/"):
            pointer = start + fragment
        else:
            pointer = self._anchors.get(fragment)
        for candidate in _pointer_candidates(pointer):
            found, value = _lookup(self.raw, candidate)
            if found:
                return self._parse(value, candidate, scope)
        raise _Problem(f"at {at or '/'}: $ref '{ref}' cannot be resolved")

    def validate(self) -> None:
        """Parse every reachable subschema and definition, resolving every $ref (raises _Problem)."""
        for pointer in _definition_pointers(self.raw, ""):
            found, value = _lookup(self.raw, pointer)
            if found:
                self._parse(value, pointer, "")
        index = 0
        while index < len(self._refs):
            _resolve(self._refs[index])
            index += 1

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, value: Any, pointer: str, scope: str) -> _Node:
        cached = self._nodes.get(pointer)
        if cached is not None:
            return cached
        if isinstance(value, bool):
            node: _Node = _Any(pointer=pointer, raw=value) if value else _Nothing(pointer=pointer, raw=value)
        elif isinstance(value, dict):
            if pointer and isinstance(value.get("$id"), str) and not value["$id"].startswith("#"):
                scope = pointer
            node = self._parse_object(value, pointer, scope)
        else:
            raise _Problem(f"at {pointer or '/'}: a schema must be an object or a boolean, "
                           f"not {_json_type(value)}")
        self._nodes[pointer] = node
        return node

    def _child(self, value: Any, pointer: str, scope: str) -> _Node:
        return self._parse(value, pointer, scope)

    def _parse_object(self, value: dict, pointer: str, scope: str) -> _Node:
        if "$ref" in value:
            ref = value["$ref"]
            if not isinstance(ref, str):
                raise _Problem(f"at {pointer or '/'}: $ref must be a string")
            node: _Node = _Ref(pointer=pointer, raw={"$ref": ref}, document=self, ref=ref, scope=scope)
            self._refs.append(node)
            rest = {k: v for k, v in value.items() if k not in _NON_CONSTRAINTS}
            if rest:  # keywords next to $ref also apply (2019-09+ semantics)
                node = _implicit_all_of([node] + self._facets(rest, pointer, scope), value, pointer)
        else:
            facets = self._facets(value, pointer, scope)
            if not facets:
                node = _Any(pointer=pointer, raw=value)
            else:
                node = _implicit_all_of(facets, value, pointer)
        node.has_default = "default" in value
        return node

    def _facets(self, value: dict, pointer: str, scope: str) -> list[_Node]:
        """Split one schema object into facets, in the order Confluent's loader finds them."""
        facets: list[_Node] = []
        if "enum" in value:
            if not isinstance(value["enum"], list):
                raise _Problem(f"at {pointer}/enum: enum must be an array")
            facets.append(_Enum(pointer=pointer, raw={"enum": value["enum"]}, values=list(value["enum"])))
        for criterion in ("allOf", "anyOf", "oneOf"):
            if criterion in value:
                subs = value[criterion]
                if not isinstance(subs, list) or not subs:
                    raise _Problem(f"at {pointer}/{criterion}: {criterion} must be a non-empty array")
                nodes = [self._child(s, f"{pointer}/{criterion}/{i}", scope) for i, s in enumerate(subs)]
                facets.append(_Combined(pointer=pointer, raw={criterion: subs}, criterion=criterion,
                                        subschemas=nodes))
        if "not" in value:
            inner = self._child(value["not"], f"{pointer}/not", scope)
            facets.append(_Not(pointer=pointer, raw={"not": value["not"]}, schema=inner))
        if "const" in value:
            facets.append(_Const(pointer=pointer, raw={"const": value["const"]}, values=[value["const"]]))
        consumed: set[str] = set()
        if "type" in value:
            facets.append(self._typed(value, pointer, scope, consumed))
        builders = ((_ARRAY_KWS, self._array), (_OBJECT_KWS, self._object),
                    (_NUMBER_KWS, self._number), (_STRING_KWS, self._string))
        for keywords, build in builders:
            if any(k in value and k not in consumed for k in keywords):
                facets.append(build(value, pointer, scope))
        if any(k in value for k in _CONDITIONAL_KWS):
            parts = {k: value[k] for k in _CONDITIONAL_KWS if k in value}
            for k, sub in parts.items():
                self._child(sub, f"{pointer}/{k}", scope)  # validate
            facets.append(_Conditional(pointer=pointer, raw=parts, parts=_canonical(parts)))
        return facets

    def _typed(self, value: dict, pointer: str, scope: str, consumed: set[str]) -> _Node:
        declared = value["type"]
        names = declared if isinstance(declared, list) else [declared]
        if not names or not all(isinstance(n, str) and n in _TYPES for n in names):
            raise _Problem(f"at {pointer}/type: {json.dumps(declared)} is not a JSON Schema type "
                           f"(expected one of {', '.join(_TYPES)}, or an array of them)")
        nodes = []
        for name in names:
            if name in ("string",):
                consumed.update(_STRING_KWS)
                nodes.append(self._string(value, pointer, scope))
            elif name in ("integer", "number"):
                consumed.update(_NUMBER_KWS)
                nodes.append(self._number(value, pointer, scope, integer=name == "integer"))
            elif name == "object":
                consumed.update(_OBJECT_KWS)
                nodes.append(self._object(value, pointer, scope))
            elif name == "array":
                consumed.update(_ARRAY_KWS)
                nodes.append(self._array(value, pointer, scope))
            elif name == "boolean":
                nodes.append(_Boolean(pointer=pointer, raw={"type": name}))
            else:
                nodes.append(_Null(pointer=pointer, raw={"type": name}))
        if isinstance(declared, list):
            return _Combined(pointer=pointer, raw={"type": declared}, criterion="anyOf",
                             subschemas=nodes, synthetic=True)
        return nodes[0]

    def _string(self, value: dict, pointer: str, scope: str) -> _String:
        pattern = value.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise _Problem(f"at {pointer}/pattern: pattern must be a string")
        return _String(pointer=pointer, raw=_pick(value, _STRING_KWS, "string"),
                       min_length=_count(value, "minLength", pointer),
                       max_length=_count(value, "maxLength", pointer), pattern=pattern)

    def _number(self, value: dict, pointer: str, scope: str, integer: bool = False) -> _Number:
        node = _Number(pointer=pointer, raw=_pick(value, _NUMBER_KWS, "integer" if integer else "number"),
                       integer=integer, minimum=_number_kw(value, "minimum", pointer),
                       maximum=_number_kw(value, "maximum", pointer))
        for key, attr, inclusive in (("exclusiveMinimum", "exclusive_minimum", "minimum"),
                                     ("exclusiveMaximum", "exclusive_maximum", "maximum")):
            limit = value.get(key)
            if isinstance(limit, bool):  # draft-04 style: a flag on minimum/maximum
                if limit and getattr(node, inclusive) is not None:
                    setattr(node, attr, getattr(node, inclusive))
                    setattr(node, inclusive, None)
            else:
                setattr(node, attr, _number_kw(value, key, pointer))
        if "multipleOf" in value:
            step = _number_kw(value, "multipleOf", pointer)
            try:
                node.multiple_of = Decimal(str(step))
            except InvalidOperation:
                raise _Problem(f"at {pointer}/multipleOf: not a number") from None
        return node

    def _object(self, value: dict, pointer: str, scope: str) -> _Object:
        node = _Object(pointer=pointer, raw=_pick(value, _OBJECT_KWS, "object"),
                       min_properties=_count(value, "minProperties", pointer),
                       max_properties=_count(value, "maxProperties", pointer))
        for name, sub in _mapping(value, "properties", pointer).items():
            node.properties[name] = self._child(sub, f"{pointer}/properties/{_escape(name)}", scope)
        required = value.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _Problem(f"at {pointer}/required: required must be an array of property names")
        node.required = set(required)
        if "additionalProperties" in value:
            node.additional_allowed, node.additional_schema = self._extra(
                value["additionalProperties"], f"{pointer}/additionalProperties", scope)
        for pattern, sub in _mapping(value, "patternProperties", pointer).items():
            node.pattern_properties.append(
                (pattern, self._child(sub, f"{pointer}/patternProperties/{_escape(pattern)}", scope)))
        if "unevaluatedProperties" in value:
            node.unevaluated = self._restriction(value["unevaluatedProperties"], f"{pointer}/unevaluatedProperties", scope)
        for key, dep in _mapping(value, "dependencies", pointer).items():
            if isinstance(dep, list):
                self._add_dependency(node, key, dep, f"{pointer}/dependencies")
            else:
                node.schema_dependencies[key] = self._child(dep, f"{pointer}/dependencies/{_escape(key)}", scope)
        for key, dep in _mapping(value, "dependentRequired", pointer).items():
            self._add_dependency(node, key, dep, f"{pointer}/dependentRequired")
        for key, dep in _mapping(value, "dependentSchemas", pointer).items():
            node.schema_dependencies[key] = self._child(dep, f"{pointer}/dependentSchemas/{_escape(key)}", scope)
        if "propertyNames" in value:
            node.property_names = self._restriction(value["propertyNames"], f"{pointer}/propertyNames", scope)
        return node

    @staticmethod
    def _add_dependency(node: _Object, key: str, names: Any, pointer: str) -> None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _Problem(f"at {pointer}/{_escape(key)}: a property dependency must be an array of names")
        if names:
            node.property_dependencies[key] = node.property_dependencies.get(key, frozenset()) | frozenset(names)

    def _array(self, value: dict, pointer: str, scope: str) -> _Array:
        node = _Array(pointer=pointer, raw=_pick(value, _ARRAY_KWS, "array"),
                      min_items=_count(value, "minItems", pointer), max_items=_count(value, "maxItems", pointer),
                      min_contains=_count(value, "minContains", pointer),
                      max_contains=_count(value, "maxContains", pointer))
        unique = value.get("uniqueItems", False)
        if not isinstance(unique, bool):
            raise _Problem(f"at {pointer}/uniqueItems: uniqueItems must be true or false")
        node.unique_items = unique
        items = value.get("items")
        if "prefixItems" in value:  # 2020-12 tuples: prefixItems + items for the rest
            prefix = value["prefixItems"]
            if not isinstance(prefix, list):
                raise _Problem(f"at {pointer}/prefixItems: prefixItems must be an array")
            node.tuple_items = [self._child(s, f"{pointer}/prefixItems/{i}", scope) for i, s in enumerate(prefix)]
            if "items" in value:
                node.additional_allowed, node.additional_schema = self._extra(items, f"{pointer}/items", scope)
        elif isinstance(items, list):  # draft-07 tuples: items [...] + additionalItems
            node.tuple_items = [self._child(s, f"{pointer}/items/{i}", scope) for i, s in enumerate(items)]
        elif "items" in value:
            node.items = self._restriction(items, f"{pointer}/items", scope)
        if "additionalItems" in value and "prefixItems" not in value:
            node.additional_allowed, node.additional_schema = self._extra(
                value["additionalItems"], f"{pointer}/additionalItems", scope)
        if "unevaluatedItems" in value:
            node.unevaluated = self._restriction(value["unevaluatedItems"], f"{pointer}/unevaluatedItems", scope)
        if "contains" in value:
            node.contains = self._restriction(value["contains"], f"{pointer}/contains", scope)
        return node

    def _extra(self, value: Any, pointer: str, scope: str) -> tuple[bool, _Node | None]:
        """additionalProperties / additionalItems -> (allowed, restricting schema or None)."""
        if value is False:
            return False, None
        return True, self._restriction(value, pointer, scope)

    def _restriction(self, value: Any, pointer: str, scope: str) -> _Node | None:
        """A subschema that restricts something, or None when it accepts anything (`true`, `{}`)."""
        node = self._child(value, pointer, scope)
        return None if isinstance(node, _Any) else node


def _implicit_all_of(facets: list[_Node], raw: dict, pointer: str) -> _Node:
    """Several facets of one schema object must all hold: Confluent's loader makes an allOf."""
    if len(facets) == 1:
        return facets[0]
    return _Combined(pointer=pointer, raw=raw, criterion="allOf", subschemas=facets, synthetic=True)


def _pick(value: dict, keywords: Iterable[str], type_name: str) -> dict:
    picked = {k: value[k] for k in keywords if k in value}
    picked["type"] = type_name
    return picked


def _mapping(value: dict, key: str, pointer: str) -> dict:
    found = value.get(key, {})
    if not isinstance(found, dict):
        raise _Problem(f"at {pointer}/{key}: {key} must be an object")
    return found


def _count(value: dict, key: str, pointer: str) -> int | None:
    found = value.get(key)
    if found is None:
        return None
    if isinstance(found, bool) or not isinstance(found, (int, float)) or found < 0 or found != int(found):
        raise _Problem(f"at {pointer}/{key}: {key} must be a non-negative integer")
    return int(found)


def _number_kw(value: dict, key: str, pointer: str) -> float | None:
    found = value.get(key)
    if found is None:
        return None
    if isinstance(found, bool) or not isinstance(found, (int, float)):
        raise _Problem(f"at {pointer}/{key}: {key} must be a number")
    return found


def _lookup(document: Any, pointer: str) -> tuple[bool, Any]:
    value = document
    if pointer == "":
        return True, value
    for raw_part in pointer.split("/")[1:]:
        part = raw_part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _pointer_candidates(pointer: str | None) -> list[str]:
    """The pointer, then the same with $defs <-> definitions swapped (Confluent bridges them)."""
    if pointer is None:
        return []
    out = [pointer]
    if "/$defs/" in pointer + "/":
        out.append(pointer.replace("/$defs", "/definitions", 1))
    if "/definitions/" in pointer + "/":
        out.append(pointer.replace("/definitions", "/$defs", 1))
    return out


def _definition_pointers(value: Any, pointer: str) -> Iterable[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in _VALUE_KEYS:
                continue
            child_pointer = f"{pointer}/{_escape(key)}"
            if key in ("$defs", "definitions") and isinstance(child, dict):
                for name in child:
                    yield f"{child_pointer}/{_escape(name)}"
            yield from _definition_pointers(child, child_pointer)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _definition_pointers(child, f"{pointer}/{i}")


# ---------------------------------------------------------------------------------------------
# Comparing: writer node vs reader node -> changes
# ---------------------------------------------------------------------------------------------


class _Differ:
    """Compares a writer schema with a reader schema, following Confluent's rules.

    Results are memoized per (writer node, reader node) pair; a pair met again while it is still
    being compared (recursive $ref) is assumed compatible, and results that relied on such an
    assumption about an enclosing pair are not memoized.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], list[_Change]] = {}
        self._active: dict[tuple[int, int], int] = {}  # pair -> depth on the comparison stack
        self._lowest_assumption = math.inf

    def compare(self, writer: _Node | None, reader: _Node | None) -> list[_Change]:
        """All differences (compatible or not) with paths relative to this pair."""
        if writer is None and reader is None:
            return []
        if writer is None:
            return [_change("SCHEMA_ADDED", new=_describe(reader))]
        if reader is None:
            return [_change("SCHEMA_REMOVED")]
        writer, reader = _resolve(writer), _resolve(reader)
        key = (id(writer), id(reader))
        if key in self._memo:
            return self._memo[key]
        if key in self._active:  # recursion: assume compatible
            self._lowest_assumption = min(self._lowest_assumption, self._active[key])
            return []
        depth = len(self._active)
        self._active[key] = depth
        try:
            changes = self._compare_kinds(writer, reader)
        finally:
            del self._active[key]
        if self._lowest_assumption >= depth:
            self._memo[key] = changes
            self._lowest_assumption = math.inf
        return changes

    # -- dispatch ------------------------------------------------------------------------------

    def _compare_kinds(self, w: _Node, r: _Node) -> list[_Change]:
        if isinstance(r, _Combined) and not isinstance(w, _Combined):
            found = self._writer_fits_an_alternative(w, r)
            if found is not None:
                return found
        elif isinstance(w, _Combined) and not isinstance(r, _Combined):
            found = self._a_writer_part_fits_reader(w, r)
            if found is not None:
                return found
        if isinstance(w, _Enum) and isinstance(r, _Enum):  # const is a one-value enum
            return self._enum(w, r)
        if type(w) is not type(r):
            if isinstance(w, _Nothing) or isinstance(r, _Any):
                return []
            return self._type_changed(w, r)
        compare = _COMPARERS.get(type(w))
        return compare(self, w, r) if compare else []

    def _writer_fits_an_alternative(self, w: _Node, r: _Combined) -> list[_Change] | None:
        """Plain writer, combined reader: fine when the writer fits one alternative."""
        if len(r.subschemas) == 1:
            changes = self.compare(w, r.subschemas[0])
            return changes if _ok(changes) else None
        if r.criterion in ("anyOf", "oneOf"):
            for sub in r.subschemas:
                changes = self.compare(w, sub)
                if _ok(changes):
                    return changes + [_change("SUM_TYPE_EXTENDED")]
        return None

    def _a_writer_part_fits_reader(self, w: _Combined, r: _Node) -> list[_Change] | None:
        """Combined writer, plain reader: fine when the reader reads one allOf part."""
        if len(w.subschemas) == 1:
            changes = self.compare(w.subschemas[0], r)
            return changes if _ok(changes) else None
        if w.criterion == "allOf":
            for sub in w.subschemas:
                changes = self.compare(sub, r)
                if _ok(changes):
                    return changes + [_change("PRODUCT_TYPE_NARROWED")]
        return None

    def _type_changed(self, w: _Node, r: _Node) -> list[_Change]:
        """Kinds differ. Explain with the closest reader alternative when that says more."""
        if isinstance(r, _Combined) and r.criterion != "allOf" and not isinstance(w, _Combined):
            best = min((_incompatible(self.compare(w, sub)) for sub in r.subschemas), key=len)
            deeper = [c for c in best if not (c.kind == "TYPE_CHANGED" and not c.loc)]
            if deeper:
                return best
        return [_change("TYPE_CHANGED", ("type",), old=_describe(w), new=_describe(r))]

    # -- one function per schema kind ----------------------------------------------------------

    def _string(self, w: _String, r: _String) -> list[_Change]:
        out = _limit_changes(w.max_length, r.max_length, "maxLength", "MAX_LENGTH")
        out += _limit_changes(w.min_length, r.min_length, "minLength", "MIN_LENGTH")
        if w.pattern != r.pattern:
            kind = ("PATTERN_ADDED" if w.pattern is None
                    else "PATTERN_REMOVED" if r.pattern is None else "PATTERN_CHANGED")
            out.append(_change(kind, ("pattern",), old=w.pattern, new=r.pattern))
        return out

    def _number(self, w: _Number, r: _Number) -> list[_Change]:
        out = _limit_changes(w.maximum, r.maximum, "maximum", "MAXIMUM")
        out += _limit_changes(w.minimum, r.minimum, "minimum", "MINIMUM")
        out += _limit_changes(w.exclusive_maximum, r.exclusive_maximum, "exclusiveMaximum", "EXCLUSIVE_MAXIMUM")
        out += _limit_changes(w.exclusive_minimum, r.exclusive_minimum, "exclusiveMinimum", "EXCLUSIVE_MINIMUM")
        old, new = w.multiple_of, r.multiple_of
        if old != new:
            if old is None:
                kind = "MULTIPLE_OF_ADDED"
            elif new is None:
                kind = "MULTIPLE_OF_REMOVED"
            elif old != 0 and new % old == 0:
                kind = "MULTIPLE_OF_EXPANDED"  # every reader value is a writer value, not vice versa
            elif new != 0 and old % new == 0:
                kind = "MULTIPLE_OF_REDUCED"
            else:
                kind = "MULTIPLE_OF_CHANGED"
            out.append(_change(kind, ("multipleOf",), old=old, new=new))
        if w.integer != r.integer:
            out.append(_change("TYPE_EXTENDED" if w.integer else "TYPE_NARROWED", ("type",)))
        return out

    def _enum(self, w: _Enum, r: _Enum) -> list[_Change]:
        old = {_value_key(v): v for v in w.values}
        new = {_value_key(v): v for v in r.values}
        if old.keys() == new.keys():
            return []
        removed = [v for k, v in old.items() if k not in new]
        if not removed:
            kind = "ENUM_ARRAY_EXTENDED"
        elif new.keys() <= old.keys():
            kind = "ENUM_ARRAY_NARROWED"
        else:
            kind = "ENUM_ARRAY_CHANGED"
        return [_change(kind, (r.keyword,), old=w.values, new=r.values, removed=_show_values(removed))]

    def _not(self, w: _Not, r: _Not) -> list[_Change]:
        # The excluded sets swap roles: the reader may exclude less, never more.
        kind = "NOT_TYPE_NARROWED" if _ok(self.compare(r.schema, w.schema)) else "NOT_TYPE_EXTENDED"
        return [_change(kind, loc=("not",))]

    def _conditional(self, w: _Conditional, r: _Conditional) -> list[_Change]:
        return [] if w.parts == r.parts else [_change("CONDITIONAL_CHANGED", ("if",))]

    def _object(self, w: _Object, r: _Object) -> list[_Change]:
        out = self._required(w, r)
        for name in _union(w.properties, r.properties):
            wp, rp = w.properties.get(name), r.properties.get(name)
            if rp is None:
                out += _under(("properties", name), self._property_removed(w, r, name, wp))
            elif wp is None:
                out += _under(("properties", name), self._property_added(w, r, name, rp))
            else:
                out += _under(("properties", name), self.compare(wp, rp))
        out += self._dependencies(w, r)
        out += self._additional(w.additional_allowed, w.additional_schema, r.additional_allowed,
                                r.additional_schema, "additionalProperties", "ADDITIONAL_PROPERTIES")
        out += self._unevaluated(w.unevaluated, r.unevaluated, "unevaluatedProperties", "UNEVALUATED_PROPERTIES")
        out += _limit_changes(w.max_properties, r.max_properties, "maxProperties", "MAX_PROPERTIES")
        out += _limit_changes(w.min_properties, r.min_properties, "minProperties", "MIN_PROPERTIES")
        out += _under(("propertyNames",), self.compare(w.property_names, r.property_names))
        return out

    def _required(self, w: _Object, r: _Object) -> list[_Change]:
        """`required` changes for properties both schemas define (new ones: see _property_added)."""
        out = []
        for name in w.properties:
            if name not in r.properties:
                continue
            was, now = name in w.required, name in r.required
            if was and not now:
                out.append(_change("REQUIRED_ATTRIBUTE_REMOVED", ("required", name)))
            elif now and not was:
                with_default = _has_default(r.properties[name])
                kind = "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED" if with_default else "REQUIRED_ATTRIBUTE_ADDED"
                out.append(_change(kind, ("required", name)))
        return out

    def _property_removed(self, w: _Object, r: _Object, name: str, wp: _Node) -> list[_Change]:
        """A property the reader no longer declares: only the reader's content model matters."""
        if _is_open(r):
            return [_change("PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL")]
        partial = _partial_schema(r, name)
        if partial is not None:
            sub = self.compare(wp, partial)
            covered = "IS_COVERED" if _ok(sub) else "NOT_COVERED"
            return sub + [_change(f"PROPERTY_REMOVED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL")]
        if isinstance(_resolve(wp), _Nothing):
            return [_change("PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL")]
        return [_change("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL")]

    def _property_added(self, w: _Object, r: _Object, name: str, rp: _Node) -> list[_Change]:
        """A property only the reader declares: only the writer's content model matters."""
        required, with_default = name in r.required, _has_default(rp)
        if _is_open(w):
            if isinstance(_resolve(rp), _Any):
                return [_change("PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL")]
            if required and not with_default:
                return [_change("REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")]
            if required:
                return [_change("REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL")]
            return [_change("OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")]
        out: list[_Change] = []
        partial = _partial_schema(w, name)
        if partial is not None:
            sub = self.compare(partial, rp)
            covered = "IS_COVERED" if _ok(sub) else "NOT_COVERED"
            out += sub + [_change(f"PROPERTY_ADDED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL")]
        if required and not with_default:
            out.append(_change("REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"))
        elif required:
            out.append(_change("REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL"))
        else:
            out.append(_change("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"))
        return out

    def _dependencies(self, w: _Object, r: _Object) -> list[_Change]:
        out = []
        for key in _union(w.property_dependencies, r.property_dependencies):
            old, new = w.property_dependencies.get(key), r.property_dependencies.get(key)
            if new is None:
                kind = "DEPENDENCY_ARRAY_REMOVED"
            elif old is None:
                kind = "DEPENDENCY_ARRAY_ADDED"
            elif old == new:
                continue
            elif new >= old:
                kind = "DEPENDENCY_ARRAY_EXTENDED"
            elif old >= new:
                kind = "DEPENDENCY_ARRAY_NARROWED"
            else:
                kind = "DEPENDENCY_ARRAY_CHANGED"
            out.append(_change(kind, ("dependencies", key), old=sorted(old or ()), new=sorted(new or ())))
        for key in _union(w.schema_dependencies, r.schema_dependencies):
            old, new = w.schema_dependencies.get(key), r.schema_dependencies.get(key)
            if new is None:
                out.append(_change("DEPENDENCY_SCHEMA_REMOVED", ("dependencies", key)))
            elif old is None:
                out.append(_change("DEPENDENCY_SCHEMA_ADDED", ("dependencies", key)))
            else:
                out += _under(("dependencies", key), self.compare(old, new))
        return out

    def _additional(self, w_allowed: bool, w_schema: _Node | None, r_allowed: bool,
                    r_schema: _Node | None, keyword: str, prefix: str) -> list[_Change]:
        """additionalProperties / additionalItems: false < a schema < true."""
        if w_allowed != r_allowed:
            return [_change(f"{prefix}_ADDED" if r_allowed else f"{prefix}_REMOVED", (keyword,))]
        if w_schema is None and r_schema is not None:
            return [_change(f"{prefix}_NARROWED", (keyword,))]
        if r_schema is None and w_schema is not None:
            return [_change(f"{prefix}_EXTENDED", (keyword,))]
        return _under((keyword,), self.compare(w_schema, r_schema))

    def _unevaluated(self, old: _Node | None, new: _Node | None, keyword: str, prefix: str) -> list[_Change]:
        """unevaluatedProperties / unevaluatedItems (None = absent or `true`)."""
        old_false, new_false = isinstance(old, _Nothing), isinstance(new, _Nothing)
        if old is None and new is None:
            return []
        if old is None:
            return [_change(f"{prefix}_REMOVED" if new_false else f"{prefix}_NARROWED", (keyword,))]
        if new is None:
            return [_change(f"{prefix}_ADDED" if old_false else f"{prefix}_EXTENDED", (keyword,))]
        if old_false != new_false:
            return [_change(f"{prefix}_ADDED" if old_false else f"{prefix}_REMOVED", (keyword,))]
        return _under((keyword,), self.compare(old, new))

    def _array(self, w: _Array, r: _Array) -> list[_Change]:
        out = _under(("items",), self.compare(w.items, r.items))
        out += self._tuple(w, r)
        out += self._additional(w.additional_allowed, w.additional_schema, r.additional_allowed,
                                r.additional_schema, "additionalItems", "ADDITIONAL_ITEMS")
        out += self._unevaluated(w.unevaluated, r.unevaluated, "unevaluatedItems", "UNEVALUATED_ITEMS")
        out += _limit_changes(w.max_items, r.max_items, "maxItems", "MAX_ITEMS")
        out += _limit_changes(w.min_items, r.min_items, "minItems", "MIN_ITEMS")
        if w.unique_items != r.unique_items:
            out.append(_change("UNIQUE_ITEMS_REMOVED" if w.unique_items else "UNIQUE_ITEMS_ADDED", ("uniqueItems",)))
        out += _limit_changes(w.max_contains, r.max_contains, "maxContains", "MAX_CONTAINS")
        out += _limit_changes(w.min_contains, r.min_contains, "minContains", "MIN_CONTAINS")
        out += _under(("contains",), self.compare(w.contains, r.contains))
        return out

    def _tuple(self, w: _Array, r: _Array) -> list[_Change]:
        """Positional items: shared positions compare; extra ones follow the content model."""
        out: list[_Change] = []
        shared = min(len(w.tuple_items), len(r.tuple_items))
        for i in range(shared):
            out += _under(("items", str(i)), self.compare(w.tuple_items[i], r.tuple_items[i]))
        for i in range(shared, len(w.tuple_items)):  # positions the reader dropped
            item, here = w.tuple_items[i], ("items", str(i))
            partial = _partial_items_schema(r)
            if _is_open_array(r):
                out.append(_change("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL", loc=here))
            elif partial is not None:
                sub = self.compare(item, partial)
                covered = "IS_COVERED" if _ok(sub) else "NOT_COVERED"
                out += _under(here, sub + [_change(f"ITEM_REMOVED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL")])
            elif isinstance(_resolve(item), _Nothing):
                out.append(_change("ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL", loc=here))
            else:
                out.append(_change("ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL", loc=here))
        for i in range(shared, len(r.tuple_items)):  # positions the reader added
            item, here = r.tuple_items[i], ("items", str(i))
            partial = _partial_items_schema(w)
            if _is_open_array(w):
                kind = ("ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
                        if isinstance(_resolve(item), _Any) else "ITEM_ADDED_TO_OPEN_CONTENT_MODEL")
                out.append(_change(kind, loc=here))
            elif partial is not None:
                sub = self.compare(partial, item)
                covered = "IS_COVERED" if _ok(sub) else "NOT_COVERED"
                out += _under(here, sub + [_change(f"ITEM_ADDED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL")])
            else:
                out.append(_change("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL", loc=here))
        return out

    def _combined(self, w: _Combined, r: _Combined) -> list[_Change]:
        """allOf/anyOf/oneOf on both sides: criteria, sizes, then a pairing of compatible parts."""
        out: list[_Change] = []
        if w.criterion != r.criterion:
            single_w, single_r = len(w.subschemas) == 1, len(r.subschemas) == 1
            if (r.criterion == "anyOf" or (single_w and single_r) or (single_w and r.criterion == "oneOf")
                    or (single_r and w.criterion == "allOf")):
                out.append(_change("COMBINED_TYPE_EXTENDED"))
            else:
                return [_change("COMBINED_TYPE_CHANGED", old=_describe(w), new=_describe(r))]
        ws, rs = _distinct(w.subschemas), _distinct(r.subschemas)
        sizes = {"old": len(ws), "new": len(rs)}
        if len(ws) < len(rs):
            out.append(_change("PRODUCT_TYPE_EXTENDED" if r.criterion == "allOf" else "SUM_TYPE_EXTENDED", **sizes))
        elif len(ws) > len(rs):
            out.append(_change("SUM_TYPE_NARROWED" if w.criterion != "allOf" else "PRODUCT_TYPE_NARROWED", **sizes))
        pairs = {}
        for i, ws_i in enumerate(ws):
            prefix = () if w.synthetic else (w.criterion, str(i))
            for j, rs_j in enumerate(rs):
                pairs[i, j] = _under(prefix, self.compare(ws_i, rs_j))
        fits = {i: [j for j in range(len(rs)) if _ok(pairs[i, j])] for i in range(len(ws))}
        matching = _max_matching(fits)
        for i, j in matching.items():
            out += pairs[i, j]
        if len(matching) < min(len(ws), len(rs)):
            explanation = _explain_unmatched(pairs, matching, len(ws), len(rs))
            if not (w.synthetic and explanation):
                out.append(_change("COMBINED_TYPE_SUBSCHEMAS_CHANGED", old=w.criterion))
            out += explanation
        return out


_COMPARERS = {
    _String: _Differ._string,
    _Number: _Differ._number,
    _Not: _Differ._not,
    _Conditional: _Differ._conditional,
    _Object: _Differ._object,
    _Array: _Differ._array,
    _Combined: _Differ._combined,
}


def _limit_changes(old: float | None, new: float | None, keyword: str, prefix: str) -> list[_Change]:
    """X_ADDED / X_REMOVED / X_INCREASED / X_DECREASED for a numeric keyword."""
    if old == new:
        return []
    if old is None:
        kind = f"{prefix}_ADDED"
    elif new is None:
        kind = f"{prefix}_REMOVED"
    else:
        kind = f"{prefix}_INCREASED" if old < new else f"{prefix}_DECREASED"
    return [_change(kind, (keyword,), old=old, new=new)]


def _is_open(o: _Object) -> bool:
    """Any extra property with any value is allowed."""
    return (o.additional_allowed and o.additional_schema is None
            and not o.pattern_properties and o.unevaluated is None)


def _partial_schema(o: _Object, name: str) -> _Node | None:
    """The schema an undeclared property `name` must match in a partially open object."""
    for pattern, schema in o.pattern_properties:
        try:
            if re.search(pattern, name):
                return schema
        except re.error:
            continue
    if o.additional_schema is not None:
        return o.additional_schema
    if o.additional_allowed and o.unevaluated is not None and not isinstance(o.unevaluated, _Nothing):
        return o.unevaluated
    return None


def _is_open_array(a: _Array) -> bool:
    return a.additional_allowed and a.additional_schema is None and a.unevaluated is None


def _partial_items_schema(a: _Array) -> _Node | None:
    if a.additional_schema is not None:
        return a.additional_schema
    if a.additional_allowed and a.unevaluated is not None and not isinstance(a.unevaluated, _Nothing):
        return a.unevaluated
    return None


def _max_matching(fits: dict[int, list[int]]) -> dict[int, int]:
    """Maximum bipartite matching (augmenting paths): writer part -> reader part."""
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in fits:
        assign(i, set())
    return {i: j for j, i in owner.items()}


def _explain_unmatched(pairs: dict, matching: dict[int, int], n_w: int, n_r: int) -> list[_Change]:
    """For each unpaired part, the incompatibilities with its closest unpaired counterpart."""
    free_w = [i for i in range(n_w) if i not in matching]
    free_r = [j for j in range(n_r) if j not in matching.values()]
    out: list[_Change] = []
    if n_w <= n_r:
        for i in free_w:
            out += min((_incompatible(pairs[i, j]) for j in free_r), key=len, default=[])
    else:
        for j in free_r:
            out += min((_incompatible(pairs[i, j]) for i in free_w), key=len, default=[])
    return out


def _distinct(nodes: list[_Node]) -> list[_Node]:
    seen: dict[str, _Node] = {}
    for node in nodes:
        seen.setdefault(type(node).__name__ + _canonical(node.raw), node)
    return list(seen.values())


def _union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


# ---------------------------------------------------------------------------------------------
# Small helpers: JSON values, paths, descriptions
# ---------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _value_key(value: Any) -> Any:
    """A hashable key with JSON equality (1 == 1.0, but true != 1)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _value_key(v)) for k, v in value.items())))
    return ("other", repr(value))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _field_label(loc: tuple[str, ...]) -> str:
    """'field \\'customer.tags[]\\'' from a location such as properties/customer/properties/tags/items."""
    text, i = "", 0
    while i < len(loc):
        segment, nxt = loc[i], loc[i + 1] if i + 1 < len(loc) else None
        if segment == "properties" and nxt is not None:
            text += ("." if text else "") + nxt
            i += 2
            continue
        if segment in ("dependencies", "allOf", "anyOf", "oneOf") and nxt is not None:
            i += 2
            continue
        if segment == "items":
            if nxt is not None and nxt.isdigit():
                text += f"[{nxt}]"
                i += 2
                continue
            text += "[]"
        elif segment in ("additionalItems", "unevaluatedItems", "contains"):
            text += "[]"
        elif segment in ("additionalProperties", "unevaluatedProperties"):
            text += ("." if text else "") + "<extra property>"
        elif segment == "propertyNames":
            owner = f"field '{text}'" if text else "the top-level object"
            return f"the property names of {owner}"
        i += 1
    return f"field '{text}'" if text else "the top-level value"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return _show_values(list(value))
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _show_values(values: list) -> str:
    shown = ", ".join(json.dumps(v, default=str) for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


def _describe(node: _Node | None) -> str:
    """A short human description of what a schema accepts ('integer or null', 'string', ...)."""
    if node is None:
        return "any value"
    node = _resolve(node)
    if isinstance(node, _Combined):
        parts = [_describe(s) for s in node.subschemas]
        if node.criterion == "allOf":
            values = [_show_values(s.values) for s in node.subschemas if isinstance(s, _Enum)]
            typed = [_describe(s) for s in node.subschemas if not isinstance(s, _Enum)]
            if values and len(typed) == 1:
                return f"{typed[0]} restricted to {values[0]}"
            return " and ".join(parts) if node.synthetic else f"allOf({', '.join(parts)})"
        joined = " or ".join(parts)
        return joined if node.synthetic or node.criterion == "anyOf" else f"exactly one of ({joined})"
    if isinstance(node, _Number):
        return "integer" if node.integer else "number"
    if isinstance(node, _Const):
        return f"the constant {json.dumps(node.values[0], default=str)}"
    if isinstance(node, _Enum):
        return f"one of {_show_values(node.values)}"
    names = {_Any: "any value", _Nothing: "no value (false)", _Null: "null", _Boolean: "boolean",
             _String: "string", _Object: "object", _Array: "array", _Not: "a 'not' schema",
             _Conditional: "an if/then/else schema"}
    return names.get(type(node), "a schema")
