"""The ``conflux`` command line.

    conflux stack up|down|status|env|reset     the local stack (Kafka, Postgres, Dagster)
    conflux dev [--no-demo] [--rate N]         stack + UI + daemon + demo events, until Ctrl-C
    conflux contracts register|check|diff|mode the schema registry
    conflux produce tpch [...]                 publish demo events (see ``conflux produce -h``)

Exit codes: 0 success, 1 failure (the message names the service / subject / topic involved),
2 usage error.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time

from conflux.errors import ConfluxError


def _stack(args):
    from conflux.stack import Stack

    return Stack()


def cmd_stack_up(args) -> int:
    _stack(args).up(args.services)
    return 0


def cmd_stack_down(args) -> int:
    _stack(args).down(args.services)
    return 0


def cmd_stack_status(args) -> int:
    statuses = _stack(args).status()
    for status in statuses:
        print(status.line())
    return 0 if all(s.running for s in statuses) else 1


def cmd_stack_env(args) -> int:
    from conflux.settings import Settings

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


def cmd_dev(args) -> int:
    """Stack + Dagster UI and daemon + demo producer in the foreground until Ctrl-C."""
    stack = _stack(args)
    started: list[str] = []
    stop = {"now": False}

    def _on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    # Ctrl-C must stop us even when started from a shell that ignores SIGINT in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = stack.up()
        print(f"\nConflux is up: Dagster UI at {stack.settings.dagster_url}  (Ctrl-C to stop)")
        if args.no_demo:
            while not stop["now"]:
                time.sleep(0.5)
        else:
            from conflux.demo import run_demo_producer

            run_demo_producer(stack.settings, rate=args.rate, should_stop=lambda: stop["now"])
    except KeyboardInterrupt:
        pass
    finally:
        if started:
            print("\nstopping what conflux dev started...")
            stack.down(started)
    return 0


def cmd_produce_tpch(args) -> int:
    from conflux.demo import produce_tpch

    for name in ("duplicates", "invalid"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            print(f"conflux: --{name} must be a fraction between 0 and 1", file=sys.stderr)
            return 2
    if args.scale <= 0 or args.rate < 0:
        print("conflux: --scale must be > 0 and --rate >= 0", file=sys.stderr)
        return 2
    produce_tpch(scale=args.scale, rate=args.rate, duplicates=args.duplicates,
                 shuffle=args.shuffle, invalid=args.invalid, seed=args.seed)
    return 0


def _registry():
    from conflux.settings import Settings
    from contracts.registry import SchemaRegistry

    return SchemaRegistry(Settings.from_env().postgres_url)


def cmd_contracts_register(args) -> int:
    from conflux.contracts_cmd import load_catalog, register_all

    register_all(_registry(), load_catalog(args.catalog))
    return 0


def cmd_contracts_check(args) -> int:
    from conflux.contracts_cmd import check_all, load_catalog

    broken = check_all(_registry(), load_catalog(args.catalog))
    if broken:
        print(f"conflux: {broken} contract(s) break their subject's compatibility mode",
              file=sys.stderr)
    return 1 if broken else 0


def cmd_contracts_diff(args) -> int:
    from conflux.contracts_cmd import diff_files

    return diff_files(args.old, args.new, args.mode)


def cmd_contracts_mode(args) -> int:
    from contracts.compat import Mode

    try:
        Mode.parse(args.mode)
    except ValueError as exc:
        print(f"conflux: {exc}", file=sys.stderr)
        return 2
    registry = _registry()
    registry.ensure_schema()
    registry.set_mode(args.subject, args.mode)
    print(f"{args.subject}: compatibility {registry.mode(args.subject).value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conflux", description="Conflux: batch and streaming "
                                     "pipelines side by side on Dagster, Kafka and Postgres.")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="manage the local stack of real services")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    services_help = "services to act on: all (default), dagster, postgres, kafka, " \
                    "dagster-webserver, dagster-daemon"
    up = stack_sub.add_parser("up", help="start the stack (idempotent)")
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

    dev = sub.add_parser("dev", help="run the platform in the foreground until Ctrl-C")
    dev.add_argument("--no-demo", action="store_true", help="do not run the demo producer")
    dev.add_argument("--rate", type=float, default=5.0,
                     help="demo orders per second (default 5)")
    dev.set_defaults(func=cmd_dev)

    contracts = sub.add_parser("contracts", help="the schema registry: register, check, diff")
    contracts_sub = contracts.add_subparsers(dest="contracts_command", required=True)
    catalog_help = "declarations to use, as module:attribute (default pipelines.catalog:DATASETS)"
    reg = contracts_sub.add_parser("register", help="register every declared contract")
    reg.add_argument("--catalog", default="pipelines.catalog:DATASETS", help=catalog_help)
    reg.set_defaults(func=cmd_contracts_register)
    chk = contracts_sub.add_parser(
        "check", help="exit 1 listing incompatibilities when a declared contract breaks its "
                      "subject's mode against the registered history (the CI gate)")
    chk.add_argument("--catalog", default="pipelines.catalog:DATASETS", help=catalog_help)
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

    produce = sub.add_parser("produce", help="publish demo data")
    produce_sub = produce.add_subparsers(dest="produce_command", required=True)
    tpch = produce_sub.add_parser("tpch", help="TPC-H-shaped demo data into ops tables and Kafka")
    tpch.add_argument("--scale", type=float, default=0.01, help="TPC-H scale factor (default 0.01)")
    tpch.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    tpch.add_argument("--duplicates", type=float, default=0.0, metavar="P",
                      help="also send this fraction of events a second time (0..1)")
    tpch.add_argument("--shuffle", action="store_true",
                      help="publish in random order (late and out-of-order events)")
    tpch.add_argument("--invalid", type=float, default=0.0, metavar="P",
                      help="add this fraction of invalid records (bad JSON, wrong types, missing "
                           "fields, undecodable bytes, unknown contract versions)")
    tpch.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    tpch.set_defaults(func=cmd_produce_tpch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfluxError as exc:
        print(f"conflux: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
