"""Declarations are validated at load time with errors naming the dataset and the problem."""

import datetime as dt

import pandas as pd
import pytest
from pydantic import BaseModel, ConfigDict

from conflux.core.errors import DeclarationError
from pipelines.catalog import DATASETS
from conflux.core.declarations import BatchDataset, EventDataset, validate_catalog


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    day: dt.date
    name: str = ""


def ev(name="a", **kw):
    base = dict(name=name, contract=Row, key=("id",), event_time="day", topics=(f"t.{name}",))
    return EventDataset(**{**base, **kw})


def join(name, upstream, **kw):
    return BatchDataset(name=name, contract=Row, key=("id",), upstream=upstream,
                        compute=lambda inputs: pd.DataFrame(), **kw)


@pytest.mark.parametrize("datasets,message", [
    ([ev(key=("nope",))], "dataset 'a': key field 'nope' is not in contract Row"),
    ([ev(event_time="when")], "dataset 'a': event-time field 'when' is not in contract Row"),
    ([ev(event_time="name")], "dataset 'a': event-time field 'name' must be a date or datetime"),
    ([ev(key=())], "dataset 'a': declares no key fields"),
    ([ev(), ev()], "dataset 'a': is declared twice"),
    ([ev("a"), ev("b", topics=("t.a",))], "dataset 'b': topic 't.a' is already used by dataset 'a'"),
    ([ev("a"), ev("b", topics=("t.a.dlq",))], "dataset 'b': topic 't.a.dlq' is already used"),
    ([ev(), join("j", ("missing",))], "dataset 'j': upstream 'missing' is not a declared dataset"),
    ([join("x", ("y",)), join("y", ("z",)), join("z", ("x",))], "dependency cycle: x -> y -> z -> x"),
    ([ev(), join("j", ("a",), reads={"b": ("id",)})], "dataset 'j': reads names 'b', which is not"),
    ([ev(), join("j", ("a",), reads={"a": ("idd",)})], "dataset 'j': reads a.idd, not a field"),
    ([BatchDataset(name="b", contract=Row, key=("id",))], "exactly one of source_table or compute"),
    ([BatchDataset(name="b", contract=Row, key=("id",), source_table="nodot")], "must be schema.table"),
    ([ev(), join("j", ("a",), lineage={"id": ("a.ghost",)})], "lineage source 'a.ghost'"),
    ([ev(name="bad-name")], "name must start with a letter"),
    ([ev(contract=dict)], "contract must be a pydantic model class"),
    ([ev(start="someday")], "dataset 'a': start='someday' is not a date"),
    ([ev(start="1995-01-01"), join("j", ("a",), event_time="day", start="1994-06-01")],
     "dataset 'j': starts on 1994-06-01, before its upstream 'a' (1995-01-01)"),
])
def test_invalid_declarations_are_rejected_with_dataset_and_problem(datasets, message):
    with pytest.raises(DeclarationError, match="DECLARATION_INVALID") as exc:
        validate_catalog(datasets)
    assert message in str(exc.value)


def test_event_dataset_defaults():
    ds = ev()
    assert ds.mode == "event" and ds.dlq_topic == "t.a.dlq" and ds.topic == "t.a"
    assert ds.freshness == dt.timedelta(seconds=30)
    assert EventDataset(name="s", contract=Row, key=("id",), topics="single").topics == ("single",)


def test_the_first_partition_is_declared_per_dataset():
    assert ev().start == dt.date(1992, 1, 1)  # the default
    assert ev(start="2024-03-01").start == dt.date(2024, 3, 1)
    assert ev(start=dt.datetime(2024, 3, 1, 12)).start == dt.date(2024, 3, 1)
    # a downstream may start later than its upstream (its days all have upstream partitions)
    validate_catalog([ev(), join("j", ("a",), event_time="day", start="2024-03-01")])


def test_the_demo_catalog_declares_every_dataset_of_the_design():
    by_name = {d.name: d for d in DATASETS}
    assert {n for n, d in by_name.items() if d.mode == "event"} == {"orders", "lineitem",
                                                                    "customer_ledger"}
    assert {n for n, d in by_name.items() if d.mode == "batch"} == {
        "customer", "supplier", "nation", "region", "part", "partsupp",
        "revenue_by_nation", "customer_balance"}
    assert by_name["orders"].topics == ("tpch.orders",)
    assert by_name["lineitem"].key == ("l_orderkey", "l_linenumber")
    assert by_name["customer_ledger"].topics == ("ledger.customer",)
    assert by_name["customer_ledger"].append_only
    assert by_name["customer"].source_table == "ops.customer"
    assert by_name["orders"].fallback.source_table == "ops.orders"
