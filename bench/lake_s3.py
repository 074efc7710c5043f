"""Lake operations on a typical partition, local folder vs S3 (a moto server on loopback, real
HTTP), both Delta tables written by delta-rs in the same run: median milliseconds per upsert
(one MERGE: into a new partition, a replay that changes nothing, 100 late rows), partition
write (a predicate overwrite, one commit), a ``rewrite`` read-modify-write, reads (latest and
by version) and partition listing, and the S3/local ratio.

    .venv/bin/python -m bench.lake_s3 [--rows 2500] [--repeat 7]

Starts its own moto server and stops it; no stack and no lock service (delta-rs commits to S3
with conditional PUTs). A moto server is slower than a real S3 endpoint per request in some
ways (Python) and faster in others (loopback, no TLS): the figures compare code paths, not
clouds. About a minute with the defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Figures, record_results


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(lake, rows: int, repeat: int) -> dict[str, float]:
    import pyarrow.compute as pc

    from pipelines.demo.tpch import TpchGenerator

    base = TpchGenerator(0.01, seed=3).lineitem().head(rows).reset_index(drop=True)
    base["__ts"], base["__offset"] = 1, range(len(base))
    key, order = ["l_orderkey", "l_linenumber"], ["__ts", "__offset"]
    counter = iter(range(10**6))
    late_rounds = iter(range(1, 10**6))

    def fresh_upsert():
        lake.upsert("lineitem", base, key, f"p{next(counter)}", order_by=order)

    def late_upsert():  # 100 rows: 50 newer versions of stored rows, 50 new keys
        n = next(late_rounds)
        late = base.head(100).assign(__ts=1 + n, __offset=base.__offset.head(100) + 10**6 * n)
        late.loc[50:, "l_linenumber"] = late.l_linenumber[50:] + 100 * n
        lake.upsert("lineitem", late, key, "day", order_by=order)

    def add_one(table):
        return table.set_column(table.schema.get_field_index("__ts"), "__ts",
                                pc.add(table["__ts"], 1))

    lake.upsert("lineitem", base, key, "day", order_by=order)
    figures = {
        "upsert, new partition (MERGE)": timed(fresh_upsert, repeat),
        "upsert again, unchanged (no commit)": timed(
            lambda: lake.upsert("lineitem", base, key, "day", order_by=order), repeat),
        "upsert 100 late rows (MERGE)": timed(late_upsert, repeat),
    }
    figures["write partition (overwrite)"] = timed(
        lambda: lake.write("lineitem", base, "other"), repeat)
    figures["rewrite partition (read+write)"] = timed(
        lambda: lake.rewrite("lineitem", "other", add_one), repeat)
    figures["read partition"] = timed(lambda: lake.read_table("lineitem", "day"), repeat)
    first = lake.history("lineitem")[-1]["version"]
    figures["read partition at version 0"] = timed(
        lambda: lake.read_table("lineitem", "day", version=first), repeat)
    figures["list partitions"] = timed(lambda: lake.partitions("lineitem"), repeat)
    figures["history"] = timed(lambda: lake.history("lineitem"), repeat)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2500, help="rows of the partition "
                        "(~2,500: a lineitem day at TPC-H scale 1)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    from conflux.io.lake import LakeResource
    from tests import s3

    work = Path(tempfile.mkdtemp(prefix="conflux-bench-lake-"))
    proc, endpoint = s3.start_moto(work / "moto.log")
    saved = {k: os.environ.get(k) for k in (*s3.S3_TEST_ENV, "AWS_ENDPOINT_URL_S3",
                                            "AWS_ENDPOINT_URL")}
    try:
        os.environ.update({**s3.S3_TEST_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
        os.environ.pop("AWS_ENDPOINT_URL", None)
        s3.create_bucket(endpoint, "bench")
        lakes = {"local": LakeResource(path=str(work / "lake")),
                 "s3 (moto)": LakeResource(path=f"s3://bench/{uuid.uuid4().hex[:8]}")}
        started = time.perf_counter()
        results = {name: measure(lake, args.rows, args.repeat) for name, lake in lakes.items()}
        elapsed = time.perf_counter() - started
    finally:
        s3.stop(proc)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    out = Figures()  # printed as before, and recorded in docs/benchmark-results.md
    out(f"lake operations (Delta, delta-rs), {args.rows}-row partition, "
        f"median of {args.repeat} (ms)")
    out(f"{'operation':40} {'local':>9} {'s3 (moto)':>10} {'ratio':>7}")
    for op in results["local"]:
        loc, rem = results["local"][op], results["s3 (moto)"][op]
        out(f"{op:40} {loc * 1e3:9.2f} {rem * 1e3:10.2f} {rem / loc:6.1f}x")
    out(f"(measured in {elapsed:.0f} s)")
    record_results("lake_s3", out.lines)


if __name__ == "__main__":
    main()
