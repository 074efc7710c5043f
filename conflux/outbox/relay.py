"""Dual-write through a transactional outbox: a change to ``ops`` tables and the events that
announce it are written in one Postgres transaction; a relay publishes the events afterwards.

* ``apply_changes`` upserts rows into ``ops.<table>`` and, for tables that feed a stream
  (``ops.orders`` → ``tpch.orders``, ``ops.lineitem`` → ``tpch.lineitem``), inserts one outbox
  row per change — in the same transaction, so either both happen or neither does.
* ``relay_once`` takes unsent outbox rows in id order (``FOR UPDATE SKIP LOCKED``: relays can
  run side by side), publishes them (key = aggregate id, header ``conflux.event_id`` for
  dedupe), waits for every ack, then marks them sent and commits. A crash before the commit
  publishes them again next time: at-least-once, and the duplicates are harmless downstream
  because consumers upsert by key.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from kafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from conflux.core.errors import ConfluxError
from conflux.core.declarations import BatchDataset, Dataset, EventDataset
from conflux.io.kafka import unacknowledged

OUTBOX_DDL = """
create schema if not exists ops;
create table if not exists ops.outbox (
    id bigserial primary key,
    event_id uuid not null unique,
    topic text not null,
    aggregate_id text not null,
    payload jsonb not null,
    headers jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    sent_at timestamptz
);
create index if not exists outbox_unsent on ops.outbox (id) where sent_at is null;
"""
EVENT_ID_HEADER = "conflux.event_id"


class OutboxError(ConfluxError):
    """A change could not be applied (bad input, unknown table); nothing was written."""

    code = "OUTBOX_INVALID_CHANGE"


@dataclass(frozen=True)
class Target:
    """What a change to ``ops.<table>`` is checked against and where it is announced."""

    table: str
    contract: type[BaseModel]
    key: tuple[str, ...]
    topic: str | None


def targets(catalog: dict[str, Dataset]) -> dict[str, Target]:
    """ops tables by name: event datasets' batch sources (with their topic) and batch loads."""
    out: dict[str, Target] = {}
    for ds in catalog.values():
        if isinstance(ds, EventDataset) and ds.fallback is not None:
            table = ds.fallback.source_table.split(".", 1)[1]
            out[table] = Target(table, ds.contract, ds.key, ds.topics[0])
        elif isinstance(ds, BatchDataset) and ds.source_table:
            table = ds.source_table.split(".", 1)[1]
            out.setdefault(table, Target(table, ds.contract, ds.key, None))
    return out


@dataclass
class Change:
    table: str
    row: dict
    correlation_id: str | None = None


MAX_REPORTED = 10  # bad lines named in the error


def parse_changes(lines: Iterable[str], known: dict[str, Target]) -> list[Change]:
    """JSON lines ``{"table": T, "row": {...}, "correlation_id"?: str}``, each row validated
    against its table's contract. Raises ``OutboxError`` naming the bad lines (the first
    ``MAX_REPORTED``), on one line."""
    changes, errors = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            target = known[item["table"]]
            row = target.contract.model_validate(item["row"]).model_dump(mode="json")
            changes.append(Change(target.table, row, item.get("correlation_id")))
        except json.JSONDecodeError as exc:
            errors.append(f"line {n}: not JSON ({exc.msg})")
        except RecursionError:
            errors.append(f"line {n}: nested too deeply")
        except KeyError as exc:
            missing = exc.args[0]
            errors.append(f"line {n}: unknown table {missing!r} (known: {', '.join(sorted(known))})"
                          if missing not in ("table", "row") else f"line {n}: no {missing!r} field")
        except (TypeError, AttributeError):
            errors.append(f"line {n}: expected an object with 'table' and 'row'")
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                               for e in exc.errors()[:3])
            errors.append(f"line {n}: row does not match the contract of {item['table']}: {detail}")
    if errors:
        more = len(errors) - MAX_REPORTED
        raise OutboxError("no change applied: " + "; ".join(errors[:MAX_REPORTED])
                          + (f"; and {more} more bad line(s)" if more > 0 else ""))
    return changes


def ensure_outbox(conn: psycopg.Connection) -> None:
    conn.execute(OUTBOX_DDL)


@dataclass
class Applied:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows upserted
    events: int = 0


def apply_changes(conn: psycopg.Connection, changes: list[Change], known: dict[str, Target],
                  *, before_commit: Callable[[], None] | None = None) -> Applied:
    """Upsert every change and its outbox row in one transaction (``conn`` not in autocommit);
    rows go in per table with ``executemany`` (pipelined by psycopg)."""
    applied = Applied()
    by_table: dict[str, list[Change]] = {}
    for ch in changes:
        by_table.setdefault(ch.table, []).append(ch)
    with conn.transaction(), conn.cursor() as cur:
        ensure_outbox(conn)
        for table, group in by_table.items():
            target = known[table]
            cols = list(target.contract.model_fields)
            names = ", ".join(f'"{c}"' for c in cols)
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c not in target.key)
            conflict = ", ".join(f'"{k}"' for k in target.key)
            sql = (f'insert into ops."{table}" ({names}) values ({", ".join(["%s"] * len(cols))}) '
                   f"on conflict ({conflict}) do " + (f"update set {updates}" if updates else "nothing"))
            try:
                cur.executemany(sql, [[ch.row.get(c) for c in cols] for ch in group])
            except psycopg.errors.UndefinedTable as exc:
                raise OutboxError(f"table ops.{table} does not exist; load the operational "
                                  f"tables first (`python -m pipelines.demo tpch` in the demo)") from exc
            applied.rows[table] = len(group)
            if target.topic:
                cur.executemany(
                    "insert into ops.outbox (event_id, topic, aggregate_id, payload, headers) "
                    "values (%s, %s, %s, %s, %s)",
                    [[uuid.uuid4(), target.topic, "|".join(str(ch.row[k]) for k in target.key),
                      json.dumps(ch.row), json.dumps(_headers(ch.correlation_id))] for ch in group])
                applied.events += len(group)
        if before_commit:
            before_commit()
    return applied


def _headers(correlation_id: str | None) -> dict[str, str]:
    return {"correlation_id": correlation_id or str(uuid.uuid4()),
            "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}


@dataclass
class Relayed:
    published: int = 0
    batches: int = 0


def relay_once(conn: psycopg.Connection, kafka, *, limit: int = 1000,
               before_mark: Callable[[], None] | None = None) -> int:
    """Publish up to ``limit`` unsent outbox rows and mark them sent; returns how many."""
    with conn.transaction():
        rows = conn.execute(
            "select id, event_id, topic, aggregate_id, payload, headers from ops.outbox "
            "where sent_at is null order by id limit %s for update skip locked", [limit]).fetchall()
        if not rows:
            return 0
        producer = kafka.producer()
        futures = []
        try:
            for _, event_id, topic, aggregate, payload, headers in rows:
                hdrs = [(k, str(v).encode()) for k, v in headers.items()]
                hdrs.append((EVENT_ID_HEADER, str(event_id).encode()))
                futures.append(producer.send(topic, key=aggregate.encode(),
                                             value=json.dumps(payload).encode(), headers=hdrs))
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=5)
        if bad := unacknowledged(futures):  # none is marked sent: the batch is relayed again
            i, why = bad
            raise KafkaError(f"outbox relay: event {rows[i][1]} to {rows[i][2]} not "
                             f"acknowledged: {why}; the {len(rows)} rows stay unsent")
        if before_mark:
            before_mark()
        conn.execute("update ops.outbox set sent_at = now() where id = any(%s)",
                     [[r[0] for r in rows]])
    return len(rows)


def relay_all(conn: psycopg.Connection, kafka, *, limit: int = 1000) -> Relayed:
    """Relay until the outbox has nothing unsent."""
    with conn.transaction():
        ensure_outbox(conn)
    out = Relayed()
    while n := relay_once(conn, kafka, limit=limit):
        out.published += n
        out.batches += 1
    return out


def pending(conn: psycopg.Connection) -> int:
    ensure_outbox(conn)
    return conn.execute("select count(*) from ops.outbox where sent_at is null").fetchone()[0]


def run_relay(pg_url: str, kafka, *, should_stop: Callable[[], bool], interval_s: float = 0.5,
              report: Callable[[str], None] = print) -> Relayed:
    """Relay continuously until ``should_stop``; an outage (Kafka or Postgres down) is reported
    and retried, never fatal: unsent rows simply wait in the outbox."""
    import time

    total = Relayed()
    conn = None
    while not should_stop():
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(pg_url)
                with conn.transaction():
                    ensure_outbox(conn)
            n = relay_once(conn, kafka)
            total.published += n
            total.batches += bool(n)
            if n:
                continue
        except Exception as exc:  # keep relaying after outages; the rows stay unsent
            report(f"outbox relay: {type(exc).__name__}: {exc}; retrying")
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(2)
        time.sleep(interval_s)
    if conn is not None:
        conn.close()
    return total
