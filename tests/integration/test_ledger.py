"""Event sourcing on the real broker, Postgres and Dagster instance of the test stack.

A copy of ``customer_ledger`` on a topic of its own receives ledger events in rounds — shuffled
across partitions, late, repeated (identical copies, and copies of an ``event_id`` with other
content and an *older* timestamp), with invalid records among them — through both ingest paths
(inline delta appends and run upserts), replays and compactions. ``customer_balance`` (a copy on
it) is materialized by Dagster after each round, folding only what is new, while opening
balances change and a customer arrives. Then the projection is rebuilt from offset zero and must
be identical; every balance is explained by its events; tampering with the projection or with
the ledger is caught.
"""

import dataclasses
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pipelines.demo.producer import event_headers, json_rows
from pipelines.demo.tpch import TpchGenerator, ledger as ledger_events
from conflux.cli.ledger import run_explain, run_rebuild
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry
from conflux.ledger import audit as ledger_audit
from conflux.batch.asset import build_batch_asset
from pipelines.catalog import CUSTOMER, CUSTOMER_BALANCE, CUSTOMER_LEDGER
from conflux.dagster.compile import asset_spec
from conflux.core.declarations import validate_catalog
from conflux.event.ingest import apply_records, resolver_for
from conflux.ledger.fold import full_fold
from conflux.ledger.projection import ledger_projection
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource

OLD_TS = 1_000_000  # 1970: a later copy claiming to be older than the stored one
COLUMNS = CUSTOMER_BALANCE.compute.projection.columns  # the demo's LedgerColumns


@pytest.fixture
def platform(stack, kafka, topic, lake, instance):
    """The ledger and projection copies, their resources, and helpers to feed and fold them."""
    suffix = topic[-12:]
    ledger = dataclasses.replace(CUSTOMER_LEDGER, name=f"ledger_{suffix}", topics=(topic,),
                                 dlq_topic=f"{topic}.dlq")
    lineage = {column: tuple(s.replace("customer_ledger.", f"{ledger.name}.") for s in sources)
               for column, sources in CUSTOMER_BALANCE.lineage.items()}
    balance = dataclasses.replace(
        CUSTOMER_BALANCE, name=f"balance_{suffix}", upstream=(ledger.name, CUSTOMER.name),
        compute=ledger_projection(ledger=ledger.name, opening=CUSTOMER.name, columns=COLUMNS),
        lineage=lineage)
    kafka.ensure_topic(ledger.dlq_topic, 1)
    reg = SchemaRegistry(stack.settings.postgres_url)
    reg.ensure_schema()
    for ds in (ledger, balance):
        reg.register(ds.subject, contract_schema(ds.contract))
    catalog = validate_catalog([ledger, CUSTOMER, balance])
    asset = build_batch_asset(balance, asset_spec(balance, catalog), catalog)
    registry = SchemaRegistryResource(url=stack.settings.postgres_url)
    resources = {"kafka": kafka, "lake": lake, "registry": registry,
                 "postgres": PostgresResource(url=stack.settings.postgres_url)}
    resolver = resolver_for(ledger, registry)
    positions = {}

    def ingest(*, start_at_zero: bool = False) -> int:
        """Apply every record not applied yet (or all from offset zero: a replay)."""
        ends = kafka.end_offsets(topic)
        ranges = [(topic, p, 0 if start_at_zero else positions.get(p, 0), end)
                  for p, end in sorted(ends.items())]
        report = apply_records(ledger, kafka.read_ranges(ranges), kafka=kafka, lake=lake,
                               resolver=resolver, origin="test_ledger",
                               sources=[{"topic": t, "partition": p, "start": s, "end": e}
                                        for t, p, s, e in ranges])
        positions.update(ends)
        return report.rows_valid

    def materialize() -> dict:
        result = dg.materialize([asset], instance=instance, resources=resources)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey(balance.name))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    return dataclasses.make_dataclass("Platform", ["ledger", "balance", "resolver", "ingest",
                                                   "materialize"])(
        ledger, balance, resolver, ingest, materialize)


def publish(kafka, topic, events: pd.DataFrame, *, timestamp_ms=None, rng=None) -> int:
    """Ledger events as JSON with the platform's headers, spread over the 3 partitions (or at
    random ones), optionally with an explicit record timestamp."""
    producer = kafka.producer()
    for i, row in enumerate(json_rows(events)):
        partition = int(rng.integers(0, 3)) if rng is not None else i % 3
        producer.send(topic, key=row["event_id"].encode(), value=json.dumps(row).encode(),
                      headers=event_headers(), partition=partition, timestamp_ms=timestamp_ms)
    producer.flush(timeout=60)  # fails instead of hanging when the broker does not ack
    producer.close(timeout=5)
    return len(events)


def publish_raw(kafka, topic, values: list[bytes]) -> None:
    kafka.send_raw(topic, [(None, v, event_headers()) for v in values])


def stored_ledger(lake, ds) -> pd.DataFrame:
    return lake.read(ds.name).sort_values("event_id").reset_index(drop=True)


def normal(df: pd.DataFrame, ds) -> pd.DataFrame:
    """A projection's contract columns, sorted, ``last_event_id`` as plain objects."""
    out = df[list(ds.fields)].sort_values("c_custkey").reset_index(drop=True)
    return out.assign(last_event_id=out.last_event_id.astype(object).where(
        out.last_event_id.notna(), None))


def stored_projection(lake, ds) -> pd.DataFrame:
    return normal(lake.read(ds.name), ds)


def test_incremental_projection_equals_the_rebuild_from_offset_zero(platform, kafka, topic,
                                                                    lake, instance, capsys):
    p = platform
    rng = np.random.default_rng(17)
    customers = TpchGenerator(0.0002, seed=3).customer()[["c_custkey", "c_acctbal"]]
    newcomer = int(customers["c_custkey"].max()) + 1
    with_newcomer = pd.concat([customers, pd.DataFrame({"c_custkey": [newcomer],
                                                        "c_acctbal": [12.34]})])
    events = ledger_events(with_newcomer, per_customer=12, seed=5)
    events = events.sample(frac=1.0, random_state=1).reset_index(drop=True)  # out of order
    events.loc[:2, "c_custkey"] = newcomer  # events for a customer not in ops.customer yet
    first, second, third = events.iloc[:150], events.iloc[150:260], events.iloc[260:]
    assert len(third) > 50
    lake.write("customer", customers)

    # round 1: shuffled events over random partitions, identical copies of some
    publish(kafka, topic, first, rng=rng)
    publish(kafka, topic, first.sample(20, random_state=2), rng=rng)
    assert p.ingest() == 170
    meta = p.materialize()
    assert meta["conflux/fold"] == "from scratch" and meta["conflux/events_folded"] == 150

    # round 2: new events, copies of round 1 with other content and an older timestamp, bad
    # records; opening balances change and the newcomer arrives in ops.customer
    conflicting = first.sample(10, random_state=3).assign(amount=lambda d: d.amount + 1000.0)
    publish(kafka, topic, second, rng=rng)
    publish(kafka, topic, conflicting, timestamp_ms=OLD_TS, rng=rng)
    publish_raw(kafka, topic, [b"{not json", b'{"event_id": "x"}'])
    assert p.ingest() == len(second) + 10
    changed = with_newcomer.assign(c_acctbal=with_newcomer.c_acctbal.where(
        with_newcomer.c_custkey % 3 != 0, with_newcomer.c_acctbal + 250.0))
    lake.write("customer", changed)
    meta = p.materialize()
    assert meta["conflux/fold"] == "incremental" and meta["conflux/events_folded"] == len(second)
    assert meta["conflux/customers_rebased"] == int((customers.c_custkey % 3 == 0).sum())
    assert meta["conflux/customers_new"] == 1

    # round 3: late events (older than everything), then a replay of the whole topic through
    # the same path and a compaction (optimize) of the ledger's table: nothing may change
    late = third.assign(occurred_at=pd.Timestamp("1990-01-01"))
    publish(kafka, topic, late, rng=rng)
    p.ingest()
    p.ingest(start_at_zero=True)
    lake.optimize(p.ledger.name)
    meta = p.materialize()
    assert meta["conflux/events_folded"] == len(third)
    meta = p.materialize()  # nothing new: nothing folded, nothing written
    assert meta["conflux/events_folded"] == 0 and meta["conflux/checkpoint"] == "unchanged"
    assert meta["conflux/events_total"] == len(events)

    # the ledger is append-only: every event once, the first copy of each, never replaced
    held = stored_ledger(lake, p.ledger)
    assert held.event_id.is_unique and len(held) == len(events)
    by_id = held.set_index("event_id")
    original = first.set_index("event_id")
    for event_id in conflicting.event_id:
        assert by_id.loc[event_id, "amount"] == original.loc[event_id, "amount"]
        assert by_id.loc[event_id, "__ts"] != OLD_TS

    # the incrementally maintained projection == the full fold of the ledger == the rebuild
    incremental = stored_projection(lake, p.balance)
    full = full_fold(held, changed, COLUMNS)
    pd.testing.assert_frame_equal(incremental, normal(full, p.balance), check_exact=True)
    rebuilt = ledger_audit.rebuild(p.ledger, opening="customer", columns=COLUMNS, kafka=kafka,
                                   lake=lake, resolver=p.resolver)
    assert rebuilt.records_read == 170 + len(second) + 10 + 2 + len(third)
    assert sum(rebuilt.invalid.values()) == 2 and rebuilt.repeated == 30
    assert sorted(rebuilt.conflicts) == sorted(conflicting.event_id)
    pd.testing.assert_frame_equal(normal(rebuilt.projection, p.balance), incremental,
                                  check_exact=True)
    assert run_rebuild(ledger=p.ledger, projection=p.balance, opening="customer", kafka=kafka,
                       lake=lake, resolver=p.resolver, check=True) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL" in out and "30 repeated event_id(s) ignored" in out
    assert "2 invalid record(s) skipped" in out
    assert "10 repeated event_id(s) with conflicting" in out

    # every balance is traced to its events: the newcomer's (re-based, events before it came)
    for key in (newcomer, int(conflicting.c_custkey.iloc[0])):
        assert run_explain(key, ledger=p.ledger.name, projection=p.balance.name,
                           opening="customer", columns=COLUMNS, lake=lake, as_json=True) == 0
        traced = json.loads(capsys.readouterr().out)
        mine = held[held.c_custkey == key]
        assert traced["adds_up"] and traced["problems"] == [] and traced["pending"] == []
        assert sorted(e["event_id"] for e in traced["events"]) == sorted(mine.event_id)
        row = incremental.set_index("c_custkey").loc[key]
        assert traced["balance"] == row.balance and traced["events_applied"] == len(mine)
        assert traced["opening_balance"] == changed.set_index("c_custkey").loc[key, "c_acctbal"]
        assert all(e["topic"] == topic and e["correlation_id"] for e in traced["events"])
        assert {(e["partition"], e["offset"]) for e in traced["events"]} == set(
            zip(mine.__partition, mine.__offset))
        signed = sum(e["signed_amount"] for e in traced["events"])
        assert traced["opening_balance"] + signed == pytest.approx(row.balance, abs=1e-6)
    assert run_explain(newcomer, ledger=p.ledger.name, projection=p.balance.name,
                       opening="customer", columns=COLUMNS, lake=lake) == 0
    text = capsys.readouterr().out
    assert "OK" in text and "== stored balance" in text and topic in text


def test_a_projection_that_drifts_from_the_log_is_caught_and_rebuilt(platform, kafka, topic,
                                                                      lake, instance, capsys):
    p = platform
    customers = TpchGenerator(0.0002, seed=4).customer()[["c_custkey", "c_acctbal"]]
    events = ledger_events(customers, per_customer=3, seed=6)
    lake.write("customer", customers)
    publish(kafka, topic, events.iloc[:-5])
    p.ingest()
    p.materialize()
    check = dict(ledger=p.ledger, projection=p.balance, opening="customer", kafka=kafka,
                 lake=lake, resolver=p.resolver)
    assert run_rebuild(**check, check=True) == 0
    capsys.readouterr()

    # events in the log not folded yet (not ingested): different, and said why
    publish(kafka, topic, events.iloc[-5:])
    assert run_rebuild(**check, check=True) == 1
    assert "5 event(s) in the log not folded" in capsys.readouterr().out
    p.ingest()
    p.materialize()
    assert run_rebuild(**check, check=True) == 0
    capsys.readouterr()

    # a stored balance altered behind the platform's back: listed, exit 1; explain says so
    victim = int(events.c_custkey.iloc[0])
    content, _, checkpoint = lake.read_checkpointed(p.balance.name)
    tampered = content.to_pandas()
    tampered.loc[tampered.c_custkey == victim, "balance"] += 100.0
    lake.rewrite_checkpointed(p.balance.name, lambda current, ck: (tampered, ck))
    assert run_rebuild(**check, check=True) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and f"customer {victim}: balance stored" in out
    assert run_explain(victim, ledger=p.ledger.name, projection=p.balance.name,
                       opening="customer", columns=COLUMNS, lake=lake) == 1
    assert "DOES NOT ADD UP" in capsys.readouterr().out

    # replaced by the rebuild from offset zero (recorded in Dagster), identical again
    assert run_rebuild(**check, check=False, instance=instance) == 0
    assert "replaced" in capsys.readouterr().out
    event = instance.get_latest_materialization_event(dg.AssetKey(p.balance.name))
    assert event.asset_materialization.metadata["conflux/fold"].value == "rebuilt from offset zero"
    assert run_rebuild(**check, check=True) == 0
    assert run_explain(victim, ledger=p.ledger.name, projection=p.balance.name,
                       opening="customer", columns=COLUMNS, lake=lake) == 0
    capsys.readouterr()

    # a folded event changed in place in the ledger: the next fold refuses (LEDGER_INTEGRITY)
    def rewrite(table):
        df = table.to_pandas()
        df.loc[df.event_id == events.event_id.iloc[0], "amount"] += 1.0
        return df

    lake.rewrite(p.ledger.name, None, rewrite)
    with pytest.raises(Exception) as exc:
        p.materialize()
    assert "LEDGER_INTEGRITY" in str(exc.value) and events.event_id.iloc[0] in str(exc.value)
