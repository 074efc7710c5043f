"""Launching an operations job (``conflux.dagster.operations``) through the webserver, as the
launchpad does, and following it: the run shows in the UI, and the CLI prints its link, its
outcome and the report its op logged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from conflux.cli import dagster_api as api
from conflux.core.errors import UsageError

REPORT_PREFIX = "report: "  # conflux.dagster.operations.REPORT_PREFIX (a layer below the CLI)


def validated(config_class, what: str, **values) -> dict:
    """The run config an op of ``config_class`` gets, checked here first with the class the
    run uses: a bad value is a one-line ``UsageError`` before anything is launched."""
    try:
        return config_class(**values).model_dump()
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise UsageError(f"{what}: {problems}") from None


@dataclass
class JobRun:
    run_id: str
    status: str = "QUEUED"
    lines: list[str] = field(default_factory=list)   # what the op logged
    report: dict | None = None                       # its ``report: {json}`` line
    failures: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCESS"


def launch_job(url: str, job: str, op: str, config: dict, *, what: str, wait: bool,
               timeout: float, report: Callable[[str], None] = print,
               tags: dict[str, str] | None = None) -> JobRun:
    """Launch ``job`` with ``config`` for its op ``op``; with ``wait``, follow it to the end and
    read what its op logged."""
    run_id = api.launch_run(url, job, {"ops": {op: {"config": config}}},
                            tags={"conflux/launched_by": "cli", **(tags or {})})
    report(f"{what}: run {run_id} of {job} launched; follow it at {url}/runs/{run_id}")
    run = JobRun(run_id)
    if not wait:
        return run
    return follow(url, run, timeout=timeout, report=report)


RETRY_GRACE_S = 30  # how long a failed run's retry may take to appear (the daemon's retry loop)


def follow(url: str, run: JobRun, *, timeout: float,
           report: Callable[[str], None] = print) -> JobRun:
    """Wait for ``run`` to finish; fill in its status, its op's lines and report. A run that
    failed before any step started (e.g. its worker did not start in time on a loaded machine)
    is followed into the retry Dagster's run retries launch for it, if one comes."""
    deadline = time.monotonic() + timeout

    def poll() -> tuple[bool, str]:
        run.status = api.run_status(url, run.run_id)
        return run.status in api.DONE_RUN, f"  run {run.run_id}: {run.status}"

    while True:
        api.wait(poll, timeout=max(deadline - time.monotonic(), 1), report=report)
        if run.status != "FAILURE" or api.run_messages_have_steps(url, run.run_id):
            break
        retry = _wait_for_retry(url, run.run_id, min(RETRY_GRACE_S, deadline - time.monotonic()))
        if retry is None:
            break
        report(f"  run {run.run_id} failed before it started; Dagster retried it as {retry}: "
               f"{url}/runs/{retry}")
        run.run_id = retry
    run_failures = []
    for level, message in api.run_messages(url, run.run_id):
        if level == "FAILURE":
            run.failures.append(message.strip())
        elif level == "RUN_FAILURE":
            run_failures.append(message.strip())
        elif message.startswith(REPORT_PREFIX):
            run.report = json.loads(message[len(REPORT_PREFIX):])
        elif level in ("INFO", "WARNING", "ERROR"):
            run.lines.append(message)
    if not run.failures:  # no step failed: the run's own reason (e.g. it never started)
        run.failures = run_failures
    return run


def _wait_for_retry(url: str, run_id: str, seconds: float) -> str | None:
    end = time.monotonic() + max(seconds, 0)
    while True:
        retry = api.retry_of(url, run_id)
        if retry is not None or time.monotonic() >= end:
            return retry
        time.sleep(2)


def outcome(run: JobRun, report: Callable[[str], None] = print) -> bool:
    """Print the op's lines and the run's outcome; True when it succeeded."""
    for line in run.lines:
        report(line)
    for failure in run.failures:  # the step's error, then its root cause (what went wrong)
        lines = [line for line in failure.splitlines() if line.strip()]
        report("FAILED: " + ("\n  ".join(lines[-4:]) if lines else "see the run in the UI"))
    report(f"run {run.run_id} {'succeeded' if run.succeeded else run.status}")
    return run.succeeded
