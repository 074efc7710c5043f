"""The demo producer: behaves like the operational systems of the demo business.

It loads the dimension tables into the ``ops`` schema, stores orders there too, and publishes
the same orders as events with ``correlation_id`` and ``traceparent`` headers.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import psycopg

from conflux.demo.tpch import TpchGenerator
from conflux.settings import Settings

# ops table -> primary key
OPS_KEYS = {
    "region": ["r_regionkey"], "nation": ["n_nationkey"], "supplier": ["s_suppkey"],
    "customer": ["c_custkey"], "part": ["p_partkey"], "partsupp": ["ps_partkey", "ps_suppkey"],
    "orders": ["o_orderkey"], "lineitem": ["l_orderkey", "l_linenumber"],
}


def event_headers(correlation_id: str | None = None,
                  contract: str | None = None) -> list[tuple[str, bytes]]:
    """Headers every Conflux producer sets: a correlation id (minted when absent), a W3C
    traceparent and, when known, the contract's ``subject@version``."""
    trace = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    headers = [("correlation_id", (correlation_id or str(uuid.uuid4())).encode()),
               ("traceparent", trace.encode())]
    if contract:
        headers.append(("contract", contract.encode()))
    return headers


def json_rows(df: pd.DataFrame) -> Iterator[dict]:
    """Rows as JSON-ready dicts (numbers as numbers, dates as ISO strings)."""
    for row in df.to_dict(orient="records"):
        yield {k: (v.isoformat() if hasattr(v, "isoformat") else
                   v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def load_ops(pg_url: str, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Replace ops tables in one transaction; returns rows per table."""
    from resources.postgres import replace_table

    written = {}
    with psycopg.connect(pg_url) as conn:
        for name, df in tables.items():
            written[name] = replace_table(conn, "ops", name, df, OPS_KEYS[name])
    return written


def _progress(done: int, total: int, started: float, what: str) -> None:
    rate = done / max(time.monotonic() - started, 1e-6)
    print(f"\r  {what}: {done:,}/{total:,} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)


def publish(producer, topic: str, df: pd.DataFrame, key_fields: list[str], *, rate: float = 0.0,
            contract: str | None = None, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Publish ``df`` as JSON events keyed by ``key_fields``, paced at ``rate``/s when > 0."""
    started = time.monotonic()
    total = len(df)
    sent = 0
    for row in json_rows(df):
        key = "|".join(str(row[k]) for k in key_fields).encode()
        producer.send(topic, key=key, value=json.dumps(row).encode(),
                      headers=event_headers(contract=contract))
        sent += 1
        if rate > 0:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if sent % 1000 == 0 or sent == total:
            _progress(sent, total, started, topic)
        if should_stop():
            break
    producer.flush()
    print(file=sys.stderr)
    return sent


def produce_tpch(scale: float, rate: float = 0.0, seed: int = 42) -> dict[str, int]:
    """Load ops tables and publish orders and lineitems for a scale factor; prints and returns
    counts."""
    from conflux.platform import register_contracts
    from resources.kafka import KafkaResource

    settings = Settings.from_env()
    refs = register_contracts(settings, report=lambda line: None)
    gen = TpchGenerator(scale, seed)
    orders = gen.orders()
    tables = {"region": gen.region(), "nation": gen.nation(), "supplier": gen.supplier(),
              "customer": gen.customer(), "part": gen.part(), "partsupp": gen.partsupp(),
              "orders": orders, "lineitem": gen.lineitem(orders)}
    url = os.environ.get("CONFLUX_POSTGRES_URL", settings.postgres_url)
    written = load_ops(url, tables)
    print("ops tables: " + ", ".join(f"{k}={v:,}" for k, v in written.items()))
    kafka = KafkaResource(bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS",
                                                            settings.kafka_bootstrap))
    producer = kafka.producer()
    try:
        sent = publish(producer, "tpch.orders", orders, ["o_orderkey"], rate=rate,
                       contract=refs["orders"])
        lines = publish(producer, "tpch.lineitem", tables["lineitem"],
                        ["l_orderkey", "l_linenumber"], rate=rate, contract=refs["lineitem"])
    finally:
        producer.close(timeout=10)
    print(f"published: tpch.orders good={sent:,} duplicate=0 invalid=0")
    print(f"published: tpch.lineitem good={lines:,} duplicate=0 invalid=0")
    return {"orders": sent, "lineitem": lines, **{f"ops.{k}": v for k, v in written.items()}}


def run_demo_producer(settings: Settings, *, rate: float, should_stop: Callable[[], bool]) -> None:
    """Gentle endless stream for ``conflux dev``: small ops tables, then orders at ``rate``/s."""
    from conflux.platform import register_contracts
    from resources.kafka import KafkaResource

    refs = register_contracts(settings, report=lambda line: None)
    gen = TpchGenerator(0.001, seed=int(time.time()))
    load_ops(settings.postgres_url, {"region": gen.region(), "nation": gen.nation(),
                                     "customer": gen.customer(), "supplier": gen.supplier()})
    producer = KafkaResource(bootstrap_servers=settings.kafka_bootstrap).producer()
    print(f"demo producer: publishing orders on tpch.orders at {rate:g}/s (Ctrl-C to stop)",
          file=sys.stderr)
    batch_no = 0
    try:
        while not should_stop():
            orders = TpchGenerator(0.001, seed=batch_no).orders()
            orders["o_orderkey"] += batch_no * 10_000_000  # fresh keys each round
            publish(producer, "tpch.orders", orders, ["o_orderkey"], rate=rate,
                    contract=refs["orders"], should_stop=should_stop)
            batch_no += 1
    finally:
        producer.close(timeout=5)
