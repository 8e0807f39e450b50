"""The client's value types: events, enums and results, as plain frozen dataclasses."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime

__all__ = [
    "BreakdownRow",
    "DeleteUserResult",
    "Dimension",
    "Event",
    "EventError",
    "Granularity",
    "LearnerStats",
    "Metric",
    "RecordResult",
    "RetentionCohort",
    "RetentionResult",
    "SummaryBucket",
    "SummaryResult",
    "SummaryTotals",
    "UniquesBucket",
    "UniquesResult",
    "require_aware",
]


def require_aware(name: str, value: datetime) -> None:
    """Raise ValueError unless `value` is a timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (for example "
            f"datetime(2025, 10, 12, tzinfo=timezone.utc)), got naive {value.isoformat()}"
        )


class Granularity(enum.Enum):
    """The calendar unit of a bucket, in the request's time zone."""

    HOUR = "hour"
    """Wall-clock hours of constant local hour and UTC offset."""
    DAY = "day"
    """Local days (23 or 25 hours long on daylight-saving days)."""
    WEEK = "week"
    """ISO weeks, starting Monday."""
    MONTH = "month"
    """Calendar months, starting on the 1st."""


class Dimension(enum.Enum):
    """What a breakdown groups by."""

    USER = "user"
    """One row per user; the key is the user_id."""
    COUNTRY = "country"
    """One row per country; the key is the country code, "" for no country."""


class Metric(enum.Enum):
    """What a breakdown ranks by, descending."""

    EVENTS = "events"
    """Number of events."""
    WORD_COUNT = "word_count"
    """Sum of word_count."""
    STUDY_SECONDS = "study_seconds"
    """Sum of study_seconds."""
    UNIQUE_USERS = "unique_users"
    """Distinct users."""


@dataclass(frozen=True)
class Event:
    """One learning activity: a user studied `word_count` words for `study_seconds` seconds.

    Attributes:
        user_id: The learner, a UUID string.
        word_count: Words studied, 0 to 1,000,000.
        study_seconds: Seconds studied, 0 to 86,400.
        occurred_at: When it happened, a timezone-aware datetime; None lets the server use
            the time it receives the event. A naive datetime raises ValueError.
        country: ISO 3166-1 alpha-2 code in upper case ("JP"); "" means unknown.
        idempotency_key: Identifies the event for deduplication, a UUID string. When None, a
            random UUID4 is generated here, at construction, so every resend of this object
            carries the same key and is stored at most once.
    """

    user_id: str
    word_count: int
    study_seconds: int
    occurred_at: datetime | None = None
    country: str = ""
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if self.occurred_at is not None:
            require_aware("occurred_at", self.occurred_at)
        if self.idempotency_key is None:
            object.__setattr__(self, "idempotency_key", str(uuid.uuid4()))


@dataclass(frozen=True)
class EventError:
    """Why one event was rejected.

    Attributes:
        index: 0-based position of the event in what was sent: in the `events` given to
            `record`, or among all events written to a writer.
        idempotency_key: The event's idempotency_key as sent.
        field: The offending field, for example ``"word_count"``.
        reason: A human-readable reason.
    """

    index: int
    idempotency_key: str
    field: str
    reason: str


@dataclass(frozen=True)
class RecordResult:
    """What happened to recorded events: received = inserted + duplicates + conflicts + rejected.

    Attributes:
        received: Events the service received and accounted for.
        inserted: Events newly stored.
        duplicates: Events already stored with the same payload; nothing changed.
        conflicts: Events already stored with a different payload; the stored one was kept.
        rejected: Invalid events, not stored; described in `errors`, up to its cap.
        errors: One entry per rejected event, in order, at most 100.
        errors_truncated: True when more events were rejected than `errors` holds.
    """

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    errors: list[EventError] = field(default_factory=list)
    errors_truncated: bool = False


@dataclass(frozen=True)
class SummaryBucket:
    """The activity of one calendar bucket.

    Attributes:
        start_time: The bucket's first instant, an aware datetime in UTC.
        local_start: The same instant as an aware datetime in the bucket's UTC offset.
        local_start_text: `local_start` as the service sent it, ISO 8601
            ("2025-10-12T00:00:00+09:00").
        events: Number of events in the bucket.
        word_count: Sum of word_count.
        study_seconds: Sum of study_seconds.
        average_word_count: word_count / events; 0 when the bucket is empty.
        average_study_seconds: study_seconds / events; 0 when the bucket is empty.
        word_count_sma: Simple moving average of word_count over the window.
        study_seconds_sma: Simple moving average of study_seconds over the window.
    """

    start_time: datetime
    local_start: datetime
    local_start_text: str
    events: int
    word_count: int
    study_seconds: int
    average_word_count: float
    average_study_seconds: float
    word_count_sma: float
    study_seconds_sma: float


@dataclass(frozen=True)
class SummaryTotals:
    """The activity over a whole summary range.

    Attributes:
        events: Number of events.
        word_count: Sum of word_count.
        study_seconds: Sum of study_seconds.
        active_users: Distinct users with at least one event.
    """

    events: int
    word_count: int
    study_seconds: int
    active_users: int


@dataclass(frozen=True)
class SummaryResult:
    """The answer of `summary`.

    Attributes:
        time_zone: The time zone of the buckets, as given (or "UTC").
        buckets: One bucket per calendar unit of the range, empty ones included, in order.
        totals: Totals over the whole range.
        previous_start_time: With ``compare_previous=True``, the previous period's first
            instant: `start` moved back by ``len(buckets)`` units of the granularity (hours
            by absolute time, days, weeks and months on the zone's local clock); else None.
        previous_end_time: With ``compare_previous=True``, the previous period's end
            (exclusive); equal to `previous_start_time` when the period is empty.
        previous_buckets: With ``compare_previous=True``, the previous period's buckets; its
            moving averages start afresh within it. Empty otherwise.
        previous_totals: With ``compare_previous=True``, totals over the previous period.
    """

    time_zone: str
    buckets: list[SummaryBucket]
    totals: SummaryTotals
    previous_start_time: datetime | None = None
    previous_end_time: datetime | None = None
    previous_buckets: list[SummaryBucket] = field(default_factory=list)
    previous_totals: SummaryTotals | None = None


@dataclass(frozen=True)
class UniquesBucket:
    """Distinct active users in one calendar bucket.

    Attributes:
        start_time: The bucket's first instant, an aware datetime in UTC.
        local_start: The same instant as an aware datetime in the bucket's UTC offset.
        local_start_text: `local_start` as the service sent it, ISO 8601.
        unique_users: Distinct users with at least one event in the bucket.
        rolling_unique_users: With ``rolling_days=N``, the distinct users of the N local days
            ending with this bucket's (its window starts at the start of a local day, before
            the range for the first buckets, and ends with the bucket or the range); None
            without it.
    """

    start_time: datetime
    local_start: datetime
    local_start_text: str
    unique_users: int
    rolling_unique_users: int | None = None


@dataclass(frozen=True)
class UniquesResult:
    """The answer of `uniques`.

    Attributes:
        time_zone: The time zone of the buckets, as given (or "UTC").
        buckets: One bucket per calendar unit of the range, empty ones included, in order.
        unique_users: Distinct users over the whole range (not the sum of the buckets).
        previous_start_time: With ``compare_previous=True``, the previous period's first
            instant, as in `SummaryResult`; else None.
        previous_end_time: With ``compare_previous=True``, the previous period's end.
        previous_buckets: With ``compare_previous=True``, the previous period's buckets (with
            rolling counts when ``rolling_days`` was given). Empty otherwise.
        previous_unique_users: With ``compare_previous=True``, the distinct users over the
            previous period; else None.
    """

    time_zone: str
    buckets: list[UniquesBucket]
    unique_users: int
    previous_start_time: datetime | None = None
    previous_end_time: datetime | None = None
    previous_buckets: list[UniquesBucket] = field(default_factory=list)
    previous_unique_users: int | None = None


@dataclass(frozen=True)
class BreakdownRow:
    """The activity of one user or one country over a breakdown's range.

    Attributes:
        key: The user_id or the country code ("" for no country).
        events: Number of events.
        word_count: Sum of word_count.
        study_seconds: Sum of study_seconds.
        unique_users: Distinct users.
        previous: With ``compare_previous=True``, the same key's row over the stretch of the
            same length just before the range, ``[start - (end - start), start)``; zeros when
            the key had no events there. None otherwise.
    """

    key: str
    events: int
    word_count: int
    study_seconds: int
    unique_users: int
    previous: BreakdownRow | None = None


@dataclass(frozen=True)
class LearnerStats:
    """The answer of `learner_stats`: one learner's activity before `as_of`.

    Attributes:
        user_id: The learner, in lower case.
        time_zone: The time zone of the local dates, as given (or "UTC").
        first_active: The learner's first event, an aware datetime in UTC; None without events.
        last_active: The learner's last event; None without events.
        events: Number of events.
        word_count: Sum of word_count.
        study_seconds: Sum of study_seconds.
        active_days: Distinct local dates with at least one event.
        current_streak_days: The run of consecutive active dates ending on as_of's local
            date, or on the date before when that date has no event yet; otherwise 0.
        longest_streak_days: The longest run (of equally long runs, the latest).
        longest_streak_start: Its first local date; None when there is no event.
        longest_streak_end: Its last local date; None when there is no event.
    """

    user_id: str
    time_zone: str
    first_active: datetime | None
    last_active: datetime | None
    events: int
    word_count: int
    study_seconds: int
    active_days: int
    current_streak_days: int
    longest_streak_days: int
    longest_streak_start: date | None
    longest_streak_end: date | None


@dataclass(frozen=True)
class RetentionCohort:
    """The learners who started in one calendar bucket, and how many came back after.

    Attributes:
        start_time: The bucket's first instant, an aware datetime in UTC.
        local_start: The same instant as an aware datetime in the bucket's UTC offset.
        local_start_text: `local_start` as the service sent it, ISO 8601.
        users: Learners whose first event (of those passing the filters) falls in this
            bucket and inside the range.
        retained: ``periods + 1`` counts: ``retained[0] == users``, and ``retained[k]`` is
            how many of them have an event in the k-th bucket after this one (0 for a
            bucket that had not begun when the service answered).
    """

    start_time: datetime
    local_start: datetime
    local_start_text: str
    users: int
    retained: list[int]

    @property
    def rates(self) -> list[float]:
        """`retained` as fractions of `users` (all 0.0 for an empty cohort)."""
        return [count / self.users if self.users else 0.0 for count in self.retained]


@dataclass(frozen=True)
class RetentionResult:
    """The answer of `retention`.

    Attributes:
        time_zone: The time zone of the buckets, as given (or "UTC").
        cohorts: One cohort per calendar bucket of the range, empty ones included, in order.
    """

    time_zone: str
    cohorts: list[RetentionCohort]


@dataclass(frozen=True)
class DeleteUserResult:
    """The answer of `delete_user`: what the erasure removed, and from when it refuses events.

    Attributes:
        deleted_events: Stored events of the learner this call removed (0 when nothing was
            stored, or when a retry follows an attempt that had already erased them).
        erased_at: The erasure's instant, an aware datetime in UTC. Events of the learner
            that occurred before it are rejected from now on (field ``user_id``); later ones
            are stored as usual.
    """

    deleted_events: int
    erased_at: datetime
