"""AggregatorService handlers: validate, call the mechanism beneath, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc

from daily_aggregator.server.answers.breakdown import breakdown
from daily_aggregator.server.answers.learner import learner_stats
from daily_aggregator.server.answers.retention import retention
from daily_aggregator.server.answers.summary import summary
from daily_aggregator.server.answers.uniques import uniques
from daily_aggregator.server.erasure import erase
from daily_aggregator.server.errors import grpc_errors
from daily_aggregator.server.ingest import record_stream
from daily_aggregator.server.requests import (
    breakdown_query,
    erasure_user_id,
    learner_stats_query,
    retention_query,
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
        return await summary(self._pool, self._zones, summary_query(request, self._zones))

    @grpc_errors
    async def Uniques(
        self,
        request: pb.UniquesRequest,
        context: grpc.aio.ServicerContext[pb.UniquesRequest, pb.UniquesResponse],
    ) -> pb.UniquesResponse:
        return await uniques(self._pool, self._zones, uniques_query(request, self._zones))

    @grpc_errors
    async def Breakdown(
        self,
        request: pb.BreakdownRequest,
        context: grpc.aio.ServicerContext[pb.BreakdownRequest, pb.BreakdownResponse],
    ) -> pb.BreakdownResponse:
        return await breakdown(self._pool, breakdown_query(request))

    @grpc_errors
    async def LearnerStats(
        self,
        request: pb.LearnerStatsRequest,
        context: grpc.aio.ServicerContext[pb.LearnerStatsRequest, pb.LearnerStatsResponse],
    ) -> pb.LearnerStatsResponse:
        query = learner_stats_query(request, self._zones, now=datetime.now(UTC))
        return await learner_stats(self._pool, self._zones, query)

    @grpc_errors
    async def Retention(
        self,
        request: pb.RetentionRequest,
        context: grpc.aio.ServicerContext[pb.RetentionRequest, pb.RetentionResponse],
    ) -> pb.RetentionResponse:
        return await retention(self._pool, self._zones, retention_query(request, self._zones))

    @grpc_errors
    async def DeleteUser(
        self,
        request: pb.DeleteUserRequest,
        context: grpc.aio.ServicerContext[pb.DeleteUserRequest, pb.DeleteUserResponse],
    ) -> pb.DeleteUserResponse:
        erasure = await erase(self._pool, erasure_user_id(request))
        response = pb.DeleteUserResponse(deleted_events=erasure.deleted_events)
        response.erased_at.FromDatetime(erasure.erased_at)
        return response
