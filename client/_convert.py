"""Mapping between the client's value types and the generated protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from daily_aggregator.client._models import (
    BreakdownRow,
    DeleteUserResult,
    Dimension,
    Event,
    EventError,
    Granularity,
    Metric,
    RecordResult,
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


def summary_result(response: pb.SummaryResponse) -> SummaryResult:
    """A SummaryResult for a response."""
    totals = response.totals
    return SummaryResult(
        time_zone=response.time_zone,
        buckets=[
            SummaryBucket(
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
            for b in response.buckets
        ],
        totals=SummaryTotals(
            events=totals.events,
            word_count=totals.word_count,
            study_seconds=totals.study_seconds,
            active_users=totals.active_users,
        ),
    )


def uniques_result(response: pb.UniquesResponse) -> UniquesResult:
    """A UniquesResult for a response."""
    return UniquesResult(
        time_zone=response.time_zone,
        buckets=[
            UniquesBucket(
                start_time=instant(b.start_time),
                local_start=_local(b.local_start),
                local_start_text=b.local_start,
                unique_users=b.unique_users,
            )
            for b in response.buckets
        ],
        unique_users=response.unique_users,
    )


def breakdown_rows(response: pb.BreakdownResponse) -> list[BreakdownRow]:
    """The rows of a breakdown response, best first."""
    return [
        BreakdownRow(r.key, r.events, r.word_count, r.study_seconds, r.unique_users)
        for r in response.rows
    ]


def delete_user_result(response: pb.DeleteUserResponse) -> DeleteUserResult:
    """A DeleteUserResult for a response."""
    return DeleteUserResult(response.deleted_events, instant(response.erased_at))
