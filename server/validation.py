"""Validation of incoming events, producing the column arrays one batch insert takes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TypeVar

from daily_aggregator.v1 import aggregator_pb2

MAX_WORD_COUNT = 1_000_000
MAX_STUDY_SECONDS = 86_400
# 2000-01-01T00:00:00Z: anything earlier is a client bug, not a learner.
MIN_OCCURRED_AT_US = 946_684_800 * 1_000_000
MAX_FUTURE_US = 24 * 3600 * 1_000_000

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_CHARACTERS = b"0123456789abcdefABCDEF-"
_COUNTRY = re.compile(r"[A-Z]{2}")
T = TypeVar("T")
_OCCURRED_AT = attrgetter("occurred_at")
_SECONDS = attrgetter("seconds")
_NANOS = attrgetter("nanos")
_USER_ID = attrgetter("user_id")
_IDEMPOTENCY_KEY = attrgetter("idempotency_key")
_WORD_COUNT = attrgetter("word_count")
_STUDY_SECONDS = attrgetter("study_seconds")
_COUNTRY_OF = attrgetter("country")

ECHOED_KEY_CHARACTERS = 64
"""Most characters of a rejected event's idempotency key that its description repeats, so
that a response describing 100 rejections stays small whatever was sent."""

UUID_REASON = "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000"
COUNTRY_CODE_REASON = "must be an ISO 3166-1 alpha-2 code of two upper-case letters A-Z"
COUNTRY_REASON = f"must be empty or {COUNTRY_CODE_REASON.removeprefix('must be ')}"


@dataclass(frozen=True)
class Rejection:
    """Why the event at stream position `index` was not stored.

    `idempotency_key` is the event's as sent, cut to ECHOED_KEY_CHARACTERS.
    """

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
    indexes: list[int] = field(default_factory=list)
    """Each event's 0-based position in the whole stream, for what ingest refuses."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def columns(self) -> tuple[list[str], list[str], list[int], list[int], list[int], str]:
        """The columns insert_events.sql takes, in its parameter order.

        The countries go as one text, joined by commas (a valid country has none).
        asyncpg checks every element of an array parameter in Python for a nested
        array, about a microsecond per text element on the 2-core development
        machine; joining them costs a tenth of that, and PostgreSQL splits the text
        as fast as it reads the array. The other columns stay arrays: sent as text,
        PostgreSQL's parsing of them would cost about what the service saves.
        """
        return (
            self.user_ids,
            self.idempotency_keys,
            self.occurred_us,
            self.word_counts,
            self.study_seconds,
            ",".join(self.countries),
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
            pick(self.indexes),
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
    valid = _all_valid(events, first_index, now_us)
    if valid is not None:
        return valid, []
    valid = ValidEvents()
    rejections: list[Rejection] = []
    for offset, event in enumerate(events):
        problem = _problem(event, now_us)
        if problem is not None:
            key = event.idempotency_key[:ECHOED_KEY_CHARACTERS]
            rejections.append(Rejection(first_index + offset, key, *problem))
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
        valid.indexes.append(first_index + offset)
    return valid, rejections


def _all_uuids(values: list[str]) -> bool:
    """Whether every value is a UUID in the 8-4-4-4-12 form, checked in a few passes of C.

    Each value has 36 characters and the whole batch 4 dashes per value, all at the
    dash positions; everything else is a hex digit.
    """
    if set(map(len, values)) != {36}:
        return False
    try:
        joined = "".join(values).encode("ascii")
    except UnicodeEncodeError:
        return False
    return (
        joined.count(b"-") == 4 * len(values)
        and all(joined[offset::36].strip(b"-") == b"" for offset in (8, 13, 18, 23))
        and not joined.translate(None, _UUID_CHARACTERS)
    )


def _all_valid(
    events: Sequence[aggregator_pb2.Event], first_index: int, now_us: int
) -> ValidEvents | None:
    """The whole batch as columns when every event is valid, else None.

    Ingest is bound by this loop, and batches are nearly always entirely valid,
    so each rule is checked once over a whole column rather than event by event;
    `validate` then finds the culprits only when there are some.
    """
    if not events:
        return ValidEvents()
    # Iterating a repeated field wraps every element anew: wrap them once, and read
    # each field with a C-level getter rather than a Python loop.
    events = list(events)
    stamps = list(map(_OCCURRED_AT, events))
    seconds = list(map(_SECONDS, stamps))
    nanos = list(map(_NANOS, stamps))
    # An unset occurred_at reads as 0 s, which is invalid when set (before 2000):
    # a batch with no zero is a batch whose every event has one.
    if min(seconds) <= 0:
        return None
    occurred_us = [s * 1_000_000 + n // 1000 for s, n in zip(seconds, nanos, strict=True)]
    valid = ValidEvents(
        user_ids=list(map(_USER_ID, events)),
        idempotency_keys=list(map(_IDEMPOTENCY_KEY, events)),
        occurred_us=occurred_us,
        word_counts=list(map(_WORD_COUNT, events)),
        study_seconds=list(map(_STUDY_SECONDS, events)),
        countries=list(map(_COUNTRY_OF, events)),
        occurred_given=[True] * len(events),
        indexes=list(range(first_index, first_index + len(events))),
    )
    if (
        _all_uuids(valid.user_ids)
        and _all_uuids(valid.idempotency_keys)
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
