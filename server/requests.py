"""Validation of the query RPCs' requests into typed queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from daily_aggregator.server import periods
from daily_aggregator.server.errors import InvalidArgument
from daily_aggregator.server.timezones import TimeZone, TimeZones
from daily_aggregator.server.validation import COUNTRY_CODE_REASON, UUID_REASON, is_country, is_uuid
from daily_aggregator.v1 import aggregator_pb2 as pb

MAX_BUCKETS = 10_000
"""Most buckets one Summary or Uniques answer holds (a year of hours is 8,784)."""
DEFAULT_MOVING_AVERAGE_WINDOW = 3
MAX_MOVING_AVERAGE_WINDOW = 365
DEFAULT_BREAKDOWN_LIMIT = 10
MAX_BREAKDOWN_LIMIT = 1_000
MAX_ROLLING_DAYS = 366
DEFAULT_RETENTION_PERIODS = 7
MAX_RETENTION_PERIODS = 365
MAX_RETENTION_CELLS = 150_000
"""Most cohorts x periods one Retention answer follows: a year of daily cohorts, each for
a year (366 x 365 = 133,590), fits."""

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
"""Query ranges lie within [EARLIEST, LATEST]; events exist from 2000 only."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_MICROS = (EARLIEST - EPOCH) // timedelta(microseconds=1)
_LATEST_MICROS = (LATEST - EPOCH) // timedelta(microseconds=1)

_UNITS = {
    pb.GRANULARITY_UNSPECIFIED: "day",
    pb.GRANULARITY_HOUR: "hour",
    pb.GRANULARITY_DAY: "day",
    pb.GRANULARITY_WEEK: "week",
    pb.GRANULARITY_MONTH: "month",
}
_DIMENSIONS = {pb.DIMENSION_USER: "user", pb.DIMENSION_COUNTRY: "country"}
_METRICS = {
    pb.METRIC_UNSPECIFIED: "events",
    pb.METRIC_EVENTS: "events",
    pb.METRIC_WORD_COUNT: "word_count",
    pb.METRIC_STUDY_SECONDS: "study_seconds",
    pb.METRIC_UNIQUE_USERS: "unique_users",
}


@dataclass(frozen=True)
class Countries:
    """A question's country filters: keep only `only` (all when empty), drop `excluded`."""

    only: list[str]
    excluded: list[str]


@dataclass(frozen=True)
class Filter:
    """The time range and country filters every query takes."""

    start: datetime
    end: datetime
    countries: Countries


@dataclass(frozen=True)
class SeriesQuery:
    """A bucketed query: Summary (with user and window) or Uniques."""

    filter: Filter
    unit: str
    time_zone: TimeZone
    user_id: uuid.UUID | None = None
    moving_average_window: int = DEFAULT_MOVING_AVERAGE_WINDOW
    rolling_days: int = 0
    """Uniques: the local days each bucket's rolling count covers; 0 for none."""
    compare_previous: bool = False
    """Also answer for the previous period (see `periods`)."""


@dataclass(frozen=True)
class BreakdownQuery:
    """A ranking of users or countries by one metric."""

    filter: Filter
    dimension: str
    metric: str
    limit: int
    compare_previous: bool = False
    """Also give the rows' metrics over the stretch of the same length before the range."""


@dataclass(frozen=True)
class LearnerStatsQuery:
    """One learner's statistics from the events before `as_of`, in local dates of `time_zone`."""

    user_id: uuid.UUID
    time_zone: TimeZone
    as_of: datetime


def _instant(request: object, field: str) -> datetime:
    """The timestamp `field`, rounded up to the microsecond.

    Events are stored to the microsecond, so rounding both ends of a half-open
    range up selects exactly the stored events inside it.
    """
    if not request.HasField(field):  # type: ignore[attr-defined]
        raise InvalidArgument(field, "is required")
    ts: timestamp_pb2.Timestamp = getattr(request, field)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "nanos must be between 0 and 999999999")
    micros = ts.seconds * 1_000_000 + -(-ts.nanos // 1000)
    if not _EARLIEST_MICROS <= micros <= _LATEST_MICROS:
        raise InvalidArgument(
            field, "must be between 1900-01-01T00:00:00Z and 2200-01-01T00:00:00Z"
        )
    return EPOCH + timedelta(microseconds=micros)


def _countries(values: Sequence[str], field: str) -> list[str]:
    for i, value in enumerate(values):
        if not is_country(value):
            raise InvalidArgument(f"{field}[{i}]", COUNTRY_CODE_REASON)
    return list(values)


def _filter(request: object) -> Filter:
    start = _instant(request, "start_time")
    end = _instant(request, "end_time")
    if end <= start:
        raise InvalidArgument("end_time", "must be after start_time")
    return Filter(
        start,
        end,
        Countries(
            _countries(request.countries, "countries"),  # type: ignore[attr-defined]
            _countries(request.exclude_countries, "exclude_countries"),  # type: ignore[attr-defined]
        ),
    )


@dataclass(frozen=True)
class RetentionQuery:
    """Cohorts of new learners per bucket, followed for `periods` buckets after their own."""

    filter: Filter
    unit: str
    time_zone: TimeZone
    periods: int


def _unit(granularity: pb.Granularity) -> str:
    if granularity not in _UNITS:
        raise InvalidArgument("granularity", f"unknown granularity {granularity}")
    return _UNITS[granularity]


def summary_query(request: pb.SummaryRequest, zones: TimeZones) -> SeriesQuery:
    """Validate a SummaryRequest."""
    user_id = None
    if request.user_id:
        if not is_uuid(request.user_id):
            raise InvalidArgument("user_id", f"{UUID_REASON}, or empty for all users")
        user_id = uuid.UUID(request.user_id)
    window = request.moving_average_window or DEFAULT_MOVING_AVERAGE_WINDOW
    if window > MAX_MOVING_AVERAGE_WINDOW:
        raise InvalidArgument(
            "moving_average_window", f"must be at most {MAX_MOVING_AVERAGE_WINDOW}"
        )
    return SeriesQuery(
        _filter(request),
        _unit(request.granularity),
        zones.parse(request.time_zone),
        user_id,
        window,
        compare_previous=request.compare_previous,
    )


def uniques_query(request: pb.UniquesRequest, zones: TimeZones) -> SeriesQuery:
    """Validate a UniquesRequest."""
    unit = _unit(request.granularity)
    if request.rolling_days > MAX_ROLLING_DAYS:
        raise InvalidArgument("rolling_days", f"must be at most {MAX_ROLLING_DAYS}")
    if request.rolling_days and unit != "day":
        raise InvalidArgument(
            "rolling_days", "needs daily buckets (GRANULARITY_DAY or unspecified)"
        )
    return SeriesQuery(
        _filter(request),
        unit,
        zones.parse(request.time_zone),
        rolling_days=request.rolling_days,
        compare_previous=request.compare_previous,
    )


def breakdown_query(request: pb.BreakdownRequest) -> BreakdownQuery:
    """Validate a BreakdownRequest."""
    if request.dimension not in _DIMENSIONS:
        raise InvalidArgument("dimension", "must be DIMENSION_USER or DIMENSION_COUNTRY")
    if request.metric not in _METRICS:
        raise InvalidArgument("metric", f"unknown metric {request.metric}")
    limit = request.limit or DEFAULT_BREAKDOWN_LIMIT
    if limit > MAX_BREAKDOWN_LIMIT:
        raise InvalidArgument("limit", f"must be at most {MAX_BREAKDOWN_LIMIT}")
    query = BreakdownQuery(
        _filter(request),
        _DIMENSIONS[request.dimension],
        _METRICS[request.metric],
        limit,
        request.compare_previous,
    )
    if query.compare_previous:
        check_previous_range(*periods.before(query.filter.start, query.filter.end))
    return query


def check_previous_range(start: datetime, end: datetime) -> None:
    """Refuse a previous period [start, end) outside the range limits, on `compare_previous`."""
    if start < EARLIEST:
        raise InvalidArgument(
            "compare_previous",
            "the previous period would start before 1900-01-01T00:00:00Z; "
            "ask about a later or shorter range",
        )
    if end > LATEST:
        raise InvalidArgument(
            "compare_previous", "the previous period would end after 2200-01-01T00:00:00Z"
        )


def learner_stats_query(
    request: pb.LearnerStatsRequest, zones: TimeZones, now: datetime
) -> LearnerStatsQuery:
    """Validate a LearnerStatsRequest; an unset `as_of` means `now`."""
    if not request.user_id:
        raise InvalidArgument("user_id", "is required")
    if not is_uuid(request.user_id):
        raise InvalidArgument("user_id", UUID_REASON)
    return LearnerStatsQuery(
        uuid.UUID(request.user_id),
        zones.parse(request.time_zone),
        _instant(request, "as_of") if request.HasField("as_of") else now,
    )


def retention_query(request: pb.RetentionRequest, zones: TimeZones) -> RetentionQuery:
    """Validate a RetentionRequest.

    Cohorts are days, weeks or months: an hour's newcomers and their return an hour
    later say little, and would multiply the cohorts of any range by 24.
    """
    span = _filter(request)
    unit = _unit(request.granularity)
    if unit == "hour":
        raise InvalidArgument(
            "granularity", "must be GRANULARITY_DAY, GRANULARITY_WEEK or GRANULARITY_MONTH"
        )
    periods = request.periods or DEFAULT_RETENTION_PERIODS
    if periods > MAX_RETENTION_PERIODS:
        raise InvalidArgument("periods", f"must be at most {MAX_RETENTION_PERIODS}")
    return RetentionQuery(span, unit, zones.parse(request.time_zone), periods)


def erasure_user_id(request: pb.DeleteUserRequest) -> uuid.UUID:
    """Validate a DeleteUserRequest: the learner to erase."""
    if not is_uuid(request.user_id):
        raise InvalidArgument("user_id", "is required" if not request.user_id else UUID_REASON)
    return uuid.UUID(request.user_id)
