"""Security on real services: a second Kafka broker with SASL/SCRAM over TLS and ACLs on, started
by the project's own ``Kafka`` service class beside the test stack (own ports and CONFLUX_HOME
subfolder, random admin and platform passwords in the environment), its topics, platform user
and ACLs set up by the stack's own ``ensure_platform_topics``. It refuses clients without
credentials or with a wrong password, and principals without an ACL for what they ask; the
platform's ingest job and Kafka sensor work through it as the platform principal (password as
``dg.EnvVar``), dead letters included, and ``kafka-consumer-groups --describe``, run as that
principal, shows the sensor's group; the outbox relay, a dead-letter replay and the metrics
exporter work as that principal too; afterwards neither password is anywhere in the test
stack's Postgres database nor in any file under its CONFLUX_HOME (logs, broker config and data,
Dagster home, lake); and every server the stack started listens on loopback only."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from pipelines.demo.producer import event_headers
from pipelines.demo.tpch import TpchGenerator
from pipelines.demo.producer import json_rows
from conflux.core.errors import KafkaAuthenticationError, StackError
from conflux.stack.platform import ensure_platform_topics, project_catalog
from conflux.core.declarations import EventDataset
from conflux.core.settings import Settings
from conflux.stack.acls import admin_resource, platform_grants, principal, provision
from conflux.stack.kafka import CONSUMER_GROUPS, Kafka
from conflux.stack.postgres import find_pg_bin
from conflux.stack.procs import PidFile
from conflux.stack.sockets import descendants, is_loopback, listeners
from conflux.contracts.lineage import contract_schema
from conflux.io.schema_registry import SchemaRegistry
from pipelines.catalog import ORDERS
from conflux.event.job import build_ingest_job
from conflux.event.offsets import consumer_group, parse_state
from conflux.event.sensor import build_kafka_sensor
from conflux.dagster.resources import kafka_resource
from conflux.io.kafka import KafkaResource, Outgoing
from conflux.io.lake import LakeResource
from conflux.io.registry import SchemaRegistryResource
from conflux.event.decode import ContractResolver
from conflux.event.ingest import apply_records
from conflux.io.postgres import replace_table
from conflux.observe.dlq import Selection, new_replay_id
from conflux.observe.dlq_replay import ReplayLedger, replay
from conflux.observe.metrics import ConfluxCollector
from conflux.outbox.relay import Change, Target, apply_changes, pending, relay_all
from conflux.event.publish import Outgoing as Publish, publish_all
from pipelines import contracts as tpch
from tests.live import tick

SECURE_PORT = os.environ.get("CONFLUX_TEST_SECURE_KAFKA_PORT", "19192")
SECURE_CONTROLLER_PORT = os.environ.get("CONFLUX_TEST_SECURE_KAFKA_CONTROLLER_PORT", "19193")
USER = "conflux-it"
TEAM = "conflux-it-team"  # a producer team's principal (CONFLUX_KAFKA_PRODUCERS)


@dataclasses.dataclass
class Secured:
    settings: Settings
    password: str
    admin_password: str
    lake: Path
    provisioned: list[str]  # what ensure_platform_topics reported

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def client(self, **overrides) -> KafkaResource:
        """The platform principal's client."""
        return KafkaResource.from_env(self.settings, **overrides)

    def admin(self) -> KafkaResource:
        return admin_resource(self.settings)


@pytest.fixture(scope="module")
def secured(stack, tmp_path_factory) -> Iterator[Secured]:
    """The secured broker (SASL_SSL, SCRAM), its credentials in this process's environment
    for the module's duration; stopped by its PID at the end."""
    password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = pytest.MonkeyPatch()
    env.setenv("KAFKA_SASL_USERNAME", USER)
    env.setenv("KAFKA_SASL_PASSWORD", password)
    env.setenv("CONFLUX_KAFKA_ADMIN_PASSWORD", admin_password)
    home = stack.settings.home / "secure-kafka"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings.from_env({
        "CONFLUX_HOME": str(home), "CONFLUX_CACHE": str(stack.settings.cache),
        "CONFLUX_KAFKA_PORT": SECURE_PORT, "CONFLUX_KAFKA_CONTROLLER_PORT": SECURE_CONTROLLER_PORT,
        "CONFLUX_PG_PORT": str(stack.settings.pg_port),
        "CONFLUX_DAGSTER_PORT": str(stack.settings.dagster_port),
        "CONFLUX_KAFKA_HEAP": "512m", "CONFLUX_KAFKA_SECURITY": "sasl_ssl",
        "KAFKA_SASL_USERNAME": USER, "CONFLUX_KAFKA_PRODUCERS": f"{TEAM}=tpch.lineitem",
    })
    broker = Kafka(settings)
    try:
        broker.up()
        lines: list[str] = []
        ensure_platform_topics(settings, report=lines.append)  # topics, platform user, ACLs
        yield Secured(settings, password, admin_password, tmp_path_factory.mktemp("secure-lake"),
                      lines)
    finally:
        broker.down()
        env.undo()


def test_the_secured_broker_refuses_missing_and_wrong_credentials(secured, monkeypatch):
    good = secured.client()
    assert good.security_protocol == "SASL_SSL" and good.ssl_cafile == secured.settings.kafka_ssl_cafile
    admin = secured.admin()
    topic = f"sec.{uuid.uuid4().hex[:12]}"  # no ACL of the platform's names it
    with pytest.raises(KafkaError):
        good.ensure_topic(topic, 1)  # the platform principal creates no topic
    assert admin.ensure_topic(topic, 1)
    broker = Kafka(secured.settings)
    fast = {"request_timeout_ms": 1500}
    anonymous = KafkaResource(bootstrap_servers=secured.bootstrap, **fast)
    tls_only = KafkaResource(bootstrap_servers=secured.bootstrap, security_protocol="SSL",
                             ssl_cafile=good.ssl_cafile, **fast)
    wrong_password = secured.password[::-1]
    # time enough for the TLS and SCRAM exchanges to reach the refusal on a loaded machine
    wrong = secured.client(sasl_password=wrong_password, request_timeout_ms=8_000)

    assert not anonymous.ready()  # a PLAINTEXT client gets no answer
    assert not tls_only.ready()  # TLS without SASL: no answer either
    mark = broker.log.stat().st_size
    # refused either way; kafka-python names the refusal only when it reads the broker's SASL
    # error before the connection closes, a race over TLS (measured on this broker: 0 to 9 of
    # ~10 attempts in 10 s, for users made at format time and by the stack alike)
    try:
        assert not wrong.ready()
    except KafkaAuthenticationError as refused:
        assert "refused the credentials" in str(refused) and wrong_password not in str(refused)
    refusals = broker.auth_refusals_since(mark)  # the broker's word: the password was wrong
    assert refusals and all("SCRAM-SHA-512" in line for line in refusals)
    for client in (anonymous, secured.client(sasl_password=wrong_password, **fast)):
        with pytest.raises(KafkaError):
            client.send_json(topic, [(b"k", {"from": "intruder"}, [])])
    # the stack's health check (as the admin, the broker's own login) says so instead of
    # waiting out its start timeout
    wrong_admin = secured.admin_password[::-1]
    monkeypatch.setenv("CONFLUX_KAFKA_ADMIN_PASSWORD", wrong_admin)
    with pytest.raises(StackError, match="refused CONFLUX_KAFKA_ADMIN_USERNAME / "
                                         "CONFLUX_KAFKA_ADMIN_PASSWORD") as err:
        broker.healthy()
    assert wrong_admin not in str(err.value) and secured.admin_password not in str(err.value)
    monkeypatch.setenv("CONFLUX_KAFKA_ADMIN_PASSWORD", secured.admin_password)

    mark = broker.log.stat().st_size
    assert good.ready() and broker.healthy()
    assert secured.client(sasl_mechanism="SCRAM-SHA-256").ready()  # both mechanisms provisioned
    assert broker.auth_refusals_since(mark) == []
    # authenticated, but no ACL on this topic: the platform principal is refused
    refused_publish(good, topic)
    refused_offsets(good, topic)
    assert admin.send_json(topic, [(b"k%d" % i, {"n": i}, []) for i in range(3)]) == 3
    assert admin.end_offsets(topic) == {0: 3}  # nothing of the refused clients got in
    assert [json.loads(r.value)["n"] for r in admin.read_range(topic, 0, 0, 3)] == [0, 1, 2]


def stranger(secured: Secured) -> KafkaResource:
    """A client of a principal the broker authenticates but that has no ACL."""
    password = secrets.token_urlsafe(16)
    secured.admin().upsert_scram_user("conflux-it-stranger", password)
    return secured.client(sasl_username="conflux-it-stranger", sasl_password=password)


def refused_publish(client: KafkaResource, topic: str) -> None:
    """``client`` publishing one record to ``topic`` is refused for want of an ACL."""
    with pytest.raises(KafkaError, match="TopicAuthorizationFailed"):
        with client.publisher(topic) as publish:
            publish([Outgoing(b"k", b'{"from": "intruder"}', [])])


def refused_offsets(client: KafkaResource, topic: str) -> None:
    """``client`` asking for ``topic``'s offsets is refused for want of an ACL (a consumer
    without DESCRIBE on a topic gets no metadata for it, so it would poll nothing, not fail)."""
    consumer = client.consumer()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.beginning_offsets([TopicPartition(topic, 0)], timeout_ms=5000)
    finally:
        consumer.close()


def test_acls_are_the_platforms_and_a_principal_without_acls_is_refused(secured):
    """The stack gave the platform principal exactly its ACLs (a second provision changes
    nothing); a principal the broker authenticates but that has no ACL can neither write nor read
    an event topic the platform can (with ACLs off it could: this fails then); a producer team
    writes its topic, idempotently, and nothing else."""
    admin = secured.admin()
    catalog = [d for d in project_catalog(print) if isinstance(d, EventDataset)]
    wanted = {g for g, _ in platform_grants(catalog)}
    assert admin.sync_acls(principal(USER), wanted) == ([], [])  # exactly these, already
    assert any(f"ACLs of User:{USER}: {len(wanted)} (" in line for line in secured.provisioned)
    again: list[str] = []
    provision(secured.settings, catalog, again.append)
    assert again == [f"kafka: ACLs of User:{USER}: {len(wanted)} (unchanged)",
                     f"kafka: ACLs of User:{TEAM}: 2 (unchanged)"]

    outsider = stranger(secured)
    assert outsider.ready()  # authenticated
    refused_publish(outsider, "tpch.orders")
    refused_offsets(outsider, "tpch.orders")
    with pytest.raises(KafkaError):
        outsider.commit_group("conflux.orders", {"tpch.orders": {0: 0}})
    with pytest.raises(KafkaError, match="TopicAuthorizationFailed"):  # never counted as sent
        outsider.send_json("tpch.orders", [(b"k", {"from": "intruder"}, [])])
    with pytest.raises(KafkaError, match="1 of 1 records not acknowledged"):
        publish_all(outsider.producer(), [Publish("tpch.orders", b"k", b"{}", [])],
                    progress=False)  # the demo producer's path
    assert sum(admin.end_offsets("tpch.orders").values()) == 0  # nothing got in

    team_password = secrets.token_urlsafe(16)
    admin.upsert_scram_user(TEAM, team_password)
    team = secured.client(sasl_username=TEAM, sasl_password=team_password)
    assert team.send_json("tpch.lineitem", [(b"k", {"from": "team"}, [])]) == 1
    [(part, _)] = [(p, e) for p, e in admin.end_offsets("tpch.lineitem").items() if e]
    with pytest.raises(TopicAuthorizationFailedError):
        list(team.read_range("tpch.lineitem", part, 0, 1))  # WRITE and DESCRIBE only
    refused_publish(team, "tpch.orders")


def test_the_ingest_job_and_sensor_run_through_the_secured_broker_with_envvar_secrets(
        secured, stack, instance, monkeypatch):
    good = secured.client()
    assert good.end_offsets("tpch.orders") == {0: 0, 1: 0, 2: 0}
    ds = dataclasses.replace(ORDERS, name=f"orders_sec_{uuid.uuid4().hex[:8]}",
                             topics=("tpch.orders",), dlq_topic="tpch.orders.dlq", fallback=None,
                             ingest="runs")
    registry = SchemaRegistry(stack.settings.postgres_url)
    registry.ensure_schema()
    registry.register(ds.subject, contract_schema(ds.contract))
    inline = dataclasses.replace(ds, name=f"orders_seci_{uuid.uuid4().hex[:8]}", ingest="inline",
                                 tick_budget_s=1.0)
    registry.register(inline.subject, contract_schema(inline.contract))
    rows = list(json_rows(TpchGenerator(0.001, seed=21).orders().head(40)))
    good.send_json("tpch.orders", [(str(r["o_orderkey"]).encode(), r, event_headers())
                                   for r in rows])
    good.send_raw("tpch.orders", [(b"bad", b'{"o_orderkey": ', event_headers())])

    # the resource exactly as the definitions wire it: every KAFKA_* variable as a dg.EnvVar
    for name, value in secured.settings.client_env().items():
        if name.startswith("KAFKA_"):
            monkeypatch.setenv(name, value)
    kafka = kafka_resource()
    assert "KAFKA_SASL_PASSWORD" in repr(kafka.model_dump())
    assert secured.password not in repr(kafka.model_dump())
    ranges = [{"topic": "tpch.orders", "partition": p, "start": 0, "end": e}
              for p, e in good.end_offsets("tpch.orders").items()]
    result = build_ingest_job(ds).execute_in_process(
        run_config={"ops": {f"{ds.name}__ingest": {"config": {"ranges": ranges}}}},
        instance=instance,
        resources={"kafka": kafka, "lake": LakeResource(path=str(secured.lake)),
                   "registry": SchemaRegistryResource(url=stack.settings.postgres_url)})
    assert result.success
    lake = LakeResource(path=str(secured.lake))
    stored = sum(len(lake.read(ds.name, p)) for p in lake.partitions(ds.name))
    assert stored == len(rows)
    assert sum(good.end_offsets("tpch.orders.dlq").values()) == 1  # dead-lettered through SASL_SSL
    assert instance.get_run_by_id(result.run_id) is not None

    # the Kafka sensor (inline) lands the same records and mirrors its cursor into its group
    ends = good.end_offsets("tpch.orders")
    # the broker's offsets topic is created by the first commit: give it time (the sensor's
    # own commits have 2 s, and a failed one only waits for the next tick)
    good.commit_group(consumer_group(inline.name), {"tpch.orders": {p: 0 for p in ends}},
                      timeout_ms=30_000)
    resources = {"kafka": kafka, "lake": LakeResource(path=str(secured.lake)),
                 "registry": SchemaRegistryResource(url=stack.settings.postgres_url)}
    sensor = build_kafka_sensor(inline, build_ingest_job(inline))
    cursor = None
    for _ in range(10):
        cursor = tick(sensor, instance, resources, cursor).cursor
        if parse_state(cursor).offsets.get("tpch.orders") == ends:
            break
    assert parse_state(cursor).offsets["tpch.orders"] == ends
    assert sum(len(lake.read(inline.name, p)) for p in lake.partitions(inline.name)) == len(rows)
    assert sum(good.end_offsets("tpch.orders.dlq").values()) == 2  # its own dead letter
    tick(sensor, instance, resources, cursor)  # mirrors the saved cursor
    assert group_as_platform(secured, consumer_group(inline.name)) == \
        {("tpch.orders", p): (o, 0) for p, o in ends.items()}


def group_as_platform(secured: Secured, group: str) -> dict[tuple[str, int], tuple[int, int]]:
    """``kafka-consumer-groups --describe --group GROUP`` run as the platform principal (its
    ``--command-config`` holds ``${env:...}`` references, no secret): (offset, lag) by
    (topic, partition)."""
    broker = Kafka(secured.settings)
    config = secured.settings.kafka_dir / "client.properties"  # written by the broker's start
    assert config.exists(), "the secured stack did not write the tools' client.properties"
    done = subprocess.run(broker.tool(CONSUMER_GROUPS, "--bootstrap-server", secured.bootstrap,
                                      "--command-config", str(config),
                                      "--describe", "--group", group),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == [group]]
    assert table, done.stdout + done.stderr
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    return {(row[1], int(row[2])): (int(row[3]), int(row[5])) for row in table}


def test_every_server_of_the_stack_listens_on_loopback_only(webserver, secured):
    """Every process the tooling started (pid files of the test stack and of the secured
    broker) and their children (Dagster code servers, Postgres backends): all listening TCP
    sockets bind 127.0.0.1 / ::1."""
    s = webserver.settings
    expected = {s.kafka_port, s.kafka_controller_port, s.dagster_port,
                secured.settings.kafka_port, secured.settings.kafka_controller_port}
    if not s.external_pg_url:
        expected.add(s.pg_port)
    seen: dict[int, str] = {}
    offending = []
    pidfiles = [*s.run_dir.glob("*.pid"), *secured.settings.run_dir.glob("*.pid")]
    for pidfile in pidfiles:
        marker = pidfile.read_text().strip().partition(" ")[2]
        leader = PidFile(pidfile, marker).live_pid()
        if leader is None:
            continue  # a stale file; the expected ports below show nothing was missed
        for pid in descendants(leader):
            for listener in listeners(pid):
                seen[listener.port] = pidfile.stem
                if not is_loopback(listener.address):
                    offending.append(f"{pidfile.stem} (pid {pid}) listens on {listener}")
    assert not offending
    assert expected <= set(seen), f"listeners found: {seen}"


# --- the secrets scan ----------------------------------------------------------------------------
def needles(password: str) -> dict[str, bytes]:
    """The password and its encoded forms (base64 of itself and of a SASL PLAIN message)."""
    raw = password.encode()
    forms = {"password": raw, "base64": base64.b64encode(raw),
             "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
             "sasl-plain": base64.b64encode(b"\0" + USER.encode() + b"\0" + raw)}
    unique: dict[bytes, str] = {}
    for kind, needle in forms.items():
        unique.setdefault(needle, kind)
    return {kind: needle for needle, kind in unique.items()}


def scan(blobs: Iterable[tuple[str, bytes]], password: str) -> list[str]:
    """Where any form of the password occurs: ``"<what> in <where>"``."""
    forms = needles(password)
    return [f"{kind} in {where}" for where, data in blobs for kind, needle in forms.items()
            if needle in data]


def files_under(*roots: Path) -> Iterator[tuple[str, bytes]]:
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    yield str(path), path.read_bytes()
            except OSError:
                continue  # removed meanwhile (a rotated log, a temp file)


def database_dump(settings: Settings) -> bytes:
    """The whole test stack database: every schema, table and row (pg_dump, plain SQL)."""
    pg_bin = find_pg_bin(os.environ.get("CONFLUX_PG_BIN"))
    assert pg_bin is not None, "no PostgreSQL client binaries found"
    dump = subprocess.run([str(pg_bin / "pg_dump"), "--no-owner", "-d", settings.postgres_url],
                          capture_output=True, timeout=180, check=True)
    assert b"CREATE TABLE" in dump.stdout and b"runs" in dump.stdout  # Dagster's tables are in it
    return dump.stdout


def test_the_password_appears_in_no_database_row_log_config_or_file(secured, stack):
    import psycopg

    home = stack.settings.home
    assert (home / "secure-kafka" / "logs" / "kafka.log").exists()
    assert (home / "secure-kafka" / "kafka" / "server.properties").exists()
    assert stack.settings.dagster_home.exists()
    roots = [home, secured.lake]  # the test stack's state: both brokers, Postgres, Dagster, lakes
    for password in (secured.password, secured.admin_password):
        assert scan([("database dump", database_dump(stack.settings))], password) == []
        assert scan(files_under(*roots), password) == []

    # positive controls: the same scans find a planted copy, so they can fail (the file first:
    # the planted row below also reaches Postgres's own files)
    planted = home / "logs" / f"planted-{uuid.uuid4().hex[:8]}.log"
    planted.write_bytes(b"token=" + needles(secured.password)["base64"] + b"\n")
    try:
        found = scan(files_under(*roots), secured.password)
        assert f"base64 in {planted}" in found and all(f.endswith(str(planted)) for f in found)
    finally:
        planted.unlink()
    table = f"public.secret_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.settings.postgres_url, autocommit=True) as conn:
        conn.execute(f"create table {table} (v text)")
        conn.execute(f"insert into {table} values (%s)", (secured.password,))
        try:
            assert scan([("database dump", database_dump(stack.settings))], secured.password) == \
                ["password in database dump"]
        finally:
            conn.execute(f"drop table {table}")


def private_database(stack, prefix: str) -> str:
    """A new database on the test stack's Postgres (its URL): outbox and replay ledger rows of
    this module stay apart from the shared stack's, whose broker has the same topic names."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.settings.postgres_url, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    return stack.settings.postgres_url.rsplit("/", 1)[0] + f"/{database}"


def scrape(collector: ConfluxCollector) -> dict[tuple[str, tuple], float]:
    """One scrape: sample value by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect() for s in family.samples}


def test_the_outbox_relay_dead_letter_replay_and_metrics_work_as_the_platform_principal(
        secured, stack, instance, tmp_path):
    """The services `conflux stack up` runs beside the sensors, each with the platform
    principal's client and only the documented ACLs: the outbox relay publishes ops changes
    to the event topic, a dead-letter replay reads the DLQ topic and re-publishes to the event
    topic, and the metrics exporter reads offsets and dead letters."""
    good = secured.client()
    ds = dataclasses.replace(ORDERS, name=f"orders_svc_{uuid.uuid4().hex[:8]}",
                             topics=("tpch.orders",), dlq_topic="tpch.orders.dlq", fallback=None)
    url = private_database(stack, "sec_services")

    # the outbox relay: an ops change committed with its event, published as the platform
    table = f"orders_{uuid.uuid4().hex[:8]}"
    rows = list(json_rows(TpchGenerator(0.001, seed=22).orders().head(5)))
    before = good.end_offsets("tpch.orders")
    with psycopg.connect(url) as conn:
        with conn.transaction():
            replace_table(conn, "ops", table, pd.DataFrame(rows[:1]), ["o_orderkey"])
        known = {table: Target(table, tpch.Order, ("o_orderkey",), "tpch.orders")}
        assert relay_all(conn, good).published == 0  # ensures the outbox
        apply_changes(conn, [Change(table, r, f"sec-{i}") for i, r in enumerate(rows)], known)
        # refused by the broker (a principal without ACLs): nothing is marked sent
        with pytest.raises(KafkaError, match="not acknowledged.*TopicAuthorizationFailed"):
            relay_all(conn, stranger(secured))
        assert pending(conn) == len(rows)
        assert relay_all(conn, good).published == len(rows)
        assert pending(conn) == 0
    after = good.end_offsets("tpch.orders")
    assert sum(after.values()) - sum(before.values()) == len(rows)

    # a bad record dead-lettered as the platform, then replayed from the DLQ to the event topic
    good.send_raw("tpch.orders", [(b"svc", b'{"o_orderkey": ', event_headers())])
    ends = good.end_offsets("tpch.orders")
    records = [r for r in good.read_ranges([("tpch.orders", p, after[p], e)
                                            for p, e in ends.items() if e > after[p]])]
    assert [r.value for r in records] == [b'{"o_orderkey": ']
    started_ms = int(time.time() * 1000)  # the module's earlier dead letters are older
    report = apply_records(ds, records, kafka=good, lake=LakeResource(path=str(tmp_path)),
                           resolver=ContractResolver(ds.subject, None, []), origin="sec",
                           sources=[])
    assert report.dead == {"INVALID_JSON": 1}
    replayed = replay(ds, kafka=good, ledger=ReplayLedger(url), replay_id=new_replay_id(),
                      selection=Selection(since_ms=started_ms))
    assert dict(replayed.published) == {"INVALID_JSON": 1}, replayed
    again = good.end_offsets("tpch.orders")
    tail = [r for r in good.read_ranges([("tpch.orders", p, ends[p], e)
                                         for p, e in again.items() if e > ends[p]])]
    assert [r.value for r in tail] == [b'{"o_orderkey": ']
    assert ReplayLedger(url).replayed_refs(ds.dlq_topic)  # the ledger saw it

    # the metrics exporter: offsets and dead letters read as the platform principal
    samples = scrape(ConfluxCollector([ds], kafka=good, instance=instance))
    assert samples[("conflux_up", (("source", "kafka"),))] == 1
    assert samples[("conflux_dead_letters_total",
                    (("dataset", ds.name), ("reason", "INVALID_JSON")))] >= 1
    lag = {labels: v for (name, labels), v in samples.items()
           if name == "conflux_consumer_lag_records" and ("dataset", ds.name) in labels}
    assert sum(lag.values()) == sum(again.values())  # no cursor: every record is behind
