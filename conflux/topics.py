"""The platform creates its own topics with explicit partition counts (auto-create is off)."""

from __future__ import annotations

from conflux.settings import Settings


def ensure_platform_topics(settings: Settings) -> list[str]:
    """Create each event dataset's topic and dead-letter topic; returns report lines."""
    from pipelines.catalog import event_datasets
    from resources.kafka import KafkaResource

    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    lines = []
    for ds in event_datasets():
        for topic, partitions in ((ds.topic, ds.partitions), (ds.dlq_topic, 1)):
            created = kafka.ensure_topic(topic, partitions)
            if created:
                lines.append(f"kafka: created topic {topic} ({partitions} partitions)")
    return lines
