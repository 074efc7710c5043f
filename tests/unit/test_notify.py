"""Notifications: settings, messages, what the notify sensor reports when (pure), and delivery
to a real HTTP receiver on loopback."""

import pytest

from conflux.core.errors import ConfigError
from conflux.observe.notify import (NotifySettings, Watch, check_message, deliver,
                                    run_failed_message, stall_reason)
from tests.webhook import Receiver

UI = "http://127.0.0.1:3000"


def test_off_unless_a_webhook_is_set_and_bad_values_are_refused_by_name():
    assert NotifySettings.from_env({}).webhook_url is None
    on = NotifySettings.from_env({"CONFLUX_NOTIFY_WEBHOOK_URL": "https://hooks.example/x",
                                  "CONFLUX_DAGSTER_PORT": "3100"})
    assert (on.webhook_url, on.ui_url, on.stall_seconds) == ("https://hooks.example/x",
                                                             "http://127.0.0.1:3100", 120)
    with pytest.raises(ConfigError, match="CONFLUX_NOTIFY_WEBHOOK_URL"):
        NotifySettings.from_env({"CONFLUX_NOTIFY_WEBHOOK_URL": "hooks.example/x"})
    with pytest.raises(ConfigError, match="CONFLUX_UI_URL"):
        NotifySettings.from_env({"CONFLUX_UI_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="CONFLUX_NOTIFY_STALL_SECONDS"):
        NotifySettings.from_env({"CONFLUX_NOTIFY_STALL_SECONDS": "20"})


def test_messages_are_slack_json_with_a_link_to_the_page():
    run = run_failed_message(UI, "lake_vacuum", "abcdef0123456789",
                             "dagster._core.definitions.events.Failure: boom\ntraceback...")
    assert run["text"].startswith("Run failed: lake_vacuum: run abcdef01: boom <")
    assert f"<{UI}/runs/abcdef0123456789|open in Dagster>" in run["text"]
    assert run["blocks"][0]["type"] == "section"
    check = check_message(UI, "orders", "dead_letters", False, "12 dead letters")
    assert check["text"].startswith("Check failing: orders dead_letters: 12 dead letters")
    assert f"{UI}/assets/orders?view=checks" in check["text"]


def test_stall_reason_tells_a_silent_sensor_from_one_falling_behind():
    assert stall_reason(100.0, 95.0, 95.0, 0, stall_s=30) is None
    assert "no observation" in stall_reason(100.0, 50.0, 50.0, 0, stall_s=30)
    assert "no observation" in stall_reason(100.0, None, None, None, stall_s=30)
    behind = stall_reason(100.0, 99.0, 40.0, 1234, stall_s=30)
    assert "not caught up for 60s" in behind and "lag 1,234" in behind


def test_watch_reports_changes_once_and_waits_out_the_start():
    w = Watch(since=0.0, checks={}, stalled={}, outbox=[])
    # starting up: a failing check and a silent sensor are not reported yet
    w.check(UI, "orders", "freshness_check", 1, False, "stale", now=5.0, grace_s=10)
    w.sensor(UI, "orders", "no observation", now=5.0, grace_s=10)
    assert w.outbox == [] and w.checks == {} and w.stalled == {}
    # after the grace period: reported once
    for now in (20.0, 35.0):
        w.check(UI, "orders", "freshness_check", 2, False, "stale", now=now, grace_s=10)
        w.sensor(UI, "orders", "no observation", now=now, grace_s=10)
    assert [m["text"].split(":")[0] for m in w.outbox] == ["Check failing", "Not catching up"]
    # a new failing evaluation is no news; passing again is
    w.check(UI, "orders", "freshness_check", 3, False, "stale", now=40.0, grace_s=10)
    w.check(UI, "orders", "freshness_check", 4, True, "fresh", now=50.0, grace_s=10)
    w.sensor(UI, "orders", None, now=50.0, grace_s=10)
    assert [m["text"].split(":")[0] for m in w.outbox[2:]] == ["Check passing again",
                                                               "Caught up again"]
    # a check first seen passing says nothing
    w.check(UI, "lineitem", "dead_letters", 9, True, "", now=60.0, grace_s=10)
    assert len(w.outbox) == 4


def test_delivery_posts_in_order_and_keeps_what_the_webhook_refused():
    receiver = Receiver()
    try:
        messages = [{"text": f"m{i}"} for i in range(3)]
        assert deliver(receiver.url, messages) == []
        assert receiver.texts() == ["m0", "m1", "m2"]
        receiver.status = 500
        assert deliver(receiver.url, messages) == messages
    finally:
        receiver.close()
    assert deliver(receiver.url, messages[:1]) == messages[:1]  # nobody listening: kept


def test_the_notify_sensor_on_a_real_instance_posts_changes_only():
    import json
    import time

    import dagster as dg

    from conflux.contracts.metadata import LAST_UPDATED
    from conflux.observe.notify import notification_sensors
    from pipelines.catalog import ORDERS

    receiver = Receiver()
    try:
        settings = NotifySettings(webhook_url=receiver.url, ui_url=UI, stall_seconds=30)
        _, notify = notification_sensors([ORDERS], settings=settings)
        with dg.DagsterInstance.ephemeral() as instance:
            def tick(cursor):
                result = notify.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                                      cursor=cursor))
                return result.cursor

            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("orders"), check_name="dead_letters", passed=False,
                description="7 dead letters in the window"))
            cursor = tick(json.dumps({"since": 0}))  # started long ago: no grace left
            assert [t.split(" <")[0] for t in receiver.texts()] == [
                "Check failing: orders dead_letters: 7 dead letters in the window",
                "Not catching up: orders: no observation from its Kafka sensor for ever "
                "(stopped, failing or daemon down)"]
            cursor = tick(cursor)
            assert len(receiver.received) == 2  # nothing changed: nothing sent

            instance.report_runless_asset_event(dg.AssetObservation(
                asset_key="orders", metadata={LAST_UPDATED: dg.MetadataValue.timestamp(
                    time.time()), "conflux/lag_records": 0}))
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("orders"), check_name="dead_letters", passed=True))
            receiver.status = 500  # refused: kept in the cursor, sent at the next tick
            cursor = tick(cursor)
            assert len(json.loads(cursor)["outbox"]) == 2 and len(receiver.received) == 2
            receiver.status = 200
            tick(cursor)
            assert [t.split(":")[0] for t in receiver.texts()[2:]] == ["Check passing again",
                                                                        "Caught up again"]
    finally:
        receiver.close()
