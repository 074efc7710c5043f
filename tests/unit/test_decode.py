"""Decoding and contract resolution: every bad record gets a reason, good ones are kept."""

import json

from pipelines.contracts import Order
from conflux.event import decode as d
from conflux.io.kafka import Record

GOOD = {"o_orderkey": 1, "o_custkey": 2, "o_orderstatus": "O", "o_totalprice": 10.5,
        "o_orderdate": "1995-03-01", "o_orderpriority": "1-URGENT", "o_clerk": "Clerk#1",
        "o_shippriority": 0}
RESOLVER = d.ContractResolver("orders", current_version=2, known_versions=[1, 2, 3])


def rec(value, offset=0, headers=()):
    raw = value if isinstance(value, (bytes, type(None))) else json.dumps(value).encode()
    return Record("tpch.orders", 0, offset, 0, b"k", raw, tuple(headers))


def decode(records):
    return d.decode_batch(records, Order, ("o_orderkey",), RESOLVER, max_bytes=2000)


def test_a_clean_batch_validates_in_one_go():
    out = decode([rec({**GOOD, "o_orderkey": i}, i) for i in range(1, 50)])
    assert len(out.rows) == 49 and not out.dead
    assert out.rows[0]["o_orderdate"].isoformat() == "1995-03-01"
    assert out.contracts[0] == "orders@3", "no header: read as the latest registered version"


def test_every_kind_of_bad_record_is_dead_lettered_and_good_ones_kept():
    batch = [
        rec(GOOD, 0),
        rec(b"\xff\xfe not utf8", 1),
        rec(b'{"o_orderkey": 1,', 2),
        rec({**GOOD, "o_totalprice": "lots"}, 3),
        rec({**GOOD, "surprise": 1}, 4),
        rec(None, 5),
        rec({**GOOD, "o_comment": "x" * 3000}, 6),
        rec(GOOD, 7, headers=[("contract", b"orders@9")]),
        rec(GOOD, 8, headers=[("contract", b"orders@3")]),
        rec(GOOD, 9, headers=[("contract", b"customers@1")]),
        rec(GOOD, 10, headers=[("contract", b"garbage")]),
        rec({**GOOD, "o_orderkey": 5}, 11, headers=[("contract", b"orders@1")]),
    ]
    out = decode(batch)
    codes = {dl.record.offset: dl.code for dl in out.dead}
    assert codes == {1: d.UNDECODABLE, 2: d.INVALID_JSON, 3: d.CONTRACT_VIOLATION,
                     4: d.CONTRACT_VIOLATION, 5: d.NULL_VALUE, 6: d.OVERSIZE,
                     7: d.UNKNOWN_SCHEMA, 8: d.UNSUPPORTED_VERSION, 9: d.UNKNOWN_SCHEMA,
                     10: d.UNKNOWN_SCHEMA}
    assert [r.offset for r in out.records] == [0, 11]
    assert out.contracts == ["orders@3", "orders@1"]
    by_offset = {dl.record.offset: dl for dl in out.dead}
    assert "o_totalprice" in by_offset[3].message
    assert "surprise" in by_offset[4].message


def test_dead_letter_headers_keep_the_original_and_name_the_reason():
    dead = decode([rec({**GOOD, "o_totalprice": "x"}, 42, headers=[("correlation_id", b"c-1")])]).dead[0]
    headers = dict(d.dead_letter_headers(dead, dataset="orders", run_id="r1"))
    assert headers["correlation_id"] == b"c-1"
    assert headers["conflux.error.code"] == b"CONTRACT_VIOLATION"
    assert headers["conflux.error.offset"] == b"42"
    assert headers["conflux.error.topic"] == b"tpch.orders"
    assert headers["conflux.error.partition"] == b"0"
    assert headers["conflux.error.contract"] == b"orders@3"
    assert headers["conflux.error.dataset"] == b"orders" and headers["conflux.error.run_id"] == b"r1"


def test_unregistered_subject_reads_headerless_events_and_rejects_declared_versions():
    resolver = d.ContractResolver("orders", None, [])
    assert resolver.resolve(None)[0] is None
    assert resolver.resolve(b"orders@1")[0] == d.UNKNOWN_SCHEMA


def test_rows_equal_what_the_contract_model_gives_and_defaults_are_filled():
    plain = {k: v for k, v in GOOD.items()}  # no o_comment: the contract defaults it to ""
    out = decode([rec(plain, 0)])
    assert out.rows == [Order.model_validate(plain).model_dump()]
    assert out.rows[0]["o_comment"] == ""


def test_a_soft_deleted_version_stays_readable_but_untagged_records_read_the_latest_live_one():
    """One registry query per tick: the ids, this code's version and the latest live version
    follow from the subject's version list (the fake client has nothing else)."""
    from types import SimpleNamespace

    from conflux.contracts.fingerprint import fingerprint
    from conflux.contracts.lineage import contract_schema
    from conflux.event.ingest import resolver_for
    from conflux.io.schema_registry import SchemaVersion
    from pipelines.catalog import ORDERS

    mine = fingerprint(contract_schema(ORDERS.contract))

    def version(n, fp, deleted):
        return SchemaVersion("orders", n, {}, fp, None, schema_id=10 + n, deleted=deleted)

    # 2 is this code's contract; 1 and 3 are soft-deleted
    history = [version(1, "fp1", True), version(2, mine, False), version(3, "fp3", True)]
    client = SimpleNamespace(
        versions=lambda subject, deleted=False: [v for v in history if deleted or not v.deleted],
        usages=lambda schema_id, deleted=True: [])
    resolver = resolver_for(ORDERS, SimpleNamespace(client=client))
    assert resolver.current == 2
    assert resolver.resolve(b"orders@1") == (None, None, "orders@1")
    assert resolver.resolve_id(11) == (None, None, "orders@1")
    assert resolver.resolve_id(13)[0] == d.UNSUPPORTED_VERSION  # known, newer than the code
    assert resolver.resolve(None) == (None, None, "orders@2")  # not the soft-deleted 3
