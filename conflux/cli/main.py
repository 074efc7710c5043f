"""The ``conflux`` command line.

    conflux init DIR                           scaffold a project of your own
    conflux stack up|down|status|env|reset     the local stack (Kafka, Postgres, Dagster)
    conflux dev [--no-producer] [--rate N]     stack + UI + daemon + the project's sample events
    conflux contracts register|check|diff|mode the schema registry
    conflux backfill DATASET --start D --end D backfill a date range: a Dagster backfill (event
                                               datasets: repair from the batch source, or replay)
    conflux replay DATASET --since TIME        re-apply an event dataset from Kafka (offsets of
                                               TIME) in one <dataset>__replay_job run
    conflux ops apply FILE | relay | status    change ops tables through the transactional outbox
    conflux lake migrate [--dry-run]           convert pre-Delta lake datasets into Delta tables

Every command acts on the project of the working directory (``[tool.conflux]`` in its
``pyproject.toml``, see ``conflux.core.project``) or of ``CONFLUX_PROJECT``.

Errors are one line on stderr, ``conflux: [CODE] message``, never a traceback
(``CONFLUX_DEBUG=1`` prints it too). Exit codes:

    0  success
    1  failure: a service that does not answer (named, with its address), a failed operation,
       a setting or project file that is wrong, a service ``conflux dev`` runs on that stopped
    2  usage error: bad arguments (argparse), an unknown name (dataset, topic, service, reason
       code, projection), a malformed value (date, time, limit, rate) or an input file that
       cannot be read or parsed (not UTF-8, not JSON, nested too deeply)
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import threading

from conflux.core.errors import ConfluxError, StackError, UsageError


def _stack(args):
    from conflux.stack import Stack

    return Stack()


def cmd_stack_up(args) -> int:
    _stack(args).up(args.services or None)
    return 0


def cmd_stack_down(args) -> int:
    _stack(args).down(args.services or None)
    return 0


def cmd_stack_status(args) -> int:
    statuses = _stack(args).status()
    for status in statuses:
        print(status.line())
    return 0 if all(s.running for s in statuses) else 1


def cmd_stack_env(args) -> int:
    from conflux.core.settings import Settings

    for name, value in Settings.from_env().client_env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_stack_reset(args) -> int:
    if not args.yes:
        print("conflux stack reset wipes the broker's data, the local databases and the lake; "
              "run it again with --yes to proceed", file=sys.stderr)
        return 2
    _stack(args).reset()
    return 0


def _start_relay(settings, should_stop) -> None:
    """The outbox relay, in the background of ``conflux dev``."""
    import threading

    from conflux.outbox.relay import run_relay
    from conflux.io.kafka import KafkaResource

    kafka = KafkaResource.from_env(settings)
    threading.Thread(target=run_relay, name="outbox-relay", daemon=True,
                     args=(settings.postgres_url, kafka),
                     kwargs={"should_stop": should_stop,
                             "report": lambda line: print(line, file=sys.stderr)}).start()


def _dev_producer(no_producer: bool):
    """The project's ``[tool.conflux] dev_producer`` (None when it has none or it is off)."""
    from conflux.core.project import Project

    project = Project.find()
    if no_producer or not project.dev_producer:
        return None
    return project.import_target(project.dev_producer, "dev_producer")


WATCH_EVERY_S = 2.0  # how often `conflux dev` checks that the services it runs on still run


def _watch(stack, names: list[str], stop: threading.Event, gone: list[str]) -> None:
    """In the background until ``stop``: every ``WATCH_EVERY_S``, put the services of ``names``
    whose process exited into ``gone`` and set ``stop``."""
    def loop() -> None:
        while not stop.wait(WATCH_EVERY_S):
            if found := stack.gone(names):
                gone.extend(found)
                stop.set()

    threading.Thread(target=loop, name="conflux-dev-watch", daemon=True).start()


def cmd_dev(args) -> int:
    """Stack + Dagster UI and daemon + the project's producer in the foreground until Ctrl-C;
    exit 1 naming the service when one of them stops (``conflux stack down`` elsewhere, a
    crash), after stopping what it started."""
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise UsageError(f"--rate {args.rate:g} must be a positive number of events per second")
    producer = _dev_producer(args.no_producer)
    stack = _stack(args)
    started: list[str] = []
    watched: list[str] = []
    gone: list[str] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C must stop us even when started from a shell that ignores SIGINT in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = stack.up()  # stops what it started itself when it fails half-way
        watched = list(stack.names)
        _watch(stack, watched, stop, gone)
        _start_relay(stack.settings, stop.is_set)
        print(f"\nConflux is up: Dagster UI at {stack.settings.dagster_url}, metrics at "
              f"{stack.settings.metrics_url}, schema registry at "
              f"{stack.settings.schema_registry_url}  (Ctrl-C to stop)")
        if producer is None:
            while not stop.wait(0.5):
                pass
        else:
            producer(stack.settings, rate=args.rate, should_stop=stop.is_set)
    except KeyboardInterrupt:
        pass
    except Exception:  # the producer's error when a service it needs went away: name that
        gone.extend(stack.gone(watched))
        if not gone:
            raise
    finally:
        stop.set()
        if started:
            print("\nstopping what conflux dev started...", flush=True)
            stack.down(started)
    if gone:
        raise StackError(f"{', '.join(dict.fromkeys(gone))} no longer running (stopped from "
                         f"another shell, or crashed: see {stack.settings.log_dir}); conflux dev "
                         "stopped what it had started")
    return 0


def _registry():
    from conflux.core.settings import Settings
    from conflux.io.schema_registry import SchemaRegistry

    return SchemaRegistry(Settings.from_env().postgres_url)


def cmd_contracts_register(args) -> int:
    from conflux.cli.contracts import load_catalog, register_all

    register_all(_registry(), load_catalog(args.catalog))
    return 0


def cmd_contracts_check(args) -> int:
    from conflux.cli.contracts import check_all, load_catalog

    broken = check_all(_registry(), load_catalog(args.catalog))
    if broken:
        print(f"conflux: {broken} contract(s) break their subject's compatibility mode",
              file=sys.stderr)
    return 1 if broken else 0


def cmd_contracts_diff(args) -> int:
    from conflux.cli.contracts import diff_files

    return diff_files(args.old, args.new, args.mode)


def cmd_contracts_mode(args) -> int:
    from conflux.contracts.compat import Mode

    try:
        Mode.parse(args.mode)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    registry = _registry()
    registry.ensure_schema()
    registry.set_mode(args.subject, args.mode)
    print(f"{args.subject}: compatibility {registry.mode(args.subject).value}")
    return 0


def _dataset(name: str):
    from conflux.core.project import dataset_named

    return dataset_named(name)


def cmd_backfill(args) -> int:
    from conflux.cli.backfill import backfill
    from conflux.core.settings import Settings

    ok = backfill(_dataset(args.dataset), args.start, args.end, url=Settings.from_env().dagster_url,
                  wait=args.wait, timeout=args.timeout)
    return 0 if ok else 1


def cmd_replay(args) -> int:
    from conflux.cli.backfill import replay
    from conflux.core.settings import Settings
    from conflux.core.declarations import EventDataset
    from conflux.io.kafka import KafkaResource

    ds = _dataset(args.dataset)
    if not isinstance(ds, EventDataset):
        raise UsageError(f"{ds.name} is a batch dataset; use `conflux backfill`")
    settings = Settings.from_env()
    ok = replay(ds, args.since, kafka=KafkaResource.from_env(settings),
                url=settings.dagster_url, wait=args.wait, timeout=args.timeout,
                dry_run=args.dry_run)
    return 0 if ok else 1


def _read_changes(path: str, known: dict) -> list:
    """The changes of a JSON-lines file; a ``UsageError`` naming the file when it cannot be
    read, is not UTF-8 or has bad lines."""
    from conflux.outbox.relay import OutboxError, parse_changes

    try:
        with open(path, encoding="utf-8") as handle:
            return parse_changes(handle, known)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason}: byte "
                         f"{exc.object[exc.start:exc.start + 1]!r})") from None
    except OutboxError as exc:
        raise UsageError(f"{path}: {exc.args[0]}") from None


def cmd_ops_apply(args) -> int:
    import psycopg

    from conflux.core.settings import Settings
    from conflux.core.project import catalog_by_name
    from conflux.outbox.relay import apply_changes, targets

    known = targets(catalog_by_name())
    changes = _read_changes(args.file, known)
    with psycopg.connect(Settings.from_env().postgres_url) as conn:
        applied = apply_changes(conn, changes, known)
    rows = ", ".join(f"{n} row(s) to ops.{t}" for t, n in sorted(applied.rows.items()))
    print(f"applied {rows or 'nothing'} and queued {applied.events} event(s) in ops.outbox "
          f"(one transaction); the relay publishes them (`conflux ops relay`, or `conflux dev`)")
    return 0


def cmd_ops_relay(args) -> int:
    import psycopg

    from conflux.core.settings import Settings
    from conflux.outbox.relay import relay_all, run_relay
    from conflux.io.kafka import KafkaResource

    settings = Settings.from_env()
    kafka = KafkaResource.from_env(settings)
    if args.once:
        with psycopg.connect(settings.postgres_url) as conn:
            done = relay_all(conn, kafka)
        print(f"published {done.published} outbox event(s) in {done.batches} batch(es)")
        return 0
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    print("relaying ops.outbox to Kafka (Ctrl-C to stop)")
    try:
        done = run_relay(settings.postgres_url, kafka, should_stop=lambda: stop["now"])
    except KeyboardInterrupt:
        return 0
    print(f"published {done.published} outbox event(s)")
    return 0


def cmd_ops_status(args) -> int:
    import psycopg

    from conflux.core.settings import Settings
    from conflux.outbox.relay import pending

    with psycopg.connect(Settings.from_env().postgres_url) as conn:
        print(f"ops.outbox: {pending(conn)} event(s) waiting for the relay")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conflux", description="Conflux: batch and streaming "
                                     "pipelines side by side on Dagster, Kafka and Postgres.")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="manage the local stack of real services")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    services_help = "services to act on: all (default), dagster, postgres, kafka (every " \
                    "Kafka node), dagster-webserver, dagster-daemon; with CONFLUX_KAFKA_BROKERS=N " \
                    "also one node: kafka-1 .. kafka-N"
    up = stack_sub.add_parser("up", help="start the stack (idempotent); a start that fails "
                              "stops what it had started")
    up.add_argument("services", nargs="*", help=services_help)
    up.set_defaults(func=cmd_stack_up)
    down = stack_sub.add_parser("down", help="stop every process the tooling started")
    down.add_argument("services", nargs="*", help=services_help)
    down.set_defaults(func=cmd_stack_down)
    stack_sub.add_parser("status", help="show each service; exit 1 unless all run").set_defaults(
        func=cmd_stack_status)
    stack_sub.add_parser("env", help="print export lines to use this stack from another shell"
                         ).set_defaults(func=cmd_stack_env)
    reset = stack_sub.add_parser("reset", help="stop and wipe broker data, databases and lake")
    reset.add_argument("--yes", action="store_true", help="really wipe")
    reset.set_defaults(func=cmd_stack_reset)

    dev = sub.add_parser("dev", help="run the platform in the foreground until Ctrl-C; exit 1 "
                         "naming the service when one it runs on stops")
    dev.add_argument("--no-producer", "--no-demo", dest="no_producer", action="store_true",
                     help="do not run the project's dev_producer ([tool.conflux])")
    dev.add_argument("--rate", type=float, default=5.0,
                     help="the dev producer's rate, events per second (default 5)")
    dev.set_defaults(func=cmd_dev)

    contracts = sub.add_parser("contracts", help="the schema registry: register, check, diff")
    contracts_sub = contracts.add_subparsers(dest="contracts_command", required=True)
    catalog_help = ("declarations to use, as module:attribute (default: [tool.conflux] catalog "
                    "of the project)")
    reg = contracts_sub.add_parser("register", help="register every declared contract")
    reg.add_argument("--catalog", help=catalog_help)
    reg.set_defaults(func=cmd_contracts_register)
    chk = contracts_sub.add_parser(
        "check", help="exit 1 listing incompatibilities when a declared contract breaks its "
                      "subject's mode against the registered history (the CI gate)")
    chk.add_argument("--catalog", help=catalog_help)
    chk.set_defaults(func=cmd_contracts_check)
    diff = contracts_sub.add_parser(
        "diff", help="compare two JSON Schema files: exit 0 compatible, 1 incompatible, "
                     "2 usage error or invalid schema")
    diff.add_argument("old", help="the schema data was written with (JSON file)")
    diff.add_argument("new", help="the changed schema (JSON file)")
    diff.add_argument("--mode", default="BACKWARD", help="compatibility mode (default BACKWARD): "
                      "BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, "
                      "FULL_TRANSITIVE, NONE")
    diff.set_defaults(func=cmd_contracts_diff)
    mode = contracts_sub.add_parser("mode", help="set a subject's compatibility mode")
    mode.add_argument("subject")
    mode.add_argument("mode", help="BACKWARD (default), BACKWARD_TRANSITIVE, FORWARD, "
                      "FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or NONE")
    mode.set_defaults(func=cmd_contracts_mode)

    bf = sub.add_parser("backfill", help="backfill a dataset over a date range (through the UI's "
                        "API: it shows in the UI); for an event dataset, materializing days "
                        "repairs them from its batch source (or replays them from Kafka)")
    bf.add_argument("dataset", help="dataset name, e.g. revenue_by_nation or orders")
    bf.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    bf.add_argument("--end", required=True, help="last day (inclusive), YYYY-MM-DD")
    bf.add_argument("--wait", action="store_true", help="follow it until done; exit 1 on failure")
    bf.add_argument("--timeout", type=float, default=1800, help="seconds to wait (default 1800)")
    bf.set_defaults(func=cmd_backfill)

    rp = sub.add_parser("replay", help="re-apply an event dataset from Kafka since a point in "
                        "time (offsets_for_times) in one run of its <dataset>__replay_job, "
                        "launched through the webserver; idempotent")
    rp.add_argument("dataset", help="event dataset name, e.g. orders")
    rp.add_argument("--since", required=True, help="arrival time, ISO date or date-time (UTC "
                    "when no zone is given), or a duration back from now (90m, 2h, 1d)")
    rp.add_argument("--dry-run", action="store_true", help="print the plan, launch nothing")
    rp.add_argument("--wait", action="store_true", help="follow the run until done; exit 1 "
                    "when it fails")
    rp.add_argument("--timeout", type=float, default=1800, help="seconds to wait (default 1800)")
    rp.set_defaults(func=cmd_replay)

    ops = sub.add_parser("ops", help="the operational database: dual-write through the outbox")
    ops_sub = ops.add_subparsers(dest="ops_command", required=True)
    apply_ = ops_sub.add_parser("apply", help="upsert rows of a JSON-lines FILE into ops tables "
                                "and queue their events, in one transaction")
    apply_.add_argument("file", help='JSON lines: {"table": "orders", "row": {...}, '
                        '"correlation_id": "optional"}')
    apply_.set_defaults(func=cmd_ops_apply)
    relay = ops_sub.add_parser("relay", help="publish queued outbox events to Kafka")
    relay.add_argument("--once", action="store_true", help="drain the outbox, then exit")
    relay.set_defaults(func=cmd_ops_relay)
    ops_sub.add_parser("status", help="events waiting in the outbox").set_defaults(
        func=cmd_ops_status)

    # operability commands, each module registering its own subcommands
    from conflux.cli import dlq, init, lag, lake, ledger, trace

    for module in (init, trace, lag, dlq, ledger, lake):
        module.register(sub)
    return parser


def failure(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message for an error a command raised (module
    docstring): Conflux's own errors as they are, a client library's connection failure as the
    service that did not answer, any other error as an internal one."""
    from conflux.io.unavailable import service_unavailable

    if not isinstance(exc, ConfluxError):
        exc = service_unavailable(exc) or exc
    if isinstance(exc, ConfluxError):
        return (2 if isinstance(exc, UsageError) else 1), str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return 1, f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    what = ": ".join([type(exc).__name__, *str(exc).strip().splitlines()[:1]])
    return 1, f"internal error: {what} (set CONFLUX_DEBUG=1 to see the traceback)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on its own usage errors
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("conflux: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("CONFLUX_DEBUG"):
            import traceback

            traceback.print_exc()
        code, message = failure(exc)
        print(f"conflux: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
