"""Validation of incoming events, producing the column arrays one batch insert takes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from daily_aggregator.v1 import aggregator_pb2

MAX_WORD_COUNT = 1_000_000
MAX_STUDY_SECONDS = 86_400
# 2000-01-01T00:00:00Z: anything earlier is a client bug, not a learner.
MIN_OCCURRED_AT_US = 946_684_800 * 1_000_000
MAX_FUTURE_US = 24 * 3600 * 1_000_000

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_LINES = re.compile(rf"(?:{_UUID.pattern}\n)*{_UUID.pattern}")
_COUNTRY = re.compile(r"[A-Z]{2}")
T = TypeVar("T")

UUID_REASON = "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000"
COUNTRY_CODE_REASON = "must be an ISO 3166-1 alpha-2 code of two upper-case letters A-Z"
COUNTRY_REASON = f"must be empty or {COUNTRY_CODE_REASON.removeprefix('must be ')}"


@dataclass(frozen=True)
class Rejection:
    """Why the event at stream position `index` was not stored."""

    index: int
    idempotency_key: str
    field: str
    reason: str


@dataclass
class ValidEvents:
    """Valid events of one batch, as parallel columns in stream order."""

    user_ids: list[str] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)
    occurred_us: list[int] = field(default_factory=list)
    """occurred_at in microseconds since the Unix epoch."""
    word_counts: list[int] = field(default_factory=list)
    study_seconds: list[int] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    occurred_given: list[bool] = field(default_factory=list)
    """False where the server's receive time stood in for a missing occurred_at."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def columns(self) -> tuple[list[str], list[str], list[int], list[int], list[int], list[str]]:
        """The columns insert_events.sql takes, in its parameter order."""
        return (
            self.user_ids,
            self.idempotency_keys,
            self.occurred_us,
            self.word_counts,
            self.study_seconds,
            self.countries,
        )

    def subset(self, positions: Sequence[int]) -> ValidEvents:
        """The events at these 0-based positions of this batch."""

        def pick(column: list[T]) -> list[T]:
            return [column[p] for p in positions]

        return ValidEvents(
            pick(self.user_ids),
            pick(self.idempotency_keys),
            pick(self.occurred_us),
            pick(self.word_counts),
            pick(self.study_seconds),
            pick(self.countries),
            pick(self.occurred_given),
        )


def is_uuid(value: str) -> bool:
    """Whether `value` is a UUID in the canonical 8-4-4-4-12 form, any case."""
    return _UUID.fullmatch(value) is not None


def is_country(value: str) -> bool:
    """Whether `value` is two upper-case letters A-Z."""
    return _COUNTRY.fullmatch(value) is not None


def _problem(event: aggregator_pb2.Event, now_us: int) -> tuple[str, str] | None:
    """The first invalid field of `event` and why, or None when it is valid."""
    if not is_uuid(event.user_id):
        return "user_id", UUID_REASON
    if not is_uuid(event.idempotency_key):
        return "idempotency_key", UUID_REASON
    if event.HasField("occurred_at"):
        ts = event.occurred_at
        if not 0 <= ts.nanos < 1_000_000_000:
            return "occurred_at", "nanos must be between 0 and 999999999"
        us = ts.seconds * 1_000_000 + ts.nanos // 1000
        if us < MIN_OCCURRED_AT_US:
            return "occurred_at", "must not be before 2000-01-01T00:00:00Z"
        if us > now_us + MAX_FUTURE_US:
            return "occurred_at", "must not be more than 24 hours in the future"
    if event.word_count > MAX_WORD_COUNT:
        return "word_count", f"must be at most {MAX_WORD_COUNT}"
    if event.study_seconds > MAX_STUDY_SECONDS:
        return "study_seconds", f"must be at most {MAX_STUDY_SECONDS}"
    if event.country and not is_country(event.country):
        return "country", COUNTRY_REASON
    return None


def validate(
    events: Sequence[aggregator_pb2.Event], first_index: int, now_us: int
) -> tuple[ValidEvents, list[Rejection]]:
    """Split a batch into valid events and rejections.

    `first_index` is the stream position of the batch's first event; `now_us`
    is the receive time, used for a missing occurred_at and the future limit.
    """
    valid = _all_valid(events, now_us)
    if valid is not None:
        return valid, []
    valid = ValidEvents()
    rejections: list[Rejection] = []
    for offset, event in enumerate(events):
        problem = _problem(event, now_us)
        if problem is not None:
            rejections.append(Rejection(first_index + offset, event.idempotency_key, *problem))
            continue
        given = event.HasField("occurred_at")
        valid.user_ids.append(event.user_id)
        valid.idempotency_keys.append(event.idempotency_key)
        valid.occurred_us.append(
            event.occurred_at.seconds * 1_000_000 + event.occurred_at.nanos // 1000
            if given
            else now_us
        )
        valid.word_counts.append(event.word_count)
        valid.study_seconds.append(event.study_seconds)
        valid.countries.append(event.country)
        valid.occurred_given.append(given)
    return valid, rejections


def _all_valid(events: Sequence[aggregator_pb2.Event], now_us: int) -> ValidEvents | None:
    """The whole batch as columns when every event is valid, else None.

    Ingest is bound by this loop, and batches are nearly always entirely valid,
    so each rule is checked once over a whole column rather than event by event;
    `validate` then finds the culprits only when there are some.
    """
    if not events:
        return ValidEvents()
    # Iterating a repeated field wraps every element anew: wrap them once.
    events = list(events)
    given = [e.HasField("occurred_at") for e in events]
    stamps = [e.occurred_at for e in events]
    nanos = [t.nanos for t in stamps]
    occurred_us = [
        t.seconds * 1_000_000 + n // 1000 if g else now_us
        for t, n, g in zip(stamps, nanos, given, strict=True)
    ]
    valid = ValidEvents(
        user_ids=[e.user_id for e in events],
        idempotency_keys=[e.idempotency_key for e in events],
        occurred_us=occurred_us,
        word_counts=[e.word_count for e in events],
        study_seconds=[e.study_seconds for e in events],
        countries=[e.country for e in events],
        occurred_given=given,
    )
    if (
        _UUID_LINES.fullmatch("\n".join(valid.user_ids))
        and _UUID_LINES.fullmatch("\n".join(valid.idempotency_keys))
        and min(nanos) >= 0
        and max(nanos) < 1_000_000_000
        and min(occurred_us) >= MIN_OCCURRED_AT_US
        and max(occurred_us) <= now_us + MAX_FUTURE_US
        and max(valid.word_counts) <= MAX_WORD_COUNT
        and max(valid.study_seconds) <= MAX_STUDY_SECONDS
        and all(not c or _COUNTRY.fullmatch(c) for c in set(valid.countries))
    ):
        return valid
    return None
