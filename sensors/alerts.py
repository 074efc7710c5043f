"""A sensor of the demo platform's own: a failed run names the datasets it was building."""

from __future__ import annotations

import dagster as dg


def failure_line(job_name: str, run_id: str, assets: list[str], message: str) -> str:
    """One line an on-call engineer can act on (pure)."""
    touched = ", ".join(sorted(assets)) or "no asset"
    return f"run {run_id[:8]} of {job_name} failed ({touched}): {message.strip() or 'no message'}"


@dg.run_failure_sensor(name="demo_run_failures", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Logs every failed run of the demo platform with the datasets "
                                   "it was materializing.")
def demo_run_failures(context: dg.RunFailureSensorContext):
    run = context.dagster_run
    assets = [key.to_user_string() for key in (run.asset_selection or [])]
    context.log.error(failure_line(run.job_name, run.run_id, assets,
                                   context.failure_event.message or ""))
