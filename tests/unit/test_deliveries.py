"""A record the broker refused is never taken as sent: kafka-python's ``flush`` returns even
then, so the publish paths (``publish_all``, ``send_raw``, ``publisher``, the outbox relay)
check the futures (``unacknowledged``) or count answers as they come (``Deliveries``)."""

import pytest
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from kafka.future import Future

from conflux.event.publish import Outgoing, publish_all
from conflux.io.kafka import Deliveries, unacknowledged


def answered(exc: BaseException | None = None) -> Future:
    future = Future()
    return future.failure(exc) if exc else future.success("meta")


def test_unacknowledged_names_the_first_refused_or_unanswered_record():
    assert unacknowledged([answered(), answered()]) is None
    assert unacknowledged([]) is None
    refused = [answered(), answered(TopicAuthorizationFailedError("tpch.orders")), Future()]
    i, why = unacknowledged(refused)
    assert i == 1 and "TopicAuthorizationFailed" in why
    assert unacknowledged([answered(), Future()]) == (1, "timed out")


def test_deliveries_count_refused_and_unanswered_records():
    deliveries = Deliveries()
    deliveries.track(answered(TopicAuthorizationFailedError("t")))  # answered already
    deliveries.track(Future())  # never answered
    deliveries.track(answered())
    with pytest.raises(KafkaError, match=r"2 of 3 records not acknowledged "
                                         r"\(1 TopicAuthorizationFailedError, 1 unanswered\)"):
        deliveries.check("publish")
    deliveries = Deliveries()
    deliveries.track(answered(TopicAuthorizationFailedError("t")))
    late = Future()
    deliveries.track(late)
    deliveries.track(answered())
    late.failure(KafkaError("down"))  # answered after it was tracked
    with pytest.raises(KafkaError, match=r"2 of 3 .*1 TopicAuthorizationFailedError, 1 KafkaError"):
        deliveries.check("publish")
    unanswered = Deliveries()
    unanswered.track(Future())
    with pytest.raises(KafkaError, match=r"1 of 1 records not acknowledged \(1 unanswered\)"):
        unanswered.check("publish")
    ok = Deliveries()
    ok.track(answered())
    ok.check("publish")  # every record acknowledged: no error


class Producer:
    """A kafka-python-like producer whose broker refuses the records of one topic."""

    def __init__(self, refused_topic: str):
        self.refused_topic, self.flushed = refused_topic, False

    def send(self, topic, key=None, value=None, headers=None):
        return answered(TopicAuthorizationFailedError(topic) if topic == self.refused_topic
                        else None)

    def flush(self, timeout=None):
        self.flushed = True


def test_publish_all_fails_when_a_record_is_refused():
    records = [Outgoing("ok", b"k", b"{}", []), Outgoing("closed", b"k", b"{}", [])]
    with pytest.raises(KafkaError, match="1 of 2 records"):
        publish_all(Producer("closed"), records, progress=False)
    report = publish_all(Producer("none"), records, progress=False)
    assert report.counts[("ok", "good")] == 1 and report.counts[("closed", "good")] == 1
