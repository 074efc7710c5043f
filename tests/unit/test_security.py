"""Security without services: the secured broker's configuration holds no secret and turns
ACLs on with the admin as super user, the platform's and producer teams' ACLs are the ones the
code paths need, client
settings map onto kafka-python's and bad ones are refused with the variable named, the
Dagster resource takes the password through dg.EnvVar (and works with none set), command
lines are redacted before they are logged, the local CA signs a certificate for 127.0.0.1,
and the loopback classifier flags wildcard and public binds."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import stat
import threading

import dagster as dg
import pytest

from conflux.core.errors import ConfigError
from conflux.core.settings import Settings
from conflux.core.settings import producer_principals
from conflux.io.kafka import AclGrant
from conflux.stack.acls import DLQ_TOPIC, EVENT_TOPIC, platform_grants, producer_grants
from conflux.stack.kafka import (admin_from_env, client_properties, java_argfile,
                                 render_server_properties, scram_credential, scram_user_from_env)
from conflux.stack.service import redact_argv
from conflux.stack.sockets import decode_address, is_loopback, listeners, parse_proc_net
from conflux.stack.tls import ensure_server_tls
from conflux.dagster.resources import kafka_resource
from conflux.io.kafka import KafkaResource, security_config

SECRET = "s3cret-Pa55word-xyz"


def settings(tmp_path, **env) -> Settings:
    return Settings.from_env({"CONFLUX_HOME": str(tmp_path), **env})


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


# --- the secured local broker ------------------------------------------------------------------
@pytest.mark.parametrize("mode,listener", [("sasl_ssl", "SASL_SSL"),
                                           ("sasl_plaintext", "SASL_PLAINTEXT")])
def test_secured_broker_listens_with_sasl_and_keeps_secrets_in_the_environment(tmp_path, mode,
                                                                                listener):
    s = settings(tmp_path, CONFLUX_KAFKA_SECURITY=mode, CONFLUX_KAFKA_PORT="19192",
                 CONFLUX_KAFKA_CONTROLLER_PORT="19193", KAFKA_SASL_USERNAME="conflux",
                 KAFKA_SASL_PASSWORD=SECRET)
    text = render_server_properties(s, tmp_path / "d")
    p = props(text)
    assert p["listeners"] == f"{listener}://127.0.0.1:19192,CONTROLLER://127.0.0.1:19193"
    assert p["advertised.listeners"] == f"{listener}://127.0.0.1:19192"
    assert p["inter.broker.listener.name"] == listener
    assert p["listener.security.protocol.map"] == \
        f"CONTROLLER:SASL_PLAINTEXT,{listener}:{listener}"
    assert p["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    assert p["config.providers.env.class"] == \
        "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
    assert p["config.providers.env.param.allowlist.pattern"] == "^CONFLUX_KAFKA_ADMIN_PASSWORD$"
    jaas = p[f"listener.name.{listener.lower()}.scram-sha-512.sasl.jaas.config"]
    # the broker logs in as the admin principal, its password from the environment
    assert 'password="${env:CONFLUX_KAFKA_ADMIN_PASSWORD}"' in jaas
    assert 'username="conflux-admin"' in jaas
    assert SECRET not in text and "conflux\"" not in text
    # ACLs on: nothing without an ACL, the admin and the controller listener super users only
    assert p["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert p["allow.everyone.if.no.acl.found"] == "false"
    assert p["super.users"] == "User:conflux-admin"
    # the controller listener authenticates too (PLAIN), the admin its only user: no anonymous
    # super user on the machine's loopback
    assert p["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert p["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert p["listener.name.controller.plain.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="conflux-admin" password="${env:CONFLUX_KAFKA_ADMIN_PASSWORD}" '
        'user_conflux-admin="${env:CONFLUX_KAFKA_ADMIN_PASSWORD}";')
    if mode == "sasl_ssl":
        assert p["ssl.keystore.type"] == "PEM"
        assert p["ssl.keystore.location"] == str(tmp_path / "kafka" / "tls" / "server.pem")
        assert p["ssl.truststore.location"] == str(tmp_path / "kafka" / "tls" / "ca.pem")
    else:
        assert not any(k.startswith("ssl.") for k in p)


def test_plaintext_stays_the_default_without_sasl(tmp_path):
    p = props(render_server_properties(settings(tmp_path), tmp_path / "d"))
    assert p["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert not any(k.startswith(("sasl.", "config.providers", "ssl.", "authorizer", "super."))
                   for k in p)


def test_scram_credential_is_salted_and_never_holds_the_password():
    salt = b"0123456789abcdef"
    arg = scram_credential("SCRAM-SHA-512", "conflux", SECRET, salt=salt, iterations=4096)
    salted = hashlib.pbkdf2_hmac("sha512", SECRET.encode(), salt, 4096)
    assert arg == (f'SCRAM-SHA-512=[name=conflux,iterations=4096,'
                   f'salt="{base64.b64encode(salt).decode()}",'
                   f'saltedpassword="{base64.b64encode(salted).decode()}"]')
    assert SECRET not in arg and base64.b64encode(SECRET.encode()).decode() not in arg
    # a fresh random salt each time
    assert scram_credential("SCRAM-SHA-256", "u", SECRET) != scram_credential("SCRAM-SHA-256", "u", SECRET)


def test_scram_user_must_be_set_and_quotable():
    assert scram_user_from_env({"KAFKA_SASL_USERNAME": "conflux", "KAFKA_SASL_PASSWORD": SECRET}) \
        == ("conflux", SECRET)
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD") as err:
        scram_user_from_env({"KAFKA_SASL_USERNAME": "conflux"})
    assert err.value.code == "CONFIG_INVALID"
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME"):
        scram_user_from_env({"KAFKA_SASL_USERNAME": "a,b=c", "KAFKA_SASL_PASSWORD": SECRET})
    with pytest.raises(ConfigError, match="double quote") as err:
        scram_user_from_env({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": 'pa"ss'})
    assert 'pa"ss' not in str(err.value)


def test_admin_password_is_required_and_the_platform_user_is_not_the_admin(tmp_path):
    s = settings(tmp_path, CONFLUX_KAFKA_SECURITY="sasl_ssl", CONFLUX_KAFKA_ADMIN_USERNAME="root-1")
    assert admin_from_env(s, {"CONFLUX_KAFKA_ADMIN_PASSWORD": SECRET,
                              "KAFKA_SASL_USERNAME": "conflux"}) == ("root-1", SECRET)
    with pytest.raises(ConfigError, match="CONFLUX_KAFKA_ADMIN_PASSWORD in the environment"):
        admin_from_env(s, {"KAFKA_SASL_USERNAME": "conflux"})
    with pytest.raises(ConfigError, match="must not be the admin user"):
        admin_from_env(s, {"CONFLUX_KAFKA_ADMIN_PASSWORD": SECRET, "KAFKA_SASL_USERNAME": "root-1"})
    with pytest.raises(ConfigError, match="double quote") as err:
        admin_from_env(s, {"CONFLUX_KAFKA_ADMIN_PASSWORD": 'a"b'})
    assert 'a"b' not in str(err.value)
    for bad in ("a b", "1admin", 'a"b'):  # also a JAAS option name: user_<admin>
        with pytest.raises(ConfigError, match="CONFLUX_KAFKA_ADMIN_USERNAME"):
            admin_from_env(settings(tmp_path, CONFLUX_KAFKA_ADMIN_USERNAME=bad),
                           {"CONFLUX_KAFKA_ADMIN_PASSWORD": SECRET})


def test_the_platform_principal_gets_what_its_code_paths_need_and_no_more():
    class Event:  # the fields platform_grants reads of an EventDataset
        def __init__(self, topics, dlq):
            self.topics, self.dlq_topic = topics, dlq

    class Batch:  # no topics: no ACL
        pass

    grants = platform_grants([Event(("t.a", "t.b"), "t.a.dlq"), Event(("t.a",), "t.a.dlq2"),
                              Batch()])
    acls = [g for g, _ in grants]
    assert len(acls) == len(set(acls)) and all(why for _, why in grants)
    topic_ops = {}
    for g in acls:
        if g.resource == "TOPIC":
            assert g.pattern == "LITERAL"
            topic_ops.setdefault(g.name, set()).add(g.operation)
    assert topic_ops == {"t.a": {"READ", "DESCRIBE", "WRITE"}, "t.b": {"READ", "DESCRIBE", "WRITE"},
                         "t.a.dlq": {"READ", "DESCRIBE", "WRITE"},
                         "t.a.dlq2": {"READ", "DESCRIBE", "WRITE"}}
    assert set(EVENT_TOPIC) == set(DLQ_TOPIC) == {"READ", "DESCRIBE", "WRITE"}
    # the groups the sensor mirrors into: conflux.<dataset>, by prefix, nothing else
    assert {g for g in acls if g.resource != "TOPIC"} == {
        AclGrant("GROUP", "conflux.", "PREFIXED", "READ"),
        AclGrant("GROUP", "conflux.", "PREFIXED", "DESCRIBE")}
    # no cluster-wide or creating rights: the admin creates topics, nothing is transactional
    assert not {g.operation for g in acls} & {"CREATE", "DELETE", "ALTER", "ALTER_CONFIGS",
                                               "DESCRIBE_CONFIGS", "IDEMPOTENT_WRITE", "ALL"}


def test_producer_teams_write_and_describe_their_topics_only():
    assert [g for g, _ in producer_grants(["b", "a", "a"])] == [
        AclGrant("TOPIC", "a", "LITERAL", "WRITE"), AclGrant("TOPIC", "a", "LITERAL", "DESCRIBE"),
        AclGrant("TOPIC", "b", "LITERAL", "WRITE"), AclGrant("TOPIC", "b", "LITERAL", "DESCRIBE")]
    assert producer_principals(" team-a=tpch.orders, tpch.lineitem; team-b=ledger.customer;"
                               "team-a=tpch.orders") == (
        ("team-a", ("tpch.orders", "tpch.lineitem")), ("team-b", ("ledger.customer",)))
    assert producer_principals("") == ()
    for bad in ("team-a", "team a=t", "team=", "=t", "t=a b"):
        with pytest.raises(ConfigError, match="CONFLUX_KAFKA_PRODUCERS"):
            producer_principals(bad)


def test_kafka_tools_config_holds_references_not_secrets(tmp_path):
    s = settings(tmp_path, CONFLUX_KAFKA_SECURITY="sasl_ssl", KAFKA_SASL_USERNAME="conflux",
                 KAFKA_SASL_PASSWORD=SECRET)
    p = props(client_properties(s))
    assert p["security.protocol"] == "SASL_SSL" and p["sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'username="${env:KAFKA_SASL_USERNAME}" password="${env:KAFKA_SASL_PASSWORD}"' in \
        p["sasl.jaas.config"]
    assert p["ssl.truststore.location"] == str(tmp_path / "kafka" / "tls" / "ca.pem")
    assert SECRET not in client_properties(s)
    assert props(client_properties(settings(tmp_path))) == {"security.protocol": "PLAINTEXT"}


def test_java_argfile_quotes_each_argument():
    assert java_argfile(["kafka.tools.StorageTool", 'S=[salt="a+b/="]']) == \
        "'kafka.tools.StorageTool'\n'S=[salt=\"a+b/=\"]'\n"
    with pytest.raises(ConfigError):
        java_argfile(["it's"])


# --- settings and clients ----------------------------------------------------------------------
def test_stack_env_gives_clients_everything_but_the_password(tmp_path):
    s = settings(tmp_path, CONFLUX_KAFKA_SECURITY="sasl_ssl", KAFKA_SASL_USERNAME="conflux",
                 KAFKA_SASL_PASSWORD=SECRET)
    env = s.client_env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_USERNAME"] == "conflux"
    assert env["KAFKA_SSL_CAFILE"] == str(tmp_path / "kafka" / "tls" / "ca.pem")
    assert "KAFKA_SASL_PASSWORD" not in env and SECRET not in repr(env) and SECRET not in repr(s)
    plain = settings(tmp_path).client_env()
    assert plain["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not any(k.startswith(("KAFKA_SASL", "KAFKA_SSL")) for k in plain)


def test_client_variables_override_what_the_stack_implies(tmp_path):
    s = settings(tmp_path, KAFKA_SECURITY_PROTOCOL="sasl_ssl", KAFKA_SASL_MECHANISM="scram-sha-256",
                 KAFKA_SSL_CAFILE="/etc/ssl/corp.pem", KAFKA_SASL_USERNAME="svc")
    assert (s.kafka_protocol, s.kafka_sasl_mechanism, s.kafka_ssl_cafile) == \
        ("SASL_SSL", "SCRAM-SHA-256", "/etc/ssl/corp.pem")
    with pytest.raises(ConfigError, match="CONFLUX_KAFKA_SECURITY"):
        settings(tmp_path, CONFLUX_KAFKA_SECURITY="kerberos")


def test_security_settings_map_onto_kafka_python(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    assert security_config() == {"security_protocol": "PLAINTEXT"}
    assert security_config("sasl_plaintext", "scram-sha-256", "u", SECRET) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u", "sasl_plain_password": SECRET}
    assert security_config("SASL_SSL", None, "u", SECRET, str(ca)) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u", "sasl_plain_password": SECRET, "ssl_cafile": str(ca),
        "ssl_check_hostname": True}
    assert security_config("SSL", ssl_cafile=str(ca)) == {
        "security_protocol": "SSL", "ssl_cafile": str(ca), "ssl_check_hostname": True}
    # no CA file: the system's trust store (managed clusters with public certificates)
    assert security_config("SSL") == {"security_protocol": "SSL", "ssl_check_hostname": True}
    # every client the resource builds gets them
    kafka = KafkaResource(security_protocol="SASL_SSL", sasl_username="u", sasl_password=SECRET,
                          ssl_cafile=str(ca))
    common = kafka._common()
    assert common["sasl_plain_password"] == SECRET and common["ssl_cafile"] == str(ca)
    assert SECRET not in repr(kafka) and SECRET not in str(kafka)


@pytest.mark.parametrize("kwargs,match", [
    ({"security_protocol": "SASL_KERBEROS"}, "KAFKA_SECURITY_PROTOCOL='SASL_KERBEROS' is not one of"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
      "sasl_password": SECRET}, "KAFKA_SASL_MECHANISM='GSSAPI' is not one of"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "needs KAFKA_SASL_PASSWORD"),
    ({"security_protocol": "SASL_SSL", "sasl_password": SECRET},
     "needs KAFKA_SASL_USERNAME"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "KAFKA_SSL_CAFILE='/nonexistent/ca.pem' cannot be read"),
])
def test_bad_security_settings_are_refused_with_the_variable_named(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        security_config(**kwargs)
    assert err.value.code == "CONFIG_INVALID"
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError):  # and no client is built with them
        KafkaResource(**kwargs).admin()


def test_a_ca_file_without_a_certificate_is_refused(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        security_config("SSL", ssl_cafile=str(bogus))


def test_from_env_takes_the_stack_settings_and_the_password_from_the_environment(tmp_path):
    env = {"CONFLUX_HOME": str(tmp_path), "CONFLUX_KAFKA_PORT": "19192",
           "CONFLUX_KAFKA_SECURITY": "sasl_plaintext", "KAFKA_SASL_USERNAME": "conflux",
           "KAFKA_SASL_PASSWORD": SECRET}
    kafka = KafkaResource.from_env(Settings.from_env(env), env=env)
    assert (kafka.bootstrap_servers, kafka.security_protocol, kafka.sasl_username,
            kafka.sasl_password) == ("127.0.0.1:19192", "SASL_PLAINTEXT", "conflux", SECRET)
    with pytest.raises(ConfigError, match="needs KAFKA_SASL_PASSWORD"):
        KafkaResource.from_env(Settings.from_env(env), env={})


def _resolved(resource: KafkaResource) -> dict:
    """The resource's fields as a Dagster run sees them."""
    seen = {}

    @dg.op
    def look(kafka: KafkaResource):
        seen.update(kafka.security_settings(), bootstrap=kafka.bootstrap_servers)

    @dg.job
    def probe():
        look()

    assert probe.execute_in_process(resources={"kafka": resource}).success
    return seen


def test_the_dagster_resource_reads_secrets_through_envvar_and_works_without_them(monkeypatch):
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                 "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    plain = kafka_resource()
    assert _resolved(plain)["security_protocol"] == "PLAINTEXT"  # unset variables: no EnvVar

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "conflux")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    secured = kafka_resource()
    # the definition holds the variable's name, not its value ...
    assert SECRET not in repr(secured.model_dump()) and "KAFKA_SASL_PASSWORD" in repr(
        secured.model_dump())
    # ... which Dagster resolves when the run starts
    seen = _resolved(secured)
    assert (seen["security_protocol"], seen["sasl_username"], seen["sasl_password"]) == \
        ("SASL_PLAINTEXT", "conflux", SECRET)


# --- command lines in logs ---------------------------------------------------------------------
def test_argv_is_redacted_before_it_is_logged():
    argv = ["java", "-cp", "x.jar", "kafka.tools.StorageTool", "format", "--add-scram",
            'SCRAM-SHA-512=[name=conflux,iterations=8192,salt="c2FsdA==",saltedpassword="AAAA"]',
            "--password", "hunter2!", "--url", "postgresql://db/x?password=pw123&sslmode=require",
            f"--note={SECRET}"]
    out = redact_argv(argv, secrets=[SECRET])
    text = " ".join(out)
    assert out[:5] == argv[:5]
    assert out[6] == "SCRAM-SHA-512=[name=conflux,iterations=8192,salt=***,saltedpassword=***]"
    assert out[8] == "***"
    assert "pw123" not in text and "sslmode=require" in text
    assert SECRET not in text and "hunter2" not in text and "AAAA" not in text


def test_argv_redaction_uses_the_environments_secrets_by_default(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    assert redact_argv(["tool", f"--x={SECRET}", "plain"]) == ["tool", "--x=***", "plain"]


# --- the local CA ------------------------------------------------------------------------------
def test_local_ca_signs_a_loopback_server_certificate_clients_verify(tmp_path):
    files = ensure_server_tls(tmp_path / "tls", "127.0.0.1")
    assert stat.S_IMODE(files.keystore.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    pem = files.keystore.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka's PEM keystore wants
    assert security_config("SSL", ssl_cafile=str(files.ca))["ssl_cafile"] == str(files.ca)
    # a real TLS handshake: server with the keystore, client trusting only the CA, by IP
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.keystore)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.send(b"x")
    thread.join(5)
    listener.close()
    # reused while valid for the host; a new host gets a new certificate
    assert ensure_server_tls(tmp_path / "tls", "127.0.0.1").keystore.read_text() == pem
    assert ensure_server_tls(tmp_path / "tls", "127.0.0.2").keystore.read_text() != pem


# --- loopback classifier -----------------------------------------------------------------------
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4A64 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0A00000A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1
   3: 0100007F:4A64 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 444 1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:4A65 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1
   1: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 666 1
   2: 0000000000000000FFFF00000100007F:4A66 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1
"""


def test_loopback_classifier_flags_wildcard_and_public_binds():
    v4 = {str(x): is_loopback(x.address) for x in parse_proc_net(PROC_NET_TCP)}
    assert v4 == {"127.0.0.1:19044": True, "0.0.0.0:8080": False, "10.0.0.10:22": False}
    v6 = {str(x): is_loopback(x.address) for x in parse_proc_net(PROC_NET_TCP6)}
    assert v6 == {"[::1]:19045": True, "[::]:3000": False, "[::ffff:7f00:1]:19046": True}
    assert decode_address("0100007F:0050") == (decode_address("0100007F:0050")[0], 80)
    assert str(decode_address("0100007F:0050")[0]) == "127.0.0.1"


def test_listeners_of_a_live_process_are_found_by_socket_inode():
    with socket.create_server(("127.0.0.1", 62555)) as server:
        found = [str(x) for x in listeners(os.getpid())]
        assert "127.0.0.1:62555" in found
    assert "127.0.0.1:62555" not in [str(x) for x in listeners(os.getpid())]


def test_the_admin_password_never_reaches_dagster_processes(tmp_path, monkeypatch):
    from conflux.stack.dagster import dagster_env

    monkeypatch.setenv("CONFLUX_KAFKA_ADMIN_PASSWORD", "admin-" + SECRET)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    env = dagster_env(settings(tmp_path, CONFLUX_KAFKA_SECURITY="sasl_ssl"))
    assert "CONFLUX_KAFKA_ADMIN_PASSWORD" not in env and "admin-" + SECRET not in env.values()
    assert env["KAFKA_SASL_PASSWORD"] == SECRET  # the platform's: sensors and runs use it


def test_sync_acls_creates_the_missing_and_deletes_the_rest(monkeypatch):
    from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             ResourcePattern, ResourceType)
    from kafka.errors import NoError

    def acl(op, name="t", perm=ACLPermissionType.ALLOW, host="*"):
        return ACL("User:p", host, ACLOperation[op], perm,
                   ResourcePattern(ResourceType.TOPIC, name, ACLResourcePatternType.LITERAL))

    class FakeAdmin:  # the broker's side: what describe_acls finds, what was created/deleted
        def __init__(self):
            self.acls = [acl("READ"), acl("WRITE", "other"), acl("DESCRIBE", perm=ACLPermissionType.DENY),
                         acl("DESCRIBE", host="10.0.0.1")]
            self.created, self.deleted = [], []

        def describe_acls(self, acl_filter):
            assert acl_filter.principal == "User:p"
            return list(self.acls), NoError

        def create_acls(self, acls):
            self.created += acls
            return {"succeeded": acls, "failed": []}

        def delete_acls(self, filters):
            self.deleted += filters
            return [(f, [f], NoError) for f in filters]

        def close(self):
            pass

    fake = FakeAdmin()
    monkeypatch.setattr(KafkaResource, "admin", lambda self: fake)
    wanted = [AclGrant("TOPIC", "t", "LITERAL", "READ"), AclGrant("TOPIC", "t", "LITERAL", "DESCRIBE"),
              AclGrant("GROUP", "conflux.", "PREFIXED", "READ")]
    created, deleted = KafkaResource().sync_acls("User:p", wanted)
    assert created == sorted([wanted[1], wanted[2]])  # READ on t was there already
    assert {(a.resource_pattern.resource_type, a.resource_pattern.resource_name,
             a.resource_pattern.pattern_type, a.operation, a.permission_type, a.host)
            for a in fake.created} == {
        (ResourceType.TOPIC, "t", ACLResourcePatternType.LITERAL, ACLOperation.DESCRIBE,
         ACLPermissionType.ALLOW, "*"),
        (ResourceType.GROUP, "conflux.", ACLResourcePatternType.PREFIXED, ACLOperation.READ,
         ACLPermissionType.ALLOW, "*")}
    # WRITE on another topic, a DENY and an ALLOW from one host only: not the stack's, removed
    assert deleted == sorted([AclGrant("TOPIC", "other", "LITERAL", "WRITE"),
                              AclGrant("TOPIC", "t", "LITERAL", "DESCRIBE"),
                              AclGrant("TOPIC", "t", "LITERAL", "DESCRIBE")])
    assert fake.deleted == fake.acls[1:]  # the READ wanted stays


def test_the_health_check_logs_in_as_the_admin_or_else_the_platform(tmp_path, monkeypatch):
    from conflux.stack.kafka import Kafka

    broker = Kafka(settings(tmp_path, CONFLUX_KAFKA_SECURITY="sasl_ssl"))
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "conflux")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.delenv("CONFLUX_KAFKA_ADMIN_PASSWORD", raising=False)
    # `conflux stack status` from the platform's shell: no admin password there
    assert broker.health_login() == ("conflux", SECRET, "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("CONFLUX_KAFKA_ADMIN_PASSWORD", "admin-" + SECRET)
    assert broker.health_login() == ("conflux-admin", "admin-" + SECRET,
                                     "CONFLUX_KAFKA_ADMIN_USERNAME / CONFLUX_KAFKA_ADMIN_PASSWORD")
    assert broker.client().sasl_username == "conflux-admin"
