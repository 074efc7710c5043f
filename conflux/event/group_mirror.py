"""The sensor's saved cursor, mirrored into a Kafka consumer group for Kafka's own lag tools.

Each event dataset's sensor commits its cursor into the consumer group ``conflux.<dataset>``
(:func:`conflux.event.offsets.consumer_group`) without joining it, so ``kafka-consumer-groups
--describe --group conflux.<dataset>`` (and Burrow, and any exporter reading committed offsets)
shows the dataset's committed offsets and lag. The cursor stays the commit: nothing reads the
group back.

A tick mirrors the cursor it starts from — the one Dagster saved when the previous tick returned
— once Kafka has answered for the topics' bounds, and only when it changed since this process
last committed it (or that commit is ``REFRESH_S`` old). The group therefore lags the cursor by
the records applied since the previous tick started: at most one tick's work plus the interval
between ticks (about 5 s while records flow); in runs mode, requested ranges count as consumed
only once a run applied them (:func:`conflux.event.offsets.group_offsets`). A commit that fails
(broker unreachable, refused) is logged as a warning and retried at the next tick; the group
then lags by more, never the dataset.
"""

from __future__ import annotations

import threading
import time

from conflux.event.offsets import Cursor, TickState, consumer_group, group_offsets, mirror_due
from conflux.io.kafka import KafkaResource

REFRESH_S = 60.0  # an unchanged cursor is committed again this often
TIMEOUT_MS = 2000  # at most this long per commit: a tick is never held up for long

_mirrored: dict[tuple[str, str], tuple[Cursor, float]] = {}  # (brokers, group) -> last commit
_lock = threading.Lock()


def mirror_cursor(dataset: str, state: TickState, kafka: KafkaResource, log=None) -> bool:
    """Commit the group offsets of ``state`` (a saved tick state) into ``dataset``'s group when
    due; True when committed (False: not due, or failed and logged with ``log.warning``)."""
    group = consumer_group(dataset)
    wanted = group_offsets(state)
    key = (kafka.bootstrap_servers, group)
    now = time.monotonic()
    with _lock:
        last, last_at = _mirrored.get(key, (None, 0.0))
    if not mirror_due(wanted, last, last_at, now, REFRESH_S):
        return False
    try:
        kafka.commit_group(group, wanted, timeout_ms=TIMEOUT_MS)
    except Exception as exc:  # the cursor is the truth: the group just lags until the next tick
        if log is not None:
            log.warning(f"consumer group {group} not updated (the cursor is unaffected): {exc}")
        return False
    with _lock:
        _mirrored[key] = (wanted, now)
    return True
