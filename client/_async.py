"""AsyncClient: the service's RPCs as typed coroutines over one grpc.aio channel."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc

from daily_aggregator.client._channel import channel_options
from daily_aggregator.client._convert import (
    DIMENSIONS,
    GRANULARITIES,
    METRICS,
    breakdown_rows,
    delete_user_result,
    event_to_proto,
    learner_stats,
    record_result,
    retention_result,
    summary_result,
    timestamp,
    uniques_result,
)
from daily_aggregator.client._models import (
    BreakdownRow,
    DeleteUserResult,
    Dimension,
    Event,
    Granularity,
    LearnerStats,
    Metric,
    RecordResult,
    RetentionResult,
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
            None for a plaintext channel. For a service that requires client certificates
            (mutual TLS), pass ``grpc.ssl_channel_credentials(root_certificates=ca,
            private_key=key, certificate_chain=cert)`` with the PEM bytes of each.
        token: When given, sent as ``authorization: Bearer <token>`` metadata on every call.
        timeout: Deadline of each call in seconds; None for no deadline.
        retry: How to retry failed calls.
        options: Extra gRPC channel options, such as
            ``("grpc.max_reconnect_backoff_ms", 2000)``; they replace the keepalive
            options the channel starts from (`client/_channel.py`) by name.
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
            self._channel = grpc.aio.insecure_channel(target, options=channel_options(options))
        else:
            self._channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options(options)
            )
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
        compare_previous: bool = False,
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
            compare_previous: Also answer for the previous period, the same number of
                buckets before the range (`SummaryResult.previous_buckets`).

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
            compare_previous=compare_previous,
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
        rolling_days: int = 0,
        compare_previous: bool = False,
    ) -> UniquesResult:
        """Distinct active users per calendar bucket of `time_zone` and over the range.

        Arguments and errors are those of `summary`, and:

        Args:
            rolling_days: 1 to 366: each bucket also counts the distinct users of the
                `rolling_days` local days ending with it (7 gives weekly actives per day);
                daily buckets only. 0 for none.
        """
        request = pb.UniquesRequest(
            **_range(start, end),
            granularity=GRANULARITIES[granularity],
            time_zone=time_zone,
            countries=list(countries),
            exclude_countries=list(exclude_countries),
            rolling_days=rolling_days,
            compare_previous=compare_previous,
        )
        response = await self._query(self._stub.Uniques, request)
        return uniques_result(response, rolling=bool(rolling_days))

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
        compare_previous: bool = False,
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
            compare_previous: Also give each row's key over ``[start - (end - start),
                start)``, as its `BreakdownRow.previous`.

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
            compare_previous=compare_previous,
        )
        return breakdown_rows(await self._query(self._stub.Breakdown, request))

    async def learner_stats(
        self, user_id: str, *, time_zone: str = "UTC", as_of: datetime | None = None
    ) -> LearnerStats:
        """One learner's totals, first and last activity, active days and streaks.

        Args:
            user_id: The learner (a UUID). An unknown learner gets zeros.
            time_zone: The zone of the local dates: an IANA name or a fixed offset.
            as_of: Only events before this aware datetime count; None means now.

        Raises:
            ValueError: `as_of` is naive.
            InvalidArgumentError: The service refused a field; see `field_violations`.
            UnavailableError: The service or its database stayed unreachable.
        """
        request = pb.LearnerStatsRequest(user_id=user_id, time_zone=time_zone)
        if as_of is not None:
            request.as_of.CopyFrom(timestamp("as_of", as_of))
        return learner_stats(await self._query(self._stub.LearnerStats, request))

    async def retention(
        self,
        start: datetime,
        end: datetime,
        *,
        granularity: Granularity = Granularity.DAY,
        periods: int = 7,
        time_zone: str = "UTC",
        countries: Iterable[str] = (),
        exclude_countries: Iterable[str] = (),
    ) -> RetentionResult:
        """Cohorts of new learners per calendar bucket of `time_zone`, and their return.

        Args:
            start: Start of the range, inclusive; an aware datetime.
            end: End of the range, exclusive; an aware datetime after `start`.
            granularity: Bucket size of the cohorts and of the periods after them: DAY,
                WEEK or MONTH (the service refuses HOUR).
            periods: Buckets to follow after each cohort's, 1 to 365.
            time_zone: An IANA name ("Asia/Tokyo") or a fixed offset ("+09:00").
            countries: Keep only events from these countries (empty keeps all); a
                learner's first event is the first one that passes.
            exclude_countries: Drop events from these countries.

        Raises:
            ValueError: `start` or `end` is naive.
            InvalidArgumentError: The service refused a field; see `field_violations`.
            UnavailableError: The service or its database stayed unreachable.
        """
        request = pb.RetentionRequest(
            **_range(start, end),
            granularity=GRANULARITIES[granularity],
            periods=periods,
            time_zone=time_zone,
            countries=list(countries),
            exclude_countries=list(exclude_countries),
        )
        return retention_result(await self._query(self._stub.Retention, request))

    async def delete_user(self, user_id: str) -> DeleteUserResult:
        """Erase a learner: every stored event, from every answer, and refuse their older events.

        Once it returns, no answer counts the learner. Their events that occurred before
        `erased_at` are rejected when sent again (field ``user_id``), so a replayed stream
        cannot bring them back; later events are stored, as a learner who came back. Erasing
        again moves `erased_at` forward and removes what was stored since. Retried like the
        queries: a retry erases again, so it reports 0 deleted events when the first attempt
        had already erased them. Needs the admin scope on a server with tokens.

        Args:
            user_id: The learner, a UUID.

        Raises:
            InvalidArgumentError: `user_id` is not a UUID (field ``user_id``).
            UnavailableError: The service or its database stayed unreachable.
        """
        request = pb.DeleteUserRequest(user_id=user_id)
        return delete_user_result(await self._query(self._stub.DeleteUser, request))

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
