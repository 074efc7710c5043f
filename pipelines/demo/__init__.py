"""The demo business: TPC-H-shaped operational tables in Postgres and events on Kafka."""

from pipelines.demo.producer import produce_tpch, run_demo_producer

__all__ = ["produce_tpch", "run_demo_producer"]
