"""The naive baseline the event-path benchmark compares against: a plain Dagster sensor at its
default interval (30 s) that launches one run per poll, on Dagster's default executor and run
launcher. It applies records with the same code as Conflux, so only the triggering differs."""

import dataclasses
import json

import dagster as dg

from pipelines.catalog import ORDERS
from conflux.dagster.compile import asset_specs
from conflux.event.job import build_ingest_job
from conflux.dagster.resources import platform_resources
from conflux.io.kafka import KafkaResource

NAIVE = dataclasses.replace(ORDERS, name="naive_orders", topics=("bench.naive.orders",),
                            dlq_topic="bench.naive.orders.dlq", fallback=None, ingest="runs")
naive_job = build_ingest_job(NAIVE, executor=dg.multiprocess_executor, name="naive_ingest_job")


@dg.sensor(job=naive_job, default_status=dg.DefaultSensorStatus.RUNNING)  # default interval
def naive_orders_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    ends = kafka.end_offsets(NAIVE.topic) or {}
    ranges = [{"topic": NAIVE.topic, "partition": p, "start": cursor.get(str(p), 0), "end": e}
              for p, e in ends.items() if e > cursor.get(str(p), 0)]
    if not ranges:
        return dg.SkipReason("no new records")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=json.dumps(ranges),
            run_config={"ops": {"naive_orders__ingest": {"config": {"ranges": ranges}}}})],
        cursor=json.dumps({str(p): e for p, e in ends.items()}))


defs = dg.Definitions(assets=[asset_specs([NAIVE])["naive_orders"]], jobs=[naive_job],
                      sensors=[naive_orders_sensor], resources=platform_resources())
