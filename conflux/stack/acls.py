"""The secured local broker's principals and ACLs (``docs/security.md`` has the table).

Two principals: the **admin** (``CONFLUX_KAFKA_ADMIN_USERNAME``, a super user, the broker's own
inter-broker login), which only the stack uses — to create topics, SCRAM users and ACLs —, and
the **platform** (``KAFKA_SASL_USERNAME``), which every sensor, run, relay and CLI command uses
and which gets exactly the ACLs :func:`platform_grants` lists, each for a code path that needs
it. Producer teams (``CONFLUX_KAFKA_PRODUCERS``) get WRITE and DESCRIBE on their topics.

:func:`provision` runs at every ``conflux stack up`` of a secured broker: it (re)writes the
platform user's SCRAM credentials from the environment and syncs the ACLs of the platform and
of each producer team: missing ones are created, others of those principals deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from conflux.core.errors import ConfigError, KafkaAuthenticationError, StackError
from conflux.core.settings import Settings
from conflux.event.offsets import GROUP_PREFIX
from conflux.io.kafka import AclGrant, KafkaResource

# operation → why the platform needs it, per kind of resource (the docs' table says the same)
EVENT_TOPIC = {
    "READ": "sensors, ingest and replay runs, trace and the ledger audit read its records",
    "DESCRIBE": "metadata and offsets: sensor bounds, conflux lag, replay since a time",
    "WRITE": "conflux dlq replay re-publishes dead letters to it; the outbox relay publishes "
             "ops changes to it",
}
DLQ_TOPIC = {
    "WRITE": "ingest (sensor or run) publishes dead letters",
    "READ": "the dead_letters check, metrics, conflux dlq list/replay and trace read them",
    "DESCRIBE": "metadata and offsets of the above",
}
GROUPS = {
    "READ": "the sensor mirrors its cursor into conflux.<dataset> (OffsetCommit)",
    "DESCRIBE": "FindCoordinator and OffsetFetch of the mirror; kafka-consumer-groups --describe",
}
PRODUCER_TOPIC = {
    "WRITE": "publish (an idempotent producer's InitProducerId needs WRITE on some topic)",
    "DESCRIBE": "metadata: the producer's partitions and leaders",
}


def principal(user: str) -> str:
    return f"User:{user}"


def platform_grants(datasets: Iterable) -> list[tuple[AclGrant, str]]:
    """The platform principal's ACLs for ``datasets`` (event datasets; others are skipped),
    each with its reason (pure). No cluster ACL: topics are created by the admin, no producer
    is transactional, and Kafka 2.8+ lets an idempotent producer in with WRITE on any topic
    (KIP-679) instead of IdempotentWrite."""
    topics: dict[str, dict[str, str]] = {}
    for ds in datasets:
        if not hasattr(ds, "dlq_topic"):
            continue
        for topic in ds.topics:
            topics.setdefault(topic, EVENT_TOPIC)
        topics[ds.dlq_topic] = DLQ_TOPIC
    out = [(AclGrant("TOPIC", topic, "LITERAL", op), why)
           for topic in sorted(topics) for op, why in topics[topic].items()]
    out += [(AclGrant("GROUP", GROUP_PREFIX, "PREFIXED", op), why) for op, why in GROUPS.items()]
    return out


def producer_grants(topics: Iterable[str]) -> list[tuple[AclGrant, str]]:
    """A producer team's ACLs on its ``topics`` (pure)."""
    return [(AclGrant("TOPIC", t, "LITERAL", op), why)
            for t in sorted(set(topics)) for op, why in PRODUCER_TOPIC.items()]


def admin_resource(settings: Settings) -> KafkaResource:
    """A client of the secured local broker as its admin principal (the stack's own)."""
    from conflux.stack.kafka import admin_from_env

    user, password = admin_from_env(settings)
    return KafkaResource.from_env(settings, sasl_username=user, sasl_password=password,
                                  request_timeout_ms=15_000)


def await_login(client: KafkaResource, timeout_s: float = 15.0) -> None:
    """Wait until ``client`` logs in (a new SCRAM credential reaches the broker's metadata
    within moments).

    Raises:
        KafkaAuthenticationError: still refused after ``timeout_s``.
        StackError: no answer at all by then.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ready():
                return
        except KafkaAuthenticationError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise StackError(f"kafka: no answer to {client.sasl_username!r} within {timeout_s:g}s")
        time.sleep(0.5)


def provision(settings: Settings, datasets: Iterable,
              report: Callable[[str], None] = print) -> None:
    """Write the platform user's SCRAM credentials (from ``KAFKA_SASL_USERNAME`` /
    ``KAFKA_SASL_PASSWORD``) and sync the ACLs of the platform and of the producer teams,
    as the admin principal."""
    from conflux.stack.kafka import scram_user_from_env

    admin = admin_resource(settings)
    user, password = scram_user_from_env()
    for team, _ in settings.kafka_producers:
        if team in (user, settings.kafka_admin_username):
            raise ConfigError(f"CONFLUX_KAFKA_PRODUCERS: {team!r} is the platform's or the admin's "
                              "user; give a producer team a user of its own")
    admin.upsert_scram_user(user, password)
    await_login(KafkaResource.from_env(settings))
    wanted = [(user, platform_grants(datasets))]
    wanted += [(team, producer_grants(topics)) for team, topics in settings.kafka_producers]
    for name, grants in wanted:
        created, deleted = admin.sync_acls(principal(name), [g for g, _ in grants])
        report(f"kafka: ACLs of {principal(name)}: {len(grants)}"
               + (f" ({len(created)} created" if created else " (unchanged")
               + (f", {len(deleted)} removed)" if deleted else ")"))
