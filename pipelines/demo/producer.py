"""The demo producer: behaves like the operational systems of the demo business.

It loads the TPC-H-shaped tables into the ``ops`` schema (orders and lineitem included, like the
order service's own database) and publishes the same orders and lineitems, plus customer ledger
events, to Kafka — JSON values, ``correlation_id`` / ``traceparent`` / ``contract`` headers;
or, with ``confluent``, as a Confluent client would: confluent-kafka's ``JSONSerializer``
(Confluent wire format, schema id from the Schema Registry API) instead of the ``contract``
header (``pipelines/demo/confluent.py``).
On request it adds what real streams bring: duplicates, shuffled (late, out-of-order) events and
invalid records, and says how many of each it sent.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd
import psycopg

from conflux.event.publish import (Outgoing, SendReport, bulk_headers, event_headers,  # noqa: F401
                                    json_rows, json_values, publish_all, records_for)
from pipelines.demo.tpch import TpchGenerator, ledger
from conflux.core.settings import Settings

# ops table -> primary key
OPS_KEYS = {
    "region": ["r_regionkey"], "nation": ["n_nationkey"], "supplier": ["s_suppkey"],
    "customer": ["c_custkey"], "part": ["p_partkey"], "partsupp": ["ps_partkey", "ps_suppkey"],
    "orders": ["o_orderkey"], "lineitem": ["l_orderkey", "l_linenumber"],
}
# topic -> (dataset / subject, key fields)
STREAMS = {
    "tpch.orders": ("orders", ["o_orderkey"]),
    "tpch.lineitem": ("lineitem", ["l_orderkey", "l_linenumber"]),
    "ledger.customer": ("customer_ledger", ["event_id"]),
}
INVALID_KINDS = ("invalid_json", "wrong_type", "missing_field", "undecodable", "unknown_version")


def load_ops(pg_url: str, tables: dict[str, pd.DataFrame],
             empty: tuple[str, ...] = ()) -> dict[str, int]:
    """Replace ops tables in one transaction; returns rows per table. Tables named in ``empty``
    are created with their columns' types (taken from the data) but no rows. Each gets an
    ``updated_at`` column maintained by a trigger."""
    from conflux.batch.ops_load import add_updated_at
    from conflux.io.postgres import replace_table

    written = {}
    with psycopg.connect(pg_url) as conn:
        for name, df in tables.items():
            if name in empty:
                replace_table(conn, "ops", name, df.head(1), OPS_KEYS[name])
                conn.execute(f'delete from ops."{name}"')
                written[name] = 0
            else:
                written[name] = replace_table(conn, "ops", name, df, OPS_KEYS[name])
            add_updated_at(conn, name)  # like an operational table: incremental loads read it
    return written


def build_stream(topic: str, df: pd.DataFrame, contract: str | None) -> list[Outgoing]:
    """Good records for ``df`` (keys from the stream's key fields)."""
    return records_for(topic, df, STREAMS[topic][1], contract)


def corrupt(good: Outgoing, kind: str, rng: random.Random) -> Outgoing:
    """An invalid variant of a good record (one of ``INVALID_KINDS``)."""
    headers = [h for h in good.headers if h[0] != "contract"]
    value = good.value
    if kind == "invalid_json":
        value = value[: max(1, len(value) // 2)]
    elif kind == "wrong_type":
        doc = json.loads(value)
        field_name = rng.choice(sorted(doc))
        doc[field_name] = {"not": "a scalar"}
        value = json.dumps(doc).encode()
    elif kind == "missing_field":
        doc = json.loads(value)
        doc.pop(STREAMS[good.topic][1][0])  # a key field: required by every contract
        value = json.dumps(doc).encode()
    elif kind == "undecodable":
        value = b"\xff\xfe" + value[2:]
    elif kind == "unknown_version":
        subject = STREAMS[good.topic][0]
        headers.append(("contract", f"{subject}@999".encode()))
    return Outgoing(good.topic, good.key, value, headers, kind=f"invalid:{kind}")


def mix(streams: list[Outgoing], *, duplicates: float, invalid: float, shuffle: bool,
        seed: int) -> list[Outgoing]:
    """Add duplicates and invalid records, optionally shuffle (late and out-of-order events)."""
    rng = random.Random(seed)
    out = list(streams)
    if duplicates > 0 and streams:
        dup = rng.sample(streams, k=int(len(streams) * duplicates))
        out += [Outgoing(o.topic, o.key, o.value, o.headers, kind="duplicate") for o in dup]
    if invalid > 0 and streams:
        victims = rng.sample(streams, k=int(len(streams) * invalid))
        out += [corrupt(o, INVALID_KINDS[i % len(INVALID_KINDS)], rng)
                for i, o in enumerate(victims)]
    if shuffle:
        rng.shuffle(out)
    elif len(out) > len(streams):
        # extras are interleaved at random positions after their originals' region
        extra = out[len(streams):]
        out = out[: len(streams)]
        for rec in extra:
            out.insert(rng.randint(len(out) // 2, len(out)), rec)
    return out


def tpch_tables(scale: float, seed: int) -> dict[str, pd.DataFrame]:
    gen = TpchGenerator(scale, seed)
    orders = gen.orders()
    return {"region": gen.region(), "nation": gen.nation(), "supplier": gen.supplier(),
            "customer": gen.customer(), "part": gen.part(), "partsupp": gen.partsupp(),
            "orders": orders, "lineitem": gen.lineitem(orders)}


def produce_tpch(scale: float, rate: float = 0.0, *, duplicates: float = 0.0, shuffle: bool = False,
                 invalid: float = 0.0, seed: int = 42, ledger_per_customer: float = 3.0,
                 via_outbox: bool = False, confluent: bool = False) -> SendReport:
    """Load ops tables and publish orders, lineitems and ledger events; prints the counts.

    With ``confluent``, events are published with confluent-kafka's ``Producer`` and
    ``JSONSerializer`` (each contract's JSON schema under ``<topic>-value``, through the Schema
    Registry API at ``CONFLUX_SCHEMA_REGISTRY_URL``); kafka-python without framing otherwise.

    With ``via_outbox``, orders and lineitems are written like the order service would with a
    transactional outbox: rows and outbox events in one transaction, published by the relay
    (``conflux ops relay`` or ``conflux dev``); ledger events are still published directly."""
    for name, value in (("--duplicates", duplicates), ("--invalid", invalid)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")
    from conflux.stack.platform import register_contracts
    from conflux.io.kafka import KafkaResource

    settings = Settings.from_env()
    refs = register_contracts(settings, report=lambda line: None)
    tables = tpch_tables(scale, seed)
    url = os.environ.get("CONFLUX_POSTGRES_URL", settings.postgres_url)
    outboxed = ("orders", "lineitem") if via_outbox else ()
    written = load_ops(url, tables, empty=outboxed)
    if via_outbox:
        written.update(_through_outbox(url, {k: tables[k] for k in outboxed}))
    print("ops tables: " + ", ".join(f"{k}={v:,}" for k, v in written.items()))
    events = ledger(tables["customer"], ledger_per_customer, seed)
    streams = build_stream("ledger.customer", events, refs["customer_ledger"])
    if not via_outbox:
        streams = (build_stream("tpch.orders", tables["orders"], refs["orders"])
                   + build_stream("tpch.lineitem", tables["lineitem"], refs["lineitem"]) + streams)
    records = mix(streams, duplicates=duplicates, invalid=invalid, shuffle=shuffle, seed=seed)
    kafka = KafkaResource.from_env(settings, bootstrap_servers=os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap))
    if confluent:
        from pipelines.demo import confluent as cf

        records = cf.frame(records, stream_schemas(), cf.registry_client())
        producer = cf.ConfluentProducer(cf.producer_config(kafka))
    else:
        producer = kafka.producer(linger_ms=20, batch_size=256 * 1024)
    try:
        report = publish_all(producer, records, rate=rate)
    finally:
        producer.close(timeout=10)
    for line in report.lines():
        print(line)
    return report


def stream_schemas() -> dict[str, dict]:
    """Each stream topic's contract JSON schema (what the registry holds for its dataset)."""
    from conflux.contracts.lineage import contract_schema
    from pipelines.catalog import CATALOG

    contracts = {ds.name: ds.contract for ds in CATALOG.values()}
    return {topic: contract_schema(contracts[name]) for topic, (name, _) in STREAMS.items()}


def _through_outbox(url: str, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Rows and their outbox events in one transaction (what an outbox-using service does)."""
    from pipelines.catalog import CATALOG
    from conflux.outbox.relay import Change, apply_changes, targets

    changes = [Change(name, row) for name, df in tables.items() for row in json_rows(df)]
    with psycopg.connect(url) as conn:
        applied = apply_changes(conn, changes, targets(CATALOG))
    print(f"ops.outbox: {applied.events:,} order and lineitem events queued in the same "
          f"transaction as their rows; the outbox relay publishes them")
    return applied.rows


def live_orders(day: pd.Timestamp, n: int, first_key: int, seed: int, late: float = 0.02,
                scale: float = 0.001) -> pd.DataFrame:
    """Orders of one business day (a few late ones from the previous month), fresh keys."""
    df = TpchGenerator(scale, seed).orders().head(n).copy()
    rng = np.random.default_rng(seed)
    late_days = np.where(rng.random(len(df)) < late, rng.integers(1, 31, len(df)), 0)
    df["o_orderdate"] = [(day - pd.Timedelta(days=int(d))).date() for d in late_days]
    df["o_orderkey"] = np.arange(first_key, first_key + len(df))
    return df


DEMO_START = "1995-01-01"  # the first business day of `conflux dev`'s stream


def late_to_one_day(orders: pd.DataFrame, first: pd.Timestamp, seed: int,
                    late: float = 0.02) -> pd.DataFrame:
    """``orders`` of one business day with a ``late`` share (at least one order) moved to one
    earlier day since ``first`` — a store that sends a day's orders late; the first day has no
    earlier one and stays as it is."""
    day = pd.Timestamp(orders["o_orderdate"].iloc[0])
    if day <= first:
        return orders
    rng = np.random.default_rng(seed)
    earlier = (first + pd.Timedelta(days=int(rng.integers(0, (day - first).days)))).date()
    moved = rng.choice(len(orders), size=max(1, round(late * len(orders))), replace=False)
    out = orders.copy()
    out.iloc[moved, out.columns.get_loc("o_orderdate")] = earlier
    return out


def run_demo_producer(settings: Settings, *, rate: float, should_stop: Callable[[], bool],
                      day_seconds: float = 30.0) -> None:
    """A gentle endless stream for ``conflux dev``: small ops tables, then a business day of
    orders (with their lineitems and some ledger events) every ``day_seconds``, at ``rate``
    orders/s; from the second day on, 2 % of them are late, all for one earlier day of the
    demo (:func:`late_to_one_day`), so that automation visibly refreshes exactly that old
    partition of the joins."""
    from conflux.stack.platform import register_contracts
    from conflux.io.kafka import KafkaResource

    refs = register_contracts(settings, report=lambda line: None)
    tables = tpch_tables(0.001, seed=7)
    load_ops(settings.postgres_url, {k: tables[k] for k in
                                     ("region", "nation", "customer", "supplier", "part", "partsupp")})
    producer = KafkaResource.from_env(settings).producer()
    print(f"demo producer: orders, lineitems and ledger events at {rate:g} orders/s, one "
          f"business day every {day_seconds:g}s (Ctrl-C to stop)", file=sys.stderr)
    first = day = pd.Timestamp(DEMO_START)
    key = 50_000_000
    per_day = max(1, int(rate * day_seconds))
    gen = TpchGenerator(0.001, seed=7)
    try:
        while not should_stop():
            orders = late_to_one_day(live_orders(day, per_day, key, seed=key, late=0.0),
                                     first, seed=key)
            lines = gen.lineitem(orders)
            events = ledger(tables["customer"].sample(n=min(20, len(tables["customer"])),
                                                      random_state=key % 1000), 1.0, seed=key)
            records = (build_stream("tpch.orders", orders, refs["orders"])
                       + build_stream("tpch.lineitem", lines, refs["lineitem"])
                       + build_stream("ledger.customer", events, refs["customer_ledger"]))
            records.sort(key=lambda r: random.random())
            publish_all(producer, records, rate=rate * len(records) / max(len(orders), 1),
                        should_stop=should_stop, progress=False)
            key += per_day
            day += pd.Timedelta(days=1)
    finally:
        producer.close(timeout=5)
