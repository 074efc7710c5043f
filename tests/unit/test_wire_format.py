"""Confluent wire format (magic byte 0, 4-byte schema id, JSON): framing, id resolution, every
dead-letter reason, a header beside the framing, and the original bytes kept for replay."""

import json

from pipelines.contracts import Order
from conflux.event import decode as d
from conflux.io.kafka import Record

GOOD = {"o_orderkey": 1, "o_custkey": 2, "o_orderstatus": "O", "o_totalprice": 10.5,
        "o_orderdate": "1995-03-01", "o_orderpriority": "1-URGENT", "o_clerk": "Clerk#1",
        "o_shippriority": 0}
# orders@1 is id 11, orders@2 id 12, orders@3 (newer than this code's) id 13; id 40 is another
# subject's, id 99 registered nowhere
IDS = {11: 1, 12: 2, 13: 3}
ELSEWHERE = {40: ["customers@1"]}


def resolver(lookups=None):
    def registered_as(schema_id):
        if lookups is not None:
            lookups.append(schema_id)
        return ELSEWHERE.get(schema_id, [])
    return d.ContractResolver("orders", current_version=2, known_versions=[1, 2, 3], ids=IDS,
                              registered_as=registered_as)


def framed(schema_id: int, doc) -> bytes:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


def rec(value, offset=0, headers=()):
    return Record("tpch.orders", 0, offset, 0, b"k", value, tuple(headers))


def decode(records, res=None):
    return d.decode_batch(records, Order, ("o_orderkey",), res or resolver(), max_bytes=2000)


def test_framed_records_read_as_the_version_their_id_names_and_validate_like_plain_ones():
    batch = [rec(framed(11, {**GOOD, "o_orderkey": 1}), 0),
             rec(framed(12, {**GOOD, "o_orderkey": 2}), 1),
             rec(json.dumps({**GOOD, "o_orderkey": 3}).encode(), 2,
                 headers=[("contract", b"orders@2")]),
             rec(json.dumps({**GOOD, "o_orderkey": 4}).encode(), 3)]
    out = decode(batch)
    assert not out.dead
    assert out.contracts == ["orders@1", "orders@2", "orders@2", "orders@3"]
    plain = decode([rec(json.dumps({**GOOD, "o_orderkey": k}).encode(), k) for k in (1, 2)])
    assert out.rows[:2] == plain.rows, "the payload gives exactly the row the plain JSON gives"


def test_every_framing_reason():
    batch = [
        rec(b"\x00", 0),                                   # magic byte alone
        rec(b"\x00\x00\x00\x00\x0b", 1),                   # id without payload
        rec(framed(99, GOOD), 2),                          # registered nowhere
        rec(framed(40, GOOD), 3),                          # another subject's id
        rec(framed(13, GOOD), 4),                          # newer than the code's contract
        rec(framed(11, b'{"o_orderkey": 1,'), 5),          # truncated payload
        rec(framed(11, {**GOOD, "o_totalprice": "x"}), 6),  # payload breaks the contract
        rec(framed(11, b"\xff\xfe"), 7),                   # payload not UTF-8
        rec(framed(11, {**GOOD, "o_comment": "x" * 3000}), 8),
        rec(framed(11, GOOD), 9),
    ]
    out = decode(batch)
    codes = {dl.record.offset: dl.code for dl in out.dead}
    assert codes == {0: d.BAD_FRAMING, 1: d.BAD_FRAMING, 2: d.UNKNOWN_SCHEMA_ID,
                     3: d.UNKNOWN_SCHEMA_ID, 4: d.UNSUPPORTED_VERSION, 5: d.INVALID_JSON,
                     6: d.CONTRACT_VIOLATION, 7: d.UNDECODABLE, 8: d.OVERSIZE}
    assert [r.offset for r in out.records] == [9]
    msg = {dl.record.offset: dl.message for dl in out.dead}
    assert "1 byte(s)" in msg[0] and "5 byte(s)" in msg[1]
    assert "schema id 99 is not registered" in msg[2]
    assert "schema id 40 is registered as customers@1" in msg[3] and "'orders'" in msg[3]
    assert "orders@3 is newer" in msg[4]
    assert "o_totalprice" in msg[6]
    refs = {dl.record.offset: dl.contract for dl in out.dead}
    assert refs[2] == "schema id 99" and refs[4] == "orders@3" and refs[6] == "orders@1"


def test_a_header_beside_the_framing_must_name_the_same_version():
    batch = [rec(framed(11, GOOD), 0, headers=[("contract", b"orders@1")]),
             rec(framed(12, GOOD), 1, headers=[("contract", b"orders@1")]),
             rec(framed(11, GOOD), 2, headers=[("contract", b"customers@1")]),
             rec(framed(99, GOOD), 3, headers=[("contract", b"orders@1")])]
    out = decode(batch)
    assert out.contracts == ["orders@1"]
    dead = {dl.record.offset: dl for dl in out.dead}
    assert dead[1].code == d.CONTRACT_CONFLICT
    assert "orders@1" in dead[1].message and "orders@2" in dead[1].message
    assert dead[2].code == d.UNKNOWN_SCHEMA, "a header that does not resolve: its own reason"
    assert dead[3].code == d.UNKNOWN_SCHEMA_ID, "an unknown id fails first"


def test_ids_resolve_once_and_registry_lookups_are_bounded():
    lookups = []
    res = resolver(lookups)
    decode([rec(framed(40, GOOD), i) for i in range(50)], res)
    assert lookups == [40], "memoised per id"
    out = decode([rec(framed(1000 + i, GOOD), i) for i in range(d.MAX_ID_LOOKUPS + 5)], res)
    assert len(lookups) == d.MAX_ID_LOOKUPS
    assert {dl.code for dl in out.dead} == {d.UNKNOWN_SCHEMA_ID}
    assert "not registered, or another subject's" in out.dead[-1].message

    def broken(_):
        raise OSError("registry down")
    failing = d.ContractResolver("orders", 2, [1, 2], ids=IDS, registered_as=broken)
    assert failing.resolve_id(77)[0] == d.UNKNOWN_SCHEMA_ID, "a failed lookup: the message only"


def test_no_ids_loaded_means_every_framed_record_is_unknown():
    out = d.decode_batch([rec(framed(11, GOOD))], Order, ("o_orderkey",),
                         d.ContractResolver("orders", None, []))
    assert [dl.code for dl in out.dead] == [d.UNKNOWN_SCHEMA_ID]


def test_framed_dead_letters_keep_the_original_bytes_for_replay():
    value = framed(40, GOOD)
    dead = decode([rec(value, 5, headers=[("correlation_id", b"c-1")])]).dead[0]
    key, sent, headers = d.dead_letter(dead, dataset="orders", run_id="r1")
    assert sent == value
    assert dict(headers)["conflux.error.code"] == b"UNKNOWN_SCHEMA_ID"
    assert dict(headers)["conflux.error.contract"] == b"schema id 40"
    # once the schema is registered under the dataset's subject, the same bytes land
    later = d.ContractResolver("orders", 2, [1, 2], ids={**IDS, 40: 2})
    replayed = decode([rec(sent, 0, headers=[h for h in headers
                                             if not h[0].startswith("conflux.error.")])], later)
    assert not replayed.dead and replayed.contracts == ["orders@2"]


def test_values_that_are_not_framed_are_untouched():
    # empty, whitespace-led and non-zero leading bytes take the plain JSON path
    out = decode([rec(b"", 0), rec(b" " + json.dumps(GOOD).encode(), 1), rec(b"\x01abcd", 2)])
    codes = {dl.record.offset: dl.code for dl in out.dead}
    assert codes == {0: d.INVALID_JSON, 2: d.INVALID_JSON}
    assert out.contracts == ["orders@3"]


def test_the_demo_producers_json_serializer_output_decodes_like_the_header_tagged_records():
    """confluent-kafka's own JSONSerializer (against the library's in-memory registry client)
    frames the demo's orders; decoded, they give the rows the header-tagged ones give."""
    from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
        MockSchemaRegistryClient)

    from pipelines.demo import confluent as cf
    from pipelines.demo.producer import build_stream, corrupt, stream_schemas
    from pipelines.demo.tpch import TpchGenerator
    import random

    tagged = build_stream("tpch.orders", TpchGenerator(0.001, seed=5).orders().head(20),
                          "orders@1")
    bad = corrupt(tagged[0], "wrong_type", random.Random(1))
    registry = MockSchemaRegistryClient({"url": "mock://"})
    sent = cf.frame([*tagged, bad], stream_schemas(), registry)
    schema_id = registry.get_latest_version("tpch.orders-value").schema_id
    assert all(o.value[:5] == b"\x00" + schema_id.to_bytes(4, "big") for o in sent[:-1])
    assert all("contract" not in dict(o.headers) for o in sent[:-1])
    assert sent[-1] is bad, "invalid records are sent as they are"

    def as_records(outgoing):
        return [rec(o.value, i, o.headers) for i, o in enumerate(outgoing)]
    res = d.ContractResolver("orders", 1, [1], ids={schema_id: 1})
    framed_out = d.decode_batch(as_records(sent[:-1]), Order, ("o_orderkey",), res)
    tagged_out = d.decode_batch(as_records(tagged), Order, ("o_orderkey",), res)
    assert not framed_out.dead and framed_out.rows == tagged_out.rows
    assert framed_out.contracts == tagged_out.contracts == ["orders@1"] * 20


def test_producer_config_maps_the_resources_security_to_librdkafka():
    from pipelines.demo import confluent as cf
    from conflux.io.kafka import KafkaResource

    plain = cf.producer_config(KafkaResource(bootstrap_servers="127.0.0.1:1"))
    assert plain["bootstrap.servers"] == "127.0.0.1:1"
    assert plain["security.protocol"] == "plaintext"
    secured = cf.producer_config(KafkaResource(
        bootstrap_servers="h:9", security_protocol="SASL_PLAINTEXT", sasl_username="u",
        sasl_password="p"))
    assert (secured["security.protocol"], secured["sasl.mechanism"], secured["sasl.username"],
            secured["sasl.password"]) == ("sasl_plaintext", "SCRAM-SHA-512", "u", "p")
