"""Notifications to a webhook: failed runs, failing checks, Kafka sensors that stop catching up.

Off unless ``CONFLUX_NOTIFY_WEBHOOK_URL`` is set. Messages are Slack-compatible JSON (``text``
plus ``blocks``) posted with ``slack_sdk``'s ``WebhookClient``, so a Slack incoming webhook, or
anything accepting the same JSON (Mattermost, Rocket.Chat, a relay), receives them; each links to
the UI page to act on (``CONFLUX_UI_URL``, default the stack's webserver). Two sensors, running by
default when configured:

* ``conflux_notify_run_failures`` — Dagster's run-failure sensor: one message per failed run;
* ``conflux_notify`` — every ``EVERY_S`` seconds: a watched check (``dead_letters``,
  ``freshness_check``, ``matches_batch_source``, ``offset_gaps``) whose latest evaluation
  turned failing, or passing again; an event dataset whose Kafka sensor has not caught up for
  ``CONFLUX_NOTIFY_STALL_SECONDS`` (or made no observation at all: stopped, failing, daemon
  down; never less than two of its observation intervals), and when it catches up again. Only changes are sent; a message the webhook refused is
  kept in the cursor and sent again at the next tick (at most ``MAX_KEPT``).

Manual: docs/notifications.md.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import dagster as dg

from conflux.core.declarations import Dataset, EventDataset
from conflux.core.errors import ConfigError
from conflux.core.settings import seconds_env
from conflux.event.offsets import observe_every_s

WEBHOOK_ENV = "CONFLUX_NOTIFY_WEBHOOK_URL"
UI_ENV = "CONFLUX_UI_URL"
STALL_ENV = "CONFLUX_NOTIFY_STALL_SECONDS"
DEFAULT_STALL_S = 120
MIN_STALL_S = 30
WATCHED_CHECKS = ("dead_letters", "freshness_check", "matches_batch_source", "offset_gaps")
SENSOR_NAME = "conflux_notify"
RUN_SENSOR_NAME = "conflux_notify_run_failures"
EVERY_S = 15
MAX_KEPT = 100  # undelivered messages kept for the next tick; older ones are dropped (logged)


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go (``webhook_url`` None: off) and what they link to."""

    webhook_url: str | None
    ui_url: str
    stall_seconds: int = DEFAULT_STALL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "NotifySettings":
        env = os.environ if env is None else env
        url = (env.get(WEBHOOK_ENV) or "").strip() or None
        if url is not None:
            _http_url(WEBHOOK_ENV, url)
        port = (env.get("CONFLUX_DAGSTER_PORT") or "3000").strip()
        ui = (env.get(UI_ENV) or "").strip() or f"http://127.0.0.1:{port}"
        _http_url(UI_ENV, ui)
        stall = seconds_env(env, STALL_ENV, DEFAULT_STALL_S, MIN_STALL_S)
        return cls(webhook_url=url, ui_url=ui.rstrip("/"), stall_seconds=stall)


def _http_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={value!r} must be an http:// or https:// URL")


# -- messages (pure) ---------------------------------------------------------------------------
def message(title: str, detail: str, link: str) -> dict:
    """A Slack-compatible message: ``text`` (what notifications and plain receivers show) and
    ``blocks`` with the detail and a link."""
    return {"text": f"{title}: {detail} <{link}|open in Dagster>",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{detail}"}},
                       {"type": "context", "elements": [
                           {"type": "mrkdwn", "text": f"<{link}|open in Dagster>"}]}]}


def asset_link(ui: str, asset: str, view: str | None = None) -> str:
    return f"{ui}/assets/{quote(asset)}" + (f"?view={view}" if view else "")


def run_failed_message(ui: str, job: str, run_id: str, error: str) -> dict:
    first = (error.strip().splitlines() or ["no message"])[0]
    first = re.sub(r"^(?:[a-z_]\w*\.)+[A-Z]\w*: ", "", first)[:300]  # "pkg.mod.Failure: "
    return message(f"Run failed: {job}", f"run {run_id[:8]}: {first}", f"{ui}/runs/{run_id}")


def check_message(ui: str, asset: str, check: str, passed: bool, description: str) -> dict:
    title = (f"Check passing again: {asset} {check}" if passed
             else f"Check failing: {asset} {check}")
    return message(title, description or ("passed" if passed else "failed"),
                   asset_link(ui, asset, "checks"))


def stall_reason(now: float, observed_at: float | None, caught_up_at: float | None,
                 lag: int | None, *, stall_s: float) -> str | None:
    """Why an event dataset's Kafka sensor counts as stalled at ``now``, or None when it is not:
    no observation for ``stall_s`` (the sensor is not ticking), or none of its observations
    caught up for ``stall_s`` (it ticks but falls behind)."""
    if observed_at is None or now - observed_at > stall_s:
        since = "ever" if observed_at is None else f"{now - observed_at:.0f}s"
        return f"no observation from its Kafka sensor for {since} (stopped, failing or daemon down)"
    if caught_up_at is None or now - caught_up_at > stall_s:
        since = "ever" if caught_up_at is None else f"{now - caught_up_at:.0f}s"
        behind = f", lag {lag:,} records" if lag is not None else ""
        return f"its Kafka sensor has not caught up for {since}{behind}"
    return None


def stall_message(ui: str, asset: str, reason: str | None) -> dict:
    if reason is None:
        return message(f"Caught up again: {asset}", "its Kafka sensor has caught up",
                       asset_link(ui, asset))
    return message(f"Not catching up: {asset}", reason, asset_link(ui, asset))


@dataclass
class Watch:
    """What the notify sensor has seen (its cursor) and the messages the changes make (pure).

    For ``grace_s`` after the sensor first ran, nothing is reported as failing or stalled at
    first sight: a starting stack's checks and sensors have not evaluated yet. Whatever still
    fails after that is reported then."""

    since: float
    checks: dict  # "asset/check" -> [storage id of the latest evaluation seen, passed]
    stalled: dict  # asset -> reason
    outbox: list

    def check(self, ui: str, asset: str, check: str, storage_id: int, passed: bool,
              description: str, *, now: float, grace_s: float) -> None:
        name = f"{asset}/{check}"
        previous = self.checks.get(name)
        if previous is not None and previous[0] == storage_id:
            return  # no new evaluation
        if previous is None and not passed and now - self.since < grace_s:
            return  # starting up: decide after the grace period
        if (not passed) if previous is None else previous[1] != passed:
            self.outbox.append(check_message(ui, asset, check, passed, description))
        self.checks[name] = [storage_id, passed]

    def sensor(self, ui: str, asset: str, reason: str | None, *, now: float,
               grace_s: float) -> None:
        if reason is not None and asset not in self.stalled:
            if now - self.since >= grace_s:
                self.outbox.append(stall_message(ui, asset, reason))
                self.stalled[asset] = reason
        elif reason is None and asset in self.stalled:
            self.outbox.append(stall_message(ui, asset, None))
            del self.stalled[asset]


# -- delivery -----------------------------------------------------------------------------------
def deliver(url: str, messages: list[dict]) -> list[dict]:
    """Post ``messages`` in order; returns those not delivered (from the first refusal on)."""
    from slack_sdk.webhook import WebhookClient

    client = WebhookClient(url, timeout=5)
    for i, payload in enumerate(messages):
        try:
            response = client.send_dict(payload)
        except Exception:  # unreachable, timed out: keep it and what follows for the next tick
            return messages[i:]
        if not 200 <= response.status_code < 300:
            return messages[i:]
    return []


# -- Dagster sensors ----------------------------------------------------------------------------
def _check_state(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> tuple[int, bool, str] | None:
    """(storage id, passed, description) of the latest evaluation of a check, None without one."""
    record = instance.get_latest_asset_check_evaluation_record(key)
    entry = record.event if record is not None else None
    evaluation = entry.dagster_event.event_specific_data if entry and entry.dagster_event else None
    if not isinstance(evaluation, dg.AssetCheckEvaluation):
        return None
    return record.id, evaluation.passed, evaluation.description or ""


def _sensor_state(instance: dg.DagsterInstance, asset: str) -> tuple[float | None, float | None,
                                                                    int | None]:
    """(last observation time, last caught-up time, lag) of an event dataset's Kafka sensor."""
    from conflux.observe.freshness_checks import last_updated

    records = instance.fetch_observations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None, last_updated(instance, asset), None
    lag = records[0].asset_observation.metadata.get("conflux/lag_records")
    return (records[0].timestamp, last_updated(instance, asset),
            int(lag.value) if lag is not None else None)


def notification_sensors(datasets: Iterable[Dataset], *,
                         settings: NotifySettings | None = None) -> list[dg.SensorDefinition]:
    """The two notification sensors, or none when no webhook is configured.

    Args:
        datasets: the catalog (its event datasets' checks and Kafka sensors are watched).
        settings: defaults to ``NotifySettings.from_env()``.
    """
    settings = settings or NotifySettings.from_env()
    if settings.webhook_url is None:
        return []
    url, ui = settings.webhook_url, settings.ui_url
    # a dataset's sensor observes every observe_every_s (up to 60 s): never call that a stall
    stall = {ds.name: max(settings.stall_seconds, 2 * observe_every_s(ds) + EVERY_S)
             for ds in datasets if isinstance(ds, EventDataset)}
    events = sorted(stall)
    checks = [dg.AssetCheckKey(dg.AssetKey(name), check) for name in events
              for check in WATCHED_CHECKS]

    @dg.run_failure_sensor(name=RUN_SENSOR_NAME, default_status=dg.DefaultSensorStatus.RUNNING,
                           minimum_interval_seconds=EVERY_S,
                           description="Posts every failed run of this code location to "
                                       f"{WEBHOOK_ENV}, with a link to the run")
    def _run_failures(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        errors = [e.event_specific_data.error.message for e in context.get_step_failure_events()
                  if e.event_specific_data is not None and e.event_specific_data.error is not None]
        payload = run_failed_message(ui, run.job_name, run.run_id,
                                     (errors or [context.failure_event.message or ""])[0])
        if deliver(url, [payload]):
            # raising makes Dagster keep its cursor before this run: it is sent again next tick
            raise RuntimeError(f"webhook refused the notification of run {run.run_id}")

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=EVERY_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Posts failing checks ({', '.join(WATCHED_CHECKS)}) and Kafka "
                           f"sensors that stop catching up to {WEBHOOK_ENV}: changes only")
    def _notify(context: dg.SensorEvaluationContext):
        now = time.time()
        state = json.loads(context.cursor) if context.cursor else {}
        watch = Watch(since=state.get("since", now), checks=state.get("checks", {}),
                      stalled=state.get("stalled", {}), outbox=state.get("outbox", []))
        for key in checks:
            found = _check_state(context.instance, key)
            if found is not None:
                watch.check(ui, key.asset_key.to_user_string(), key.name, *found, now=now,
                            grace_s=settings.stall_seconds)
        for asset in events:
            watch.sensor(ui, asset, stall_reason(now, *_sensor_state(context.instance, asset),
                                                 stall_s=stall[asset]),
                         now=now, grace_s=stall[asset])
        pending = deliver(url, watch.outbox) if watch.outbox else []
        if len(pending) > MAX_KEPT:
            context.log.warning(f"webhook unreachable: dropping {len(pending) - MAX_KEPT} "
                                "oldest undelivered notification(s)")
            pending = pending[-MAX_KEPT:]
        summary = (f"{len(watch.outbox) - len(pending)} notification(s) sent, {len(pending)} "
                   f"waiting for the webhook; {len(watch.stalled)} stalled sensor(s), "
                   f"{sum(1 for _, passed in watch.checks.values() if not passed)} failing check(s)")
        cursor = json.dumps({"since": watch.since, "checks": watch.checks,
                             "stalled": watch.stalled, "outbox": pending})
        return dg.SensorResult(skip_reason=summary, cursor=cursor)

    return [_run_failures, _notify]
