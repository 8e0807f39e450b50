"""AsyncEventWriter: batches events and streams them over RecordEvents, resending on failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc

from daily_aggregator.client._convert import (
    event_from_proto,
    event_to_proto,
    framed_size,
    record_result,
)
from daily_aggregator.client._errors import DailyAggregatorError, from_rpc_error
from daily_aggregator.client._models import Event, EventError, RecordResult
from daily_aggregator.client._retry import STREAM_RETRYABLE, RetryPolicy, retry_wait
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

__all__ = ["AsyncEventWriter"]

log = logging.getLogger(__name__)

ERRORS_CAP = 100


@dataclass
class _Stream:
    """One RecordEvents stream: every batch sent on it, kept until its response arrives."""

    first_index: int
    opened_at: float
    call: Any = None
    batches: list[pb.RecordEventsRequest] = field(default_factory=list)
    events: int = 0
    attempts: int = 1


async def _failure_of(call: Any, exc: Exception) -> grpc.RpcError:
    """The status a stream failed with; writing to a finished call only says it finished."""
    if isinstance(exc, grpc.RpcError):
        return exc
    try:
        await call
    except grpc.RpcError as failure:
        return failure
    raise exc


class AsyncEventWriter:
    """Streams events to the service in batches, for feeds of any length.

    Get one from `AsyncClient.writer()` and use it as an async context manager::

        async with client.writer(on_result=print) as writer:
            async for event in feed:
                await writer.write(event)
        print(writer.totals)

    Batching: a batch (one stream message) is sent when it holds `max_batch_events` events,
    when the next event would take it over `max_batch_bytes` serialized bytes, or `linger`
    seconds after its first event arrived, whichever comes first. `write` waits while a batch
    is being sent, which keeps a fast producer in step with the service.

    Rotation: after `rotate_events` events or `rotate_seconds` seconds the writer completes
    its stream, collects the service's response (which only then acknowledges the stream) and
    opens a new stream with the next batch. `on_result`, when given, is called with each
    completed stream's result, its error indexes already shifted to writer positions.

    Retries: on UNAVAILABLE, CANCELLED (a server shutting down), DEADLINE_EXCEEDED, a
    lost connection, or RESOURCE_EXHAUSTED with a retry delay (the service was at a limit),
    the writer resends every event of the failed stream (the service acknowledges whole
    streams, so that is all of the stream's events) on a new stream, waiting between
    attempts per the client's `RetryPolicy`, and at least the service's retry delay. That
    is safe because each event carries its idempotency key: an event that a failed attempt
    had already committed comes back as a *duplicate* on the resend, so the running `totals`
    stay exact, with every event counted exactly once as inserted, duplicate, conflict or
    rejected. Only the current stream's events are kept in memory.

    When a stream fails for good (retries exhausted, or a status that is not retryable), the
    writer raises that error from the call in progress and from every later call; its events
    that were not acknowledged are then in `unacknowledged`, ready for another writer.
    """

    def __init__(
        self,
        stub: aggregator_pb2_grpc.AggregatorServiceStub,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = 30.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        max_batch_events: int = 1000,
        max_batch_bytes: int = 1_000_000,
        linger: float = 0.05,
        rotate_events: int = 100_000,
        rotate_seconds: float = 10.0,
        on_result: Callable[[RecordResult], None] | None = None,
    ) -> None:
        if max_batch_events < 1 or max_batch_bytes < 1 or rotate_events < 1:
            raise ValueError("max_batch_events, max_batch_bytes and rotate_events must be >= 1")
        if linger < 0 or rotate_seconds <= 0:
            raise ValueError("linger must be >= 0 and rotate_seconds > 0")
        self._stub = stub
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._retry = retry
        self._max_batch_events = max_batch_events
        self._max_batch_bytes = max_batch_bytes
        self._linger = linger
        self._rotate_events = rotate_events
        self._rotate_seconds = rotate_seconds
        self._on_result = on_result

        self._lock = asyncio.Lock()
        self._pending: list[pb.Event] = []
        self._pending_bytes = 0
        self._stream: _Stream | None = None
        self._sent = 0
        self._linger_task: asyncio.Task[None] | None = None
        self._rotate_task: asyncio.Task[None] | None = None
        self._failure: DailyAggregatorError | None = None
        self._unacknowledged: list[Event] = []
        self._closed = False

        self._received = self._inserted = self._duplicates = 0
        self._conflicts = self._rejected = 0
        self._errors: list[EventError] = []
        self._errors_truncated = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def totals(self) -> RecordResult:
        """Running totals over every acknowledged stream of this writer.

        Error indexes are positions among all events written to this writer; at most 100
        errors are kept (`errors_truncated` tells when more were rejected).
        """
        return RecordResult(
            received=self._received,
            inserted=self._inserted,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            rejected=self._rejected,
            errors=list(self._errors),
            errors_truncated=self._errors_truncated,
        )

    @property
    def unacknowledged(self) -> list[Event]:
        """After the writer failed for good: the events it could not get acknowledged."""
        return list(self._unacknowledged)

    async def write(self, event: Event) -> None:
        """Queue `event`; send the current batch if this event fills it.

        Raises:
            DailyAggregatorError: The writer failed for good (see the class docstring).
            RuntimeError: The writer is closed.
        """
        self._check_usable()
        await self._write_message(event_to_proto(event))

    async def _write_message(self, message: pb.Event) -> None:
        """`write` for an event already in its wire form."""
        size = framed_size(message)
        async with self._lock:
            self._check_usable()
            if self._pending and self._pending_bytes + size > self._max_batch_bytes:
                try:
                    await self._send_pending()
                except DailyAggregatorError:
                    self._unacknowledged.append(event_from_proto(message))
                    raise
            self._pending.append(message)
            self._pending_bytes += size
            if (
                len(self._pending) >= self._max_batch_events
                or self._pending_bytes >= self._max_batch_bytes
            ):
                await self._send_pending()
            elif self._linger_task is None:
                self._linger_task = asyncio.create_task(self._send_after_linger())

    async def flush(self) -> None:
        """Send every queued event and complete the stream, so that `totals` covers all.

        Raises:
            DailyAggregatorError: The writer failed for good (see the class docstring).
        """
        self._check_usable()
        async with self._lock:
            self._check_usable()
            if self._pending:
                await self._send_pending()
            if self._stream is not None:
                await self._complete()

    async def close(self) -> None:
        """Flush, then stop the writer; closing again does nothing.

        Raises:
            DailyAggregatorError: The final flush failed for good.
        """
        if self._closed:
            return
        try:
            if self._failure is None:
                await self.flush()
        finally:
            self._closed = True
            for task in (self._linger_task, self._rotate_task):
                if task is not None:
                    task.cancel()
        if self._failure is not None:
            raise self._failure

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the writer is closed")

    def _cancel_timer(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _send_after_linger(self) -> None:
        await asyncio.sleep(self._linger)
        async with self._lock:
            self._linger_task = None
            if self._pending and self._failure is None:
                # A failure is kept in self._failure and raised by the next call.
                with contextlib.suppress(DailyAggregatorError):
                    await self._send_pending()

    async def _rotate_after(self, stream: _Stream) -> None:
        await asyncio.sleep(self._rotate_seconds)
        async with self._lock:
            if self._stream is stream and self._failure is None:
                # A failure is kept in self._failure and raised by the next call.
                with contextlib.suppress(DailyAggregatorError):
                    await self._complete()

    async def _send_pending(self) -> None:
        self._cancel_timer(self._linger_task)
        self._linger_task = None
        request = pb.RecordEventsRequest(events=self._pending)
        count = len(self._pending)
        self._pending = []
        self._pending_bytes = 0

        stream = self._stream
        if stream is None:
            stream = self._stream = _Stream(first_index=self._sent, opened_at=time.monotonic())
            deadline = None if self._timeout is None else self._timeout + self._rotate_seconds
            stream.call = self._stub.RecordEvents(timeout=deadline, metadata=self._metadata)
            self._rotate_task = asyncio.create_task(self._rotate_after(stream))
        stream.batches.append(request)
        stream.events += count
        self._sent += count
        try:
            await stream.call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            await self._resend(stream, await _failure_of(stream.call, exc))
            return
        if (
            stream.events >= self._rotate_events
            or time.monotonic() - stream.opened_at >= self._rotate_seconds
        ):
            await self._complete()

    async def _complete(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            await stream.call.done_writing()
            response: pb.RecordEventsResponse = await stream.call
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            await self._resend(stream, await _failure_of(stream.call, exc))
            return
        self._acknowledge(stream, response)

    async def _resend(self, stream: _Stream, failure: grpc.RpcError) -> None:
        while True:
            error = from_rpc_error(failure)
            wait = retry_wait(self._retry, STREAM_RETRYABLE, error, stream.attempts)
            if wait is None:
                self._fail(stream, error)
                raise error from failure
            log.debug("resending %d events after %s", stream.events, error)
            await asyncio.sleep(wait)
            stream.attempts += 1
            try:
                response: pb.RecordEventsResponse = await self._stub.RecordEvents(
                    iter(stream.batches), timeout=self._timeout, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                failure = exc
                continue
            self._acknowledge(stream, response)
            return

    def _end_stream(self) -> None:
        self._cancel_timer(self._rotate_task)
        self._rotate_task = None
        self._stream = None

    def _acknowledge(self, stream: _Stream, response: pb.RecordEventsResponse) -> None:
        self._end_stream()
        result = record_result(response, index_offset=stream.first_index)
        self._received += result.received
        self._inserted += result.inserted
        self._duplicates += result.duplicates
        self._conflicts += result.conflicts
        self._rejected += result.rejected
        room = ERRORS_CAP - len(self._errors)
        self._errors.extend(result.errors[:room])
        self._errors_truncated |= result.errors_truncated or len(result.errors) > room
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:
                log.exception("on_result callback failed")

    def _fail(self, stream: _Stream, error: DailyAggregatorError) -> None:
        self._end_stream()
        self._failure = error
        self._unacknowledged = [
            event_from_proto(e) for batch in stream.batches for e in batch.events
        ] + [event_from_proto(e) for e in self._pending]
        self._pending = []
        self._pending_bytes = 0
        self._cancel_timer(self._linger_task)
        self._linger_task = None
