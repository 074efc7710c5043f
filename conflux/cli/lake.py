"""``conflux lake``: the lake's Delta tables.

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
    lake = sub.add_parser("lake", help="the lake's Delta tables: migrate the old format")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    _register_migrate(lake_sub)


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
