"""Kafka access for Conflux: the only module that imports kafka-python.

Every call here has a timeout: a sensor tick or a CLI command never hangs on a broker that is
down. Consumers use manual partition assignment and never join a group (the sensor cursor is the
commit, see ``conflux/event/sensor.py``); :meth:`KafkaResource.commit_group` only mirrors a cursor
into a group, for Kafka's own lag tools.

Security: every client gets the resource's ``security_protocol`` (PLAINTEXT, SASL_PLAINTEXT,
SASL_SSL, SSL), SASL mechanism and credentials (SCRAM-SHA-256/512 or PLAIN) and CA file, from the
``KAFKA_*`` variables (``KafkaResource.from_env``; Dagster definitions wire them as ``dg.EnvVar``,
see ``conflux/dagster/resources.py``). The password is never part of a repr, a message or a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import dagster as dg
from pydantic import Field
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                         ConfigResource, ConfigResourceType, NewPartitions, NewTopic,
                         ResourcePattern, ResourcePatternFilter, ResourceType,
                         UserScramCredentialUpsertion)
from kafka.structs import OffsetAndMetadata
from kafka.errors import (KafkaError, NoError, OffsetOutOfRangeError,
                          SaslAuthenticationFailedError, TopicAlreadyExistsError)

from conflux.core.errors import ConfigError, KafkaAuthenticationError, TopicConfigError

# short timeouts: these clients run inside sensor ticks and health checks
_FAST = {"request_timeout_ms": 5000, "bootstrap_timeout_ms": 5000, "reconnect_backoff_max_ms": 1000}
_GROUP_ADMINS: dict[str, KafkaAdminClient] = {}  # KafkaResource.commit_group's, per settings
_GROUP_ADMINS_LOCK = threading.Lock()


class Record(NamedTuple):
    """One consumed record, detached from kafka-python's types (a tuple: cheap to build)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]  # as kafka-python hands them over

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class TopicBounds(NamedTuple):
    """A topic's log right now: its id (None when the broker does not say: before Kafka 2.8)
    and, per partition, the earliest retained offset and the next offset to be written."""

    topic_id: str | None
    begins: dict[int, int]
    ends: dict[int, int]


class OutOfRange(NamedTuple):
    """The broker refused to read ``offset`` of a partition: it is below the earliest retained
    offset (``log_start``: removed by retention or ``delete_records``) or above the log end
    (``log_end``: the topic was recreated, or its log truncated)."""

    topic: str
    partition: int
    offset: int
    log_start: int
    log_end: int

    @property
    def in_range(self) -> bool:
        """The offsets read back hold ``offset`` after all (the refusal came from a replica
        that lagged behind): reading it again is right."""
        return self.log_start <= self.offset <= self.log_end


class AclGrant(NamedTuple):
    """One ALLOW ACL of a principal, from any host, in kafka-python's enum names: ``resource``
    TOPIC, GROUP, CLUSTER or TRANSACTIONAL_ID; ``pattern`` LITERAL or PREFIXED; ``operation``
    READ, WRITE, DESCRIBE, ..."""

    resource: str
    name: str
    pattern: str
    operation: str


SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
# the standard environment variables of the security settings (field → variable)
SECURITY_ENV = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
}


def security_config(security_protocol: str = "PLAINTEXT", sasl_mechanism: str | None = None,
                    sasl_username: str | None = None, sasl_password: str | None = None,
                    ssl_cafile: str | None = None) -> dict:
    """kafka-python's security keyword arguments for the given settings, validated.

    Raises:
        ConfigError: an unknown protocol or mechanism, a SASL protocol without username or
            password, an SSL protocol whose CA file cannot be read (unset = the system's trust
            store). Messages name the variable, never the password.
    """
    protocol = (security_protocol or "PLAINTEXT").strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={security_protocol!r} is not one of "
                          f"{', '.join(SECURITY_PROTOCOLS)}")
    config: dict = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism = (sasl_mechanism or "SCRAM-SHA-512").strip().upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"KAFKA_SASL_MECHANISM={sasl_mechanism!r} is not one of "
                              f"{', '.join(SASL_MECHANISMS)}")
        missing = [name for name, value in (("KAFKA_SASL_USERNAME", sasl_username),
                                            ("KAFKA_SASL_PASSWORD", sasl_password)) if not value]
        if missing:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)} "
                              "(set in the environment)")
        config.update(sasl_mechanism=mechanism, sasl_plain_username=sasl_username,
                      sasl_plain_password=sasl_password)
    if protocol.endswith("SSL"):
        if ssl_cafile:
            try:
                with open(ssl_cafile, "rb") as f:
                    pem = f.read()
            except OSError as exc:
                raise ConfigError(f"KAFKA_SSL_CAFILE={ssl_cafile!r} cannot be read "
                                  f"({exc.strerror or exc})") from None
            if b"-----BEGIN CERTIFICATE-----" not in pem:
                raise ConfigError(f"KAFKA_SSL_CAFILE={ssl_cafile!r} holds no PEM certificate")
            config["ssl_cafile"] = ssl_cafile
        config["ssl_check_hostname"] = True
    return config


def broker_ready(bootstrap: str, *, timeout_ms: int = 5000, node_id: int | None = None,
                 **security) -> bool:
    """True when the broker answers a metadata request within ``timeout_ms`` — and, with
    ``node_id``, lists broker ``node_id`` among the cluster's live brokers (used by health
    checks); ``security`` are :func:`security_config`'s arguments (the same credentials the
    platform's clients use).

    Raises:
        ConfigError: invalid security settings (see :func:`security_config`).
        KafkaAuthenticationError: the broker answered but refused the credentials.
    """
    config = security_config(**security)
    with _refusals() as refused:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, **config, **{
                **_FAST, "request_timeout_ms": timeout_ms, "bootstrap_timeout_ms": timeout_ms})
        except KafkaError as exc:
            if refused or isinstance(exc, SaslAuthenticationFailedError):
                raise KafkaAuthenticationError(
                    f"Kafka at {bootstrap} refused the credentials of "
                    f"{security.get('sasl_username')!r} ({config.get('sasl_mechanism')}): "
                    f"{(refused or [exc])[-1]}") from None
            return False
    try:
        cluster = admin.describe_cluster()
        return node_id is None or any(b.get("broker_id") == node_id and not b.get("is_fenced")
                                      for b in cluster["brokers"])
    except KafkaError:
        return False
    finally:
        admin.close()


@contextlib.contextmanager
def _refusals() -> Iterator[list[KafkaError]]:
    """The SASL refusals kafka-python meets meanwhile: it logs them and retries until its
    bootstrap times out, so they are taken from its log records (the exception is an argument
    of the record, whatever the wording)."""
    seen: list[KafkaError] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args if isinstance(record.args, tuple) else ()
            seen.extend(a for a in args if isinstance(a, SaslAuthenticationFailedError))

    handler, logger = _Catch(logging.WARNING), logging.getLogger("kafka")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def unacknowledged(futures: Sequence) -> tuple[int, str] | None:
    """After a producer's flush: the position of the first of ``futures`` (``send``'s results)
    the broker did not acknowledge, and why; None when every one was. A kafka-python ``flush``
    returns even when records were refused (an ACL, a record too large): only the futures say."""
    for i, future in enumerate(futures):
        if not future.succeeded():
            return i, str(future.exception or "timed out")
    return None


class Deliveries:
    """Records of a long stream of ``send`` calls the broker refused: the futures are kept
    until answered, then only the refusals are counted (memory stays bounded by the records in
    flight)."""

    PRUNE_AT = 5_000  # answered futures dropped often: fewer live objects for the GC

    def __init__(self):
        self.sent = 0
        self.refused: Counter = Counter()  # reason -> records
        self._waiting: list = []

    def track(self, future) -> None:
        self.sent += 1
        self._waiting.append(future)
        if len(self._waiting) >= self.PRUNE_AT:
            self._prune()

    def _prune(self) -> None:
        waiting = []
        for future in self._waiting:
            if not future.is_done:
                waiting.append(future)
            elif future.exception is not None:
                self.refused[type(future.exception).__name__] += 1
        self._waiting = waiting

    def check(self, what: str) -> None:
        """After a flush: raises KafkaError if a record was refused or is still unanswered."""
        self._prune()
        if self._waiting:
            self.refused["unanswered"] += len(self._waiting)
            self._waiting = []
        if n := sum(self.refused.values()):
            why = ", ".join(f"{k:,} {r}" for r, k in self.refused.most_common(3))
            raise KafkaError(f"{what}: {n:,} of {self.sent:,} records not acknowledged ({why})")


class KafkaResource(dg.ConfigurableResource):
    """How Conflux reaches Kafka. Settings come from the environment through ``dg.EnvVar``."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Comma-separated host:port list of brokers (KAFKA_BOOTSTRAP_SERVERS).",
    )
    request_timeout_ms: int = Field(
        default=5000, description="Upper bound of every broker request made by Conflux."
    )
    security_protocol: str = Field(
        default="PLAINTEXT",
        description="PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL (KAFKA_SECURITY_PROTOCOL).",
    )
    sasl_mechanism: str = Field(
        default="SCRAM-SHA-512",
        description="SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN, for the SASL protocols "
                    "(KAFKA_SASL_MECHANISM).",
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user (KAFKA_SASL_USERNAME).",
    )
    sasl_password: str | None = Field(
        default=None, repr=False,
        description="SASL password (KAFKA_SASL_PASSWORD): a secret, give it as "
                    "dg.EnvVar(\"KAFKA_SASL_PASSWORD\") so Dagster never stores its value.",
    )
    ssl_cafile: str | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates, for SSL and "
                    "SASL_SSL (KAFKA_SSL_CAFILE); unset: the system's trust store.",
    )

    @classmethod
    def from_env(cls, settings=None, *, env: Mapping[str, str] | None = None,
                 **overrides) -> "KafkaResource":
        """The resource for code outside Dagster definitions (CLI, tooling, benchmarks, tests):
        brokers and security from ``settings`` (the local stack's, :class:`conflux.core.settings.
        Settings`; ``Settings.from_env()`` when None), the password from ``env`` (the process
        environment when None).

        Examples:
            >>> kafka = KafkaResource.from_env()          # the local stack, as configured
            >>> kafka = KafkaResource.from_env(settings, request_timeout_ms=10_000)
        """
        from conflux.core.settings import Settings

        env = os.environ if env is None else env
        settings = settings or Settings.from_env(dict(env))
        values = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "security_protocol": settings.kafka_protocol,
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_username": settings.kafka_sasl_username,
            "sasl_password": env.get("KAFKA_SASL_PASSWORD") or None,
            "ssl_cafile": settings.kafka_ssl_cafile,
        }
        values.update(overrides)
        resource = cls(**values)
        resource.security()  # fail here, with the variable named, not at the first call
        return resource

    # --- clients -----------------------------------------------------------------------------
    def security(self) -> dict:
        """kafka-python's security arguments of this resource (validated; holds the password:
        never log it)."""
        return security_config(self.security_protocol, self.sasl_mechanism, self.sasl_username,
                               self.sasl_password, self.ssl_cafile)

    def ready(self, node_id: int | None = None) -> bool:
        """True when the brokers answer a metadata request with these credentials (and list
        broker ``node_id`` as live, when given)."""
        return broker_ready(self.bootstrap_servers, timeout_ms=self.request_timeout_ms,
                            node_id=node_id, **self.security_settings())

    def security_settings(self) -> dict:
        """The security fields as :func:`security_config` takes them."""
        return {"security_protocol": self.security_protocol, "sasl_mechanism": self.sasl_mechanism,
                "sasl_username": self.sasl_username, "sasl_password": self.sasl_password,
                "ssl_cafile": self.ssl_cafile}

    def _common(self) -> dict:
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_max_ms": 1000,
            **self.security(),
        }

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(**self._common())

    def producer(self, **overrides) -> KafkaProducer:
        """A producer that waits for every in-sync replica (``acks=all``: with the local
        cluster's ``min.insync.replicas=2``, two copies before the ack) and is idempotent
        (kafka-python retries a send without writing it twice; set explicitly, so an override
        that conflicts — ``acks=1``, ``retries=0`` — fails instead of silently turning it off).
        Re-sends by the application are not de-duplicated: consumers upsert by key."""
        # 8 MiB like the local broker's message.max.bytes: dead letters keep oversize values
        config = {"acks": "all", "enable_idempotence": True, "linger_ms": 5,
                  "max_block_ms": self.request_timeout_ms * 2,
                  "max_request_size": 8 * 1024 * 1024}
        config.update(overrides)
        return KafkaProducer(**self._common(), **config)

    def consumer(self, **overrides) -> KafkaConsumer:
        config = {
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "fetch_max_wait_ms": 100,
        }
        config.update(overrides)
        return KafkaConsumer(**self._common(), **config)

    def commit_group(self, group: str, offsets: Mapping[str, Mapping[int, int]],
                     timeout_ms: int = 2000) -> None:
        """Set ``group``'s committed offsets ({topic: {partition: next offset}}) without joining
        it (OffsetCommit with no generation or member: brokers accept it while the group has no
        active member). One admin client per process and settings is kept for it; it is
        dropped after a failure, so the next call starts afresh.

        Raises:
            KafkaError: the broker refused a partition (an active member, an ACL) or did not
                answer within ``timeout_ms`` (connecting a new client: ``request_timeout_ms``).
        """
        common = {**self._common(), "request_timeout_ms": timeout_ms}  # connecting: as usual
        key = repr(sorted(common.items()))  # in memory only: holds the password
        wanted = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                  for t, parts in offsets.items() for p, o in parts.items()}
        try:
            with _GROUP_ADMINS_LOCK:
                admin = _GROUP_ADMINS.get(key)
                if admin is None:
                    admin = _GROUP_ADMINS[key] = KafkaAdminClient(**common)
            deadline = time.monotonic() + timeout_ms / 1000
            while True:  # retriable refusals (a coordinator still loading) until the deadline
                try:
                    refused = {tp: err for tp, err
                               in admin.alter_group_offsets(group, wanted).items()
                               if err is not NoError}
                except KafkaError as exc:
                    if not exc.retriable or time.monotonic() > deadline:
                        raise
                    refused = {None: type(exc)}
                if not refused:
                    return
                if (not all(err.retriable for err in refused.values())
                        or time.monotonic() > deadline):
                    raise KafkaError(f"group {group}: commit refused: " + ", ".join(
                        f"{tp.topic}[{tp.partition}] {err.__name__}" if tp else err.__name__
                        for tp, err in refused.items()))
                time.sleep(0.2)
        except Exception:
            with _GROUP_ADMINS_LOCK:
                dropped = _GROUP_ADMINS.pop(key, None)
            if dropped is not None:
                with contextlib.suppress(Exception):
                    dropped.close()
            raise

    # --- users and ACLs (a secured broker's admin principal only) -----------------------------
    def upsert_scram_user(self, user: str, password: str,
                          mechanisms: Sequence[str] = ("SCRAM-SHA-256", "SCRAM-SHA-512")) -> None:
        """Create or replace ``user``'s SCRAM credentials (salted here: the password itself is
        never sent).

        Raises:
            KafkaError: the broker refused (naming the user and its message, never the password).
        """
        admin = self.admin()
        try:
            for mechanism in mechanisms:  # one request each: a user is altered once per request
                refused = admin.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(user, mechanism, password, iterations=8192)])
                if refused.get(user):
                    raise KafkaError(f"{mechanism} credentials of {user!r} refused: "
                                     f"{refused[user]}")
        finally:
            admin.close()

    def sync_acls(self, principal: str, grants: Iterable[AclGrant]) -> tuple[list[AclGrant],
                                                                             list[AclGrant]]:
        """Make ``principal``'s ACLs exactly ``grants`` (ALLOW, any host): create the missing,
        delete the others (DENY and host-bound ones included); returns (created, deleted).
        Idempotent.

        Raises:
            KafkaError: the broker refused a creation or deletion.
        """
        wanted = set(grants)
        admin = self.admin()
        try:
            current, _ = admin.describe_acls(ACLFilter(
                principal, None, ACLOperation.ANY, ACLPermissionType.ANY,
                ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
            def grant(a: ACL) -> AclGrant:
                pattern = a.resource_pattern
                return AclGrant(pattern.resource_type.name, pattern.resource_name,
                                pattern.pattern_type.name, a.operation.name)

            kept = [a for a in current if grant(a) in wanted and a.host == "*"
                    and a.permission_type == ACLPermissionType.ALLOW]
            extra = [a for a in current if a not in kept]
            missing = sorted(wanted - {grant(a) for a in kept})
            if missing:
                made = admin.create_acls([ACL(principal, "*", ACLOperation[g.operation],
                                              ACLPermissionType.ALLOW, ResourcePattern(
                                                  ResourceType[g.resource], g.name,
                                                  ACLResourcePatternType[g.pattern]))
                                          for g in missing])
                if made["failed"]:
                    raise KafkaError(f"ACLs of {principal} refused: {made['failed']}")
            if extra:
                for _, _, error in admin.delete_acls(extra):
                    if error is not NoError:
                        raise KafkaError(f"deleting ACLs of {principal} refused: {error}")
        finally:
            admin.close()
        return missing, sorted(map(grant, extra))

    # --- topics ------------------------------------------------------------------------------
    def ensure_topic(self, topic: str, partitions: int = 1, replication: int | None = None,
                     configs: dict[str, str] | None = None) -> bool:
        """Create ``topic`` (or grow it to ``partitions``) with ``replication`` replicas (None:
        the cluster's ``default.replication.factor``) and topic-level ``configs`` (also applied
        to an existing topic); returns True when created."""
        admin = self.admin()
        try:
            try:
                admin.create_topics([NewTopic(topic, partitions,
                                              -1 if replication is None else replication,
                                              topic_configs=configs or {})])
                admin.wait_for_topics([topic], timeout_ms=self.request_timeout_ms * 2)
                return True
            except TopicAlreadyExistsError:
                current = len(admin.describe_topics([topic])[0]["partitions"])
                if current < partitions:
                    admin.create_partitions({topic: NewPartitions(partitions)})
                if configs:
                    result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                 configs=configs)])
                    outcome = result.get("topic", {}).get(topic)
                    if outcome != "OK":  # kafka-python reports, does not raise
                        raise TopicConfigError(f"topic {topic}: setting {configs} failed: "
                                               f"{outcome}")
                return False
        finally:
            admin.close()

    def partition_replicas(self, topics: list[str]) -> dict[tuple[str, int], dict[str, object]]:
        """Per ``(topic, partition)``: its ``leader`` broker id (-1 when it has none), its
        ``replicas`` and its in-sync replicas (``isr``)."""
        admin = self.admin()
        try:
            described = admin.describe_topics(topics)
        finally:
            admin.close()
        return {(t["name"], p["partition_index"]): {"leader": p["leader_id"],
                                                    "replicas": sorted(p["replica_nodes"]),
                                                    "isr": sorted(p["isr_nodes"])}
                for t in described for p in t["partitions"]}

    def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        """The non-default configuration of each topic: ``{topic: {name: value}}``."""
        admin = self.admin()
        try:
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)
                                                for t in topics])
        finally:
            admin.close()
        return {name: {k: v["value"] for k, v in configs.items()}
                for name, configs in described.get("topic", {}).items()}

    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        """Delete the records of each partition below the given offset (what retention does)."""
        admin = self.admin()
        try:
            admin.delete_records({TopicPartition(topic, p): off for p, off in before.items()})
        finally:
            admin.close()

    @contextlib.contextmanager
    def _partitions_of(self, topic: str) -> Iterator[tuple[KafkaConsumer, list[TopicPartition]]]:
        """A short-lived consumer and the topic's partitions (empty when it does not exist)."""
        consumer = self.consumer()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            yield consumer, [TopicPartition(topic, p) for p in sorted(parts)]
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int] | None:
        """Next offset to be written, per partition; None when the topic does not exist."""
        with self._partitions_of(topic) as (consumer, tps):
            if not tps:
                return None
            ends = consumer.end_offsets(tps, timeout_ms=self.request_timeout_ms)
            return {tp.partition: off for tp, off in ends.items()}

    def log_bounds(self, topic: str) -> TopicBounds | None:
        """The topic's id, earliest retained and end offsets (one consumer, one metadata
        request); None when the topic does not exist."""
        with self._partitions_of(topic) as (consumer, tps):
            if not tps:
                return None
            timeout = self.request_timeout_ms
            ends = consumer.end_offsets(tps, timeout_ms=timeout)
            begins = consumer.beginning_offsets(tps, timeout_ms=timeout)
            # kafka-python keeps the id from the metadata response (KIP-516) but has no public
            # accessor for it; without one, a recreated topic is told by its offsets alone
            cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
            found = cluster.topic_id(topic) if hasattr(cluster, "topic_id") else None
            return TopicBounds(str(found) if found else None,
                               {tp.partition: o for tp, o in begins.items()},
                               {tp.partition: o for tp, o in ends.items()})

    def offsets_at(self, topic: str, timestamp_ms: int) -> dict[int, tuple[int, int, int]] | None:
        """Per partition: (first offset whose record timestamp is >= ``timestamp_ms`` — the
        end offset when none is —, earliest retained offset, end offset). None when the topic
        does not exist. Uses kafka-python's ``offsets_for_times``."""
        with self._partitions_of(topic) as (consumer, tps):
            if not tps:
                return None
            timeout = self.request_timeout_ms
            found = consumer.offsets_for_times({tp: timestamp_ms for tp in tps}, timeout_ms=timeout)
            begins = consumer.beginning_offsets(tps, timeout_ms=timeout)
            ends = consumer.end_offsets(tps, timeout_ms=timeout)
            return {tp.partition: (found[tp].offset if found.get(tp) else ends[tp], begins[tp],
                                   ends[tp]) for tp in tps}

    # --- reading and writing -----------------------------------------------------------------
    def read_range(self, topic: str, partition: int, start: int, end: int) -> Iterator[Record]:
        """Yield exactly the records with ``start <= offset < end`` of one partition."""
        return self.read_ranges([(topic, partition, start, end)])

    def read_ranges(self, ranges: Iterable[tuple[str, int, int, int]],
                    idle_timeout_s: float = 30.0,
                    on_gap: Callable[[OutOfRange, int], None] | None = None) -> Iterator[Record]:
        """Yield exactly the records of ``(topic, partition, start, end)`` ranges (``start <=
        offset < end``; one range per partition), read by one consumer assigned to all of them —
        in per-partition order, interleaved across partitions as fetched. Offsets without a
        record (transaction markers, compaction) are passed over.

        A range whose next offset the broker no longer holds is never read elsewhere: below the
        log start it goes on from there, above the log end (recreated topic) it ends;
        ``on_gap(out_of_range, range_end)`` is told first.

        Raises:
            KafkaError: when a range stops yielding records for ``idle_timeout_s`` (the broker
                is down, or the records are gone and the broker does not say so).
        """
        todo = {TopicPartition(t, p): (s, e) for t, p, s, e in ranges if e > s}
        if not todo:
            return
        consumer = self.consumer(auto_offset_reset="none")  # out of range: raise, never jump
        try:
            consumer.assign(list(todo))
            for tp, (start, _) in todo.items():
                consumer.seek(tp, start)
            position = {tp: start for tp, (start, _) in todo.items()}

            def done(tp: TopicPartition) -> None:
                del todo[tp]
                consumer.pause(tp)

            idle_since = time.monotonic()
            while todo:
                try:
                    polled = consumer.poll(timeout_ms=1000, max_records=10_000)
                except OffsetOutOfRangeError as exc:
                    for jump in self._out_of_range(consumer, exc):
                        tp = TopicPartition(jump.topic, jump.partition)
                        if tp not in todo or jump.in_range:
                            continue  # in range after all (a lagging replica): read on
                        if on_gap is not None:
                            on_gap(jump, todo[tp][1])
                        if jump.offset < jump.log_start < todo[tp][1]:
                            consumer.seek(tp, jump.log_start)
                            position[tp] = jump.log_start
                        else:
                            done(tp)
                    idle_since = time.monotonic()
                    continue
                if not polled:
                    for tp in [tp for tp in todo if consumer.position(tp) >= todo[tp][1]]:
                        done(tp)  # the range ends with offsets that hold no record
                    if todo and time.monotonic() - idle_since > idle_timeout_s:
                        stuck = ", ".join(f"{tp.topic}[{tp.partition}] at offset {position[tp]} "
                                          f"of [{s}, {e})" for tp, (s, e) in todo.items())
                        raise KafkaError(f"no records for {idle_timeout_s:g}s from {stuck}")
                    continue
                idle_since = time.monotonic()
                for tp, msgs in polled.items():
                    if tp not in todo:
                        continue
                    end = todo[tp][1]
                    for m in msgs:
                        if m.offset >= end:
                            break
                        yield Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                                     m.headers or ())
                    position[tp] = max(msgs[-1].offset + 1, consumer.position(tp))
                    if position[tp] >= end:
                        done(tp)
        finally:
            consumer.close()

    def _out_of_range(self, consumer: KafkaConsumer,
                      exc: OffsetOutOfRangeError) -> list[OutOfRange]:
        """What the broker holds of each partition an ``OffsetOutOfRangeError`` names."""
        refused = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        tps = list(refused)
        timeout = self.request_timeout_ms
        begins = consumer.beginning_offsets(tps, timeout_ms=timeout)
        ends = consumer.end_offsets(tps, timeout_ms=timeout)
        return [OutOfRange(tp.topic, tp.partition, refused[tp], begins[tp], ends[tp])
                for tp in tps]

    def poll_from(self, positions: dict[tuple[str, int], int], *, deadline: float,
                  max_records: int = 5000,
                  on_gap: Callable[[OutOfRange], None] | None = None) -> Iterator[list[Record]]:
        """Read forward from ``positions`` ({(topic, partition): next offset}) until the
        monotonic ``deadline``, yielding each poll's records (possibly an empty list, so the
        caller can flush on time).

        An offset the broker no longer holds is never passed over silently: ``on_gap`` is told,
        then a partition below its log start goes on from there, and one above its log end
        (recreated topic) is not read further."""
        consumer = self.consumer(auto_offset_reset="none")  # out of range: raise, never jump
        try:
            tps = [TopicPartition(t, p) for t, p in positions]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, positions[(tp.topic, tp.partition)])
            while (left := deadline - time.monotonic()) > 0:
                try:
                    polled = consumer.poll(timeout_ms=int(min(left, 0.1) * 1000),
                                           max_records=max_records)
                except OffsetOutOfRangeError as exc:
                    for jump in self._out_of_range(consumer, exc):
                        tp = TopicPartition(jump.topic, jump.partition)
                        if jump.in_range:
                            continue  # in range after all (a lagging replica): read on
                        if on_gap is not None:
                            on_gap(jump)
                        if jump.offset < jump.log_start:
                            consumer.seek(tp, jump.log_start)
                        else:
                            consumer.pause(tp)
                    yield []
                    continue
                yield [Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                              tuple(m.headers or ())) for msgs in polled.values() for m in msgs]
        finally:
            consumer.close()

    def send_raw(self, topic: str,
                 rows: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> int:
        """Publish (key, value, headers) triples as they are and wait for every ack."""
        with self.publisher(topic) as publish:
            return len(publish([Outgoing(key, value, list(headers))
                                for key, value, headers in rows]))

    def send_json(
        self, topic: str, rows: Iterable[tuple[bytes | None, dict, list[tuple[str, bytes]]]]
    ) -> int:
        """Publish (key, value-dict, headers) triples as JSON and wait for every ack."""
        return self.send_raw(topic, ((k, json.dumps(v).encode(), h) for k, v, h in rows))

    # --- dead-letter operations (conflux dlq) ------------------------------------------------
    @contextlib.contextmanager
    def publisher(self, topic: str) -> Iterator[Callable[[Sequence[Outgoing]], list[tuple[int, int]]]]:
        """A producer for ``topic``; the yielded function publishes a batch of :class:`Outgoing`
        records (explicit partition and timestamp when given), waits for every ack and returns
        each record's ``(partition, offset)``, in order.

        Raises:
            KafkaError: naming the topic, the partition and the batch position of the first
                record the broker did not acknowledge (the batch may be partly published).
        """
        producer = self.producer()
        wait_s = self.request_timeout_ms / 1000 * 6

        def publish(batch: Sequence[Outgoing]) -> list[tuple[int, int]]:
            futures = [producer.send(topic, key=o.key, value=o.value, headers=list(o.headers),
                                     partition=o.partition, timestamp_ms=o.timestamp_ms)
                       for o in batch]
            producer.flush(timeout=wait_s)
            if bad := unacknowledged(futures):
                i, why = bad
                where = f"{topic}[{batch[i].partition}]" if batch[i].partition is not None \
                    else topic
                raise KafkaError(f"{where}: record {i + 1} of {len(batch)} not acknowledged: {why}")
            return [(f.value.partition, f.value.offset) for f in futures]

        try:
            yield publish
        finally:
            producer.close(timeout=5)

    def record_timestamps(self, wanted: Mapping[tuple[str, int], Iterable[int]],
                          idle_timeout_s: float = 10.0) -> dict[tuple[str, int, int], int]:
        """Timestamps of the records at the given offsets of each ``(topic, partition)``, read
        by one consumer; offsets no longer in the log (retention, compaction) are left out.
        Nearby offsets are read on sequentially (decoding no more records than needed), far
        ones are sought."""
        found: dict[tuple[str, int, int], int] = {}
        todo_by_tp = {TopicPartition(t, p): sorted(set(offs)) for (t, p), offs in wanted.items()}
        todo_by_tp = {tp: offs for tp, offs in todo_by_tp.items() if offs}
        if not todo_by_tp:
            return found
        consumer = self.consumer()
        try:
            timeout = self.request_timeout_ms
            begins = consumer.beginning_offsets(list(todo_by_tp), timeout_ms=timeout)
            ends = consumer.end_offsets(list(todo_by_tp), timeout_ms=timeout)
            for tp, offsets in todo_by_tp.items():
                todo = [o for o in offsets if begins[tp] <= o < ends[tp]]
                consumer.assign([tp])
                i, position = 0, None
                while i < len(todo):
                    target = todo[i]
                    if position is None or not position <= target < position + 5000:
                        consumer.seek(tp, target)  # far ahead (or behind): jump; near: read on
                        position = target
                    want = max(1, min(5000, todo[-1] - position + 1))
                    idle_since = time.monotonic()
                    got = []
                    while not got:
                        got = consumer.poll(timeout_ms=500, max_records=want).get(tp, [])
                        if not got and time.monotonic() - idle_since > idle_timeout_s:
                            break  # the log ends early (deleted meanwhile)
                    if not got:
                        break
                    for m in got:
                        while i < len(todo) and todo[i] < m.offset:
                            i += 1  # not in the log any more (compacted)
                        if i < len(todo) and todo[i] == m.offset:
                            found[(tp.topic, tp.partition, m.offset)] = m.timestamp
                            i += 1
                    position = got[-1].offset + 1
            return found
        finally:
            consumer.close()


class Outgoing(NamedTuple):
    """A record to publish as it is: partition and timestamp are the producer's when None."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    partition: int | None = None
    timestamp_ms: int | None = None
