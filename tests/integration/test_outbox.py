"""Dual-write through the transactional outbox on the real Postgres and Kafka: rows and events
commit together or not at all; the relay publishes with a dedupe id; a relay that dies between
publishing and marking re-publishes, and the duplicates change nothing downstream."""

import dataclasses
import uuid

import pandas as pd
import psycopg
import pytest

from conflux.cli import main
from pipelines.demo.producer import json_rows
from pipelines.demo.tpch import TpchGenerator
from pipelines import contracts as tpch
from pipelines.catalog import ORDERS
from conflux.event.decode import ContractResolver
from conflux.event.ingest import apply_records
from conflux.outbox.relay import (EVENT_ID_HEADER, Change, OutboxError, Target, apply_changes,
                              parse_changes, pending, relay_all, relay_once)
from conflux.io.postgres import replace_table


class Crash(Exception):
    pass


@pytest.fixture
def setup(stack, kafka, topic):
    """A private ops table feeding this test's topic; the outbox drained of other tests' rows."""
    tag = uuid.uuid4().hex[:8]
    table = f"orders_ob_{tag}"
    seed = TpchGenerator(0.001, seed=3).orders().head(1)
    conn = psycopg.connect(stack.settings.postgres_url)
    with conn.transaction():
        replace_table(conn, "ops", table, seed, ["o_orderkey"])
    relay_all(conn, kafka)  # the outbox is shared: start from nothing pending
    known = {table: Target(table, tpch.Order, ("o_orderkey",), topic)}
    yield conn, known, table
    conn.close()


def changes_for(table, n, seed=4):
    df = TpchGenerator(0.001, seed=seed).orders().head(n)
    return [Change(table, row, f"corr-{i}") for i, row in enumerate(json_rows(df))]


def count(conn, table):
    return conn.execute(f'select count(*) from ops."{table}"').fetchone()[0]


def test_rows_and_events_commit_together_or_not_at_all(setup):
    conn, known, table = setup
    with pytest.raises(Crash):
        apply_changes(conn, changes_for(table, 5), known,
                      before_commit=lambda: (_ for _ in ()).throw(Crash()))
    assert count(conn, table) == 1 and pending(conn) == 0
    changes = changes_for(table, 5)
    applied = apply_changes(conn, changes, known)
    assert applied.rows == {table: 5} and applied.events == 5
    keys = {r[0] for r in conn.execute(f'select o_orderkey from ops."{table}"').fetchall()}
    assert {c.row["o_orderkey"] for c in changes} <= keys and len(keys) <= 6  # upserted by key
    assert pending(conn) == 5


def test_the_relay_publishes_with_a_dedupe_id_and_a_crash_before_marking_only_duplicates(
        setup, kafka, topic, tmp_path):
    conn, known, table = setup
    changes = changes_for(table, 20)
    apply_changes(conn, changes, known)
    with pytest.raises(Crash):  # published, then the relay dies before marking them sent
        relay_once(conn, kafka, before_mark=lambda: (_ for _ in ()).throw(Crash()))
    assert pending(conn) == 20
    assert relay_all(conn, kafka).published == 20
    assert pending(conn) == 0

    ends = kafka.end_offsets(topic)
    records = list(kafka.read_ranges([(topic, p, 0, e) for p, e in ends.items()]))
    assert len(records) == 40  # every event twice: at-least-once
    ids = [r.header(EVENT_ID_HEADER) for r in records]
    assert all(ids) and len(set(ids)) == 20
    assert {r.header("correlation_id").decode() for r in records} == {c.correlation_id for c in changes}
    assert {r.key.decode() for r in records} == {str(c.row["o_orderkey"]) for c in changes}

    # downstream, the duplicates are harmless: the dataset equals one delivery of each event
    from conflux.io.lake import LakeResource

    ds = dataclasses.replace(ORDERS, name=f"ob_{table}", topics=(topic,))
    resolver = ContractResolver(ds.subject, None, [])
    once, twice = (LakeResource(path=str(tmp_path / n)) for n in ("once", "twice"))
    first = {}
    for r in records:
        first.setdefault(r.header(EVENT_ID_HEADER), r)
    apply_records(ds, list(first.values()), kafka=kafka, lake=once, resolver=resolver,
                  origin="t", sources=[])
    apply_records(ds, records, kafka=kafka, lake=twice, resolver=resolver, origin="t", sources=[])

    def rows(lake):
        frames = [lake.read(ds.name, p) for p in lake.partitions(ds.name)]
        return pd.concat(frames)[list(ds.fields)].sort_values("o_orderkey").reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(twice), rows(once))
    assert len(rows(once)) == 20


def test_bad_changes_are_refused_as_a_whole_with_every_reason(setup, tmp_path, capsys):
    conn, known, table = setup
    good = '{"table": "%s", "row": %s}' % (table, __import__("json").dumps(changes_for(table, 1)[0].row))
    with pytest.raises(OutboxError) as err:
        parse_changes([good, "{oops", '{"row": {}}', '{"table": "%s", "row": {"o_orderkey": -1}}' % table],
                      known)
    text = str(err.value)
    assert "line 2: not JSON" in text and "line 3: no 'table' field" in text
    assert "line 4: row does not match the contract" in text and "line 1" not in text
    path = tmp_path / "bad.jsonl"
    path.write_text('{"table": "nope", "row": {}}\n')
    assert main(["ops", "apply", str(path)]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err
    assert main(["ops", "status"]) == 0
    assert "waiting for the relay" in capsys.readouterr().out
