"""AggregatorService handlers: validate, call the mechanism beneath, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
from daily_aggregator.server.errors import grpc_errors
from daily_aggregator.server.ingest import record_stream
from daily_aggregator.v1 import aggregator_pb2, aggregator_pb2_grpc

pb = aggregator_pb2


class AggregatorService(aggregator_pb2_grpc.AggregatorServiceServicer):
    """The daily_aggregator.v1.AggregatorService implementation over one connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

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
