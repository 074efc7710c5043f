"""`conflux trace CORRELATION_ID [--json]`: where a business event went (``conflux/observe/trace.py``)."""

from __future__ import annotations

import json
import os


def cmd_trace(args) -> int:
    import dagster as dg

    from conflux.core.settings import Settings
    from conflux.observe.trace import render, trace
    from conflux.core.project import catalog_by_name
    from conflux.io.kafka import KafkaResource
    from conflux.io.lake import LakeResource

    from conflux.core.errors import StackError
    from conflux.io.unavailable import reach_postgres

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    os.environ.setdefault("DAGSTER_PG_URL", settings.dagster_pg_url)
    if not os.path.isfile(os.path.join(os.environ["DAGSTER_HOME"], "dagster.yaml")):
        raise StackError(f"no Dagster instance in DAGSTER_HOME={os.environ['DAGSTER_HOME']}: "
                         "start the stack (`conflux stack up`) or point DAGSTER_HOME at one")
    reach_postgres(settings.postgres_url)
    with dg.DagsterInstance.get() as instance:
        found = trace(args.correlation_id, catalog_by_name(),
                      lake=LakeResource.for_stack(settings),
                      kafka=KafkaResource.from_env(settings),
                      instance=instance, pg_url=settings.postgres_url)
    if args.json:
        print(json.dumps(found.as_dict(), indent=2, default=str))
    else:
        print("\n".join(render(found, settings.dagster_url)))
    return 0 if found.found else 1


def register(sub) -> None:
    """Add ``conflux trace`` to the ``conflux`` parser."""
    tr = sub.add_parser("trace", help="where a business event went, by correlation id")
    tr.add_argument("correlation_id", metavar="CORRELATION_ID",
                    help="the correlation_id header of the event")
    tr.add_argument("--json", action="store_true", help="machine-readable output")
    tr.set_defaults(func=cmd_trace)
