"""The demo platform's own sensors sit beside the ones Conflux compiles."""

from pipelines.definitions import defs
from sensors.alerts import failure_line


def test_a_failure_line_names_the_run_the_job_and_the_datasets():
    line = failure_line("revenue_by_nation__job", "0123456789abcdef", ["revenue_by_nation"],
                        "boom\n")
    assert line == "run 01234567 of revenue_by_nation__job failed (revenue_by_nation): boom"
    assert failure_line("j", "r", [], "") == "run r of j failed (no asset): no message"


def test_the_demo_location_has_its_own_sensor_and_the_compiled_ones():
    names = {s.name for s in defs.sensors}
    assert "demo_run_failures" in names
    assert {"orders__kafka", "lineitem__kafka", "customer_ledger__kafka"} <= names
