"""AsyncClient: the service's RPCs as typed coroutines over one grpc.aio channel."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc

from daily_aggregator.client._convert import (
    DIMENSIONS,
    GRANULARITIES,
    METRICS,
    breakdown_rows,
    event_to_proto,
    record_result,
    summary_result,
    timestamp,
    uniques_result,
)
from daily_aggregator.client._models import (
    BreakdownRow,
    Dimension,
    Event,
    Granularity,
    Metric,
    RecordResult,
    SummaryResult,
    UniquesResult,
)
from daily_aggregator.client._retry import (
    QUERY_RETRYABLE,
    STREAM_RETRYABLE,
    RetryPolicy,
    call_with_retry,
)
from daily_aggregator.client._writer import AsyncEventWriter
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

__all__ = ["AsyncClient"]


def _range(start: datetime, end: datetime) -> dict[str, Any]:
    return {"start_time": timestamp("start", start), "end_time": timestamp("end", end)}


class AsyncClient:
    """An asyncio client of the Daily Aggregator service.

    Use it as an async context manager, or call `close()` when done::

        async with AsyncClient("127.0.0.1:50051") as client:
            result = await client.record([Event(user_id, 40, 600, occurred_at=now)])
            summary = await client.summary(start, end, time_zone="Asia/Tokyo")

    Every failure is raised as a `DailyAggregatorError` subclass. Queries are retried on
    UNAVAILABLE or CANCELLED (a server shutting down) per `retry`; `record` resends its whole
    stream on those or DEADLINE_EXCEEDED, which idempotency keys make safe. Both also retry
    RESOURCE_EXHAUSTED when the service says when to come back (it was at a concurrency or
    memory limit), waiting at least that long.

    Args:
        target: ``host:port`` of the service.
        credentials: Channel credentials (``grpc.ssl_channel_credentials(...)``) for TLS;
            None for a plaintext channel.
        token: When given, sent as ``authorization: Bearer <token>`` metadata on every call.
        timeout: Deadline of each call in seconds; None for no deadline.
        retry: How to retry failed calls.
        options: Extra gRPC channel options, such as
            ``("grpc.max_reconnect_backoff_ms", 2000)``.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token is not None else ()
        )
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=list(options))
        self._stub = aggregator_pb2_grpc.AggregatorServiceStub(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        await self._channel.close()

    async def _query(self, method: Callable[..., Any], request: Any) -> Any:
        async def attempt() -> Any:
            return await method(request, timeout=self.timeout, metadata=self._metadata)

        return await call_with_retry(self.retry, QUERY_RETRYABLE, attempt)

    async def summary(
        self,
        start: datetime,
        end: datetime,
        *,
        user_id: str | None = None,
        granularity: Granularity = Granularity.DAY,
        time_zone: str = "UTC",
        moving_average_window: int = 3,
        countries: Iterable[str] = (),
        exclude_countries: Iterable[str] = (),
    ) -> SummaryResult:
        """Events, words and study time per calendar bucket of `time_zone`.

        Args:
            start: Start of the range, inclusive; an aware datetime.
            end: End of the range, exclusive; an aware datetime after `start`.
            user_id: One learner (a UUID), or None for all users together.
            granularity: Bucket size.
            time_zone: An IANA name ("Asia/Tokyo") or a fixed offset ("+09:00").
            moving_average_window: Buckets per simple moving average, 1 to 365.
            countries: Keep only events from these countries (empty keeps all).
            exclude_countries: Drop events from these countries.

        Raises:
            ValueError: `start` or `end` is naive.
            InvalidArgumentError: The service refused a field; see `field_violations`.
            UnavailableError: The service or its database stayed unreachable.
            ResourceExhaustedError: The service stayed at its query limit through every
                attempt.
        """
        request = pb.SummaryRequest(
            **_range(start, end),
            user_id=user_id or "",
            granularity=GRANULARITIES[granularity],
            time_zone=time_zone,
            moving_average_window=moving_average_window,
            countries=list(countries),
            exclude_countries=list(exclude_countries),
        )
        return summary_result(await self._query(self._stub.Summary, request))

    async def uniques(
        self,
        start: datetime,
        end: datetime,
        *,
        granularity: Granularity = Granularity.DAY,
        time_zone: str = "UTC",
        countries: Iterable[str] = (),
        exclude_countries: Iterable[str] = (),
    ) -> UniquesResult:
        """Distinct active users per calendar bucket of `time_zone` and over the range.

        Arguments and errors are those of `summary`.
        """
        request = pb.UniquesRequest(
            **_range(start, end),
            granularity=GRANULARITIES[granularity],
            time_zone=time_zone,
            countries=list(countries),
            exclude_countries=list(exclude_countries),
        )
        return uniques_result(await self._query(self._stub.Uniques, request))

    async def breakdown(
        self,
        start: datetime,
        end: datetime,
        *,
        dimension: Dimension,
        metric: Metric = Metric.EVENTS,
        limit: int = 10,
        countries: Iterable[str] = (),
        exclude_countries: Iterable[str] = (),
    ) -> list[BreakdownRow]:
        """The top `limit` users or countries by `metric` over [start, end), best first.

        Args:
            start: Start of the range, inclusive; an aware datetime.
            end: End of the range, exclusive; an aware datetime after `start`.
            dimension: What to group by.
            metric: What to rank by, descending; ties are ordered by key.
            limit: Maximum number of rows, 1 to 1,000.
            countries: Keep only events from these countries (empty keeps all).
            exclude_countries: Drop events from these countries.

        Raises:
            ValueError: `start` or `end` is naive.
            InvalidArgumentError: The service refused a field; see `field_violations`.
            UnavailableError: The service or its database stayed unreachable.
            ResourceExhaustedError: The service stayed at its query limit through every
                attempt.
        """
        request = pb.BreakdownRequest(
            **_range(start, end),
            dimension=DIMENSIONS[dimension],
            metric=METRICS[metric],
            limit=limit,
            countries=list(countries),
            exclude_countries=list(exclude_countries),
        )
        return breakdown_rows(await self._query(self._stub.Breakdown, request))

    async def record(self, events: Iterable[Event], *, batch_size: int = 1000) -> RecordResult:
        """Store `events` over one RecordEvents stream, `batch_size` events per message.

        The result accounts for every event: received = inserted + duplicates + conflicts +
        rejected; invalid events are rejected and described in `errors` (indexes into
        `events`) while the valid ones are stored. On UNAVAILABLE, CANCELLED (a server
        shutting down), DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED with a retry delay (the
        service was at a limit) the whole stream is resent per the retry policy; events
        committed by a failed attempt then count as duplicates. For an endless feed, use
        `writer()`.

        Raises:
            ResourceExhaustedError: A message was over the server's size limit (use a smaller
                `batch_size`), or the service stayed at a limit through every attempt.
            UnavailableError: The service or its database stayed unreachable.
            DeadlineExceededError: Every attempt outlived `timeout`.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        messages = [event_to_proto(e) for e in events]
        requests = [
            pb.RecordEventsRequest(events=messages[i : i + batch_size])
            for i in range(0, len(messages), batch_size)
        ]

        async def attempt() -> pb.RecordEventsResponse:
            response: pb.RecordEventsResponse = await self._stub.RecordEvents(
                iter(requests), timeout=self.timeout, metadata=self._metadata
            )
            return response

        return record_result(await call_with_retry(self.retry, STREAM_RETRYABLE, attempt))

    def writer(
        self,
        *,
        max_batch_events: int = 1000,
        max_batch_bytes: int = 1_000_000,
        linger: float = 0.05,
        rotate_events: int = 100_000,
        rotate_seconds: float = 10.0,
        on_result: Callable[[RecordResult], None] | None = None,
    ) -> AsyncEventWriter:
        """A batching writer that streams events to the service; see `AsyncEventWriter`.

        Use it as an async context manager so that it flushes and closes at the end.
        """
        return AsyncEventWriter(
            self._stub,
            metadata=self._metadata,
            timeout=self.timeout,
            retry=self.retry,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
            linger=linger,
            rotate_events=rotate_events,
            rotate_seconds=rotate_seconds,
            on_result=on_result,
        )
