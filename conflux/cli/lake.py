"""``conflux lake``: the lake's Delta tables.

    conflux lake history DATASET [--limit N] [--json]
                                    the dataset's Delta commits, newest first: version, time,
                                    operation, rows written, who wrote it, Kafka ranges applied
    conflux lake show DATASET [--partition DAY] [--version N | --as-of TIME] [--limit N]
                              [--json]
                                    rows of a dataset, now or as of a table version or a time
                                    (time travel; --limit 0: only the row count)
    conflux lake migrate [--dataset NAME ...] [--dry-run] [--json]
                                    convert the datasets still in the pre-Delta format into
                                    Delta tables (old files kept in <lake>/_legacy/); resumes
                                    an interrupted run; a second run does nothing

The lake is ``CONFLUX_LAKE_PATH`` when set (as ``conflux stack env`` exports it), else the local
stack's. Each subcommand is a ``cmd_*`` function registered in ``register``.
"""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    """Add ``conflux lake`` and its subcommands to the `conflux` parser."""
    lake = sub.add_parser("lake", help="the lake's Delta tables: history, time travel, migrate "
                                       "the old format")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    _register_history(lake_sub)
    _register_show(lake_sub)
    _register_migrate(lake_sub)


def _register_history(lake_sub) -> None:
    history = lake_sub.add_parser("history", help="a dataset's Delta commits, newest first")
    history.add_argument("dataset", metavar="DATASET", help="a dataset of the catalog")
    history.add_argument("--limit", type=int, default=20, metavar="N",
                         help="the N newest commits (default 20; 0: all)")
    history.add_argument("--json", action="store_true", help="print the commits as JSON")
    history.set_defaults(func=cmd_history)


def _register_show(lake_sub) -> None:
    show = lake_sub.add_parser("show", help="a dataset's rows, now or as of a version or time")
    show.add_argument("dataset", metavar="DATASET", help="a dataset of the catalog")
    show.add_argument("--partition", metavar="DAY", help="one daily partition (YYYY-MM-DD)")
    when = show.add_mutually_exclusive_group()
    when.add_argument("--version", type=int, metavar="N", help="as of Delta table version N")
    when.add_argument("--as-of", metavar="TIME",
                      help="as of a time (ISO 8601, e.g. 2026-12-06T15:00:00Z; UTC if no zone) "
                           "or a duration back from now (90m, 2h, 1d)")
    show.add_argument("--limit", type=int, default=20, metavar="N",
                      help="rows printed (default 20; 0: only the count)")
    show.add_argument("--json", action="store_true", help="print rows as JSON lines")
    show.set_defaults(func=cmd_show)


def _register_migrate(lake_sub) -> None:
    migrate = lake_sub.add_parser(
        "migrate", help="convert datasets in the pre-Delta format into Delta tables (the old "
                        "files are moved to <lake>/_legacy/; resumable, idempotent)")
    migrate.add_argument("--dataset", action="append", metavar="NAME",
                         help="only this dataset (repeat for several; default: all)")
    migrate.add_argument("--dry-run", action="store_true",
                         help="read and count what would be migrated; change nothing")
    migrate.add_argument("--json", action="store_true", help="print the report as JSON")
    migrate.set_defaults(func=cmd_migrate)


def _lake():
    from conflux.core.settings import Settings
    from conflux.io.lake import LakeResource

    return LakeResource.for_stack(Settings.from_env(), path=os.environ.get("CONFLUX_LAKE_PATH"))


def cmd_migrate(args) -> int:
    from conflux.io.lake_migrate import migrate_lake

    stream = sys.stderr if args.json else sys.stdout

    def progress(line: str) -> None:
        print(line, file=stream, flush=True)

    report = migrate_lake(_lake(), datasets=args.dataset, dry_run=args.dry_run,
                          progress=progress)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


def _checked(args) -> None:
    """Refuse a negative ``--limit`` / ``--version`` and a dataset the catalog does not declare
    (any dataset of the lake without a project) with a ``UsageError``."""
    from conflux.core.errors import ConfluxError, UsageError
    from conflux.core.project import load_catalog

    for flag in ("limit", "version"):
        if (getattr(args, flag, None) or 0) < 0:
            raise UsageError(f"--{flag} must be 0 or more")
    try:
        names = [d.name for d in load_catalog()]
    except ConfluxError:
        return  # no project here: any table of the lake may be read
    if args.dataset not in names:
        raise UsageError(f"unknown dataset {args.dataset!r} (the catalog has: "
                         f"{', '.join(sorted(names))})")


def cmd_history(args) -> int:
    import datetime as dt

    _checked(args)
    commits = _lake().history(args.dataset, args.limit or None)
    if not commits:
        print(f"{args.dataset}: no Delta table in the lake yet", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(commits, indent=2, default=str))
        return 0
    for c in commits:
        when = dt.datetime.fromtimestamp(c["timestamp"] / 1000, dt.timezone.utc)
        metrics = c.get("operationMetrics") or {}
        rows = (metrics.get("num_target_rows_inserted", 0) + metrics.get("num_target_rows_updated", 0)
                if "num_target_rows_inserted" in metrics else metrics.get("num_added_rows", ""))
        sources = c.get("conflux.sources")
        ranges = ""
        if sources:
            spans = json.loads(sources) if isinstance(sources, str) else sources
            ranges = " " + ", ".join(f"{s['topic']}[{s['partition']}]@{s['start']}..{s['end']}"
                                     for s in spans[:3]) + (" ..." if len(spans) > 3 else "")
        origin = f" by {c['conflux.origin']}" if c.get("conflux.origin") else ""
        print(f"v{c['version']:<6} {when.isoformat(timespec='seconds')} {c.get('operation', '?'):<9}"
              f" rows {rows}{origin}{ranges}")
    return 0


def cmd_show(args) -> int:
    from conflux.core.opconfig import parse_day, parse_since

    _checked(args)
    if args.partition:
        parse_day(args.partition, "--partition")
    as_of = parse_since(args.as_of, "--as-of") if args.as_of else None
    table = _lake().read_table(args.dataset, args.partition, version=args.version, as_of=as_of)
    if table is None:
        print(f"{args.dataset}: nothing stored"
              + (f" in partition {args.partition}" if args.partition else ""), file=sys.stderr)
        return 1
    shown = table.slice(0, args.limit)
    if args.json:
        for row in shown.to_pylist():
            print(json.dumps(row, default=str))
    elif args.limit:
        print(shown.to_pandas().to_string(index=False))
    print(f"{len(table)} row(s)", file=sys.stderr if args.json else sys.stdout)
    return 0
