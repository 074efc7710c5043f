"""The demo platform's resource instances: Conflux's platform resources, configured from the
environment through ``dg.EnvVar`` (``conflux stack env`` prints the variables)."""

from conflux import platform_resources


def demo_resources() -> dict:
    """Kafka, Postgres, the lake and the schema registry, as the demo platform runs them."""
    return platform_resources()
