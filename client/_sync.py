"""Client and EventWriter: the asyncio client driven from synchronous code.

Each Client owns a private thread running an event loop; every method hands a coroutine
to that loop and waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from daily_aggregator.client._async import AsyncClient
from daily_aggregator.client._convert import event_from_proto, event_to_proto
from daily_aggregator.client._errors import DailyAggregatorError
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
from daily_aggregator.client._retry import RetryPolicy
from daily_aggregator.client._writer import AsyncEventWriter
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["Client", "EventWriter"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="daily-aggregator-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            self.check_caller()
        except RuntimeError:
            coroutine.close()
            raise
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def check_caller(self) -> None:
        """Refuse calls from the loop's own thread, which would wait for themselves."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a synchronous client cannot be called from its own callbacks")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class EventWriter:
    """The synchronous face of `AsyncEventWriter`; get one from `Client.writer()`.

    Batching, rotation, retries and totals behave exactly as described for
    `AsyncEventWriter`. `write` converts the event to its wire form and hands it to the
    client's thread without waiting; it blocks only while a batch's worth of events
    (`max_batch_events`) is already waiting for that thread, which keeps a fast producer in
    step with the service. So a failure for good surfaces at the next `write`, `flush` or
    `close`, and `unacknowledged` then also holds the events still waiting. Batches
    lingering in the background are sent by the client's thread, which is also where
    `on_result` is called. Several threads may write to one writer.
    """

    def __init__(self, writer: AsyncEventWriter, runner: _LoopThread, *, buffer: int) -> None:
        self._writer = writer
        self._runner = runner
        self._buffer = buffer
        # Guards the fields below, which the caller's threads and the loop thread share.
        self._room = threading.Condition()
        self._inbox: list[pb.Event] = []
        self._failure: DailyAggregatorError | None = None
        self._left_over: list[pb.Event] = []
        self._closed = False
        self._drain: asyncio.Task[None] | None = None  # the loop thread's own

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def totals(self) -> RecordResult:
        """Running totals over every acknowledged stream; see `AsyncEventWriter.totals`."""
        return self._writer.totals

    @property
    def unacknowledged(self) -> list[Event]:
        """After the writer failed for good: the events it could not get acknowledged."""
        with self._room:
            left_over = [event_from_proto(m) for m in self._left_over]
        return self._writer.unacknowledged + left_over

    def write(self, event: Event) -> None:
        """Queue `event` for the client's thread, which batches and sends it.

        Raises:
            DailyAggregatorError: The writer failed for good (see the class docstring).
            RuntimeError: The writer is closed.
        """
        self._runner.check_caller()
        message = event_to_proto(event)
        with self._room:
            while len(self._inbox) >= self._buffer and self._failure is None:
                self._room.wait()
            self._check_usable()
            self._inbox.append(message)
            if len(self._inbox) == 1:
                self._runner.loop.call_soon_threadsafe(self._start_draining)

    def flush(self) -> None:
        """Send everything queued and complete the stream; see `AsyncEventWriter.flush`."""
        with self._room:
            self._check_usable()
        self._runner.run(self._drained_then(self._writer.flush))

    def close(self) -> None:
        """Flush, then stop the writer; see `AsyncEventWriter.close`."""
        with self._room:
            if self._closed:
                return
            self._closed = True
        self._runner.run(self._drained_then(self._writer.close))

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the writer is closed")

    def _start_draining(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._hand_over())

    async def _hand_over(self) -> None:
        """Feed the inbox to the async writer until it stays empty or the writer fails."""
        while True:
            with self._room:
                events, self._inbox = self._inbox, []
                self._room.notify_all()
            if not events:
                return
            for i, message in enumerate(events):
                try:
                    await self._writer._write_message(message)
                except DailyAggregatorError as exc:
                    with self._room:
                        self._failure = exc
                        self._left_over += events[i + 1 :] + self._inbox
                        self._inbox = []
                        self._room.notify_all()
                    return

    async def _drained_then(self, finish: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._start_draining()
        assert self._drain is not None
        await self._drain
        await finish()


class Client:
    """A synchronous client of the Daily Aggregator service.

    Same arguments, methods and errors as `AsyncClient`, without ``await``::

        with Client("127.0.0.1:50051", token=token) as client:
            client.record(events)
            print(client.summary(start, end, time_zone="Asia/Tokyo").totals)

    The gRPC channel lives on an event loop in a private thread, started here and stopped
    by `close()`.
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
        self._runner = _LoopThread()

        async def connect() -> AsyncClient:
            return AsyncClient(
                target,
                credentials=credentials,
                token=token,
                timeout=timeout,
                retry=retry,
                options=options,
            )

        try:
            self._client = self._runner.run(connect())
        except BaseException:
            self._runner.stop()
            raise
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def target(self) -> str:
        """``host:port`` of the service."""
        return self._client.target

    def close(self) -> None:
        """Close the channel and stop the client's thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def summary(
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
        """Events, words and study time per calendar bucket; see `AsyncClient.summary`."""
        return self._runner.run(
            self._client.summary(
                start,
                end,
                user_id=user_id,
                granularity=granularity,
                time_zone=time_zone,
                moving_average_window=moving_average_window,
                countries=tuple(countries),
                exclude_countries=tuple(exclude_countries),
                compare_previous=compare_previous,
            )
        )

    def uniques(
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
        """Distinct active users per calendar bucket; see `AsyncClient.uniques`."""
        return self._runner.run(
            self._client.uniques(
                start,
                end,
                granularity=granularity,
                time_zone=time_zone,
                countries=tuple(countries),
                exclude_countries=tuple(exclude_countries),
                rolling_days=rolling_days,
                compare_previous=compare_previous,
            )
        )

    def breakdown(
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
        """The top users or countries by a metric; see `AsyncClient.breakdown`."""
        return self._runner.run(
            self._client.breakdown(
                start,
                end,
                dimension=dimension,
                metric=metric,
                limit=limit,
                countries=tuple(countries),
                exclude_countries=tuple(exclude_countries),
                compare_previous=compare_previous,
            )
        )

    def learner_stats(
        self, user_id: str, *, time_zone: str = "UTC", as_of: datetime | None = None
    ) -> LearnerStats:
        """One learner's totals, activity and streaks; see `AsyncClient.learner_stats`."""
        return self._runner.run(
            self._client.learner_stats(user_id, time_zone=time_zone, as_of=as_of)
        )

    def retention(
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
        """Cohorts of new learners and their return; see `AsyncClient.retention`."""
        return self._runner.run(
            self._client.retention(
                start,
                end,
                granularity=granularity,
                periods=periods,
                time_zone=time_zone,
                countries=tuple(countries),
                exclude_countries=tuple(exclude_countries),
            )
        )

    def delete_user(self, user_id: str) -> DeleteUserResult:
        """Erase a learner from every answer; see `AsyncClient.delete_user`."""
        return self._runner.run(self._client.delete_user(user_id))

    def record(self, events: Iterable[Event], *, batch_size: int = 1000) -> RecordResult:
        """Store events over one stream, resending it on failure; see `AsyncClient.record`."""
        return self._runner.run(self._client.record(list(events), batch_size=batch_size))

    def writer(
        self,
        *,
        max_batch_events: int = 1000,
        max_batch_bytes: int = 1_000_000,
        linger: float = 0.05,
        rotate_events: int = 100_000,
        rotate_seconds: float = 10.0,
        on_result: Callable[[RecordResult], None] | None = None,
    ) -> EventWriter:
        """A batching writer that streams events to the service; see `AsyncEventWriter`."""

        async def create() -> AsyncEventWriter:
            return self._client.writer(
                max_batch_events=max_batch_events,
                max_batch_bytes=max_batch_bytes,
                linger=linger,
                rotate_events=rotate_events,
                rotate_seconds=rotate_seconds,
                on_result=on_result,
            )

        return EventWriter(self._runner.run(create()), self._runner, buffer=max_batch_events)
