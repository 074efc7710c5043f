"""Lake operations on a typical partition, local folder vs S3 (a moto server on loopback, real
HTTP; partition locks in the bench stack's Postgres): median milliseconds per upsert, idempotent
re-upsert, append, read, partition listing and lock, and the S3/local ratio.

    .venv/bin/python -m bench.lake_s3 [--rows 2500] [--repeat 15]

Starts the bench stack's Postgres if needed (``bench/common.py``) and its own moto server, and
stops what it started. A moto server is slower than a real S3 endpoint per request in some
ways (Python) and faster in others (loopback, no TLS): the figures compare code paths, not
clouds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import BENCH_ENV, Figures, record_results


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(lake, rows: int, repeat: int) -> dict[str, float]:
    from pipelines.demo.tpch import TpchGenerator

    base = TpchGenerator(0.01, seed=3).lineitem().head(rows).reset_index(drop=True)
    base["__ts"], base["__offset"] = 1, range(len(base))
    key, order = ["l_orderkey", "l_linenumber"], ["__ts", "__offset"]
    late = base.head(100).assign(l_linenumber=base.l_linenumber.head(100) + 100)
    counter = iter(range(10**6))

    def fresh_upsert():
        lake.upsert("lineitem", base, key, f"p{next(counter)}", order_by=order)

    lake.upsert("lineitem", base, key, "day", order_by=order)
    figures = {
        "upsert (new partition)": timed(fresh_upsert, repeat),
        "upsert again (unchanged, 0 written)": timed(
            lambda: lake.upsert("lineitem", base, key, "day", order_by=order), repeat),
        "append 100 rows (delta file)": timed(
            lambda: lake.append("lineitem", late, key, "day", order_by=order,
                                compact_after=10**6), repeat),
    }
    figures[f"read (base + {repeat} pending deltas)"] = timed(
        lambda: lake.read_table("lineitem", "day"), repeat)

    def lock_only():
        with lake.locked("lineitem", "day"):
            pass

    figures["partition lock + unlock"] = timed(lock_only, repeat)
    lake.compact("lineitem", "day")
    figures["read (compacted base)"] = timed(lambda: lake.read_table("lineitem", "day"), repeat)
    figures["list partitions"] = timed(lambda: lake.partitions("lineitem"), repeat)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2500, help="rows of the partition "
                        "(~2,500: a lineitem day at TPC-H scale 1)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    os.environ.update(BENCH_ENV)
    from conflux.core.settings import Settings
    from conflux.stack import Stack
    from conflux.io.lake import LakeResource
    from tests import s3

    settings = Settings.from_env()
    stack = Stack(settings)
    started = stack.up(["postgres"], report=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="conflux-bench-lake-"))
    proc, endpoint = s3.start_moto(work / "moto.log")
    try:
        os.environ.update({**s3.S3_TEST_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
        s3.create_bucket(endpoint, "bench")
        lakes = {"local": LakeResource(path=str(work / "lake")),
                 "s3 (moto)": LakeResource(path=f"s3://bench/{uuid.uuid4().hex[:8]}",
                                           lock_url=settings.postgres_url)}
        results = {name: measure(lake, args.rows, args.repeat) for name, lake in lakes.items()}
    finally:
        s3.stop(proc)
        stack.down(started, report=lambda line: None)
    out = Figures()  # printed as before, and recorded in docs/benchmark-results.md
    out(f"lake operations, {args.rows}-row partition, median of {args.repeat} (ms)")
    out(f"{'operation':40} {'local':>9} {'s3 (moto)':>10} {'ratio':>7}")
    for op in results["local"]:
        loc, rem = results["local"][op], results["s3 (moto)"][op]
        out(f"{op:40} {loc * 1e3:9.2f} {rem * 1e3:10.2f} {rem / loc:6.1f}x")
    record_results("lake_s3", out.lines)


if __name__ == "__main__":
    main()
