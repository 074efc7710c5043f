"""A 3-node KRaft cluster on loopback (``CONFLUX_KAFKA_BROKERS=3``), in a stack of its own
(``.conflux/cluster-test``, ports 31092-31097, 31432, 31000): the platform's topics are
replicated 3 times with ``min.insync.replicas=2``, and stopping the broker that leads the most
partitions while demo events flow (``reliability.chaos``, target ``broker``: once ``kill -9``
and restarted at once, once stopped with SIGTERM — a controlled shutdown — for 15 s) loses
nothing, applies nothing twice, leaves the sensors' cursors moving forward only and ending at the
topics' end offsets — and the stopped broker rejoins every ISR.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = {
    "CONFLUX_HOME": str(REPO / ".conflux" / "cluster-test"),
    "CONFLUX_KAFKA_BROKERS": "3",
    "CONFLUX_KAFKA_PORT": "31092",
    "CONFLUX_KAFKA_CONTROLLER_PORT": "31093",
    "CONFLUX_PG_PORT": "31432",
    "CONFLUX_DAGSTER_PORT": "31000",
    "CONFLUX_WORKSPACE": str(REPO / "workspace.yaml"),
}
TOPICS = ("tpch.orders", "tpch.lineitem", "ledger.customer")
DATASETS = ("orders", "lineitem", "customer_ledger")


@pytest.fixture(scope="module")
def cluster():
    """Postgres, three Kafka nodes and the Dagster daemon, from a clean slate; this process's
    environment points at them meanwhile (the chaos harness and Dagster read it)."""
    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.stack.dagster import write_instance

    with pytest.MonkeyPatch.context() as mp:
        for name, value in CLUSTER_ENV.items():
            mp.setenv(name, value)
        settings = Settings.from_env()
        for name, value in settings.client_env().items():
            mp.setenv(name, value)
        stack = Stack(settings)
        stack.reset(report=lambda line: None)
        began = time.monotonic()
        lines: list[str] = []
        started = stack.up(["postgres", "kafka", "dagster-daemon"], report=lines.append)
        write_instance(settings)
        print(f"cluster stack up in {time.monotonic() - began:.1f}s:\n" + "\n".join(lines))
        try:
            yield stack
        finally:
            stack.down(started, report=print)


def cursors(instance) -> dict[tuple[str, int], int]:
    """The event sensors' cursors: the next offset to apply, per (topic, partition)."""
    from reliability.chaos import sensor_states
    from conflux.event.offsets import parse_cursor

    found = {}
    for state in sensor_states(instance, [f"{d}__kafka" for d in DATASETS]).values():
        data = state.instigator_data
        for topic, parts in parse_cursor(getattr(data, "cursor", None)).items():
            found.update({(topic, int(p)): off for p, off in parts.items()})
    return found


class CursorWatch(threading.Thread):
    """Samples the event sensors' cursors and which Kafka nodes run, once a second."""

    def __init__(self, stack):
        super().__init__(name="cursor-watch", daemon=True)
        self.stack = stack
        self.samples: list[tuple[float, dict[tuple[str, int], int], list[str]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import dagster as dg

        with dg.DagsterInstance.from_config(str(self.stack.settings.dagster_home)) as instance:
            while not self.stop.wait(1.0):
                try:
                    cursor = cursors(instance)
                except Exception:  # noqa: BLE001 - Postgres busy: skip this sample
                    continue
                running = [n for n in self.stack.kafka_nodes
                           if self.stack.services[n].status().running]
                self.samples.append((time.time(), cursor, running))


@pytest.mark.timeout(300)
def test_a_broker_stopped_while_events_flow_loses_nothing_and_rejoins(cluster):
    import dagster as dg

    from reliability.chaos import run
    from conflux.io.kafka import KafkaResource

    settings = cluster.settings
    kafka = KafkaResource.from_env(settings)
    assert settings.kafka_bootstrap == "127.0.0.1:31092,127.0.0.1:31094,127.0.0.1:31096"

    # the platform's topics: 3 replicas, 2 of them needed in sync; producers acks=all, idempotent
    replicas = kafka.partition_replicas([*TOPICS, *(f"{t}.dlq" for t in TOPICS)])
    assert len(replicas) == 12
    assert all(r["replicas"] == [1, 2, 3] for r in replicas.values()), replicas
    configs = kafka.topic_configs([*TOPICS, "tpch.orders.dlq"])
    assert all(c.get("min.insync.replicas") == "2" for c in configs.values()), configs
    assert configs["ledger.customer"].get("retention.ms") == "-1"
    # a topic created without a replication factor gets the cluster's default (3)
    scratch = f"test.cluster.{uuid.uuid4().hex[:8]}"
    assert kafka.ensure_topic(scratch, 2)
    assert [r["replicas"] for r in kafka.partition_replicas([scratch]).values()] == [[1, 2, 3]] * 2
    producer = kafka.producer()
    try:
        assert producer.config["acks"] == -1 and producer.config["enable_idempotence"] is True
        assert producer.send(scratch, b"x").get(timeout=30).offset == 0
    finally:
        producer.close(timeout=5)

    watch = CursorWatch(cluster)
    watch.start()
    seed = int(os.environ.get("CONFLUX_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"chaos seed {seed} (replay: CONFLUX_CHAOS_SEED={seed})")
    try:
        result = run(events=3000, kills=1, targets=("broker",), outages=[("broker", 15.0)],
                     seed=seed, catch_up_timeout=120, settings=settings)
    finally:
        watch.stop.set()
        watch.join(10)
    report = "\n".join(result.lines())
    print(report)

    # the busiest broker was killed and restarted, then stopped and started, while events flowed
    kill, fault = result.faults
    assert kill.kind == "kill" and kill.target == "broker", report
    assert kill.detail.startswith("killed kafka") and "restarted in" in kill.detail, report
    assert fault.target == "broker" and " down 15s; started again" in fault.detail, report
    stopped = fault.detail.split()[0]
    assert stopped in cluster.kafka_nodes, report

    # nothing lost, nothing applied twice, nothing changed
    for name, figures in result.datasets.items():
        assert figures["expected"] > 0, name
        assert figures["missing"] == figures["extra"] == 0, (name, report)
        assert figures["duplicated"] == figures["changed"] == 0, (name, report)
    assert result.ok, report

    # the sensors applied events while the broker was down, and their cursors never went back
    samples = watch.samples
    assert len(samples) > 10
    down = [s for s in samples if stopped not in s[2]]
    assert len(down) >= 5, [(round(t), nodes) for t, _, nodes in samples]
    total = lambda cursor: sum(v for (t, _), v in cursor.items() if t in TOPICS)  # noqa: E731
    assert total(down[-1][1]) > total(down[0][1]), "no progress while the broker was down"
    for (_, before, _), (_, after, _) in zip(samples, samples[1:]):
        for tp, offset in before.items():
            assert after.get(tp, offset) >= offset, (tp, offset, after.get(tp))

    # ... and end at the topics' end offsets
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        final = cursors(instance)
    ends = {(topic, p): end for topic in TOPICS for p, end in kafka.end_offsets(topic).items()}
    assert len(ends) == 9 and all(ends.values()), ends
    assert {tp: final.get(tp) for tp in ends} == ends

    # the stopped broker rejoined: live in the cluster and back in every partition's ISR
    assert cluster.services[stopped].status().running
    deadline = time.monotonic() + 60
    while True:
        replicas = kafka.partition_replicas([*TOPICS, *(f"{t}.dlq" for t in TOPICS)])
        lagging = {tp: r["isr"] for tp, r in replicas.items() if r["isr"] != [1, 2, 3]}
        if not lagging:
            break
        assert time.monotonic() < deadline, f"ISR not back to 3 after 60 s: {lagging}"
        time.sleep(1)
    assert all(kafka.ready(node_id=n) for n in (1, 2, 3))
