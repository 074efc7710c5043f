"""`conflux trace` on the live test platform: an order written through the outbox is followed
from ops.outbox to its Kafka offset, the inline micro-batch that applied it, its lake partition
and the downstream batch dataset; a bad record is found in the dead-letter topic with its reason;
an unknown id says so and exits 1."""

import json
import time
import uuid

import psycopg
import pytest

from conflux.cli import main
from pipelines.demo.producer import event_headers, json_rows, load_ops
from pipelines.demo.tpch import TpchGenerator


def trace_json(capsys, cid: str) -> tuple[int, dict]:
    code = main(["trace", cid, "--json"])
    return code, json.loads(capsys.readouterr().out)


def wait_for_trace(capsys, cid: str, ready, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, found = trace_json(capsys, cid)
        if code == 0 and ready(found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"trace of {cid} not complete after {timeout:g}s: {found}")
        time.sleep(2)


def test_an_order_is_traced_from_the_outbox_to_the_lake_and_downstream(stack, tmp_path, capsys):
    cid = f"trace-{uuid.uuid4()}"
    orders = TpchGenerator(0.001, seed=9).orders()
    with psycopg.connect(stack.settings.postgres_url) as conn:
        exists = conn.execute("select to_regclass('ops.orders')").fetchone()[0]
    if exists is None:  # the order service's table, as the demo producer creates it
        load_ops(stack.settings.postgres_url, {"orders": orders.head(5)})
    row = next(json_rows(orders.head(1).assign(o_orderkey=95_000_001)))
    changes = tmp_path / "order.jsonl"
    changes.write_text(json.dumps({"table": "orders", "row": row, "correlation_id": cid}) + "\n")
    assert main(["ops", "apply", str(changes)]) == 0
    assert main(["ops", "relay", "--once"]) == 0
    capsys.readouterr()

    found = wait_for_trace(capsys, cid, lambda t: t["arrivals"] and t["applications"])
    [outbox] = found["outbox"]
    assert outbox["topic"] == "tpch.orders" and outbox["sent_at"]
    [arrival] = found["arrivals"]
    assert (arrival["dataset"], arrival["topic"]) == ("orders", "tpch.orders")
    assert arrival["partition"] == row["o_orderdate"] and arrival["key"] == {"o_orderkey": 95_000_001}
    assert arrival["headers"]["conflux.event_id"] == outbox["event_id"]
    # the sensor applies it inline, or hands it to an ingest run when a backlog is wide
    assert all(a["applied_by"] == "sensor:orders__kafka" or a["run_id"]
               for a in found["applications"])
    assert all(a["offset"] == arrival["offset"] for a in found["applications"])
    downstream = {d["dataset"]: d for d in found["downstream"]}
    assert downstream["revenue_by_nation"]["partition"] == row["o_orderdate"]
    assert found["dead_letters"] == []

    assert main(["trace", cid]) == 0
    text = capsys.readouterr().out
    assert f"arrived: tpch.orders[{arrival['kafka_partition']}]@{arrival['offset']}" in text
    assert "    applied by " in text
    assert "downstream: revenue_by_nation" in text and "looked up in" in text


def test_a_dead_letter_is_traced_with_its_reason_and_an_unknown_id_is_not_found(stack, kafka,
                                                                               capsys):
    cid = f"trace-bad-{uuid.uuid4()}"
    bad = {"o_orderkey": "not a number"}
    kafka.send_json("tpch.orders", [(b"bad", bad, event_headers(cid))])
    found = wait_for_trace(capsys, cid, lambda t: t["dead_letters"])
    [letter] = found["dead_letters"]
    assert letter["dlq_topic"] == "tpch.orders.dlq" and letter["reason"]
    assert letter["source"].startswith("tpch.orders[")
    assert found["arrivals"] == []

    code, missing = trace_json(capsys, f"nobody-{uuid.uuid4()}")
    assert code == 1 and not missing["arrivals"] and not missing["dead_letters"]
