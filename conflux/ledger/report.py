"""Rebuilding a ledger projection from offset zero and saying what it found — shared by
``conflux ledger rebuild --local`` and the ``<projection>__ledger_rebuild_job`` run."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO


def run_rebuild(*, ledger, projection, opening: str, kafka, lake, resolver, check: bool,
                as_json: bool = False, registry=None, instance=None,
                log_event: Callable | None = None, out: TextIO | None = None) -> int:
    """Rebuild ``projection`` from offset zero of ``ledger``; compare (``check``) or replace.

    Args:
        ledger: the append-only ``EventDataset``; projection: the projection's ``BatchDataset``
        (computed by ``ledger_projection``: its ``LedgerColumns`` say which columns are which);
        opening: name of the dataset holding the opening balances.
        instance: a Dagster instance to record a replacement on, as a runless materialization
            of ``projection`` (None: not recorded).
        log_event: instead, a run's ``context.log_event`` (the rebuild job records it in its
            run).

    Returns:
        the exit code: 0 identical / replaced, 1 different.
    """
    from conflux.ledger import audit as ledger_audit
    out = out or sys.stdout
    rebuilt = ledger_audit.rebuild(ledger, opening=opening,
                                   columns=projection.compute.projection.columns, kafka=kafka,
                                   lake=lake, resolver=resolver)
    if check:
        comparison = ledger_audit.compare(rebuilt, projection=projection.name, lake=lake)
        if as_json:
            print(json.dumps({"rebuild": rebuilt.summary(), "comparison": comparison.as_dict()},
                             indent=2, default=str), file=out)
        else:
            print(format_rebuild(rebuilt, ledger, projection.name), file=out)
            print(format_comparison(comparison, projection.name, rebuilt.columns.label),
                  file=out)
        return 0 if comparison.identical else 1
    generation = ledger_audit.replace(rebuilt, projection=projection.name, lake=lake)
    recorded = _record(log_event or (instance.report_runless_asset_event if instance else None),
                       projection, rebuilt, generation, registry)
    if as_json:
        print(json.dumps({"rebuild": rebuilt.summary(), "replaced": True,
                          "checkpoint": generation, "recorded_in_dagster": recorded},
                         indent=2, default=str), file=out)
    else:
        print(format_rebuild(rebuilt, ledger, projection.name), file=out)
        print(f"replaced {projection.name} with the rebuild: {len(rebuilt.projection)} "
              f"{rebuilt.columns.label}(s), {len(rebuilt.folded)} event(s) folded (checkpoint "
              f"{generation}); "
              + ("recorded in Dagster as a materialization" if recorded
                 else "not recorded in Dagster (no instance found)"), file=out)
    return 0


def _record(log_event, projection, rebuilt, generation: str, registry) -> bool:
    if log_event is None:
        return False
    import dagster as dg

    from conflux.batch.asset import contract_ref
    from conflux.contracts.metadata import materialization_metadata

    ref = contract_ref(projection, registry) if registry is not None else None
    log_event(dg.AssetMaterialization(
        asset_key=projection.name, metadata=materialization_metadata(
            projection, rows=len(rebuilt.projection), contract_version=ref,
            fold="rebuilt from offset zero", events_total=len(rebuilt.folded),
            records_read=rebuilt.records_read, checkpoint=generation,
            source_ranges=dg.MetadataValue.json(rebuilt.summary()["offsets"]))))
    return True


def format_rebuild(r, ledger, projection: str) -> str:
    spans = " ".join(f"{t}[{p}]@0..{end}" for t, ends in r.ends.items()
                     for p, end in sorted(ends.items()))
    invalid = sum(r.invalid.values())
    lines = [f"{projection}: folded {ledger.name} from offset zero ({spans or 'no partitions'})",
             f"  {r.records_read} record(s) read: {len(r.events)} event(s), {r.repeated} "
             f"repeated event_id(s) ignored, {invalid} invalid record(s) skipped"
             + (f" {dict(r.invalid)}" if invalid else ""),
             f"  {len(r.projection)} {r.columns.label}(s), {len(r.folded)} event(s) folded"]
    if r.conflicts:
        lines.append(f"  {len(r.conflicts)} repeated event_id(s) with conflicting content (the "
                     f"copy the ledger stored counts): {', '.join(r.conflicts[:10])}")
    return "\n".join(lines)


def format_comparison(c, projection: str, label: str = "account") -> str:
    if c.problem:
        return f"compared with the stored {projection}: DIFFERENT — {c.problem}"
    lines = [f"compared with the stored {projection} (checkpoint {c.generation}): "
             + (f"IDENTICAL — every row, every event folded, every {label}'s fold state"
                if c.identical else "DIFFERENT")]
    for d in c.differences:
        lines.append(f"  {label} {d['account']}: {d['column']} stored {d['stored']!r}, "
                     f"rebuilt {d['rebuilt']!r}")
    if c.difference_count > len(c.differences):
        lines.append(f"  ... {c.difference_count - len(c.differences)} more differing value(s)")
    if c.not_folded_count:
        lines.append(f"  {c.not_folded_count} event(s) in the log not folded into the stored "
                     f"projection (e.g. {', '.join(c.not_folded)}): not ingested or not "
                     f"materialized yet?")
    if c.folded_not_in_log_count:
        lines.append(f"  {c.folded_not_in_log_count} folded event(s) not in the log (e.g. "
                     f"{', '.join(c.folded_not_in_log)})")
    if c.folded_differently:
        lines.append(f"  folded with another content than the log holds: "
                     f"{', '.join(c.folded_differently)}")
    if c.state_differs:
        lines.append(f"  the per-{label} fold state differs")
    return "\n".join(lines)
