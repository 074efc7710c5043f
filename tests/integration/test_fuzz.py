"""Hostile input through the real event path (``reliability/fuzz.py``) on the test stack's Kafka,
Postgres and Dagster instance: 10,002 hostile records of every category, interleaved with as
many kept ones (plain and odd-but-valid), applied by the Kafka sensor's inline ticks and by an
ingest run; every 25th hostile record is published twice. Every hostile record is
dead-lettered exactly once per path and per time it was published, with its expected reason;
no tick raises, the run succeeds, and both lakes hold exactly the kept rows."""

from collections import Counter

from reliability import fuzz
from reliability import hostile as H


def test_ten_thousand_hostile_records_are_dead_lettered_and_kept_ones_stored(
        stack, kafka, instance, tmp_path):
    outcomes = fuzz.run(records=10_000, seed=20261128, good_every=1,
                        datasets=["orders", "lineitem", "customer_ledger"], kafka=kafka,
                        instance=instance, registry_url=stack.settings.postgres_url,
                        lake_root=tmp_path, report=print)
    print("\n".join(fuzz.figures(outcomes, seed=20261128, elapsed=0.0)))
    assert [p for o in outcomes for p in o.problems] == []

    hostile = sum(o.hostile for o in outcomes)
    assert hostile >= 10_000
    categories = sum((o.by_category for o in outcomes), Counter())
    assert set(categories) == set(H.CATEGORIES)
    for path in fuzz.PATHS:
        reasons = sum((o.dead_by_reason[path] for o in outcomes), Counter())
        resent = sum(o.resent for o in outcomes)
        assert resent >= hostile // fuzz.RESEND_EVERY
        assert sum(reasons.values()) == hostile + resent, path  # once per publish
        assert set(reasons) == {"NULL_VALUE", "OVERSIZE", "UNDECODABLE_BYTES", "INVALID_JSON",
                                "CONTRACT_VIOLATION", "UNKNOWN_SCHEMA",
                                "UNSUPPORTED_SCHEMA_VERSION"}
        kept_sent = sum(o.kept_sent for o in outcomes)
        assert sum(o.kept[path] for o in outcomes) == kept_sent >= 10_000
        assert sum(o.lost[path] for o in outcomes) == 0
        assert sum(o.duplicated[path] for o in outcomes) == 0
        assert sum(o.extra[path] for o in outcomes) == 0
    assert sum(o.runs_failed for o in outcomes) == 0
    assert all(o.ticks >= 1 for o in outcomes)
    # letters too big to send again with their reason were cut to fit, and said so
    assert sum(o.truncated_letters for o in outcomes) >= 2 * 2
