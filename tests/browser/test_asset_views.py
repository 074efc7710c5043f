"""The asset graph and an event dataset's latest materialization, as an operator sees them in the
Dagster UI (headless Chromium against the test stack's webserver)."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator
from pipelines.catalog import CUSTOMER, ORDERS
from pipelines.definitions import defs
from conflux.io.kafka import KafkaResource

GROUP_URL = "/locations/conflux/asset-groups/{group}"


def graph_node(page, name: str):
    """The asset node ``name`` of the graph (its box, its kind tags)."""
    return (page.locator("foreignObject").filter(has=page.get_by_text(name, exact=True))
            .locator(":scope > div").first)


@pytest.fixture(scope="module")
def orders_materialized(stack):
    """Orders with a few bad records published to ``tpch.orders`` and applied by the live
    sensor; returns the newest materialization of ``orders`` (read from the instance)."""
    kafka = KafkaResource.from_env(stack.settings)
    rows = list(json_rows(TpchGenerator(0.001, seed=41).orders().head(40)))
    for row in rows:  # one day: one partition, so one materialization per micro-batch
        row["o_orderkey"] += 41_000_000
        row["o_orderdate"] = "1996-03-14"
    started = time.time()
    # bad records first, in one send with the good ones (one flush): the micro-batch applying
    # the good ones counts them (two sends could land in two micro-batches under load)
    sent = kafka.send_raw("tpch.orders", [(b"bad-1", b'{"o_orderkey": ', event_headers()),
                                          (b"bad-2", b"\xff\xfe", event_headers())]
                          + [(str(r["o_orderkey"]).encode(), json.dumps(r).encode(),
                              event_headers()) for r in rows])
    assert sent == len(rows) + 2
    deadline = time.monotonic() + 120
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            records = instance.fetch_materializations(dg.AssetKey("orders"), limit=20).records
            for record in records:
                meta = record.asset_materialization.metadata
                if record.timestamp >= started and meta["conflux/dead_lettered"].value >= 1:
                    return record
            time.sleep(2)
    pytest.fail("no materialization of orders counting dead letters within 120 s")


def test_the_graph_tells_event_from_batch_datasets_and_shows_their_lineage(page, webserver):
    page.goto(GROUP_URL.format(group="sales"))
    joined = "revenue_by_nation"
    graph_node(page, joined).wait_for()

    for name in ("orders", "lineitem"):
        text = graph_node(page, name).inner_text()
        assert "event" in text.splitlines() and "Kafka" in text, (name, text)
        assert "batch" not in text.splitlines(), (name, text)
    text = graph_node(page, joined).inner_text()
    assert "batch" in text.splitlines() and "event" not in text.splitlines(), text

    # lineage: an edge into the join from each upstream dataset, the ones of other groups shown
    # as links to them
    upstream = {k.to_user_string() for k in defs.get_assets_def(joined).asset_deps[dg.AssetKey(joined)]}
    assert {"orders", "lineitem", "customer", "nation", "supplier"} <= upstream
    for name in upstream:
        assert page.get_by_text(name, exact=True).first.is_visible(), name
    edges = page.locator("svg path[marker-end]")
    assert edges.count() >= len(upstream)


@pytest.mark.parametrize("ds", [ORDERS, CUSTOMER], ids=["event", "batch"])
def test_the_asset_page_lists_the_contract_columns(page, webserver, ds):
    page.goto(f"/assets/{ds.name}")
    page.get_by_text("Columns", exact=True).first.wait_for()
    body = page.inner_text("body")
    for field in ds.fields:
        assert page.get_by_text(field, exact=True).first.is_visible(), field
    kinds = "event" if ds is ORDERS else "batch"
    assert kinds in body.splitlines()


def metadata_value(page, label: str) -> str:
    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True)).first
    row.wait_for()
    return row.inner_text()


def test_the_latest_event_materialization_shows_offsets_counts_dead_letters_and_ids(
        page, webserver, orders_materialized):
    record = orders_materialized
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert meta["conflux/correlation_ids"] >= 1
    # the UI's own link to an event of the asset (as the graph's "Latest event" uses)
    page.goto(f"/assets/orders?view=events&time={int(record.timestamp * 1000)}")

    ranges = metadata_value(page, "conflux/source_ranges")
    for r in meta["conflux/source_ranges"]:
        assert f'"start": {r["start"]}' in ranges and f'"end": {r["end"]}' in ranges, ranges
        assert '"topic": "tpch.orders"' in ranges
    for label in ("conflux/rows_in", "conflux/rows_valid", "conflux/dead_lettered",
                  "conflux/correlation_ids"):
        assert str(meta[label]) in metadata_value(page, label).split(), label
    for reason in meta["conflux/dead_letter_reasons"]:
        assert reason in metadata_value(page, "conflux/dead_letter_reasons")
    examples = metadata_value(page, "conflux/correlation_id_examples")
    assert all(cid.strip() in examples for cid in meta["conflux/correlation_id_examples"].split(","))
