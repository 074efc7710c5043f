"""Typed run config of the operations jobs (replay, dead-letter replay, reconcile, ledger
rebuild), shown by the launchpad as a scaffold with every default filled in and every field
described.

Dates and times are strings in the launchpad; each is checked when the run starts (and by the
CLI before it launches anything) and a bad one fails with a message that names the field and
shows the expected form. The parsing lives in pure functions (``parse_day``, ``parse_since``)
that the command line uses too, so both say the same thing.
"""

from __future__ import annotations

import datetime as dt
import re

import dagster as dg
from pydantic import Field, field_validator, model_validator

from conflux.core.errors import ConfigError, UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SINCE_FORMS = ("an ISO date / date-time (UTC when no zone is given, e.g. 2026-11-28T09:00:00Z) "
               "or a duration back from now (e.g. 90m, 2h, 1d)")


def parse_day(text: str, what: str) -> dt.date:
    """``YYYY-MM-DD`` → date; anything else raises ``UsageError`` naming ``what``."""
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise UsageError(f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


def parse_since(text: str, what: str = "--since", now: dt.datetime | None = None) -> dt.datetime:
    """An ISO date or date-time (UTC when no zone is given) or a duration back from now
    (``90m``, ``2h``, ``1d``, ``1w``); never in the future."""
    now = now or dt.datetime.now(dt.timezone.utc)
    found = _DURATION.match(text or "")
    if found:
        return now - dt.timedelta(seconds=float(found[1]) * _UNIT_S[found[2].lower()])
    try:
        value = dt.datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is neither an ISO date / date-time (e.g. "
                         f"2026-11-28T09:00:00Z) nor a duration back from now (e.g. 90m, 2h, "
                         f"1d)") from None
    value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if value > now:
        raise UsageError(f"{what} {value.isoformat()} is in the future")
    return value


def _checked(parse, value: str, *args):
    """Run a parser inside a pydantic validator: a ``ConfigError`` becomes the ``ValueError``
    pydantic reports (with the field's name)."""
    try:
        parse(value, *args)
    except ConfigError as exc:
        raise ValueError(exc.args[0]) from None
    return value.strip()


class DayRangeConfig(dg.Config):
    """Event days ``start .. end`` (inclusive); empty means unbounded on that side."""

    start: str = Field(default="", description="First event day (YYYY-MM-DD), inclusive; "
                                               "empty: from the first day")
    end: str = Field(default="", description="Last event day (YYYY-MM-DD), inclusive; "
                                             "empty: through the last day")

    @field_validator("start", "end")
    @classmethod
    def _day(cls, value: str, info) -> str:
        return _checked(parse_day, value, info.field_name) if value.strip() else ""

    @model_validator(mode="after")
    def _ordered(self):
        if self.start and self.end and self.first > self.last:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    @property
    def first(self) -> dt.date | None:
        return dt.date.fromisoformat(self.start) if self.start else None

    @property
    def last(self) -> dt.date | None:
        return dt.date.fromisoformat(self.end) if self.end else None

    def describe(self) -> str:
        return f"{self.start or 'beginning'} .. {self.end or 'end'}"


class ReconcileConfig(DayRangeConfig):
    """``<dataset>__reconcile_job``: compare with the batch source and repair."""

    dry_run: bool = Field(default=False, description="Only report the differences (missing / "
                                                     "extra / changed keys); write nothing")
    remove_extra: bool = Field(default=True, description="Remove rows the batch source does "
                                                         "not have (extra keys)")


class CheckRangeConfig(DayRangeConfig):
    """``matches_batch_source``: the days to compare (read-only)."""


class ReplayConfig(dg.Config):
    """``<dataset>__replay_job``: re-apply what the topics received since a point in time."""

    since: str = Field(default="1h", description="Arrival time to replay from: " + SINCE_FORMS)
    dry_run: bool = Field(default=False, description="Only plan (offsets, records, retention "
                                                     "gaps); apply nothing")

    @field_validator("since")
    @classmethod
    def _since(cls, value: str) -> str:
        return _checked(parse_since, value, "since")

    @property
    def when(self) -> dt.datetime:
        return parse_since(self.since, "since")


class DeadLetterReplayConfig(dg.Config):
    """``<dataset>__dlq_replay_job``: re-publish dead letters to their source topic."""

    reasons: list[str] = Field(default=[], description="Only letters with these reason codes "
                               "(e.g. UNKNOWN_SCHEMA, CONTRACT_VIOLATION, INVALID_JSON); "
                               "empty: every reason")
    since: str = Field(default="", description="Only letters dead-lettered since then: "
                                               + SINCE_FORMS + "; empty: every letter")
    source_topic: str = Field(default="", description="Only letters from this source topic "
                                                      "(datasets with several topics); empty: all")
    again: bool = Field(default=False, description="Also re-publish letters an earlier replay "
                                                   "re-published")
    limit: int = Field(default=0, ge=0, description="Re-publish at most this many, oldest "
                                                     "first; 0: no limit")
    dry_run: bool = Field(default=False, description="Only report what would be re-published; "
                                                     "publish and record nothing")

    @field_validator("since")
    @classmethod
    def _since(cls, value: str) -> str:
        return _checked(parse_since, value, "since") if value.strip() else ""

    @field_validator("reasons")
    @classmethod
    def _reasons(cls, value: list[str]) -> list[str]:
        return [r.strip().upper() for r in value if r.strip()]


class LedgerRebuildConfig(dg.Config):
    """``<projection>__ledger_rebuild_job``: fold the ledger from offset zero."""

    replace: bool = Field(default=False, description="Replace the stored projection with the "
                          "rebuild; false: only compare them (the run fails listing the "
                          "differences unless identical)")
