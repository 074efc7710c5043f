"""The lake on object storage: every behaviour test of ``tests/unit/test_lake.py`` again, on an
``s3://`` lake served by a real S3-compatible server (moto, loopback, real HTTP) and locked
through the test stack's Postgres; then what only an object store has — advisory locks shared
across connections and released by a dying holder, clear errors for a missing bucket, an
unreachable endpoint or a missing lock database."""

import time

import psycopg
import pytest

from conflux.core.errors import LakeLockError, LakeStorageError
from conflux.io.lake import LakeResource, lock_key
from tests.unit.test_lake import (  # noqa: F401 — the shared behaviour tests, collected here too
    lake,
    rows,
    test_a_crash_after_compaction_wrote_the_base_is_harmless,
    test_a_delta_only_partition_is_listed_and_an_upsert_folds_deltas,
    test_append_only_keeps_the_first_event_of_a_key,
    test_appends_read_back_exactly_as_upserts_would_store_them,
    test_checkpointed_rewrites_commit_content_and_checkpoint_as_a_pair,
    test_concurrent_writers_of_one_partition_lose_nothing,
    test_find_locates_rows_in_base_and_delta_files,
    test_newest_record_wins_and_replaying_an_old_range_changes_nothing,
    test_partitions_reads_and_scans_across_base_and_delta_files,
    test_the_same_event_twice_in_one_batch_is_stored_once,
    test_without_order_the_incoming_row_replaces_and_equal_data_is_not_rewritten,
    test_write_replaces_pending_deltas,
)

ORDER = ["__ts", "__offset"]


@pytest.fixture
def new_lake(stack, s3_lake_url):
    """Fresh S3 lakes (prefixes of the session's bucket), locked through the stack's Postgres."""
    return lambda name: LakeResource(path=f"{s3_lake_url}/{name}",
                                     lock_url=stack.settings.postgres_url)


def test_the_s3_lake_is_really_on_the_server(lake, s3_server):
    import pyarrow.fs as pafs

    lake.upsert("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER)
    store = lake.store()
    assert store.remote and store.url == lake.path
    raw = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http")
    assert raw.get_file_info(lake.file("d", "p")).type == pafs.FileType.File
    assert lake.file("d", "p") == f"{lake.path[len('s3://'):]}/d/p.parquet"


def test_partition_locks_are_postgres_advisory_locks_released_by_a_dying_holder(lake, stack):
    key = lock_key(lake.store().url, "d", "p")
    with psycopg.connect(stack.settings.postgres_url, autocommit=True) as other:
        try_lock = "select pg_try_advisory_lock(%s)"
        with lake.locked("d", "p"):  # held by the lake's own connection: nobody else gets it
            assert other.execute(try_lock, (key,)).fetchone()[0] is False
            assert other.execute(try_lock, (lock_key(lake.store().url, "d", "q"),)
                                 ).fetchone()[0] is True  # another partition is free
        # released on unlock: the lake closes its lock connection, and the server drops the
        # lock when that backend exits, a moment after the client's close returns
        deadline = time.monotonic() + 10
        while not other.execute(try_lock, (key,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the lock outlived its holder's connection"
            time.sleep(0.05)
        other.execute("select pg_advisory_unlock_all()")
        # a writer that dies holding the lock: its connection ends, and the lock with it
        holder = psycopg.connect(stack.settings.postgres_url, autocommit=True)
        holder.execute("select pg_advisory_lock(%s)", (key,))
        assert other.execute(try_lock, (key,)).fetchone()[0] is False
        other.execute("select pg_terminate_backend(%s)", (holder.info.backend_pid,))
        with lake.locked("d", "p"):  # the lake gets it once the dead holder's session is gone
            assert other.execute(try_lock, (key,)).fetchone()[0] is False
        holder.close()


def test_an_s3_lake_without_a_lock_database_refuses_to_write(s3_lake_url, stack):
    lake = LakeResource(path=s3_lake_url)
    for write in (lambda: lake.upsert("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER),
                  lambda: lake.append("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER)):
        with pytest.raises(LakeLockError, match="lock_url") as exc:
            write()
        assert s3_lake_url in str(exc.value) and exc.value.code == "LAKE_LOCK"
    assert lake.partitions("d") == []  # nothing was written
    bad = LakeResource(path=s3_lake_url, lock_url="postgresql://nobody:pw@127.0.0.1:1/none")
    with pytest.raises(LakeLockError, match="127.0.0.1:1/none") as exc:
        bad.upsert("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER)
    assert "pw" not in str(exc.value).replace("127.0.0.1:1/none", "")


def test_missing_bucket_and_unreachable_endpoint_are_clear_errors(s3_server, monkeypatch):
    secret = "conflux-test-secret"
    with pytest.raises(LakeStorageError, match="bucket 'no-such-bucket' does not exist") as exc:
        LakeResource(path="s3://no-such-bucket/lake").partitions("d")
    assert "s3://no-such-bucket/lake" in str(exc.value) and secret not in str(exc.value)
    assert exc.value.code == "LAKE_STORAGE"
    from tests.s3 import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LakeStorageError, match="s3://conflux-test/x: object store at") as exc:
        LakeResource(path="s3://conflux-test/x").read("d", "p")
    assert secret not in str(exc.value)
    with pytest.raises(LakeStorageError, match="unsupported lake URL"):
        LakeResource(path="gs://bucket/x").read("d")


def test_refused_credentials_are_a_clear_error(s3_server, monkeypatch, tmp_path):
    """A server that checks access keys (moto with authentication on) refuses the test's."""
    from tests import s3

    proc, endpoint = s3.start_moto(tmp_path / "moto-auth.log", check_credentials=True)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        with pytest.raises(LakeStorageError, match="credentials refused") as exc:
            LakeResource(path="s3://conflux-test/lake").partitions("d")
        assert "s3://conflux-test/lake" in str(exc.value) and "ACCESS_DENIED" in str(exc.value)
        assert s3.S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"] not in str(exc.value)
    finally:
        s3.stop(proc)


WRITER = """
import sys
import pandas as pd
from conflux.io.lake import LakeResource
path, lock_url, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
lake = LakeResource(path=path, lock_url=lock_url)
for k in range(first, first + 8):
    row = pd.DataFrame([{"k": k, "v": f"p{first}", "__ts": 1, "__offset": k}])
    if k % 2:
        lake.append("d", row, ["k"], "p", order_by=["__ts", "__offset"], compact_after=3)
    else:
        lake.upsert("d", row, ["k"], "p", order_by=["__ts", "__offset"])
"""


def test_writers_in_separate_processes_lose_nothing(lake):
    """Three processes (as on three machines: nothing shared but S3 and Postgres) upsert and
    append into one partition at once, compacting as they go."""
    import subprocess
    import sys

    from tests.conftest import REPO

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, lake.path, lake.lock_url, str(first)],
                              cwd=REPO) for first in (0, 100, 200)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    assert sorted(lake.read("d", "p").k) == [f + i for f in (0, 100, 200) for i in range(8)]
