"""Dead-letter logic without services: declarations and their validation, parsing dead letters,
reason histograms, the dead_letters check's thresholds, replay selection and headers, the
compiled check and sensor, and the CLI's argument errors."""

import datetime as dt
import json

import dagster as dg
import pytest

from conflux.cli import build_parser, main
from conflux.core.errors import ConfigError, DeclarationError
from pipelines.catalog import DATASETS, LINEITEM, ORDERS
from conflux.core.declarations import DeadLetterPolicy, validate_catalog
from conflux.event.decode import DeadLetter, dead_letter_headers
from conflux.observe.dlq import (REPLAY_ATTEMPT, REPLAY_ID, REPLAY_OF, REPLAY_REASON, Letter, Listing,
                           ReplayReport, Selection, WindowCounts, check_reasons, evaluate,
                           parse_since, preview, replay_headers, resolve_topic, unroutable)
from conflux.io.kafka import Record
from conflux.observe.dlq_monitor import (CHECK_NAME, build_dlq_check, build_dlq_monitor,
                                 check_evaluation, check_spec, thresholds_text)

NOW = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)


def dead_record(code="UNKNOWN_SCHEMA", *, offset=7, dlq_offset=3, key=b"42",
                value=b'{"o_orderkey": 42}', headers=(("correlation_id", b"c-1"),), ts=1000):
    """A DLQ record exactly as the ingest path writes it (decode.dead_letter_headers)."""
    source = Record("tpch.orders", 2, offset, 500, key, value, list(headers))
    heads = dead_letter_headers(DeadLetter(source, code, f"why {code}", "orders@2"),
                                dataset="orders", run_id="run-1")
    return Record("tpch.orders.dlq", 0, dlq_offset, ts, key, value, heads)


# --- declaration ---------------------------------------------------------------------------
def test_event_datasets_get_default_thresholds():
    policy = ORDERS.dlq
    assert policy == DeadLetterPolicy()
    assert (policy.window, policy.warn_rate, policy.error_rate, policy.min_records) == (
        dt.timedelta(hours=1), 0.01, 0.05, 100)
    assert policy.warn_count is None and policy.error_count is None
    assert policy.every == dt.timedelta(minutes=1)


@pytest.mark.parametrize("policy,message", [
    (DeadLetterPolicy(warn_rate=0.2, error_rate=0.1), "dlq.warn_rate=0.2 is above dlq.error_rate=0.1"),
    (DeadLetterPolicy(warn_count=10, error_count=5), "dlq.warn_count=10 is above dlq.error_count=5"),
    (DeadLetterPolicy(warn_rate=0), "dlq.warn_rate=0 must be a fraction within (0, 1]"),
    (DeadLetterPolicy(error_rate=1.5), "dlq.error_rate=1.5 must be a fraction within (0, 1]"),
    (DeadLetterPolicy(error_count=0), "dlq.error_count=0 must be a positive whole number"),
    (DeadLetterPolicy(warn_count=2.5), "dlq.warn_count=2.5 must be a positive whole number"),
    (DeadLetterPolicy(window=dt.timedelta(seconds=5)), "dlq.window (0:00:05) must be at least"),
    (DeadLetterPolicy(every=dt.timedelta(seconds=1)), "dlq.every (0:00:01) at least 10 seconds"),
    (DeadLetterPolicy(min_records=0), "dlq.min_records=0 must be at least 1"),
    ("1%", "dlq must be a DeadLetterPolicy"),
])
def test_bad_thresholds_are_declaration_errors_naming_the_dataset(policy, message):
    import dataclasses

    with pytest.raises(DeclarationError) as exc:
        validate_catalog([dataclasses.replace(ORDERS, dlq=policy)])
    assert "[DECLARATION_INVALID] dataset 'orders': " in str(exc.value)
    assert message in str(exc.value)


def test_thresholds_may_be_switched_off_one_by_one():
    import dataclasses

    policy = DeadLetterPolicy(warn_rate=None, error_rate=None, error_count=1)
    validate_catalog([dataclasses.replace(ORDERS, dlq=policy)])
    assert thresholds_text(policy) == "ERROR at 1 letter(s) over 1h (rates over >= 100 records)"


# --- dead letters --------------------------------------------------------------------------
def test_a_dead_letter_is_parsed_from_the_headers_the_ingest_path_writes():
    letter = Letter.from_record(dead_record())
    assert (letter.code, letter.message, letter.contract) == ("UNKNOWN_SCHEMA",
                                                              "why UNKNOWN_SCHEMA", "orders@2")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "tpch.orders", 2, 7)
    assert letter.source == "tpch.orders[2]@7" and letter.coords == "tpch.orders.dlq[0]@3"
    assert letter.dataset == "orders" and letter.run_id == "run-1"
    assert letter.headers == (("correlation_id", b"c-1"),), "error headers are split off"
    assert letter.correlation_id == "c-1" and letter.replay_of is None and letter.attempt == 0


def test_a_record_without_error_headers_still_reads():
    letter = Letter.from_record(Record("x.dlq", 0, 1, 5, None, None, []))
    assert letter.code == "(no reason header)" and letter.source == "(unknown source)"
    assert unroutable(letter, ORDERS) == "no conflux.error.topic header"


def test_replay_headers_drop_the_reason_and_name_the_dead_letter():
    letter = Letter.from_record(dead_record())
    headers = replay_headers(letter, "replay-1")
    names = [n for n, _ in headers]
    assert not any(n.startswith("conflux.error.") for n in names)
    assert dict(headers) == {"correlation_id": b"c-1", REPLAY_OF: b"tpch.orders.dlq:0:3",
                             REPLAY_ID: b"replay-1", REPLAY_REASON: b"UNKNOWN_SCHEMA",
                             REPLAY_ATTEMPT: b"1"}


def test_a_replayed_record_that_fails_again_counts_its_attempts():
    first = Letter.from_record(dead_record())
    # the ingest path dead-letters the replayed record again: replay headers + new error headers
    again = dead_record("UNSUPPORTED_SCHEMA_VERSION", dlq_offset=9,
                        headers=replay_headers(first, "replay-1"))
    letter = Letter.from_record(again)
    assert letter.code == "UNSUPPORTED_SCHEMA_VERSION"
    assert letter.replay_of == "tpch.orders.dlq:0:3" and letter.attempt == 1
    assert dict(replay_headers(letter, "replay-2"))[REPLAY_ATTEMPT] == b"2"
    assert sum(n == REPLAY_OF for n, _ in replay_headers(letter, "replay-2")) == 1


def test_listing_counts_reasons_and_keeps_the_newest_samples():
    listing = Listing(limit=2)
    for i, code in enumerate(["A", "B", "A", "C", "A"]):
        listing.add(Letter.from_record(dead_record(code, dlq_offset=i, ts=1000 + i)),
                    replayed=(i == 0))
    assert listing.total == 5
    assert listing.histogram() == [("A", 3, 1), ("B", 1, 0), ("C", 1, 0)]
    assert [x.dlq_offset for x in listing.newest()] == [4, 3]
    assert (listing.first_ms, listing.last_ms) == (1000, 1004)


def test_preview_is_one_printable_truncated_line():
    assert preview(None) == "(null)"
    assert preview(b"a\nb\xff") == "a\N{REPLACEMENT CHARACTER}b\N{REPLACEMENT CHARACTER}"
    assert len(preview(b"x" * 500, 50)) == 50


# --- thresholds ----------------------------------------------------------------------------
POLICY = DeadLetterPolicy(warn_rate=0.01, error_rate=0.05, min_records=100)


@pytest.mark.parametrize("records,dead,severity", [
    (10_000, 0, None),
    (10_000, 99, None),        # 0.99 %
    (10_000, 100, "WARN"),     # 1 % exactly
    (10_000, 499, "WARN"),
    (10_000, 500, "ERROR"),    # 5 %
    (3, 1, "WARN"),            # a quiet window is judged over min_records: 1 %, not 33 %
    (0, 5, "ERROR"),           # nothing arrived, yet 5 dead letters (e.g. a failed replay)
    (0, 0, None),
])
def test_rates_warn_and_error_at_the_declared_thresholds(records, dead, severity):
    verdict = evaluate(WindowCounts(3600, records, dead), POLICY)
    assert verdict.severity == severity and verdict.passed == (severity is None)
    assert verdict.rate == (dead / records if records else None)


def test_counts_apply_whatever_the_rate():
    policy = DeadLetterPolicy(warn_rate=None, error_rate=0.5, warn_count=3, error_count=10)
    assert evaluate(WindowCounts(60, 1_000_000, 2), policy).passed
    warn = evaluate(WindowCounts(60, 1_000_000, 3), policy)
    assert warn.severity == "WARN" and warn.why == ("3 dead letter(s) >= warn_count 3",)
    error = evaluate(WindowCounts(60, 1_000_000, 10), policy)
    assert error.severity == "ERROR" and "10 dead letter(s) >= error_count 10" in error.summary


def test_the_verdict_says_which_threshold_was_crossed_and_over_what():
    verdict = evaluate(WindowCounts(3600, 40, 3), POLICY)
    assert verdict.summary == ("WARN: dead-letter rate 3.00% (3 judged over min_records=100, "
                               "40 arrived) >= warn_rate 1.00%")


# --- the check and the monitor -------------------------------------------------------------
def test_every_event_dataset_gets_a_dead_letters_check_and_one_monitor_sensor():
    checks, sensor = build_dlq_monitor(datasets=DATASETS)
    keys = {k for c in checks for k in c.check_keys}
    events = [d for d in DATASETS if hasattr(d, "dlq")]
    assert keys == {dg.AssetCheckKey(dg.AssetKey(d.name), CHECK_NAME) for d in events}
    assert sensor.name == "dlq_monitor"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60
    batch = [d for d in DATASETS if not hasattr(d, "dlq")]
    assert build_dlq_monitor(datasets=batch) == ([], None)


def test_the_platform_definitions_carry_the_checks_and_the_sensor():
    from pipelines.definitions import defs

    assert "dlq_monitor" in {s.name for s in defs.sensors}
    keys = {k for c in defs.asset_checks for k in c.check_keys}
    assert dg.AssetCheckKey(dg.AssetKey("orders"), CHECK_NAME) in keys


def test_check_spec_states_the_thresholds_and_the_commands():
    spec = check_spec(ORDERS)
    assert spec.name == "dead_letters" and spec.asset_key == dg.AssetKey("orders")
    assert not spec.blocking
    assert "WARN at 1%, ERROR at 5% over 1h" in spec.description
    assert "conflux dlq list tpch.orders" in spec.description
    assert build_dlq_check(dataset=LINEITEM).node_def.name == "lineitem__dead_letters"


def test_an_evaluation_carries_counts_rate_and_reasons():
    counts = WindowCounts(3600, 1000, 60, dlq_retained=75,
                          reasons={"CONTRACT_VIOLATION": 50, "INVALID_JSON": 10}, sampled=60)
    event = check_evaluation(ORDERS, counts, evaluated_by="sensor:dlq_monitor")
    assert not event.passed and event.severity == dg.AssetCheckSeverity.ERROR
    meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    assert meta["conflux/dead_lettered"] == 60 and meta["conflux/records_in"] == 1000
    assert meta["conflux/dead_letter_rate"] == pytest.approx(0.06)
    assert meta["conflux/top_reasons"] == {"CONTRACT_VIOLATION": 50, "INVALID_JSON": 10}
    assert meta["conflux/window"] == "1h" and meta["conflux/dlq_topic"] == "tpch.orders.dlq"
    assert event.description.startswith("60 dead letter(s) / 1000 record(s) in the last 1h: ERROR")
    ok = check_evaluation(ORDERS, WindowCounts(3600, 1000, 0), evaluated_by="x")
    assert ok.passed


# --- selecting and replaying ---------------------------------------------------------------
def test_topics_resolve_to_their_dataset_source_or_dead_letter():
    assert resolve_topic("tpch.orders", DATASETS) == (ORDERS, None)
    assert resolve_topic("tpch.orders.dlq", DATASETS) == (ORDERS, None)
    with pytest.raises(ConfigError, match="'nope' is not a source or dead-letter topic .* "
                                          "known: .*tpch.orders.dlq"):
        resolve_topic("nope", DATASETS)


def test_reason_codes_are_checked():
    assert check_reasons(None, ["A"]) is None
    assert check_reasons(["a", "B"], ["A", "B"]) == frozenset({"A", "B"})
    with pytest.raises(ConfigError, match="unknown reason code.*NOPE; known: A, B"):
        check_reasons(["nope"], ["A", "B"])


def test_since_takes_iso_times_and_durations():
    assert parse_since("2h", NOW) == NOW - dt.timedelta(hours=2)
    assert parse_since("90m", NOW) == NOW - dt.timedelta(minutes=90)
    assert parse_since("2026-11-28", NOW) == dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)
    assert parse_since("2026-11-28T08:00:00Z", NOW) == NOW - dt.timedelta(hours=1)
    with pytest.raises(ConfigError, match="--since 'soon' is neither"):
        parse_since("soon", NOW)
    with pytest.raises(ConfigError, match="in the future"):
        parse_since("2027-01-01", NOW)


def test_selection_filters_by_reason_time_and_source_topic():
    letter = Letter.from_record(dead_record("INVALID_JSON", ts=5000))
    assert Selection().matches(letter)
    assert Selection(reasons=frozenset({"INVALID_JSON"})).matches(letter)
    assert not Selection(reasons=frozenset({"UNKNOWN_SCHEMA"})).matches(letter)
    assert Selection(since_ms=5000).matches(letter)
    assert not Selection(since_ms=5001).matches(letter)
    assert not Selection(source_topic="tpch.lineitem").matches(letter)
    assert Selection(reasons=frozenset({"A"}), again=True, limit=3).describe() == (
        "reason A, again, at most 3")


def test_letters_from_another_topic_are_unroutable():
    letter = Letter.from_record(dead_record())
    assert unroutable(letter, ORDERS) is None
    assert "is not a topic of lineitem" in unroutable(letter, LINEITEM)


def test_the_replay_report_adds_up_per_reason():
    report = ReplayReport("replay-1", "tpch.orders.dlq", Selection())
    report.selected.update({"A": 3, "B": 1})
    report.skipped.update({"A": 1})
    report.published.update({"A": 2, "B": 1})
    assert report.rows() == [("A", 3, 1, 0, 2), ("B", 1, 0, 0, 1)]
    data = report.as_dict()
    assert (data["selected"], data["skipped"], data["published"]) == (4, 1, 3)
    assert json.loads(json.dumps(data))["reasons"]["A"]["already_replayed"] == 1


# --- the CLI, before it reaches any service -----------------------------------------------
@pytest.mark.parametrize("argv", [["dlq", "-h"], ["dlq", "list", "-h"], ["dlq", "replay", "-h"]])
def test_dlq_commands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["dlq", "list", "nope"], "topic 'nope' is not a source or dead-letter topic"),
    (["dlq", "replay", "tpch.orders", "--reason", "BOGUS"], "unknown reason code(s) BOGUS"),
    (["dlq", "replay", "tpch.orders", "--since", "soon"], "--since 'soon' is neither"),
    (["dlq", "list", "tpch.orders", "--limit", "-1"], "--limit -1 must be >= 0"),
    (["dlq", "replay", "tpch.orders", "--limit", "0"], "--limit 0 must be >= 1"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("conflux: [USAGE_INVALID] ") and message in err


def test_a_partial_reason_histogram_is_said_in_the_check_metadata():
    from conflux.observe.dlq_monitor import check_metadata

    counts = WindowCounts(3600, 1000, 5, 5, {"INVALID_JSON": 2}, 2, (),
                          sample_error="no records for 5s from tpch.orders.dlq[0]")
    meta = check_metadata(ORDERS, counts, evaluate(counts, ORDERS.dlq), "test")
    assert meta["conflux/reasons_partial"].startswith("no records for 5s")
    assert meta["conflux/dead_lettered"] == 5  # the offset-based counts stand
    whole = check_metadata(ORDERS, WindowCounts(3600, 1000, 5, 5, {"INVALID_JSON": 5}, 5),
                           evaluate(counts, ORDERS.dlq), "test")
    assert "conflux/reasons_partial" not in whole
