"""Schema-change cases for conflux.contracts.compat, each with its verdict under BACKWARD/FORWARD/FULL/NONE.

Every case is an *old* (registered) schema and a *new* one. ``backward`` says whether the new
schema can read data written with the old one; ``forward`` whether the old schema can read data
written with the new one. FULL needs both; NONE accepts everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict

from conflux.core.errors import SchemaError
from conflux.contracts.compat import (
    Incompatibility,
    Mode,
    check_compatibility,
    diff_schemas,
    load_schema_file,
)

# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
NULL = {"type": "null"}


def record(props: dict, required: tuple[str, ...] = (), closed: bool = True, **extra) -> dict:
    """An object schema; closed (additionalProperties: false) unless told otherwise."""
    schema = {"type": "object", "properties": props, "required": list(required), **extra}
    if closed:
        schema["additionalProperties"] = False
    return schema


def nullable(schema: dict) -> dict:
    """What pydantic emits for Optional[X] = None."""
    return {"anyOf": [schema, NULL], "default": None}


def array(items, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


def with_defs(root: dict, **defs) -> dict:
    return {**root, "$defs": defs}


def ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


# ---------------------------------------------------------------------------------------------
# Pydantic models (extra="forbid" gives a closed content model)
# ---------------------------------------------------------------------------------------------


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderV1(Closed):
    order_id: int
    customer: str


class OrderWithNote(Closed):
    order_id: int
    customer: str
    note: Optional[int] = None


class OrderFloatId(Closed):
    order_id: float
    customer: str


class OrderOpenV1(BaseModel):  # default extra="ignore": an open content model
    order_id: int


class OrderOpenWithNote(BaseModel):
    order_id: int
    note: Optional[str] = None


class AddressV1(Closed):
    city: str


class AddressV2(Closed):
    city: str
    zip_code: Optional[str] = None


class CustomerV1(Closed):
    name: str
    address: AddressV1


class CustomerV2(Closed):
    name: str
    address: AddressV2


class LineV1(Closed):
    sku: str
    quantity: int


class LineV2(Closed):
    sku: str
    quantity: str


class BasketV1(Closed):
    lines: list[LineV1]


class BasketV2(Closed):
    lines: list[LineV2]


class StatusV1(str, Enum):
    OPEN = "open"
    SHIPPED = "shipped"


class StatusV2(str, Enum):
    OPEN = "open"
    SHIPPED = "shipped"
    RETURNED = "returned"


class ShipmentV1(Closed):
    status: StatusV1


class ShipmentV2(Closed):
    status: StatusV2


class PriorityV1(Closed):
    priority: Literal["low", "high"]


class PriorityV2(Closed):
    priority: Literal["low"]


def model(cls: type[BaseModel]) -> dict:
    return cls.model_json_schema()


# ---------------------------------------------------------------------------------------------
# The case table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    old: dict | bool
    new: dict | bool
    backward: bool  # new reads old data
    forward: bool  # old reads new data


CASES = [
    # -- fields added / removed ----------------------------------------------------------------
    Case("unchanged closed record", record({"id": INT}, ("id",)), record({"id": INT}, ("id",)), True, True),
    Case("optional field added to closed record",
         record({"id": INT}, ("id",)), record({"id": INT, "note": STR}, ("id",)), True, False),
    Case("optional field added to open record",
         record({"id": INT}, ("id",), closed=False), record({"id": INT, "note": STR}, ("id",), closed=False),
         False, True),
    Case("required field added to closed record",
         record({"id": INT}, ("id",)), record({"id": INT, "sku": STR}, ("id", "sku")), False, False),
    Case("required field with default added to closed record",
         record({"id": INT}, ("id",)), record({"id": INT, "qty": {**INT, "default": 1}}, ("id", "qty")),
         True, False),
    Case("required field added to open record",
         record({"id": INT}, ("id",), closed=False), record({"id": INT, "sku": STR}, ("id", "sku"), closed=False),
         False, True),
    Case("unrestricted field added to open record",
         record({"id": INT}, closed=False), record({"id": INT, "extra": {}}, closed=False), True, True),
    Case("optional field removed from closed record",
         record({"id": INT, "note": STR}, ("id",)), record({"id": INT}, ("id",)), False, True),
    Case("optional field removed from open record",
         record({"id": INT, "note": STR}, ("id",), closed=False), record({"id": INT}, ("id",), closed=False),
         True, False),
    Case("required field removed from closed record",
         record({"id": INT, "sku": STR}, ("id", "sku")), record({"id": INT}, ("id",)), False, False),
    # -- required changes ----------------------------------------------------------------------
    Case("optional field becomes required",
         record({"id": INT, "sku": STR}, ("id",)), record({"id": INT, "sku": STR}, ("id", "sku")), False, True),
    Case("required field becomes optional",
         record({"id": INT, "sku": STR}, ("id", "sku")), record({"id": INT, "sku": STR}, ("id",)), True, False),
    Case("field becomes required but has a default",
         record({"id": INT, "qty": INT}, ("id",)), record({"id": INT, "qty": {**INT, "default": 0}}, ("id", "qty")),
         True, True),
    # -- types -----------------------------------------------------------------------------------
    Case("integer widened to number", record({"price": INT}), record({"price": NUM}), True, False),
    Case("number narrowed to integer", record({"price": NUM}), record({"price": INT}), False, True),
    Case("string changed to integer", record({"code": STR}), record({"code": INT}), False, False),
    Case("type array gains null", record({"code": STR}), record({"code": {"type": ["string", "null"]}}), True, False),
    Case("field made nullable (pydantic Optional)", record({"qty": INT}), record({"qty": nullable(INT)}), True, False),
    Case("nullability removed", record({"qty": nullable(INT)}), record({"qty": INT}), False, True),
    Case("nullable integer widened to nullable number",
         record({"qty": nullable(INT)}), record({"qty": nullable(NUM)}), True, False),
    Case("any value narrowed to string", True, STR, False, True),
    # -- enum / const ----------------------------------------------------------------------------
    Case("enum extended", {**STR, "enum": ["a", "b"]}, {**STR, "enum": ["a", "b", "c"]}, True, False),
    Case("enum shrunk", {**STR, "enum": ["a", "b", "c"]}, {**STR, "enum": ["a", "b"]}, False, True),
    Case("enum value replaced", {**STR, "enum": ["a", "b"]}, {**STR, "enum": ["a", "c"]}, False, False),
    Case("const widened to enum", {**STR, "const": "a"}, {**STR, "enum": ["a", "b"]}, True, False),
    # -- string constraints ----------------------------------------------------------------------
    Case("maxLength decreased", {**STR, "maxLength": 50}, {**STR, "maxLength": 20}, False, True),
    Case("maxLength increased", {**STR, "maxLength": 20}, {**STR, "maxLength": 50}, True, False),
    Case("maxLength added", STR, {**STR, "maxLength": 10}, False, True),
    Case("minLength increased", {**STR, "minLength": 1}, {**STR, "minLength": 3}, False, True),
    Case("pattern added", STR, {**STR, "pattern": "^[A-Z]+$"}, False, True),
    Case("pattern changed", {**STR, "pattern": "^[A-Z]+$"}, {**STR, "pattern": "^[a-z]+$"}, False, False),
    # -- number constraints ----------------------------------------------------------------------
    Case("minimum raised", {**NUM, "minimum": 0}, {**NUM, "minimum": 10}, False, True),
    Case("maximum raised", {**NUM, "maximum": 100}, {**NUM, "maximum": 1000}, True, False),
    Case("exclusiveMinimum added", NUM, {**NUM, "exclusiveMinimum": 0}, False, True),
    Case("multipleOf relaxed from 10 to 5", {**INT, "multipleOf": 10}, {**INT, "multipleOf": 5}, True, False),
    # -- array constraints -----------------------------------------------------------------------
    Case("minItems raised", array(STR, minItems=0), array(STR, minItems=1), False, True),
    Case("maxItems removed", array(STR, maxItems=5), array(STR), True, False),
    Case("uniqueItems added", array(STR), array(STR, uniqueItems=True), False, True),
    Case("array item type widened", array(INT), array(NUM), True, False),
    Case("array item type changed", array(STR), array(INT), False, False),
    Case("array items made nullable", array(STR), array(nullable(STR)), True, False),
    Case("closed tuple gains a position",
         {"type": "array", "items": [INT, STR], "additionalItems": False},
         {"type": "array", "items": [INT, STR, {"type": "boolean"}], "additionalItems": False}, True, False),
    Case("open prefixItems tuple loses a position",
         {"type": "array", "prefixItems": [INT, STR]}, {"type": "array", "prefixItems": [INT]}, True, False),
    # -- nested objects and arrays of objects ----------------------------------------------------
    Case("nested closed object gains optional field",
         record({"addr": record({"city": STR}, ("city",))}),
         record({"addr": record({"city": STR, "zip": STR}, ("city",))}), True, False),
    Case("nested field narrowed",
         record({"addr": record({"lat": NUM})}), record({"addr": record({"lat": INT})}), False, True),
    Case("array of objects: item gains optional field",
         record({"lines": array(record({"sku": STR}, ("sku",)))}),
         record({"lines": array(record({"sku": STR, "qty": INT}, ("sku",)))}), True, False),
    Case("array of objects: item loses required field",
         record({"lines": array(record({"sku": STR, "qty": INT}, ("sku", "qty")))}),
         record({"lines": array(record({"sku": STR}, ("sku",)))}), False, False),
    # -- $ref / $defs ----------------------------------------------------------------------------
    Case("inline object moved into $defs",
         record({"addr": record({"city": STR}, ("city",))}),
         with_defs(record({"addr": ref("Addr")}), Addr=record({"city": STR}, ("city",))), True, True),
    Case("$defs model gains optional field",
         with_defs(record({"addr": ref("Addr")}), Addr=record({"city": STR})),
         with_defs(record({"addr": ref("Addr")}), Addr=record({"city": STR, "zip": STR})), True, False),
    Case("$defs model field changes type",
         with_defs(record({"addr": ref("Addr")}), Addr=record({"zip": INT})),
         with_defs(record({"addr": ref("Addr")}), Addr=record({"zip": STR})), False, False),
    # -- content model ---------------------------------------------------------------------------
    Case("closed record opened", record({"id": INT}), record({"id": INT}, closed=False), True, False),
    Case("open record closed", record({"id": INT}, closed=False), record({"id": INT}), False, True),
    Case("map values narrowed",
         {"type": "object", "additionalProperties": NUM}, {"type": "object", "additionalProperties": INT},
         False, True),
    Case("property added inside patternProperties coverage",
         record({"id": INT}, patternProperties={"^x_": INT}),
         record({"id": INT, "x_count": INT}, patternProperties={"^x_": INT}), True, True),
    Case("property added outside patternProperties coverage",
         record({"id": INT}, patternProperties={"^x_": INT}),
         record({"id": INT, "x_name": STR}, patternProperties={"^x_": INT}), False, False),
    Case("minProperties raised", {"type": "object", "minProperties": 1}, {"type": "object", "minProperties": 2},
         False, True),
    Case("maxProperties raised", {"type": "object", "maxProperties": 2}, {"type": "object", "maxProperties": 5},
         True, False),
    Case("dependentRequired added",
         record({"card": STR, "cvv": STR}, closed=False),
         record({"card": STR, "cvv": STR}, closed=False, dependentRequired={"card": ["cvv"]}), False, True),
    Case("dependencies narrowed",
         {"dependencies": {"card": ["cvv", "expiry"]}}, {"dependencies": {"card": ["cvv"]}}, True, False),
    # -- combined schemas ------------------------------------------------------------------------
    Case("oneOf gains an alternative", {"oneOf": [STR, INT]}, {"oneOf": [STR, INT, NULL]}, True, False),
    Case("allOf gains a part", {"allOf": [STR]}, {"allOf": [STR, {"maxLength": 5}]}, False, True),
    Case("anyOf becomes oneOf", {"anyOf": [STR, INT]}, {"oneOf": [STR, INT]}, False, True),
    Case("not excludes more", {"not": INT}, {"not": NUM}, False, True),
    # -- annotations never matter ----------------------------------------------------------------
    Case("title, description, examples and default changed",
         record({"id": {**INT, "title": "Id", "description": "key", "examples": [1]}, "n": {**INT, "default": 1}}),
         record({"id": {**INT, "title": "ID", "description": "the key", "examples": [2]}, "n": {**INT, "default": 2}}),
         True, True),
    # -- real pydantic models --------------------------------------------------------------------
    Case("pydantic: Optional field added to forbid-extra model", model(OrderV1), model(OrderWithNote), True, False),
    Case("pydantic: field removed from forbid-extra model", model(OrderWithNote), model(OrderV1), False, True),
    Case("pydantic: int field changed to float", model(OrderV1), model(OrderFloatId), True, False),
    Case("pydantic: Optional field added to default (open) model",
         model(OrderOpenV1), model(OrderOpenWithNote), False, True),
    Case("pydantic: nested model gains Optional field", model(CustomerV1), model(CustomerV2), True, False),
    Case("pydantic: list item model field int to str", model(BasketV1), model(BasketV2), False, False),
    Case("pydantic: Enum gains a member", model(ShipmentV1), model(ShipmentV2), True, False),
    Case("pydantic: Literal loses a value", model(PriorityV1), model(PriorityV2), False, True),
]

MODES = ["BACKWARD", "FORWARD", "FULL", "NONE"]


def expected(case: Case, mode: str) -> bool:
    return {"BACKWARD": case.backward, "FORWARD": case.forward,
            "FULL": case.backward and case.forward, "NONE": True}[mode]


def test_the_table_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_verdict(case: Case, mode: str):
    problems = check_compatibility(case.new, [case.old], mode)
    assert (problems == []) is expected(case, mode), "\n".join(map(str, problems)) or "no problems found"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_diff_schemas_matches_the_two_directions(case: Case):
    assert (diff_schemas(reader=case.new, writer=case.old) == []) is case.backward
    assert (diff_schemas(reader=case.old, writer=case.new) == []) is case.forward


# ---------------------------------------------------------------------------------------------
# Transitive modes
# ---------------------------------------------------------------------------------------------

# v1 had a decimal price; v2 (registered while the subject was NONE) made it an integer.
PRICE_V1 = record({"id": INT, "price": NUM}, ("id", "price"))
PRICE_V2 = record({"id": INT, "price": INT}, ("id", "price"))
PRICE_NEW = record({"id": INT, "price": INT, "note": STR}, ("id", "price"))


def test_backward_passes_against_latest_but_transitive_fails_against_v1():
    assert check_compatibility(PRICE_NEW, [PRICE_V1, PRICE_V2], Mode.BACKWARD) == []
    problems = check_compatibility(PRICE_NEW, [PRICE_V1, PRICE_V2], Mode.BACKWARD_TRANSITIVE)
    assert [p.kind for p in problems] == ["TYPE_NARROWED"]
    assert problems[0].path == "#/properties/price/type"
    assert "BACKWARD_TRANSITIVE" in problems[0].rule and "version 1" in problems[0].rule


def test_forward_passes_against_latest_but_transitive_fails_against_v1():
    v1 = record({"id": INT, "note": STR}, ("id",), closed=False)
    v2 = record({"id": INT}, ("id",), closed=False)
    new = record({"id": INT}, ("id",), closed=False)
    assert check_compatibility(new, [v1, v2], "forward") == []
    problems = check_compatibility(new, [v1, v2], "FORWARD_TRANSITIVE")
    assert [p.kind for p in problems] == ["OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"]
    assert "version 1" in problems[0].rule and "FORWARD_TRANSITIVE" in problems[0].rule
    assert check_compatibility(new, [v1, v2], "full_transitive") != []


def test_full_reports_both_directions_with_their_rule():
    old = {**STR, "enum": ["a", "b"]}
    new = {**STR, "enum": ["a", "c"]}
    problems = check_compatibility(new, [old], Mode.FULL)
    rules = {p.rule for p in problems}
    assert any(r.startswith("FULL: the new schema (reader)") for r in rules)
    assert any(r.startswith("FULL: version 1 (reader)") for r in rules)


def test_none_and_empty_history_accept_anything():
    assert check_compatibility(STR, [INT], Mode.NONE) == []
    assert check_compatibility(STR, [], Mode.BACKWARD_TRANSITIVE) == []


def test_mode_parse():
    assert Mode.parse("backward") is Mode.BACKWARD
    assert Mode.parse("Full-Transitive") is Mode.FULL_TRANSITIVE
    assert Mode.parse(Mode.NONE) is Mode.NONE
    with pytest.raises(ValueError, match="BACKWARD_TRANSITIVE"):
        Mode.parse("sideways")


# ---------------------------------------------------------------------------------------------
# Messages and paths
# ---------------------------------------------------------------------------------------------


def test_messages_name_the_nested_field_path():
    old = record({"customer": record({"email": {**STR, "maxLength": 100}})})
    new = record({"customer": record({"email": {**STR, "maxLength": 40}})})
    [problem] = diff_schemas(reader=new, writer=old)
    assert problem.path == "#/properties/customer/properties/email/maxLength"
    assert problem.kind == "MAX_LENGTH_DECREASED"
    assert "'customer.email'" in problem.message
    assert "100" in problem.message and "40" in problem.message


def test_message_for_required_field_and_array_items():
    old = record({"lines": array(record({"sku": STR}, ("sku",)))})
    new = record({"lines": array(record({"sku": STR, "qty": INT}, ("sku", "qty")))})
    [problem] = diff_schemas(reader=new, writer=old)
    assert problem.kind == "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"
    assert problem.path == "#/properties/lines/items/properties/qty"
    assert "'lines[].qty'" in problem.message


def test_type_change_message_and_str():
    [problem] = diff_schemas(reader=record({"total": STR}), writer=record({"total": NUM}))
    assert problem.path == "#/properties/total/type"
    assert "'total'" in problem.message and "number" in problem.message and "string" in problem.message
    text = str(Incompatibility(problem.path, problem.kind, problem.message, rule="BACKWARD: x"))
    assert text == f"{problem.path}: {problem.kind} — {problem.message} (BACKWARD: x)"


def test_enum_narrowing_names_removed_values():
    problems = diff_schemas(reader=model(ShipmentV1), writer=model(ShipmentV2))
    assert [p.kind for p in problems] == ["ENUM_ARRAY_NARROWED"]
    assert "returned" in problems[0].message and "'status'" in problems[0].message


def test_recursive_models_terminate():
    tree = with_defs(ref("Node"), Node=record({"value": INT, "children": array(ref("Node"))}, ("value",)))
    changed = json.loads(json.dumps(tree).replace('"integer"', '"string"'))
    assert diff_schemas(reader=tree, writer=tree) == []
    assert [p.kind for p in diff_schemas(reader=changed, writer=tree)] == ["TYPE_CHANGED"]


# ---------------------------------------------------------------------------------------------
# Loading schema files
# ---------------------------------------------------------------------------------------------


def test_load_schema_file_reads_a_valid_schema(tmp_path):
    path = tmp_path / "order.json"
    path.write_text(json.dumps(model(CustomerV2)))
    assert load_schema_file(path) == model(CustomerV2)


@pytest.mark.parametrize(
    "content, hint",
    [
        ('{"type": "object",', "not valid JSON"),
        ("[1, 2]", "object or a boolean"),
        ('{"properties": {"a": {"type": "strng"}}}', "strng"),
        ('{"properties": {"a": {"$ref": "#/$defs/Missing"}}}', "cannot be resolved"),
    ],
    ids=["invalid-json", "not-a-schema", "unknown-type", "unresolvable-ref"],
)
def test_load_schema_file_rejects_bad_documents(tmp_path, content, hint):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SchemaError) as raised:
        load_schema_file(path)
    assert str(path) in str(raised.value) and hint in str(raised.value)


def test_load_schema_file_reports_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(SchemaError, match="cannot read schema file"):
        load_schema_file(path)


def test_diff_schemas_rejects_invalid_schemas():
    with pytest.raises(SchemaError, match="reader schema"):
        diff_schemas(reader={"type": "text"}, writer=STR)
