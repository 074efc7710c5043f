"""``python -m pipelines.demo tpch [...]``: publish the demo business's data (ops tables + events).

The demo's own command line (the ``conflux`` CLI knows nothing of TPC-H); exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo",
                                     description="Publish the TPC-H-shaped demo data.")
    sub = parser.add_subparsers(dest="command", required=True)
    tpch = sub.add_parser("tpch", help="TPC-H-shaped demo data into ops tables and Kafka")
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
    tpch.add_argument("--via-outbox", action="store_true",
                      help="write orders and lineitems with their events through the "
                           "transactional outbox (published by the relay) instead of directly")
    tpch.add_argument("--confluent", action="store_true",
                      help="publish with confluent-kafka's Producer and JSONSerializer (Confluent "
                           "wire format; schemas under <topic>-value through the Schema Registry "
                           "API at CONFLUX_SCHEMA_REGISTRY_URL) instead of kafka-python with "
                           "contract headers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("duplicates", "invalid"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            print(f"demo: --{name} must be a fraction between 0 and 1", file=sys.stderr)
            return 2
    if args.scale <= 0 or args.rate < 0:
        print("demo: --scale must be > 0 and --rate >= 0", file=sys.stderr)
        return 2
    from conflux.core.errors import ConfluxError
    from pipelines.demo.producer import produce_tpch

    try:
        produce_tpch(scale=args.scale, rate=args.rate, duplicates=args.duplicates,
                     shuffle=args.shuffle, invalid=args.invalid, seed=args.seed,
                     via_outbox=args.via_outbox, confluent=args.confluent)
    except ConfluxError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
