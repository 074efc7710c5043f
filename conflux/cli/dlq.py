"""``conflux dlq``: dead letters of an event dataset, and their replay after a fix.

    conflux dlq list TOPIC [--since T] [--reason CODE] [--limit N] [--json]
    conflux dlq replay TOPIC [--since T] [--reason CODE] [--dry-run] [--again] [--limit N] [--json]
    conflux dlq gaps TOPIC [--all] [--json]
    conflux dlq ack-gaps TOPIC ID... --note TEXT

TOPIC is a source topic (``tpch.orders``) or its dead-letter topic (``tpch.orders.dlq``).
``list`` prints the reason histogram (how many of each were replayed already) and the newest
samples; ``replay`` re-publishes the selected dead letters to their source topic — each at most
once, unless ``--again`` — and reports what it did per reason (see ``conflux/observe/dlq_replay.py``).
It launches ``<dataset>__dlq_replay_job`` through the Dagster webserver, so the replay shows in
the UI; ``--local`` (implied by ``--catalog``) replays in this process. ``gaps`` lists the
dataset's offset gaps (offsets never applied that no longer exist, see
``conflux/observe/offset_gaps.py``); ``ack-gaps`` acknowledges them once repaired or accepted.
"""

from __future__ import annotations

import json
import sys
import time



def _reason_codes() -> tuple[str, ...]:
    from conflux.dagster.operations import REASON_CODES
    return REASON_CODES


def _target(args):
    """(dataset, Selection) from the command line; clear errors for unknown topics / codes."""
    from conflux.cli.contracts import load_catalog
    from conflux.observe.dlq import Selection, check_reasons, parse_since, resolve_topic

    ds, source_topic = resolve_topic(args.topic, load_catalog(args.catalog))
    since = parse_since(args.since) if args.since else None
    limit = getattr(args, "limit", None)
    selection = Selection(
        since_ms=int(since.timestamp() * 1000) if since else None,
        reasons=check_reasons(args.reason, _reason_codes()), source_topic=source_topic,
        again=getattr(args, "again", False),
        limit=limit if args.dlq_command == "replay" else None)
    return ds, selection


def _services():
    from conflux.core.settings import Settings
    from conflux.observe.dlq_replay import ReplayLedger
    from conflux.io.kafka import KafkaResource

    settings = Settings.from_env()
    return (KafkaResource.from_env(settings),
            ReplayLedger(settings.postgres_url))


class _Progress:
    """Progress on stderr, at most every ``every_s`` seconds, from the first one on."""

    def __init__(self, what: str, every_s: float = 2.0):
        self.what, self.every_s = what, every_s
        self.next_at = time.monotonic() + every_s

    def __call__(self, read: int, total: int, published: int) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_s
        extra = f", {published:,} re-published" if published else ""
        print(f"  {self.what}: {read:,}/{total:,} dead letter(s) read{extra}", file=sys.stderr)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  " + "  ".join(  # noqa: E731
        str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return [line(header), *(line(r) for r in rows)]


# --- list ----------------------------------------------------------------------------------
def cmd_dlq_list(args) -> int:
    from conflux.core.errors import DeadLetterError, UsageError
    from conflux.observe.dlq import iso, preview, sample
    from conflux.observe.dlq_replay import list_letters

    if args.limit < 0:
        raise UsageError(f"--limit {args.limit} must be >= 0")
    ds, selection = _target(args)
    kafka, ledger = _services()
    note = ""
    try:
        replayed = ledger.replayed_refs(ds.dlq_topic)
    except DeadLetterError as exc:  # the listing stands without the replay column
        replayed, note = frozenset(), f"replay status unknown: {exc}"
    listing, found = list_letters(ds, kafka, selection=selection, limit=args.limit,
                                  replayed=replayed, progress=_Progress(ds.dlq_topic))
    if args.json:
        print(json.dumps({
            "topic": args.topic, "dlq_topic": ds.dlq_topic, "dataset": ds.name,
            "source_topics": list(ds.topics), "dlq_exists": found.exists,
            "selection": selection.describe(), "total": listing.total,
            "reasons": dict(listing.reasons.most_common()),
            "replayed": {c: n for c, n in listing.replayed.items() if n},
            "retries": listing.retries,
            "first": iso(listing.first_ms) if listing.first_ms else None,
            "last": iso(listing.last_ms) if listing.last_ms else None,
            "samples": [sample(x) for x in listing.newest()],
            **({"note": note} if note else {})}, indent=2))
        return 0
    scope = selection.describe()
    if not found.exists:
        print(f"{ds.dlq_topic}: the topic does not exist yet: nothing of {ds.name} was ever "
              f"dead-lettered")
        return 0
    span = (f"; first {iso(listing.first_ms)}, last {iso(listing.last_ms)}"
            if listing.total else "")
    print(f"{ds.dlq_topic}: {listing.total} dead letter(s) of {ds.name} from "
          f"{', '.join(ds.topics)} ({scope}{span})")
    if listing.total:
        rows = [(code, n, r) for code, n, r in listing.histogram()]
        for line in _table(("reason", "letters", "replayed"), rows):
            print(line)
        if listing.retries:
            print(f"  {listing.retries} of them are replayed records that failed again")
    if note:
        print(f"  ({note})")
    if listing.samples:
        print(f"newest {len(listing.samples)} of {listing.total}:")
        for x in listing.newest():
            print(f"  {x.coords}  {iso(x.timestamp_ms)}  {x.code}  from {x.source}")
            print(f"    message: {preview(x.message.encode(), 200)}")
            print(f"    correlation_id: {x.correlation_id or '-'}  key: {preview(x.key, 40)}  "
                  f"contract: {x.contract or '-'}"
                  + (f"  replay of {x.replay_of} (attempt {x.attempt})" if x.replay_of else ""))
            print(f"    value: {preview(x.value, 160)}")
    if listing.total:
        print(f"after a fix, re-drive them with: conflux dlq replay {args.topic} "
              f"[--reason CODE] [--since T] --dry-run")
    return 0


# --- replay --------------------------------------------------------------------------------
def cmd_dlq_replay(args) -> int:
    from conflux.core.errors import UsageError
    from conflux.observe.dlq import new_replay_id
    from conflux.observe.dlq_replay import replay

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be >= 1")
    ds, selection = _target(args)
    if not (args.local or args.catalog):
        return _launch_replay(ds, args)
    kafka, ledger = _services()
    report = replay(ds, kafka=kafka, ledger=ledger, selection=selection,
                    replay_id=new_replay_id(), dry_run=args.dry_run,
                    progress=_Progress(f"replay of {ds.dlq_topic}"))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    targets = ", ".join(ds.topics) if len(ds.topics) > 1 else ds.topic
    print(f"{ds.name}: {'dry run of ' if args.dry_run else ''}replay {report.replay_id} "
          f"of {ds.dlq_topic} -> {targets} ({selection.describe()})")
    selected = sum(report.selected.values())
    if not selected:
        print(f"nothing to replay: none of the {report.scanned} dead letter(s) read matches")
        return 0
    rows = report.rows()
    total = ("total", selected, sum(report.skipped.values()), sum(report.unroutable.values()),
             sum(report.published.values()))
    for line in _table(("reason", "selected", "already replayed", "unroutable", "re-published"),
                       [*rows, total]):
        print(line)
    published, skipped = total[4], total[2]
    to = ", ".join(f"{n} to {t}" for t, n in sorted(report.targets.items())) or "none"
    if args.dry_run:
        print(f"dry run: would re-publish {published} dead letter(s) ({to}); nothing was "
              f"published or recorded")
    elif published:
        print(f"re-published {published} dead letter(s) ({to}) with their original key, value, "
              f"headers, partition and timestamp; header conflux.replay.of names each dead letter")
    else:
        print("re-published nothing")
    if skipped:
        print(f"skipped {skipped} already replayed (--again replays them anyway)")
    if total[3]:
        print(f"skipped {total[3]} without a usable source topic header")
    if report.over_limit:
        print(f"left {report.over_limit} for a later replay (--limit {selection.limit})")
    if report.original_time_missing:
        print(f"{report.original_time_missing} source record(s) were gone (retention): those "
              f"were re-published with the time they were dead-lettered")
    if published and not args.dry_run:
        print(f"the {ds.name}__kafka sensor applies them (upserts by key: no duplicates); "
              f"records still bad go back to {ds.dlq_topic} with their reason "
              f"(`conflux dlq list {args.topic}`)")
    return 0


def _launch_replay(ds, args) -> int:
    """Launch ``<dataset>__dlq_replay_job`` through the webserver (so the replay shows in the
    UI), follow it and print its report (``--json``: the same JSON as a local replay)."""
    from conflux.cli.jobs import launch_job, outcome, validated
    from conflux.core.opconfig import DeadLetterReplayConfig
    from conflux.core.settings import Settings

    source = args.topic if args.topic in ds.topics and len(ds.topics) > 1 else ""
    config = validated(DeadLetterReplayConfig, "dlq replay", reasons=args.reason or [],
                       since=args.since or "", source_topic=source, again=args.again,
                       limit=args.limit or 0, dry_run=args.dry_run)
    report = (lambda line: print(line, file=sys.stderr)) if args.json else print
    run = launch_job(Settings.from_env().dagster_url, f"{ds.name}__dlq_replay_job",
                     f"{ds.name}__dlq_replay", config, what=f"{ds.name}: dead-letter replay",
                     wait=True, timeout=args.timeout, report=report)
    if args.json:
        print(json.dumps(run.report or {"run_id": run.run_id, "status": run.status,
                                        "failures": run.failures}, indent=2))
        return 0 if run.succeeded else 1
    ok = outcome(run)
    if ok and not args.dry_run and run.report and run.report.get("published"):
        print(f"the {ds.name}__kafka sensor applies them (upserts by key: no duplicates); "
              f"records still bad go back to {ds.dlq_topic} with their reason "
              f"(`conflux dlq list {args.topic}`)")
    return 0 if ok else 1


# --- offset gaps ---------------------------------------------------------------------------
def _gap_ledger(args):
    """(dataset, source topic or None, the gap ledger) of ``args.topic``."""
    from conflux.cli.contracts import load_catalog
    from conflux.core.settings import Settings
    from conflux.observe.dlq import resolve_topic
    from conflux.observe.offset_gaps import GapLedger

    ds, source_topic = resolve_topic(args.topic, load_catalog(args.catalog))
    return ds, source_topic, GapLedger(Settings.from_env().postgres_url)


def cmd_dlq_gaps(args) -> int:
    ds, source_topic, ledger = _gap_ledger(args)
    found = [r for r in ledger.gaps([ds.name], open_only=not args.all)
             if source_topic is None or r.gap.topic == source_topic]
    if args.json:
        print(json.dumps([r.as_json() for r in found], indent=2))
        return 0
    still = [r for r in found if r.acknowledged_at is None]
    print(f"{ds.name}: {len(still)} offset gap(s) not acknowledged"
          + (f", {len(found) - len(still)} acknowledged" if args.all else "")
          + f" ({', '.join([source_topic] if source_topic else ds.topics)})")
    for r in found:
        print(f"  #{r.id}  {r.gap.reason}  found {r.detected_at:%Y-%m-%dT%H:%M:%S%z} by "
              f"{r.detected_by}")
        print(f"      {r.gap.describe()}")
        if r.acknowledged_at is not None:
            print(f"      acknowledged {r.acknowledged_at:%Y-%m-%dT%H:%M:%S%z} by "
                  f"{r.acknowledged_by}: {r.note}")
    if still:
        print(f"repair what the ranges held (the batch source: `conflux backfill {ds.name} ...`; "
              f"or have the producer send it again), then: conflux dlq ack-gaps {args.topic} "
              f"{' '.join(str(r.id) for r in still)} --note TEXT")
    return 0


def cmd_dlq_ack_gaps(args) -> int:
    from conflux.core.errors import UsageError

    every = [i.lower() for i in args.ids] == ["all"]
    if not every and not all(i.isdigit() for i in args.ids):
        raise UsageError(f"gap ids are numbers (`conflux dlq gaps {args.topic}` lists them), "
                         f"or `all`; got {' '.join(args.ids)}")
    if not args.note.strip():
        raise UsageError("--note is empty: say what was done (the repair, or why the loss is "
                         "accepted)")
    ds, _, ledger = _gap_ledger(args)
    ids = None if every else [int(i) for i in args.ids]
    open_ids = {r.id for r in ledger.gaps([ds.name])}
    if unknown := sorted(set(ids or ()) - open_ids):
        raise UsageError(f"no open offset gap of {ds.name} with id "
                         f"{', '.join(map(str, unknown))} (open: "
                         f"{', '.join(map(str, sorted(open_ids))) or 'none'})")
    if not open_ids:
        print(f"{ds.name}: no open offset gap")
        return 0
    done = ledger.acknowledge(ds.name, ids, note=args.note)
    for r in done:
        print(f"acknowledged #{r.id}: {r.gap.describe()}")
    left = ledger.gaps([ds.name])
    print(f"{ds.name}: {len(done)} gap(s) acknowledged, {len(left)} still open; the "
          f"offset_gaps check follows at the {ds.name}__kafka sensor's next evaluation (within "
          f"30 s; Execute in the UI evaluates it now)")
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the `conflux` parser."""
    dlq = sub.add_parser("dlq", help="dead letters of an event dataset: reasons, samples, "
                                     "replay after a fix")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    topic_help = "a source topic (e.g. tpch.orders) or its dead-letter topic (tpch.orders.dlq)"
    since_help = ("only letters dead-lettered since T: an ISO date / date-time (UTC when no zone "
                  "is given) or a duration back from now (90m, 2h, 1d)")
    reason_help = ("only letters with this reason code (repeatable), e.g. UNKNOWN_SCHEMA, "
                   "UNSUPPORTED_SCHEMA_VERSION, CONTRACT_VIOLATION, INVALID_JSON")
    catalog_help = "declarations to use, as module:attribute (default: [tool.conflux] catalog of the project)"

    ls = dlq_sub.add_parser("list", help="reason histogram and the newest samples of a DLQ")
    ls.add_argument("topic", help=topic_help)
    ls.add_argument("--since", metavar="T", help=since_help)
    ls.add_argument("--reason", action="append", metavar="CODE", help=reason_help)
    ls.add_argument("--limit", type=int, default=5, metavar="N",
                    help="samples to show, newest first (default 5; 0 for none)")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.add_argument("--catalog", help=catalog_help)
    ls.set_defaults(func=cmd_dlq_list)

    rp = dlq_sub.add_parser("replay", help="re-publish dead letters to their source topic after "
                                           "a fix; each at most once (unless --again)")
    rp.add_argument("topic", help=topic_help)
    rp.add_argument("--since", metavar="T", help=since_help)
    rp.add_argument("--reason", action="append", metavar="CODE", help=reason_help)
    rp.add_argument("--dry-run", action="store_true",
                    help="report what would be re-published; publish and record nothing")
    rp.add_argument("--again", action="store_true",
                    help="also re-publish letters an earlier replay re-published")
    rp.add_argument("--limit", type=int, metavar="N", help="re-publish at most N (oldest first)")
    rp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    rp.add_argument("--catalog", help=catalog_help + "; implies --local (the webserver knows "
                                                     "only the project's catalog)")
    rp.add_argument("--local", action="store_true",
                    help="replay in this process instead of launching the "
                         "<dataset>__dlq_replay_job through the Dagster webserver")
    rp.add_argument("--timeout", type=float, default=1800,
                    help="seconds to wait for the run (default 1800)")
    rp.set_defaults(func=cmd_dlq_replay)

    gp = dlq_sub.add_parser("gaps", help="offset gaps: offsets never applied that no longer "
                                         "exist (retention, delete_records, recreated topic)")
    gp.add_argument("topic", help=topic_help)
    gp.add_argument("--all", action="store_true", help="also the acknowledged ones")
    gp.add_argument("--json", action="store_true", help="print a JSON list")
    gp.add_argument("--catalog", help=catalog_help)
    gp.set_defaults(func=cmd_dlq_gaps)

    ack = dlq_sub.add_parser("ack-gaps", help="acknowledge offset gaps once repaired or "
                                              "accepted: the offset_gaps check passes again")
    ack.add_argument("topic", help=topic_help)
    ack.add_argument("ids", nargs="+", metavar="ID", help="gap ids (`dlq gaps` lists them), "
                                                          "or `all`")
    ack.add_argument("--note", required=True,
                     help="what was done: the repair, or why the loss is accepted (recorded)")
    ack.add_argument("--catalog", help=catalog_help)
    ack.set_defaults(func=cmd_dlq_ack_gaps)
