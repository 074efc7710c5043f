"""The lake on object storage: every behaviour test of ``tests/unit/test_lake.py`` again, on an
``s3://`` lake served by a real S3-compatible server (moto, loopback, real HTTP) — among them
four writer processes committing to one table at once, which on S3 only works because delta-rs
commits each log entry with a conditional PUT (``If-None-Match: *``): no lock service, no
DynamoDB. Then what only an object store has: the objects really on the server, and clear
errors for a missing bucket, refused credentials, an unreachable endpoint or an unsupported
URL (naming the lake URL, never a secret)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable, write_deltalake

from conflux.core.errors import LakeStorageError
from conflux.io.lake import LakeResource
from tests.unit.test_lake import (  # noqa: F401 — the shared behaviour tests, collected here too
    ORDER,
    lake,
    outside,
    rows,
    test_a_checkpointed_read_overtaken_by_a_rewrite_still_sees_one_pair,
    test_a_commit_names_its_own_version_when_another_writer_commits_right_after,
    test_a_fraction_is_never_silently_truncated_into_an_int_column,
    test_a_new_nullable_column_evolves_the_table_schema,
    test_an_int_column_receiving_doubles_is_cast,
    test_an_upsert_without_order_by_can_add_a_column,
    test_append_only_keeps_the_first_event_of_a_key,
    test_checkpointed_rewrites_commit_content_and_checkpoint_as_a_pair,
    test_find_locates_rows_in_every_partition,
    test_first_version_holding_finds_the_commit_that_applied_an_offset,
    test_history_versions_and_time_travel,
    test_newest_record_wins_and_replaying_an_old_range_changes_nothing,
    test_partitions_reads_scans_and_rewrites,
    test_random_batches_with_replays_and_late_events_match_an_in_memory_model,
    test_reading_a_version_the_table_never_had_is_a_clear_error,
    test_the_same_event_twice_in_one_batch_is_stored_once,
    test_time_travel_to_before_the_table_existed_returns_none_of_its_later_rows,
    test_without_order_a_row_of_several_columns_replaces_when_any_of_them_differs,
    test_without_order_the_incoming_row_replaces_and_equal_data_is_not_rewritten,
    test_write_many_replaces_exactly_the_named_partitions_in_one_commit,
    test_write_replaces_one_partition_only,
    test_writers_in_separate_processes_lose_nothing,
)

SECRET = "conflux-test-secret"  # tests/s3.py S3_TEST_ENV: must never appear in a message


@pytest.fixture
def new_lake(s3_lake_url):
    """Fresh S3 lakes: prefixes of the session's bucket on the moto server."""
    return lambda name: LakeResource(path=f"{s3_lake_url}/{name}")


def raw_store(endpoint: str) -> pafs.S3FileSystem:
    from tests.s3 import S3_TEST_ENV

    return pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http",
                             access_key=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
                             secret_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"], region="us-east-1")


def record_requests(endpoint: str, action) -> list[dict]:
    """The HTTP requests the server received while ``action`` ran (moto's recorder API)."""
    import json
    import urllib.request

    def api(path: str, method: str = "POST") -> bytes:
        request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    api("reset-recording")
    api("start-recording")
    try:
        action()
    finally:
        api("stop-recording")
    lines = api("download-recording", "GET").decode().splitlines()
    api("reset-recording")
    return [json.loads(line) for line in lines if line.strip()]


def test_the_s3_lake_is_really_on_the_server(lake, s3_server):
    lake.upsert("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER)
    assert lake.uri("d") == f"{lake.path}/d" and lake.root() == lake.path
    assert lake.options()["AWS_ENDPOINT_URL"] == s3_server
    assert lake.options()["AWS_ALLOW_HTTP"] == "true"
    prefix = lake.uri("d")[len("s3://"):]
    found = raw_store(s3_server).get_file_info(pafs.FileSelector(prefix, recursive=True))
    names = sorted(f.path[len(prefix) + 1:] for f in found if f.type == pafs.FileType.File)
    assert "_delta_log/00000000000000000000.json" in names
    assert any(n.startswith("__day=p/") and n.endswith(".parquet") for n in names), names
    # any Delta reader pointed at the server reads it
    assert outside(lake, "d").to_pylist() == [
        {"k": 1, "v": "a", "__ts": 10, "__offset": 0, "__day": "p"}]


def test_commits_are_conditional_puts_without_any_lock_service(lake, s3_server):
    """The server refuses to overwrite an object under ``If-None-Match: *`` (what delta-rs
    relies on), the lake configures no locking provider, and two writers holding the same
    table version both land: the second one's PUT of that version's log entry is refused, so
    it commits the next version instead of replacing the first one's."""
    import boto3
    from botocore.exceptions import ClientError

    from tests.s3 import S3_TEST_ENV

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"])
    key = f"{lake.path[len('s3://conflux-test/'):]}/probe"
    s3.put_object(Bucket="conflux-test", Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="conflux-test", Key=key, Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket="conflux-test", Key=key)["Body"].read() == b"first"

    options = lake.options()
    assert not {k for k in options if "LOCK" in k.upper() or "DYNAMO" in k.upper()
                or "UNSAFE" in k.upper()}, options
    # the log entries of the lake's commits are PUT with If-None-Match (moto's request recorder)
    recorded = record_requests(s3_server, lambda: (
        lake.write("d", rows((0, "base", 1, 0)), "p"),
        lake.upsert("d", rows((5, "x", 1, 5)), ["k"], "p", order_by=ORDER),
        lake.rewrite("d", "p", lambda cur: cur.filter(pc.not_equal(cur["k"], 5)))))
    log = f"/conflux-test/{lake.uri('d')[len('s3://conflux-test/'):]}/_delta_log/"
    puts = {r["url"].split(log)[1]: r["headers"] for r in recorded
            if r["method"] == "PUT" and log in r["url"] and r["url"].endswith(".json")}
    assert sorted(puts) == [f"{v:020d}.json" for v in range(3)], sorted(puts)
    assert all(h.get("If-None-Match") == "*" for h in puts.values()), puts
    one = DeltaTable(lake.uri("d"), storage_options=options)
    two = DeltaTable(lake.uri("d"), storage_options=options)
    assert one.version() == two.version() == 2
    write_deltalake(one, pa.table({"k": [1], "v": ["one"], "__ts": [1], "__offset": [1],
                                   "__day": ["p"]}), mode="append")
    write_deltalake(two, pa.table({"k": [2], "v": ["two"], "__ts": [1], "__offset": [2],
                                   "__day": ["p"]}), mode="append")
    assert (one.version(), two.version(), lake.version("d")) == (3, 4, 4)
    assert sorted(lake.read("d", "p").v) == ["base", "one", "two"]
    assert [h["version"] for h in lake.history("d")] == [4, 3, 2, 1, 0]


def test_a_missing_bucket_is_a_clear_error(s3_server):
    lake = LakeResource(path="s3://no-such-bucket/lake")
    for call in (lambda: lake.partitions("d"), lambda: lake.read("d", "p"),
                 lambda: lake.upsert("d", rows((1, "a", 10, 0)), ["k"], "p", order_by=ORDER),
                 lambda: lake.write("d", rows((1, "a", 10, 0)), "p")):
        with pytest.raises(LakeStorageError) as exc:
            call()
        message = str(exc.value)
        assert exc.value.code == "LAKE_STORAGE" and "s3://no-such-bucket/lake" in message
        assert SECRET not in message
        # what went wrong, not only "Generic S3 error"
        assert "does the bucket exist" in message, message


def test_an_unreachable_endpoint_and_an_unsupported_url_are_clear_errors(s3_server, monkeypatch):
    from tests.s3 import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LakeStorageError) as exc:
        LakeResource(path="s3://conflux-test/x").read("d", "p")
    message = str(exc.value)
    assert "s3://conflux-test/x" in message and SECRET not in message
    assert "onnect" in message, message  # "Connection refused", not only "Generic S3 error"
    with pytest.raises(LakeStorageError, match="unsupported lake URL") as exc:
        LakeResource(path="gs://bucket/x").read("d")
    assert "gs://bucket/x" in str(exc.value)


def test_refused_credentials_are_a_clear_error(s3_server, monkeypatch, tmp_path):
    """A server that checks access keys (moto with authentication on) refuses the test's."""
    from tests import s3

    proc, endpoint = s3.start_moto(tmp_path / "moto-auth.log", check_credentials=True)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        lake = LakeResource(path="s3://conflux-test/lake")
        for call in (lambda: lake.partitions("d"),
                     lambda: lake.write("d", rows((1, "a", 10, 0)), "p")):
            with pytest.raises(LakeStorageError) as exc:
                call()
            message = str(exc.value)
            assert "s3://conflux-test/lake" in message and exc.value.code == "LAKE_STORAGE"
            assert s3.S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"] not in message
            assert "credentials refused" in message, message
    finally:
        s3.stop(proc)
