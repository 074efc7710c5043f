"""Publishing as a producer team with its own Confluent client would: confluent-kafka's
``Producer`` and ``JSONSerializer`` (Confluent wire format: magic byte 0, the schema id, the JSON),
the schema looked up — or registered — by the serializer under ``<topic>-value`` (its default
subject naming) through Conflux's Schema Registry API (``CONFLUX_SCHEMA_REGISTRY_URL``)."""

from __future__ import annotations

import json
import os

from confluent_kafka import KafkaException, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from conflux.core.errors import ConfluxError
from conflux.event.decode import CONTRACT_HEADER
from conflux.event.publish import Outgoing
from conflux.io.kafka import KafkaResource

# kafka-python's security arguments (KafkaResource.security()) -> librdkafka's
_LIBRDKAFKA = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
               "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
               "ssl_cafile": "ssl.ca.location"}


def registry_client(url: str | None = None) -> SchemaRegistryClient:
    """A client of the Schema Registry API at ``url`` (default ``CONFLUX_SCHEMA_REGISTRY_URL``,
    else the local stack's), with basic auth when ``CONFLUX_SCHEMA_REGISTRY_USER`` is set."""
    from conflux.core.settings import Settings

    conf = {"url": url or os.environ.get("CONFLUX_SCHEMA_REGISTRY_URL")
            or Settings.from_env().schema_registry_url}
    user = os.environ.get("CONFLUX_SCHEMA_REGISTRY_USER")
    if user:
        password = os.environ.get("CONFLUX_SCHEMA_REGISTRY_PASSWORD", "")
        conf["basic.auth.user.info"] = f"{user}:{password}"
    return SchemaRegistryClient(conf)


def producer_config(kafka: KafkaResource) -> dict:
    """librdkafka settings for ``kafka``'s brokers and security."""
    conf = {"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20,
            "enable.idempotence": True}
    for name, value in kafka.security().items():
        conf[_LIBRDKAFKA[name]] = value.lower() if name == "security_protocol" else value
    return conf


def frame(records: list[Outgoing], schemas: dict[str, dict], registry: SchemaRegistryClient,
          conf: dict | None = None) -> list[Outgoing]:
    """``records`` with each good or duplicate value of a topic in ``schemas`` serialized by a
    ``JSONSerializer`` of that topic's schema (default settings, unless ``conf``: it registers
    the schema under ``<topic>-value`` or finds it there) and its ``contract`` header dropped,
    as a Confluent producer sends it; invalid records are left as they are."""
    serializers = {topic: JSONSerializer(json.dumps(schema), registry, conf=conf)
                   for topic, schema in schemas.items()}
    out = []
    for rec in records:
        serialize = serializers.get(rec.topic)
        if serialize is None or rec.kind.startswith("invalid") or rec.value is None:
            out.append(rec)
            continue
        value = serialize(json.loads(rec.value),
                          SerializationContext(rec.topic, MessageField.VALUE))
        out.append(Outgoing(rec.topic, rec.key, value,
                            [h for h in rec.headers if h[0] != CONTRACT_HEADER], rec.kind))
    return out


class ConfluentProducer:
    """confluent-kafka's ``Producer`` behind the few calls ``publish_all`` makes (``send``,
    ``flush``, ``close``); a record the broker refused fails ``flush``."""

    def __init__(self, conf: dict):
        self._producer = Producer(conf)
        self._failed: list[str] = []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers or None,
                                       on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        try:
            left = self._producer.flush(timeout)
        except KafkaException as exc:
            raise ConfluxError(f"confluent-kafka producer: {exc}") from exc
        if left or self._failed:
            raise ConfluxError(f"confluent-kafka producer: {left} record(s) not delivered in "
                               f"{timeout:g}s, {len(self._failed)} refused "
                               f"{'; '.join(self._failed[:3])}")

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
