"""The cursor mirrored into a consumer group: the group's name, the offsets it shows (ranges
requested from runs and not applied are not consumed yet), commits only when due, and a commit
that fails is logged and retried without failing the tick."""

from __future__ import annotations

import time

from conflux.event import group_mirror
from conflux.event.offsets import (Pending, Range, TickState, consumer_group, group_offsets,
                                   mirror_due)
from conflux.io.kafka import KafkaResource


def test_the_group_is_named_after_the_dataset():
    assert consumer_group("orders") == "conflux.orders"
    assert consumer_group("customer_ledger") == "conflux.customer_ledger"


def test_the_group_shows_the_cursor_held_back_to_ranges_no_run_applied_yet():
    state = TickState(offsets={"t": {0: 100, 1: 50, 2: 7}, "u": {0: 3}}, pending=(
        Pending("k1", (Range("t", 0, 60, 80), Range("t", 1, 40, 50)), 0.0),
        Pending("k2", (Range("t", 0, 80, 100), Range("v", 0, 5, 9)), 0.0)))
    assert group_offsets(state) == {"t": {0: 60, 1: 40, 2: 7}, "u": {0: 3}, "v": {0: 5}}
    assert group_offsets(TickState(offsets={"t": {0: 9}})) == {"t": {0: 9}}


def test_a_commit_is_due_when_the_offsets_changed_or_the_last_one_is_old():
    cursor = {"t": {0: 5, 1: 6}}
    assert mirror_due(cursor, None, 0.0, 100.0, 60)  # never committed by this process
    assert not mirror_due(cursor, {"t": {0: 5, 1: 6}}, 90.0, 100.0, 60)  # unchanged, recent
    assert mirror_due(cursor, {"t": {0: 5, 1: 5}}, 90.0, 100.0, 60)  # moved
    assert mirror_due(cursor, cursor, 30.0, 100.0, 60)  # unchanged, committed 70 s ago
    assert not mirror_due({}, None, 0.0, 100.0, 60)  # nothing read yet: nothing to commit
    assert not mirror_due({"t": {}}, None, 0.0, 100.0, 60)


class Log:
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def test_a_failed_commit_is_logged_quickly_and_tried_again_next_time():
    down = KafkaResource(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000)  # nothing there
    state = TickState(offsets={"t": {0: 5}})
    log = Log()
    started = time.monotonic()
    assert group_mirror.mirror_cursor("unit_mirror", state, down, log) is False
    assert group_mirror.mirror_cursor("unit_mirror", state, down, log) is False  # not cached
    assert time.monotonic() - started < 2 * (1 + group_mirror.TIMEOUT_MS / 1000) + 2
    assert len(log.warnings) == 2
    assert all(w.startswith("consumer group conflux.unit_mirror not updated (the cursor is "
                            "unaffected): ") for w in log.warnings)
