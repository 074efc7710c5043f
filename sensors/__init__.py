"""The demo platform's own sensors, beside the ones Conflux compiles from the catalog."""

from sensors.alerts import demo_run_failures

SENSORS = [demo_run_failures]
