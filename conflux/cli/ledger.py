"""``conflux ledger``: an event-sourced ledger and its projection (the catalog's
``ledger_projection`` dataset).

    conflux ledger rebuild [--check] [--json]   fold the ledger's topics from offset zero (every
                                                partition, same decode/validate code) and replace
                                                the projection with it — or, with --check,
                                                compare it with the stored projection: exit 1
                                                listing the differences unless identical
    conflux ledger explain ACCOUNT [--json]     the opening balance and every ledger event that
                                                made an account's balance, with provenance; exit
                                                1 unless they add up to the stored balance

The projection is the project catalog's batch dataset whose ``compute`` is a
``ledger_projection`` (``--projection NAME`` when it has several); its ledger and opening
datasets, and which of their columns are which (``LedgerColumns``), are the ones it names.
``rebuild`` launches ``<projection>__ledger_rebuild_job`` through the Dagster webserver (so it
shows in the UI) and prints the run's report; ``--local`` runs it in this process instead. The
``run_*`` functions take the datasets as parameters. The lake is ``CONFLUX_LAKE_PATH`` when set
(as ``conflux stack env`` exports it), else the local stack's.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from conflux.ledger.report import run_rebuild  # noqa: F401  (the tests' entry point too)

EXPLAIN_COLUMNS = ("occurred_at", "event_id", "kind", "amount", "signed", "source",
                   "correlation_id")


def register(sub) -> None:
    """Add this module's subcommands to the `conflux` parser."""
    ledger = sub.add_parser("ledger", help="an event-sourced ledger: rebuild its projection "
                            "from offset zero, explain a balance")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    rebuild = ledger_sub.add_parser(
        "rebuild", help="fold the ledger's topics from offset zero and replace the projection "
                        "with it (--check: compare instead; exit 1 when different)")
    rebuild.add_argument("--check", action="store_true",
                         help="only compare with the stored projection and its checkpoint; "
                              "exit 1 listing the differences unless identical")
    rebuild.add_argument("--json", action="store_true", help="print the result as JSON")
    rebuild.add_argument("--projection", metavar="NAME", help=PROJECTION_HELP)
    rebuild.add_argument("--local", action="store_true",
                         help="run in this process instead of launching the "
                              "<projection>__ledger_rebuild_job through the Dagster webserver")
    rebuild.add_argument("--timeout", type=float, default=1800,
                         help="seconds to wait for the run (default 1800)")
    rebuild.set_defaults(func=cmd_rebuild)
    explain = ledger_sub.add_parser(
        "explain", help="trace an account's balance to its opening balance and ledger "
                        "events; exit 1 unless they add up")
    explain.add_argument("account", metavar="ACCOUNT",
                         help="the account: a value of the projection's key column (the "
                              "ledger_projection's LedgerColumns.account)")
    explain.add_argument("--json", action="store_true", help="print the result as JSON")
    explain.add_argument("--projection", metavar="NAME", help=PROJECTION_HELP)
    explain.set_defaults(func=cmd_explain)


PROJECTION_HELP = ("the projection dataset (a batch dataset computed by ledger_projection); "
                   "needed only when the catalog declares several")


def ledger_datasets(name: str | None = None):
    """(ledger, projection, opening dataset name) of the project's ledger projection (its
    ``LedgerColumns``: ``projection.compute.projection.columns``)."""
    from conflux.core.errors import ConfigError, UsageError
    from conflux.core.project import catalog_by_name

    from conflux.dagster.operations import ledger_projections

    catalog = catalog_by_name()
    found = {n: p for n, (_, p, _) in ledger_projections(catalog).items()}
    if name is not None:
        if name not in found:
            raise UsageError(f"{name!r} is not a ledger projection; the catalog's: "
                             f"{', '.join(sorted(found)) or 'none'}")
        found = {name: found[name]}
    if not found:
        raise ConfigError("the catalog declares no ledger projection (a batch dataset with "
                          "compute=ledger_projection(...))")
    if len(found) > 1:
        raise UsageError(f"several ledger projections ({', '.join(sorted(found))}): choose one "
                         "with --projection")
    [projection] = found.values()
    spec = projection.compute.projection
    return catalog[spec.ledger], projection, spec.opening


# --- wiring to the project catalog and the local stack --------------------------------------------
def _lake(settings):
    from conflux.io.lake import LakeResource

    return LakeResource.for_stack(settings, path=os.environ.get("CONFLUX_LAKE_PATH"))


def cmd_rebuild(args) -> int:
    from conflux.core.settings import Settings
    from conflux.event.ingest import resolver_for
    from conflux.io.kafka import KafkaResource
    from conflux.io.registry import SchemaRegistryResource

    ledger, projection, opening = ledger_datasets(args.projection)
    settings = Settings.from_env()
    if not args.local:
        return _launch_rebuild(projection, replace=not args.check, as_json=args.json,
                               url=settings.dagster_url, timeout=args.timeout)
    registry = SchemaRegistryResource(url=settings.postgres_url)
    instance = None if args.check else _dagster_instance(settings)
    try:
        return run_rebuild(
            ledger=ledger, projection=projection, opening=opening,
            kafka=KafkaResource.from_env(settings),
            lake=_lake(settings), resolver=resolver_for(ledger, registry),
            registry=registry, check=args.check, as_json=args.json, instance=instance)
    finally:
        if instance is not None:
            instance.dispose()


def _launch_rebuild(projection, *, replace: bool, as_json: bool, url: str,
                    timeout: float) -> int:
    """Launch ``<projection>__ledger_rebuild_job`` through the webserver and follow it."""
    from conflux.cli.jobs import launch_job, outcome

    report = (lambda line: print(line, file=sys.stderr)) if as_json else print
    run = launch_job(url, f"{projection.name}__ledger_rebuild_job",
                     f"{projection.name}__ledger_rebuild", {"replace": replace},
                     what=f"{projection.name}: ledger {'rebuild' if replace else 'check'}",
                     wait=True, timeout=timeout, report=report)
    if as_json:
        print(json.dumps({"run_id": run.run_id, "status": run.status, "report": run.report,
                          "lines": run.lines, "failures": run.failures}, indent=2))
        return 0 if run.succeeded else 1
    return 0 if outcome(run) else 1


def cmd_explain(args) -> int:
    from conflux.core.settings import Settings

    ledger, projection, opening = ledger_datasets(args.projection)
    return run_explain(args.account, ledger=ledger.name, projection=projection.name,
                       opening=opening, columns=projection.compute.projection.columns,
                       lake=_lake(Settings.from_env()), as_json=args.json)


def _dagster_instance(settings):
    """The stack's Dagster instance, to record a replacement as a materialization (None when
    there is none: the lake is still replaced, and the output says it was not recorded)."""
    import dagster as dg

    from conflux.io.unavailable import reach_postgres

    home = os.environ.get("DAGSTER_HOME") or str(settings.dagster_home)
    if not os.path.exists(os.path.join(home, "dagster.yaml")):
        return None
    reach_postgres(settings.postgres_url)
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


# --- the commands, on any datasets -------------------------------------------------------------
def run_explain(account, *, ledger: str, projection: str, opening: str, columns, lake,
                as_json: bool = False, out: TextIO | None = None) -> int:
    """Explain ``account``'s balance (``columns``: the projection's ``LedgerColumns``); returns
    the exit code (0 when it adds up)."""
    from conflux.ledger import audit as ledger_audit
    out = out or sys.stdout
    explanation = ledger_audit.explain(account, ledger=ledger, projection=projection,
                                       opening=opening, columns=columns, lake=lake)
    if as_json:
        print(json.dumps(explanation.as_dict(), indent=2, default=str), file=out)
    else:
        print(format_explanation(explanation, ledger=ledger, projection=projection,
                                 opening=opening, columns=columns), file=out)
    return 0 if explanation.adds_up else 1


# --- formatting --------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    """Money as written: two decimals when that is exact, every digit otherwise."""
    if value is None:
        return "-"
    return f"{value:.2f}" if round(value, 2) == value else repr(value)


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _num(value)


def _source(event: dict) -> str:
    if event.get("topic") is None:
        return "(not in the ledger dataset)"
    return f"{event['topic']}[{event['partition']}]@{event['offset']}"


def _table(events: list[dict]) -> list[str]:
    rows = [[e["occurred_at"], e["event_id"], e["kind"] or "?", _num(e["amount"]),
             _signed(e["signed_amount"]), _source(e), e["correlation_id"] or "-"]
            for e in events]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(EXPLAIN_COLUMNS)]
    right = {3, 4}

    def line(cells):
        return "    " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(EXPLAIN_COLUMNS), *(line(r) for r in rows)]


def format_explanation(e, *, ledger: str, projection: str, opening: str, columns) -> str:
    label, source = columns.label, f"{opening}.{columns.balance}"
    lines = [f"{label} {e.account}: balance {_num(e.balance)} in {projection} "
             f"(checkpoint {e.generation})",
             f"  opening balance  {_num(e.opening_balance)}   ({source}, when last "
             f"materialized)",
             f"  ledger events folded: {len(e.events)}   (from {ledger}, oldest first)"]
    if e.events:
        lines += _table(e.events)
    verdict = "OK" if e.adds_up else "DOES NOT ADD UP"
    lines.append(f"  check: opening {_num(e.opening_balance)} + events {e.events_sum} = "
                 f"{_num(e.recomputed)} {'==' if e.recomputed == e.balance else '!='} stored "
                 f"balance {_num(e.balance)}; {len(e.events)} event(s) "
                 f"{'==' if len(e.events) == e.events_applied else '!='} events_applied "
                 f"{e.events_applied}: {verdict}")
    lines.extend(f"  problem: {p}" for p in e.problems)
    if e.last_event_id:
        lines.append(f"  last event: {e.last_event_id}")
    if e.opening_now is None:
        lines.append(f"  {source} now: {label} not there (the next materialization drops the "
                     f"row; its events stay folded)")
    elif e.opening_now != e.opening_balance:
        lines.append(f"  {source} now: {_num(e.opening_now)} (changed: the next "
                     f"materialization re-bases the balance on it)")
    else:
        lines.append(f"  {source} now: {_num(e.opening_now)} (unchanged)")
    if e.pending:
        lines.append(f"  pending: {len(e.pending)} event(s) in {ledger} not folded yet (the "
                     f"next materialization of {projection} adds them)")
        lines += _table(e.pending)
    return "\n".join(lines)
