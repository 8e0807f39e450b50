"""Small builders shared by the tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def event(
    *,
    user_id: str | None = None,
    key: str | None = None,
    at: datetime | None = datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
    words: int = 10,
    seconds: int = 60,
    country: str = "",
) -> pb.Event:
    """An Event; `at=None` leaves occurred_at unset."""
    e = pb.Event(
        user_id=user_id or str(uuid.uuid4()),
        idempotency_key=key or str(uuid.uuid4()),
        word_count=words,
        study_seconds=seconds,
        country=country,
    )
    if at is not None:
        e.occurred_at.CopyFrom(timestamp(at))
    return e


async def record(
    stub: aggregator_pb2_grpc.AggregatorServiceStub, batches: Iterable[Sequence[pb.Event]]
) -> pb.RecordEventsResponse:
    """Stream each batch as one message and return the response."""
    requests = [pb.RecordEventsRequest(events=list(batch)) for batch in batches]
    response: pb.RecordEventsResponse = await stub.RecordEvents(iter(requests))
    return response
