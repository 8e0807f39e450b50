"""Mapping between the client's value types and the generated protobuf messages."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from daily_aggregator.client._models import (
    BreakdownRow,
    DeleteUserResult,
    Dimension,
    Event,
    EventError,
    Granularity,
    LearnerStats,
    Metric,
    RecordResult,
    RetentionCohort,
    RetentionResult,
    SummaryBucket,
    SummaryResult,
    SummaryTotals,
    UniquesBucket,
    UniquesResult,
    require_aware,
)
from daily_aggregator.v1 import aggregator_pb2 as pb

GRANULARITIES = {
    Granularity.HOUR: pb.GRANULARITY_HOUR,
    Granularity.DAY: pb.GRANULARITY_DAY,
    Granularity.WEEK: pb.GRANULARITY_WEEK,
    Granularity.MONTH: pb.GRANULARITY_MONTH,
}
DIMENSIONS = {Dimension.USER: pb.DIMENSION_USER, Dimension.COUNTRY: pb.DIMENSION_COUNTRY}
METRICS = {
    Metric.EVENTS: pb.METRIC_EVENTS,
    Metric.WORD_COUNT: pb.METRIC_WORD_COUNT,
    Metric.STUDY_SECONDS: pb.METRIC_STUDY_SECONDS,
    Metric.UNIQUE_USERS: pb.METRIC_UNIQUE_USERS,
}


def timestamp(name: str, when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime; ValueError for a naive one."""
    require_aware(name, when)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def instant(ts: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime for a protobuf Timestamp."""
    return ts.ToDatetime(tzinfo=UTC)


def event_to_proto(event: Event) -> pb.Event:
    """The wire form of an event."""
    message = pb.Event(
        user_id=event.user_id,
        idempotency_key=event.idempotency_key or "",
        word_count=event.word_count,
        study_seconds=event.study_seconds,
        country=event.country,
    )
    if event.occurred_at is not None:
        message.occurred_at.CopyFrom(timestamp("occurred_at", event.occurred_at))
    return message


def event_from_proto(message: pb.Event) -> Event:
    """The client form of a wire event (for handing back events that were not stored)."""
    return Event(
        user_id=message.user_id,
        word_count=message.word_count,
        study_seconds=message.study_seconds,
        occurred_at=(
            message.occurred_at.ToDatetime(tzinfo=UTC) if message.HasField("occurred_at") else None
        ),
        country=message.country,
        idempotency_key=message.idempotency_key,
    )


def framed_size(message: pb.Event) -> int:
    """Bytes `message` adds to a RecordEventsRequest: tag, length prefix and body."""
    size = message.ByteSize()
    prefix = 1
    rest = size >> 7
    while rest:
        prefix += 1
        rest >>= 7
    return 1 + prefix + size


def record_result(response: pb.RecordEventsResponse, index_offset: int = 0) -> RecordResult:
    """A RecordResult for a response, with error indexes shifted by `index_offset`."""
    return RecordResult(
        received=response.received,
        inserted=response.inserted,
        duplicates=response.duplicates,
        conflicts=response.conflicts,
        rejected=response.rejected,
        errors=[
            EventError(e.index + index_offset, e.idempotency_key, e.field, e.reason)
            for e in response.errors
        ],
        errors_truncated=response.errors_truncated,
    )


def _local(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _summary_bucket(b: pb.SummaryBucket) -> SummaryBucket:
    return SummaryBucket(
        start_time=instant(b.start_time),
        local_start=_local(b.local_start),
        local_start_text=b.local_start,
        events=b.events,
        word_count=b.word_count,
        study_seconds=b.study_seconds,
        average_word_count=b.average_word_count,
        average_study_seconds=b.average_study_seconds,
        word_count_sma=b.word_count_sma,
        study_seconds_sma=b.study_seconds_sma,
    )


def _summary_totals(totals: pb.SummaryTotals) -> SummaryTotals:
    return SummaryTotals(
        events=totals.events,
        word_count=totals.word_count,
        study_seconds=totals.study_seconds,
        active_users=totals.active_users,
    )


def _previous_instant(response: Any, field: str) -> datetime | None:
    """The previous period's end `field`, None when the response has no previous period."""
    return instant(getattr(response, field)) if response.HasField(field) else None


def summary_result(response: pb.SummaryResponse) -> SummaryResult:
    """A SummaryResult for a response."""
    compared = response.HasField("previous_start_time")
    return SummaryResult(
        time_zone=response.time_zone,
        buckets=[_summary_bucket(b) for b in response.buckets],
        totals=_summary_totals(response.totals),
        previous_start_time=_previous_instant(response, "previous_start_time"),
        previous_end_time=_previous_instant(response, "previous_end_time"),
        previous_buckets=[_summary_bucket(b) for b in response.previous_buckets],
        previous_totals=_summary_totals(response.previous_totals) if compared else None,
    )


def _uniques_bucket(b: pb.UniquesBucket, rolling: bool) -> UniquesBucket:
    return UniquesBucket(
        start_time=instant(b.start_time),
        local_start=_local(b.local_start),
        local_start_text=b.local_start,
        unique_users=b.unique_users,
        rolling_unique_users=b.rolling_unique_users if rolling else None,
    )


def uniques_result(response: pb.UniquesResponse, *, rolling: bool = False) -> UniquesResult:
    """A UniquesResult for a response; `rolling` when the request had rolling_days."""
    compared = response.HasField("previous_start_time")
    return UniquesResult(
        time_zone=response.time_zone,
        buckets=[_uniques_bucket(b, rolling) for b in response.buckets],
        unique_users=response.unique_users,
        previous_start_time=_previous_instant(response, "previous_start_time"),
        previous_end_time=_previous_instant(response, "previous_end_time"),
        previous_buckets=[_uniques_bucket(b, rolling) for b in response.previous_buckets],
        previous_unique_users=response.previous_unique_users if compared else None,
    )


def _breakdown_row(r: pb.BreakdownRow, previous: BreakdownRow | None = None) -> BreakdownRow:
    return BreakdownRow(r.key, r.events, r.word_count, r.study_seconds, r.unique_users, previous)


def breakdown_rows(response: pb.BreakdownResponse) -> list[BreakdownRow]:
    """The rows of a breakdown response, best first, each with its previous-period row when
    the response has them."""
    if not response.HasField("previous_start_time"):
        return [_breakdown_row(r) for r in response.rows]
    return [
        _breakdown_row(r, _breakdown_row(p))
        for r, p in zip(response.rows, response.previous_rows, strict=True)
    ]


def learner_stats(response: pb.LearnerStatsResponse) -> LearnerStats:
    """A LearnerStats for a response."""

    def when(field: str) -> datetime | None:
        return instant(getattr(response, field)) if response.HasField(field) else None

    def day(text: str) -> date | None:
        return date.fromisoformat(text) if text else None

    return LearnerStats(
        user_id=response.user_id,
        time_zone=response.time_zone,
        first_active=when("first_active"),
        last_active=when("last_active"),
        events=response.events,
        word_count=response.word_count,
        study_seconds=response.study_seconds,
        active_days=response.active_days,
        current_streak_days=response.current_streak_days,
        longest_streak_days=response.longest_streak_days,
        longest_streak_start=day(response.longest_streak_start),
        longest_streak_end=day(response.longest_streak_end),
    )


def retention_result(response: pb.RetentionResponse) -> RetentionResult:
    """A RetentionResult for a response."""
    return RetentionResult(
        time_zone=response.time_zone,
        cohorts=[
            RetentionCohort(
                start_time=instant(c.start_time),
                local_start=_local(c.local_start),
                local_start_text=c.local_start,
                users=c.users,
                retained=list(c.retained),
            )
            for c in response.cohorts
        ],
    )


def delete_user_result(response: pb.DeleteUserResponse) -> DeleteUserResult:
    """A DeleteUserResult for a response."""
    return DeleteUserResult(response.deleted_events, instant(response.erased_at))
