"""Launching runs and backfills through the Dagster webserver's GraphQL API — the same calls
the UI makes, so what the CLI launches shows up (and can be followed or cancelled) in the UI.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from conflux.core.errors import ConfluxError

LOCATION = None  # found by name: the code location holding the job / sensor / schedule
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions object
DONE_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
DONE_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


class DagsterApiError(ConfluxError):
    """The Dagster webserver refused or failed a request."""

    code = "DAGSTER_API_ERROR"


# the webserver keeps a pooled Postgres connection per storage: after Postgres restarts, the first
# request on each stale one fails with this, and SQLAlchemy then reconnects
STALE_CONNECTION = "server closed the connection unexpectedly"


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 60,
            stale_retries: int = 3) -> dict:
    """One GraphQL request to the webserver; a *query* failing on a stale Postgres connection
    (Postgres restarted since the webserver last used it) is sent again, up to
    ``stale_retries`` times — a mutation never is (it may have done part of its work).

    Raises:
        DagsterApiError: the webserver did not answer, or answered with errors.
    """
    for _ in range(stale_retries):
        try:
            return _graphql_once(url, query, variables, timeout)
        except DagsterApiError as exc:
            if STALE_CONNECTION not in str(exc) or query.lstrip().startswith("mutation"):
                raise
            time.sleep(0.5)
    return _graphql_once(url, query, variables, timeout)


def _graphql_once(url: str, query: str, variables: dict | None, timeout: float) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # the server answered: say what it refused
        try:
            payload = json.loads(exc.read())
        except ValueError:
            raise DagsterApiError(f"Dagster webserver at {url} answered HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise DagsterApiError(f"Dagster webserver at {url} did not answer ({exc}); is the "
                              f"platform running (`conflux dev` or `conflux stack up`)?") from exc
    if payload.get("errors"):
        raise DagsterApiError("; ".join(e.get("message", str(e)) for e in payload["errors"]))
    return payload["data"]


def _result(data: dict, field: str, success: str) -> dict:
    out = data[field]
    if out.get("__typename") != success:
        message = out.get("message") or out.get("__typename")
        raise DagsterApiError(f"{field}: {out.get('__typename')}: {message}")
    return out


# Dagster's error types all implement the ``Error`` interface, so one fragment reads them all
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions runs { runId status } }
    ... on Error { message }
  }
}"""

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN_STATUS = """
query($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { runId status }
    ... on Error { message }
  }
}"""


def launch_backfill(url: str, asset: str, start: str, end: str, *, title: str = "") -> str:
    """Backfill the daily partitions ``start..end`` (inclusive) of ``asset``; returns its id."""
    params = {"partitionsByAssets": [{"assetKey": {"path": [asset]},
                                      "partitions": {"range": {"start": start, "end": end}}}],
              "title": title or f"{asset} {start}..{end}",
              "tags": [{"key": "conflux/launched_by", "value": "cli"}]}
    data = graphql(url, LAUNCH_BACKFILL, {"params": params})
    return _result(data, "launchPartitionBackfill", "LaunchBackfillSuccess")["backfillId"]


@dataclass
class BackfillState:
    id: str
    status: str
    partitions: int
    runs: dict[str, str]  # run id -> status

    @property
    def done(self) -> bool:
        return self.status in DONE_BACKFILL and all(s in DONE_RUN for s in self.runs.values())

    @property
    def succeeded(self) -> bool:
        return (self.done and self.status in {"COMPLETED", "COMPLETED_SUCCESS"}
                and all(s == "SUCCESS" for s in self.runs.values()))


def backfill_state(url: str, backfill_id: str) -> BackfillState:
    out = _result(graphql(url, BACKFILL_STATUS, {"id": backfill_id}),
                  "partitionBackfillOrError", "PartitionBackfill")
    return BackfillState(out["id"], out["status"], out.get("numPartitions") or 0,
                         {r["runId"]: r["status"] for r in out.get("runs") or []})


WORKSPACE = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name locationOrLoadError { __typename
      ... on RepositoryLocation { repositories { name
          jobs { name } sensors { name } schedules { name } } } } } }
  }
}
"""


def location_of(url: str, name: str) -> str:
    """The code location whose repository has a job, sensor or schedule called ``name`` (a
    project's location is named by its workspace, not by Conflux)."""
    out = graphql(url, WORKSPACE)["workspaceOrError"]
    if out["__typename"] != "Workspace":
        raise DagsterApiError(f"reading the workspace: {out['__typename']}")
    for entry in out["locationEntries"]:
        location = entry["locationOrLoadError"] or {}
        for repo in location.get("repositories") or []:
            if repo["name"] != REPOSITORY:
                continue
            names = {item["name"] for kind in ("jobs", "sensors", "schedules")
                     for item in repo[kind]}
            if name in names:
                return entry["name"]
    raise DagsterApiError(f"no code location of {url} has a job, sensor or schedule named "
                          f"{name!r} (is the webserver loading this project's workspace?)")


def launch_run(url: str, job: str, run_config: dict, tags: dict[str, str] | None = None,
               *, location: str | None = LOCATION) -> str:
    """Launch ``job`` (of ``location``, else the code location that has it); returns the run
    id."""
    selector = {"repositoryLocationName": location or location_of(url, job),
                "repositoryName": REPOSITORY, "jobName": job}
    return _launch(url, selector, run_config, tags, f"launching {job}")


def _launch(url: str, selector: dict, run_config: dict, tags: dict[str, str] | None,
            what: str) -> str:
    params = {"selector": selector, "runConfigData": run_config,
              "executionMetadata": {"tags": [{"key": k, "value": v}
                                             for k, v in (tags or {}).items()]}}
    out = graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
    if out["__typename"] != "LaunchRunSuccess":
        detail = out.get("message") or "; ".join(e["message"] for e in out.get("errors", []))
        raise DagsterApiError(f"{what}: {out['__typename']}: {detail}")
    return out["run"]["runId"]


RUN_LOGS = """
query($id: ID!, $cursor: String) {
  logsForRun(runId: $id, afterCursor: $cursor, limit: 1000) {
    __typename
    ... on EventConnection { cursor hasMore events { __typename
        ... on LogMessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } }
        ... on RunFailureEvent { message } } }
    ... on Error { message }
  }
}"""


def run_messages(url: str, run_id: str) -> list[tuple[str, str]]:
    """The run's log messages and step failures, oldest first, as ``(level, message)``
    (``("FAILURE", error)`` for a failed step: its message and its root cause's, which says
    what went wrong, e.g. which config field is invalid; ``("RUN_FAILURE", message)`` for the
    run's own failure, e.g. a run that never started)."""
    out: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = graphql(url, RUN_LOGS, {"id": run_id, "cursor": cursor})["logsForRun"]
        if page["__typename"] != "EventConnection":
            raise DagsterApiError(f"reading the logs of run {run_id}: {page.get('message')}")
        for e in page["events"]:
            if e["__typename"] == "ExecutionStepFailureEvent":
                error = e.get("error") or {}
                causes = [c["message"] for c in error.get("causes") or []]
                out.append(("FAILURE", "\n".join([error.get("message", ""), *causes[-1:]])))
            elif e["__typename"] == "RunFailureEvent":
                out.append(("RUN_FAILURE", e.get("message") or ""))
            elif e.get("message") is not None and e.get("stepKey"):
                out.append((e["level"], e["message"]))
        if not page["hasMore"]:
            return out
        cursor = page["cursor"]


def run_messages_have_steps(url: str, run_id: str) -> bool:
    """Whether any step of the run logged anything (False: it failed before it started)."""
    return any(level != "RUN_FAILURE" for level, _ in run_messages(url, run_id))


def launch_check(url: str, asset: str, check: str, run_config: dict | None = None,
                 tags: dict[str, str] | None = None, *, location: str | None = LOCATION) -> str:
    """Execute one asset check, as the UI's *Execute* button does; returns the run id."""
    selector = {"repositoryLocationName": location or _location_of_asset(url, asset),
                "repositoryName": REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [],
                "assetCheckSelection": [{"assetKey": {"path": [asset]}, "name": check}]}
    return _launch(url, selector, run_config or {}, tags, f"executing {asset}:{check}")


ASSET_LOCATION = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { repository { name location { name } } }
    ... on Error { message }
  }
}"""


def _location_of_asset(url: str, asset: str) -> str:
    out = _result(graphql(url, ASSET_LOCATION, {"key": {"path": [asset]}}),
                  "assetNodeOrError", "AssetNode")
    return out["repository"]["location"]["name"]


RETRIES = """
query($parent: String!) {
  runsOrError(filter: {tags: [{key: "dagster/parent_run_id", value: $parent}]}, limit: 1) {
    __typename
    ... on Runs { results { runId status } }
    ... on Error { message }
  }
}"""


def retry_of(url: str, run_id: str) -> str | None:
    """The run Dagster's run retries launched for a failed ``run_id`` (None: none yet)."""
    out = _result(graphql(url, RETRIES, {"parent": run_id}), "runsOrError", "Runs")
    return out["results"][0]["runId"] if out["results"] else None


def run_status(url: str, run_id: str) -> str:
    return _result(graphql(url, RUN_STATUS, {"id": run_id}), "runOrError", "Run")["status"]


SCHEDULE = """
query($sel: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $sel) {
    __typename
    ... on Schedule { name cronSchedule
                      scheduleState { status ticks(limit: 10) { status runIds timestamp } } }
    ... on Error { message }
  }
}"""
RESET_SCHEDULE = """
mutation($sel: ScheduleSelector!) {
  resetSchedule(scheduleSelector: $sel) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}"""


@dataclass
class ScheduleState:
    name: str
    cron: str
    status: str  # RUNNING / STOPPED
    ticks: list[dict]  # newest first: {status, runIds, timestamp}


def _selector(kind: str, name: str, location: str | None, url: str) -> dict:
    """The ``$sel`` variable naming schedule or sensor ``name`` (``kind``: ``schedule`` or
    ``sensor``) in ``location``, else in the code location that has it."""
    return {"sel": {"repositoryLocationName": location or location_of(url, name),
                    "repositoryName": REPOSITORY, f"{kind}Name": name}}


def reset_schedule(url: str, name: str, *, location: str | None = LOCATION) -> str:
    """Return a schedule to its declared default status (stopped for Conflux's schedules)."""
    out = _result(graphql(url, RESET_SCHEDULE, _selector("schedule", name, location, url)),
                  "resetSchedule", "ScheduleStateResult")
    return out["scheduleState"]["status"]


def schedule_state(url: str, name: str, *, location: str | None = LOCATION) -> ScheduleState:
    out = _result(graphql(url, SCHEDULE, _selector("schedule", name, location, url)),
                  "scheduleOrError", "Schedule")
    state = out["scheduleState"]
    return ScheduleState(out["name"], out["cronSchedule"], state["status"], state["ticks"])


SENSOR = """
query($sel: SensorSelector!) {
  sensorOrError(sensorSelector: $sel) {
    __typename
    ... on Sensor { name sensorState { id status
                                       typeSpecificData { ... on SensorData { lastCursor } } } }
    ... on Error { message }
  }
}"""
START_SENSOR = """
mutation($sel: SensorSelector!) {
  startSensor(sensorSelector: $sel) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on Error { message }
  }
}"""
STOP_SENSOR = """
mutation($id: String) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!, $limit: Int!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: $limit) {
    runId status timestamp
    evaluation { success severity timestamp
                 metadataEntries { label ... on IntMetadataEntry { intValue }
                                   ... on FloatMetadataEntry { floatValue }
                                   ... on TimestampMetadataEntry { timestamp } } }
  }
}"""


@dataclass
class SensorState:
    name: str
    id: str  # the instigator state id (what stopping needs)
    status: str  # RUNNING / STOPPED
    cursor: str | None


def sensor_state(url: str, name: str, *, location: str | None = LOCATION) -> SensorState:
    out = _result(graphql(url, SENSOR, _selector("sensor", name, location, url)), "sensorOrError", "Sensor")
    state = out["sensorState"]
    data = state.get("typeSpecificData") or {}
    return SensorState(out["name"], state["id"], state["status"], data.get("lastCursor"))


def start_sensor(url: str, name: str, *, location: str | None = LOCATION) -> str:
    """Turn a sensor on (the UI's toggle); returns its new status."""
    out = _result(graphql(url, START_SENSOR, _selector("sensor", name, location, url)),
                  "startSensor", "Sensor")
    return out["sensorState"]["status"]


def stop_sensor(url: str, name: str, *, location: str | None = LOCATION) -> str:
    """Turn a sensor off (the UI's toggle); returns its new status."""
    state = sensor_state(url, name, location=location)
    out = _result(graphql(url, STOP_SENSOR, {"id": state.id}), "stopSensor",
                  "StopSensorMutationResult")
    return out["instigationState"]["status"]


def check_executions(url: str, asset: str, check: str, limit: int = 10) -> list[dict]:
    """Newest first: ``{runId, status, timestamp, evaluation: {success, severity, ...}}``."""
    data = graphql(url, CHECK_EXECUTIONS, {"key": {"path": [asset]}, "check": check,
                                           "limit": limit})
    return data["assetCheckExecutions"]


def wait(poll: Callable[[], tuple[bool, str]], *, timeout: float, every: float = 2.0,
         report: Callable[[str], None] = print) -> None:
    """Call ``poll`` until it says done, reporting each new status line; raises on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        done, line = poll()
        if line != last:
            report(line)
            last = line
        if done:
            return
        if time.monotonic() > deadline:
            raise DagsterApiError(f"still not finished after {timeout:g}s: {line}")
        time.sleep(every)
