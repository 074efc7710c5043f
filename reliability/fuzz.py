"""Hostile input through the real event path, verified record by record.

    python -m reliability.fuzz --records 10000 --seed 7 [--good-every 1]
                               [--datasets orders,lineitem,customer_ledger] [--keep]

Against the stack of the environment (``CONFLUX_HOME``, ``CONFLUX_*_PORT``; Postgres and Kafka
are started through the project's own tooling when they are not running, and stopped again at
the end), for each demo event dataset it declares a copy on a fresh topic (``dataclasses.replace``
of the catalog's declaration: own name, topic and dead-letter topic), registers its contract as
version 1 and a compatible version 2 (so ``subject@2`` is "newer than the running code"), and
publishes the records of ``reliability.hostile.generate``: ``--records`` hostile records in all,
split over the datasets, with one kept (plain or odd-but-valid) record after every
``--good-every`` hostile ones. Then it applies the topic twice, into two lakes:

* **inline** — ticks of the dataset's real Kafka sensor (``conflux/event/sensor.py``, the path
  the daemon runs), until its cursor reaches the end offsets;
* **run** — one run of the dataset's ingest job (``build_ingest_job``) over every partition,
  executed against the stack's Postgres-backed Dagster instance.

Every ``RESEND_EVERY``-th hostile record is published a second time, as a producer's re-send
would. And verifies: every hostile record is in ``<topic>.dlq`` exactly once per path and per
time it was published (matched by its ``fuzz.id`` header; each letter of a copy names that
copy's source offset), with ``conflux.error.code`` equal to its expected reason and a non-empty
``conflux.error.message``; a dead letter that had to be cut says so and carries the original
value's SHA-256; no other record is dead-lettered; no sensor tick raised; the run succeeded;
each lake holds exactly the kept records' rows with exactly their values — nothing lost,
nothing duplicated, nothing else. It prints the figures and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import math
import os
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from reliability import hostile as H

PATHS = ("inline", "run")
RESEND_EVERY = 25  # every 25th hostile record is published twice


@dataclass
class Outcome:
    """What one dataset's fuzzing showed."""

    dataset: str
    topic: str
    hostile: int = 0
    resent: int = 0  # hostile records published a second time
    kept_sent: int = 0
    by_category: Counter = field(default_factory=Counter)
    dead_by_reason: dict[str, Counter] = field(default_factory=lambda: {p: Counter() for p in PATHS})
    kept: dict[str, int] = field(default_factory=dict)        # path -> expected rows found intact
    lost: dict[str, int] = field(default_factory=dict)        # path -> kept rows missing or changed
    duplicated: dict[str, int] = field(default_factory=dict)  # path -> keys stored twice / letters twice
    extra: dict[str, int] = field(default_factory=dict)       # path -> rows that should not be there
    truncated_letters: int = 0
    ticks: int = 0
    runs_failed: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: Counter = field(default_factory=Counter)


def v2_schema(schema: dict) -> dict:
    """A compatible next version of a contract's JSON Schema: one more optional field."""
    out = {**schema, "properties": {**schema["properties"],
                                    "fuzz_note": {"type": "string", "default": ""}}}
    return out


def fuzz_dataset(dataset: str, *, hostile: int, seed: int, good_every: int, kafka, instance,
                 registry_url: str, lake_root: Path, huge: bool = True,
                 report=print) -> Outcome:
    """Declare, publish, apply through both paths and verify one dataset (see the module)."""
    import dagster as dg

    from conflux.contracts.lineage import contract_schema
    from conflux.io.schema_registry import SchemaRegistry
    from pipelines.catalog import CATALOG
    from conflux.event.job import build_ingest_job
    from conflux.io.kafka import Outgoing
    from conflux.io.lake import LakeResource
    from conflux.io.registry import SchemaRegistryResource
    from conflux.event.offsets import dump_cursor, parse_cursor
    from conflux.event.sensor import build_kafka_sensor

    tag = uuid.uuid4().hex[:10]
    base = CATALOG[dataset]
    topic = f"fuzz.{dataset}.{tag}"
    ds = dataclasses.replace(base, name=f"{dataset}_fz_{tag}", topics=(topic,),
                             dlq_topic=f"{topic}.dlq", fallback=None,
                             inline_max_backlog=10 ** 9)  # the inline path, whatever the backlog
    out = Outcome(dataset, topic)
    t0 = time.perf_counter()
    batch = H.generate(dataset, hostile=hostile, seed=seed, subject=ds.subject,
                       good_every=good_every, huge=huge)
    out.hostile, out.kept_sent = len(batch.hostile), len(batch.kept)
    out.by_category.update(r.category for r in batch.hostile)
    out.seconds["generate"] = time.perf_counter() - t0

    registry = SchemaRegistry(registry_url)
    registry.ensure_schema()
    schema = contract_schema(ds.contract)
    versions = [registry.register(ds.subject, s).version.version for s in (schema, v2_schema(schema))]
    if versions != [1, 2]:
        raise RuntimeError(f"subject {ds.subject}: registered as versions {versions}, not [1, 2]")
    kafka.ensure_topic(topic, ds.partitions)
    kafka.ensure_topic(ds.dlq_topic, 1)

    t0 = time.perf_counter()
    with kafka.publisher(topic) as publish:
        chunk: list = []
        size = 0
        for rec in batch.records:
            chunk.append(Outgoing(rec.key, rec.value, list(rec.headers)))
            size += rec.size
            if len(chunk) >= 2000 or size > 24 * 1024 * 1024:
                publish(chunk)
                chunk, size = [], 0
        if chunk:
            publish(chunk)
        # a producer re-sending: every RESEND_EVERY-th hostile record published once more, so
        # its dead letters must come once per copy (each its own source offset)
        again = batch.hostile[::RESEND_EVERY]
        for i in range(0, len(again), 500):
            publish([Outgoing(r.key, r.value, list(r.headers)) for r in again[i:i + 500]])
    sends = Counter(r.id for r in batch.hostile) + Counter(r.id for r in again)
    out.resent = len(again)
    ends = kafka.end_offsets(topic)
    if sum(ends.values()) != len(batch.records) + len(again):
        raise RuntimeError(f"{topic}: {sum(ends.values())} records on the topic, "
                           f"{len(batch.records) + len(again)} published")
    out.seconds["publish"] = time.perf_counter() - t0
    report(f"{dataset}: published {len(batch.records):,} records to {topic} "
           f"({out.hostile:,} hostile, {out.kept_sent:,} kept) in {out.seconds['publish']:.1f}s")

    lakes = {p: LakeResource(path=str(lake_root / tag / p)) for p in PATHS}
    reg_resource = SchemaRegistryResource(url=registry_url)

    # --- (a) inline: ticks of the real sensor until its cursor reaches the end offsets
    t0 = time.perf_counter()
    sensor = build_kafka_sensor(ds, build_ingest_job(ds))
    cursor = None
    resources = {"kafka": kafka, "lake": lakes["inline"], "registry": reg_resource}
    for _ in range(500):
        try:
            with dg.build_sensor_context(instance=instance, resources=resources,
                                         cursor=cursor) as ctx:
                result = sensor(ctx)
        except Exception as exc:  # noqa: BLE001 - a raising tick is what this looks for
            out.problems.append(f"inline: sensor tick {out.ticks + 1} raised "
                                f"{type(exc).__name__}: {exc}"[:500])
            break
        out.ticks += 1
        if isinstance(result, dg.SkipReason) or getattr(result, "run_requests", None):
            out.problems.append(f"inline: tick {out.ticks} did not apply inline: {result}"[:500])
            break
        cursor = result.cursor
        if parse_cursor(cursor).get(topic) == ends:
            break
    else:
        out.problems.append(f"inline: cursor {cursor} never reached {dump_cursor({topic: ends})}")
    out.seconds["inline"] = time.perf_counter() - t0

    # --- (b) one ingest run over every partition, on the Postgres-backed instance
    t0 = time.perf_counter()
    config = {"ops": {f"{ds.name}__ingest": {"config": {"ranges": [
        {"topic": topic, "partition": p, "start": 0, "end": e} for p, e in sorted(ends.items())]}}}}
    try:
        result = build_ingest_job(ds).execute_in_process(
            run_config=config, instance=instance, raise_on_error=False,
            resources={"kafka": kafka, "lake": lakes["run"], "registry": reg_resource})
        run_id = result.run_id
        status = instance.get_run_by_id(run_id).status
        if status != dg.DagsterRunStatus.SUCCESS or not result.success:
            out.runs_failed += 1
            errors = [_root_cause(e.event_specific_data.error) for e in result.all_events
                      if e.is_failure and getattr(e.event_specific_data, "error", None)]
            out.problems.append(f"run: {run_id} ended {status.value}: {errors[:2]}")
    except Exception as exc:  # noqa: BLE001
        run_id = None
        out.runs_failed += 1
        out.problems.append(f"run: raised {type(exc).__name__}: {exc}"[:500])
    out.seconds["run"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    verify_dead_letters(out, batch, kafka, ds.dlq_topic, run_id, sends)
    for path in PATHS:
        verify_lake(out, batch, ds, lakes[path], path)
    out.seconds["verify"] = time.perf_counter() - t0
    return out


def _root_cause(error) -> str:
    """The innermost cause of a Dagster serializable error: message and last frame."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    frames = [f.strip() for f in (error.stack or [])][-2:]
    return f"{error.message.strip()} at {' | '.join(frames)}"[:800]


def verify_dead_letters(out: Outcome, batch: H.Batch, kafka, dlq_topic: str,
                        run_id: str | None, sends: Counter) -> None:
    """Every hostile record once per path and per time it was published (``sends``), each
    letter naming another source offset, with its reason; nothing else."""
    expected = {r.id: r for r in batch.hostile}
    ends = kafka.end_offsets(dlq_topic) or {}
    seen: dict[str, Counter] = {p: Counter() for p in PATHS}
    sources: dict[str, set] = {p: set() for p in PATHS}
    strays: Counter = Counter()
    for letter in kafka.read_ranges([(dlq_topic, p, 0, e) for p, e in ends.items()]):
        origin = (letter.header("conflux.error.run_id") or b"").decode(errors="replace")
        path = "inline" if origin.startswith("sensor:") else "run" if origin == run_id else None
        fuzz_id = (letter.header(H.ID_HEADER) or b"").decode(errors="replace")
        code = (letter.header("conflux.error.code") or b"").decode(errors="replace")
        message = (letter.header("conflux.error.message") or b"").decode(errors="replace")
        if path is None:
            strays[f"letter from unknown origin {origin!r}"] += 1
            continue
        out.dead_by_reason[path][code] += 1
        rec = expected.get(fuzz_id)
        if rec is None:
            label = (letter.header(H.LABEL_HEADER) or b"?").decode(errors="replace")
            strays[f"{path}: a kept record was dead-lettered ({label}, {code}: {message[:120]})"] += 1
            continue
        seen[path][fuzz_id] += 1
        sources[path].add((fuzz_id, letter.header("conflux.error.partition"),
                           letter.header("conflux.error.offset")))
        if code != rec.expected_code:
            strays[f"{path}: {rec.label} got {code or 'no code'}, expected {rec.expected_code} "
                   f"({message[:120]})"] += 1
        if not message.strip():
            strays[f"{path}: {rec.label}: empty conflux.error.message"] += 1
        if letter.header("conflux.error.truncated") is not None:
            out.truncated_letters += 1
            digest = (letter.header("conflux.error.value_sha256") or b"").decode()
            if rec.value is not None and digest != hashlib.sha256(rec.value).hexdigest():
                strays[f"{path}: {rec.label}: cut letter's SHA-256 is not the original's"] += 1
        elif letter.value != rec.value or letter.key != (rec.key if rec.key is not None or
                                                         rec.value is not None else b""):
            strays[f"{path}: {rec.label}: letter does not carry the original key and value"] += 1
    for path in PATHS:
        missing = [r for r in batch.hostile if seen[path][r.id] == 0]
        short = [r for r in batch.hostile if 0 < seen[path][r.id] < sends[r.id]]
        twice = [i for i, n in seen[path].items() if n > sends[i]]
        copies = sum(seen[path].values())
        if len(sources[path]) != copies:  # two letters for one copy (one source offset)
            strays[f"{path}: {copies - len(sources[path])} letters repeat a source offset"] += 1
        out.duplicated[path] = out.duplicated.get(path, 0) + len(twice)
        for r in short[:20]:
            strays[f"{path}: hostile {r.id} ({r.label}) published {sends[r.id]} times, "
                   f"dead-lettered {seen[path][r.id]} times"] += 1
        for r in missing[:20]:
            strays[f"{path}: hostile {r.id} ({r.label}) is not in the DLQ"] += 1
        if len(missing) > 20:
            strays[f"{path}: ... and {len(missing) - 20} more hostile records not in the DLQ"] += 1
        if twice:
            strays[f"{path}: {len(twice)} hostile records dead-lettered more often than "
                   "published"] += 1
    out.problems += [f"{text}" + (f" (x{n})" if n > 1 else "") for text, n in strays.items()]


def _normal(value):
    """A stored value in the JSON types of the generator's expected rows."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def verify_lake(out: Outcome, batch: H.Batch, ds, lake, path: str) -> None:
    """The lake of ``path`` holds exactly the kept rows, with exactly their values."""
    import pandas as pd

    expected = batch.expected_rows()
    frames = [lake.read(ds.name, p) for p in lake.partitions(ds.name)]
    frames = [f for f in frames if f is not None and len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ds.fields))
    stored = defaultdict(list)
    for row in df[list(ds.fields)].to_dict(orient="records"):
        row = {k: _normal(v) for k, v in row.items()}
        stored[tuple(row[k] for k in ds.key)].append(row)
    intact = changed = 0
    examples = []
    for key, want in expected.items():
        got = stored.get(key, [])
        if len(got) == 1 and got[0] == want:
            intact += 1
        else:
            changed += 1
            if len(examples) < 5:
                examples.append(f"{key}: expected {want}, stored {got[:2]}")
    extra = [k for k in stored if k not in expected]
    dup = sum(1 for rows in stored.values() if len(rows) > 1)
    out.kept[path], out.lost[path], out.extra[path] = intact, changed, len(extra)
    out.duplicated[path] = out.duplicated.get(path, 0) + dup
    if changed:
        out.problems.append(f"{path}: {changed} kept record(s) missing or changed in the lake: "
                            + "; ".join(examples)[:1500])
    if extra:
        out.problems.append(f"{path}: {len(extra)} row(s) in the lake that no kept record "
                            f"carries, e.g. {extra[:3]}")
    if dup:
        out.problems.append(f"{path}: {dup} key(s) stored more than once")


def run(*, records: int, seed: int, good_every: int, datasets: list[str], kafka, instance,
        registry_url: str, lake_root: Path, report=print) -> list[Outcome]:
    """Fuzz every dataset in ``datasets`` with ``records`` hostile records in all. The variants
    of megabytes go to the first dataset only: size limits are checked before anything
    dataset-specific, and each dataset would otherwise add ~50 MB to publish, read twice and
    dead-letter twice."""
    per = math.ceil(records / len(datasets))
    return [fuzz_dataset(d, hostile=per, seed=seed, good_every=good_every, kafka=kafka,
                         instance=instance, registry_url=registry_url, lake_root=lake_root,
                         huge=i == 0, report=report) for i, d in enumerate(datasets)]


def figures(outcomes: list[Outcome], *, seed: int, elapsed: float) -> list[str]:
    """The lines the script prints."""
    by_cat = sum((o.by_category for o in outcomes), Counter())
    lines = [f"seed {seed}; datasets {', '.join(o.dataset for o in outcomes)}; "
             f"elapsed {elapsed:.1f}s"]
    lines.append(f"hostile records tried: {sum(o.hostile for o in outcomes):,}  "
                 + "  ".join(f"{k}={v:,}" for k, v in sorted(by_cat.items())))
    lines.append(f"hostile records published twice: {sum(o.resent for o in outcomes):,} "
                 "(dead letters expected once per path and per copy)")
    for path in PATHS:
        reasons = sum((o.dead_by_reason[path] for o in outcomes), Counter())
        lines.append(f"dead-lettered ({path}): {sum(reasons.values()):,}  "
                     + "  ".join(f"{k}={v:,}" for k, v in sorted(reasons.items())))
    for path in PATHS:
        lines.append(f"kept records ({path}): sent {sum(o.kept_sent for o in outcomes):,}, "
                     f"stored intact {sum(o.kept.get(path, 0) for o in outcomes):,}, "
                     f"lost {sum(o.lost.get(path, 0) for o in outcomes)}, "
                     f"duplicated {sum(o.duplicated.get(path, 0) for o in outcomes)}, "
                     f"unexpected rows {sum(o.extra.get(path, 0) for o in outcomes)}")
    lines.append(f"runs failed {sum(o.runs_failed for o in outcomes)}; sensor ticks "
                 f"{sum(o.ticks for o in outcomes)} (none raised: "
                 f"{not any('raised' in p for o in outcomes for p in o.problems)}); "
                 f"dead letters cut to fit {sum(o.truncated_letters for o in outcomes)}")
    for o in outcomes:
        lines.append(f"  {o.dataset}: " + ", ".join(f"{k} {v:.1f}s" for k, v in o.seconds.items()))
    problems = [f"{o.dataset}: {p}" for o in outcomes for p in o.problems]
    lines.append("result: OK — every hostile record dead-lettered once per path and per publish "
                 "with its reason, "
                 "every kept record stored with its values" if not problems
                 else f"result: {len(problems)} problem(s)")
    lines += [f"  PROBLEM {p}" for p in problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="hostile records in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--good-every", type=int, default=1,
                        help="one kept record after every K hostile ones (default 1)")
    parser.add_argument("--datasets", default="orders,lineitem,customer_ledger")
    parser.add_argument("--keep", action="store_true", help="keep the fuzz lakes afterwards")
    parser.add_argument("--record", action="store_true",
                        help="write the figures of a passing run to docs/benchmark-results.md "
                             "(section reliability_fuzz)")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = set(datasets) - set(H.TARGETS)
    if unknown or args.records < 1 or args.good_every < 1:
        parser.error(f"unknown dataset(s) {sorted(unknown)}" if unknown
                     else "--records and --good-every must be positive")

    import dagster as dg

    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.stack.dagster import write_instance
    from conflux.io.kafka import KafkaResource

    started_at = time.perf_counter()
    settings = Settings.from_env()
    stack = Stack(settings)
    started = stack.up(["postgres", "kafka"], report=lambda line: print(line, file=sys.stderr))
    lake_root = settings.home / "fuzz" / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    try:
        write_instance(settings)
        os.environ.update(settings.client_env())
        kafka = KafkaResource.from_env(settings)
        with dg.DagsterInstance.get() as instance:
            outcomes = run(records=args.records, seed=args.seed, good_every=args.good_every,
                           datasets=datasets, kafka=kafka, instance=instance,
                           registry_url=settings.postgres_url, lake_root=lake_root,
                           report=lambda line: print(line, file=sys.stderr))
    finally:
        if not args.keep:
            shutil.rmtree(lake_root, ignore_errors=True)
        stack.down(started, report=lambda line: print(line, file=sys.stderr))
    lines = figures(outcomes, seed=args.seed, elapsed=time.perf_counter() - started_at)
    print("\n".join(lines))
    failed = any(o.problems for o in outcomes)
    if args.record and not failed:
        from bench.common import record_results

        given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--record"]
        command = " ".join(["python -m reliability.fuzz", *given])
        print(f"recorded in {record_results('reliability_fuzz', lines, command=command)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
