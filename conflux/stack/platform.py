"""What the platform sets up on its services once they run: topics and registered contracts."""

from __future__ import annotations

from collections.abc import Callable

from conflux.core.settings import Settings


def project_catalog(report: Callable[[str], None]) -> tuple:
    """The project's declarations; none (and a line saying so) when the folder has no catalog,
    so a bare stack still starts."""
    from conflux.core.project import Project

    project = Project.find()
    if not project.catalog:
        report(f"project {project.root}: no [tool.conflux] catalog, so no topics or contracts "
               "to set up")
        return ()
    from conflux.core.project import load_catalog

    return load_catalog()


def ensure_platform_topics(settings: Settings, report: Callable[[str], None] = print) -> None:
    """Create each event dataset's topics and dead-letter topic with explicit partitions,
    replicated on the local cluster (:func:`conflux.stack.kafka.replication`: 3 replicas and
    ``min.insync.replicas=2`` from 3 nodes on; 1 on a single broker). An event-sourced
    (append-only) dataset's topics keep every record (``retention.ms=-1``): its projection must
    stay rebuildable from offset zero.

    A secured local broker's topics are created by its admin principal, which then gives the
    platform's principal (and producer teams) their ACLs (:func:`conflux.stack.acls.provision`)."""
    from conflux.stack.acls import admin_resource, provision
    from conflux.stack.kafka import replication
    from conflux.core.declarations import EventDataset
    from conflux.io.kafka import KafkaResource

    secured = settings.kafka_security != "plaintext"
    kafka = admin_resource(settings) if secured else KafkaResource.from_env(settings)
    factor, min_isr = replication(settings.kafka_brokers)
    isr = {"min.insync.replicas": str(min_isr)} if settings.kafka_brokers > 1 else {}
    datasets = [d for d in project_catalog(report) if isinstance(d, EventDataset)]
    for ds in datasets:
        kept = {**isr, "retention.ms": "-1"} if ds.append_only else isr
        for topic, partitions, configs in [*((t, ds.partitions, kept) for t in ds.topics),
                                           (ds.dlq_topic, 1, isr)]:
            if kafka.ensure_topic(topic, partitions, factor, configs=configs or None):
                report(f"kafka: created topic {topic} ({partitions} partitions"
                       + (f", {factor} replicas, min.insync.replicas {min_isr})"
                          if factor > 1 else ")"))
    if secured:
        provision(settings, datasets, report)


def register_contracts(settings: Settings, report: Callable[[str], None] = print) -> dict[str, str]:
    """Register every declared contract; a breaking change stops the deployment here."""
    from conflux.cli.contracts import register_all
    from conflux.io.schema_registry import SchemaRegistry

    lines: list[str] = []
    refs = register_all(SchemaRegistry(settings.postgres_url), project_catalog(report),
                        report=lines.append)
    created = [line for line in lines if " registered " in line]
    report(f"registry: {len(refs)} contracts registered"
           + (f" ({len(created)} new version(s))" if created else ", all unchanged"))
    return refs
