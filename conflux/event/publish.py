"""Publishing JSON events the way every Conflux producer does: correlation id, W3C
``traceparent`` and contract ``subject@version`` headers, natural JSON values, paced sends with
progress, and a report of what was sent (used by the demo producer, benchmarks and tests)."""

from __future__ import annotations

import os
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


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


def bulk_headers(n: int, contract: str | None) -> list[list[tuple[str, bytes]]]:
    """``event_headers`` for ``n`` events at once (one random block instead of 2n calls)."""
    block = os.urandom(40 * n).hex()
    contract_header = [("contract", contract.encode())] if contract else []
    out = []
    for i in range(n):
        h = block[80 * i: 80 * (i + 1)]
        cid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
        out.append([("correlation_id", cid.encode()),
                    ("traceparent", f"00-{h[32:64]}-{h[64:80]}-01".encode()), *contract_header])
    return out


def _jsonable(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and len(out) and hasattr(out[col].iloc[0], "isoformat"):
            out[col] = [v.isoformat() for v in out[col]]
        elif out[col].dtype.kind == "M":
            out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return out


def json_rows(df: pd.DataFrame) -> Iterator[dict]:
    """Rows as JSON-ready dicts (numbers as numbers, dates as ISO strings)."""
    for row in _jsonable(df).to_dict(orient="records"):
        yield {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def json_values(df: pd.DataFrame) -> list[bytes]:
    """Each row as compact JSON bytes (vectorised: pandas writes the JSON)."""
    if df.empty:
        return []
    text = _jsonable(df).to_json(orient="records", lines=True)
    return [line.encode() for line in text.splitlines()]


@dataclass
class Outgoing:
    """One record to publish and what it is (good / duplicate / invalid kind)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    kind: str = "good"


@dataclass
class SendReport:
    counts: Counter = field(default_factory=Counter)  # (topic, kind) -> n
    offsets: list[tuple[str, int, int, float]] = field(default_factory=list)  # topic, p, off, t

    def lines(self) -> list[str]:
        topics = sorted({t for t, _ in self.counts})
        out = []
        for topic in topics:
            good = self.counts[(topic, "good")]
            dup = self.counts[(topic, "duplicate")]
            bad = sum(n for (t, k), n in self.counts.items() if t == topic and k.startswith("invalid"))
            out.append(f"published: {topic} good={good:,} duplicate={dup:,} invalid={bad:,}")
        return out


def publish_all(producer, records: list[Outgoing], *, rate: float = 0.0,
                should_stop: Callable[[], bool] = lambda: False,
                progress: bool = True, track_offsets: bool = False) -> SendReport:
    """Send records (paced at ``rate``/s when > 0), showing progress; waits for every ack.

    Raises:
        KafkaError: when the broker refused or did not acknowledge a record (counted by reason).
    """
    from conflux.io.kafka import Deliveries  # here: the record builders import no Kafka client

    report = SendReport()
    started = time.monotonic()
    total = len(records)
    futures = []
    deliveries = Deliveries()
    for i, rec in enumerate(records, 1):
        fut = producer.send(rec.topic, key=rec.key, value=rec.value, headers=rec.headers)
        if fut is not None:  # kafka-python; confluent-kafka's wrapper checks in its flush
            deliveries.track(fut)
        if track_offsets:
            futures.append((fut, time.time()))
        report.counts[(rec.topic, "invalid" if rec.kind.startswith("invalid") else rec.kind)] += 1
        if rate > 0:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if progress and (i % 5000 == 0 or i == total):
            done_rate = i / max(time.monotonic() - started, 1e-6)
            print(f"\r  sent {i:,}/{total:,} records ({done_rate:,.0f}/s)", end="",
                  file=sys.stderr, flush=True)
        if should_stop():
            break
    producer.flush()
    deliveries.check("publish")  # a refused record (an ACL, too large) is never counted sent
    for fut, sent_at in futures:
        meta = fut.get(timeout=30)
        report.offsets.append((meta.topic, meta.partition, meta.offset, sent_at))
    if progress and total:
        print(file=sys.stderr)
    return report


def records_for(topic: str, df: pd.DataFrame, key_fields: list[str] | tuple[str, ...],
                contract: str | None = None) -> list[Outgoing]:
    """One record per row of ``df`` for ``topic``: the key fields joined by ``|`` as the Kafka
    key, the row as a JSON value, Conflux headers (``contract`` = ``subject@version`` if known)."""
    keys = df[key_fields[0]].astype(str)
    for extra in key_fields[1:]:
        keys = keys + "|" + df[extra].astype(str)
    return [Outgoing(topic, k.encode(), v, h) for k, v, h in
            zip(keys.tolist(), json_values(df), bulk_headers(len(df), contract))]
