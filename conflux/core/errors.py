"""The one error root of Conflux.

Every error the platform raises on purpose derives from :class:`ConfluxError` and carries a stable
``code`` (for logs, dead-letter headers and CLI exit messages). Messages name the subject, topic,
partition and offset involved wherever those exist.
"""

from __future__ import annotations


class ConfluxError(Exception):
    """Root of all Conflux errors. ``code`` is stable across releases; the CLI exits 1 on
    one (2 on a :class:`UsageError`)."""

    code: str = "CONFLUX_ERROR"

    def __str__(self) -> str:  # "[CODE] message"
        return f"[{self.code}] {super().__str__()}"


class ConfigError(ConfluxError):
    """A setting is missing or malformed."""

    code = "CONFIG_INVALID"


class UsageError(ConfigError):
    """The command line is wrong: an unknown name (dataset, topic, service, reason code), a
    malformed value (date, time, limit) or an input file that cannot be read or parsed. The CLI
    exits 2."""

    code = "USAGE_INVALID"


class ServiceUnavailableError(ConfluxError):
    """A service (Postgres, Kafka, the Dagster webserver) did not answer; names it and its
    address."""

    code = "SERVICE_UNAVAILABLE"


class StackError(ConfluxError):
    """A local service (Kafka, Postgres, Dagster) failed to start, stop or answer."""

    code = "STACK_SERVICE_FAILED"


class SchemaError(ConfluxError):
    """A JSON Schema is not valid or cannot be interpreted."""

    code = "SCHEMA_INVALID"


class IncompatibleSchemaError(ConfluxError):
    """A schema change breaks the compatibility mode of its subject."""

    code = "SCHEMA_INCOMPATIBLE"


class DeclarationError(ConfluxError):
    """A dataset declaration is invalid (unknown upstream, missing key field, cycle, ...)."""

    code = "DECLARATION_INVALID"


class DeadLetterError(ConfluxError):
    """A dead-letter operation failed: a DLQ topic could not be read, a replay could not publish
    (nothing unacknowledged is recorded as replayed), or another replay of the topic is running."""

    code = "DLQ_OPERATION_FAILED"


class LedgerIntegrityError(ConfluxError):
    """An append-only ledger no longer holds what a projection folded from it (an event changed
    in place), or a projection does not add up to its events."""

    code = "LEDGER_INTEGRITY"


class LedgerRebuildError(ConfluxError):
    """A projection cannot be rebuilt from offset zero (topic missing, records already removed
    by retention)."""

    code = "LEDGER_REBUILD_IMPOSSIBLE"


class ProjectionNotFoundError(ConfluxError):
    """A projection, or a row of it, that was asked for is not stored."""

    code = "PROJECTION_NOT_FOUND"


class LakeError(ConfluxError):
    """Lake files that cannot be read consistently (a missing merge rule, files that keep
    changing under a reader)."""

    code = "LAKE_UNREADABLE"


class LakeStorageError(LakeError):
    """The lake's storage refused or could not be reached: a missing bucket, refused
    credentials, an unreachable endpoint, an unsupported lake URL. Names the lake URL, never
    a secret."""

    code = "LAKE_STORAGE"


class TopicConfigError(ConfluxError):
    """Kafka refused a topic's configuration (for example the unlimited retention an
    event-sourced dataset's topic needs)."""

    code = "KAFKA_TOPIC_CONFIG_FAILED"


class KafkaAuthenticationError(ConfluxError):
    """A Kafka broker refused the client's credentials (SASL authentication failed)."""

    code = "KAFKA_AUTH_FAILED"


class OutputContractError(ConfluxError):
    """What an asset returned for a dataset does not fit the dataset's contract or partitions."""

    code = "OUTPUT_CONTRACT_VIOLATED"


class OffsetGapError(ConfluxError):
    """The offset-gap ledger (``dlq.offset_gaps``) cannot be reached, or an acknowledgement
    names no open gap of the dataset or says nothing about what was done."""

    code = "OFFSET_GAP_LEDGER"
