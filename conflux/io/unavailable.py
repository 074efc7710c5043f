"""A client library's connection failure as a :class:`ServiceUnavailableError` that names the
service and its address (``conflux: [SERVICE_UNAVAILABLE] Postgres at 127.0.0.1:15432 is not
reachable (Connection refused)``), for the CLI's one-line errors."""

from __future__ import annotations

import sys
import urllib.error
import urllib.parse

from conflux.core.errors import ServiceUnavailableError

HINT = "is the stack running? (`conflux stack status`)"


def service_unavailable(exc: BaseException) -> ServiceUnavailableError | None:
    """``exc`` — or an error it was raised from — as the service that did not answer; None
    when it is no connection failure of Postgres, Kafka or an HTTP service."""
    seen = 0
    while exc is not None and seen < 10:
        found = _postgres(exc) or _kafka(exc) or _http(exc)
        if found:
            return ServiceUnavailableError(found)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _loaded_classes(module: str, *names: str) -> tuple[type, ...]:
    """Exception classes of ``module`` if it is imported (else nothing raised them)."""
    mod = sys.modules.get(module)
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n)) if mod else ()


def _settings():
    from conflux.core.settings import Settings

    try:
        return Settings.from_env()
    except Exception:  # the settings' own error is not the one to report here
        return None


def _postgres(exc: BaseException) -> str | None:
    classes = (_loaded_classes("psycopg", "OperationalError")
               + _loaded_classes("psycopg2", "OperationalError"))
    if not classes or not isinstance(exc, classes):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    reason = first.rsplit(" failed: ", 1)[-1]
    settings = _settings()
    if settings is None:
        return f"Postgres is not reachable ({first})"
    url = urllib.parse.urlsplit(settings.postgres_url)
    return f"Postgres at {url.hostname}:{url.port or 5432} is not reachable ({reason}); {HINT}"


def _kafka(exc: BaseException) -> str | None:
    classes = _loaded_classes("kafka.errors", "NoBrokersAvailable", "KafkaConnectionError",
                              "KafkaTimeoutError")
    if not classes or not isinstance(exc, classes):
        return None
    settings = _settings()
    where = f" at {settings.kafka_bootstrap}" if settings else ""
    detail = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
    return f"Kafka{where} did not answer ({detail}); {HINT}"


def _http(exc: BaseException) -> str | None:
    if isinstance(exc, urllib.error.URLError):
        return f"an HTTP service did not answer ({exc.reason})"
    if isinstance(exc, ConnectionError):
        return f"a service refused the connection ({exc})"
    return None


def reach_postgres(url: str) -> None:
    """Connect to ``url`` once, 5 s at most; a :class:`ServiceUnavailableError` naming the server
    when it does not answer. Called before clients that retry for long (dagster-postgres tries
    for ~15 s, logging a warning per try)."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        raise service_unavailable(exc) from None
