"""AggregatorService handlers: validate, call the mechanism beneath, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from daily_aggregator.server.errors import InvalidArgument, grpc_errors
from daily_aggregator.server.ingest import record_stream
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import (
    MAX_BUCKETS,
    SeriesQuery,
    breakdown_query,
    summary_query,
    uniques_query,
)
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2, aggregator_pb2_grpc

pb = aggregator_pb2


class AggregatorService(aggregator_pb2_grpc.AggregatorServiceServicer):
    """The daily_aggregator.v1.AggregatorService implementation over one connection pool."""

    def __init__(self, pool: asyncpg.Pool, zones: TimeZones) -> None:
        self._pool = pool
        self._zones = zones

    @grpc_errors
    async def RecordEvents(
        self,
        request_iterator: AsyncIterator[pb.RecordEventsRequest],
        context: grpc.aio.ServicerContext[pb.RecordEventsRequest, pb.RecordEventsResponse],
    ) -> pb.RecordEventsResponse:
        tally = await record_stream(self._pool, request_iterator)
        return pb.RecordEventsResponse(
            received=tally.received,
            inserted=tally.inserted,
            duplicates=tally.duplicates,
            conflicts=tally.conflicts,
            rejected=tally.rejected,
            errors=[
                pb.EventError(
                    index=e.index, idempotency_key=e.idempotency_key, field=e.field, reason=e.reason
                )
                for e in tally.errors
            ],
            errors_truncated=tally.errors_truncated,
        )

    @grpc_errors
    async def Summary(
        self,
        request: pb.SummaryRequest,
        context: grpc.aio.ServicerContext[pb.SummaryRequest, pb.SummaryResponse],
    ) -> pb.SummaryResponse:
        q = summary_query(request, self._zones)
        rows = await self._pool.fetch(
            query("summary"),
            *_series_args(q),
            q.user_id,
            q.filter.countries,
            q.filter.exclude_countries,
            q.moving_average_window - 1,
        )
        _check_bucket_count(rows)
        return pb.SummaryResponse(
            time_zone=q.time_zone.name,
            buckets=[
                pb.SummaryBucket(
                    start_time=_timestamp(row["bucket_start"]),
                    local_start=_local_start(row),
                    events=row["events"],
                    word_count=row["word_count"],
                    study_seconds=row["study_seconds"],
                    average_word_count=_per_event(row["word_count"], row["events"]),
                    average_study_seconds=_per_event(row["study_seconds"], row["events"]),
                    word_count_sma=float(row["word_count_sma"]),
                    study_seconds_sma=float(row["study_seconds_sma"]),
                )
                for row in rows
            ],
            totals=pb.SummaryTotals(
                events=sum(row["events"] for row in rows),
                word_count=sum(row["word_count"] for row in rows),
                study_seconds=sum(row["study_seconds"] for row in rows),
                active_users=rows[0]["active_users"] if rows else 0,
            ),
        )

    @grpc_errors
    async def Uniques(
        self,
        request: pb.UniquesRequest,
        context: grpc.aio.ServicerContext[pb.UniquesRequest, pb.UniquesResponse],
    ) -> pb.UniquesResponse:
        q = uniques_query(request, self._zones)
        rows = await self._pool.fetch(
            query("uniques"), *_series_args(q), q.filter.countries, q.filter.exclude_countries
        )
        _check_bucket_count(rows)
        return pb.UniquesResponse(
            time_zone=q.time_zone.name,
            buckets=[
                pb.UniquesBucket(
                    start_time=_timestamp(row["bucket_start"]),
                    local_start=_local_start(row),
                    unique_users=row["unique_users"],
                )
                for row in rows
            ],
            unique_users=rows[0]["range_unique_users"] if rows else 0,
        )

    @grpc_errors
    async def Breakdown(
        self,
        request: pb.BreakdownRequest,
        context: grpc.aio.ServicerContext[pb.BreakdownRequest, pb.BreakdownResponse],
    ) -> pb.BreakdownResponse:
        q = breakdown_query(request)
        rows = await self._pool.fetch(
            query(f"breakdown_{q.dimension}"),
            q.filter.start,
            q.filter.end,
            q.metric,
            q.limit,
            q.filter.countries,
            q.filter.exclude_countries,
        )
        return pb.BreakdownResponse(
            rows=[
                pb.BreakdownRow(
                    key=row["key"],
                    events=row["events"],
                    word_count=row["word_count"],
                    study_seconds=row["study_seconds"],
                    unique_users=row["unique_users"],
                )
                for row in rows
            ]
        )


def _series_args(q: SeriesQuery) -> tuple[object, ...]:
    return (q.filter.start, q.filter.end, q.unit, q.time_zone.postgres, MAX_BUCKETS)


def _check_bucket_count(rows: list[asyncpg.Record]) -> None:
    if len(rows) > MAX_BUCKETS:
        raise InvalidArgument(
            "granularity",
            f"the range holds more than {MAX_BUCKETS} buckets; "
            "use a coarser granularity or a shorter range",
        )


def _timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(instant)
    return ts


def _local_start(row: asyncpg.Record) -> str:
    local: datetime = row["local_start"]
    return local.replace(tzinfo=timezone(row["utc_offset"])).isoformat()


def _per_event(total: int, events: int) -> float:
    return total / events if events else 0.0
