"""Admission control: how many calls run at once, and how much ingest data the service holds.

Three limits turn a call away with RESOURCE_EXHAUSTED and google.rpc.RetryInfo before its
handler runs, so nothing of a refused stream is read, let alone stored:

    streams  client-streaming calls (RecordEvents) in progress, held-back ones included
    queries  unary calls (Summary, Uniques, Breakdown) in progress
    memory   a stream that found no room in the memory budget within its patience

The memory budget bounds what ingest holds across all streams together. Ingest holds at most
two messages of a stream at a time (one batch being stored while the next is read and
validated), each at most `--max-message-bytes` on the wire, so a stream takes room for two
such messages before its handler reads anything and gives it back when the handler is done,
after its last batch has committed. A stream that finds no room waits its turn, first come,
first served, reading nothing meanwhile, so HTTP/2 flow control holds its client back; one
that has waited longer than its patience is refused, still having read nothing, so the
client can simply send it again later. A stream that has room gets its response headers at
once, so a client can tell a stream being read from one held back.

Room is taken per stream rather than per message on purpose: a stream that holds room never
waits for more, so streams cannot wait for each other in a circle, and a stream that has
started is never held back or failed halfway through.

Messages that arrive together are handed to their handlers one at a time, each behind the
event loop's other work (see `_Messages`), so that validating a burst of large batches does
not keep health checks and queries waiting for all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from daily_aggregator.server.config import Settings
from daily_aggregator.server.errors import resource_exhausted_status
from daily_aggregator.server.interception import Behavior, ServiceInterceptor, with_behavior

__all__ = [
    "MEMORY",
    "QUERIES",
    "STREAMS",
    "Admission",
    "AdmissionInterceptor",
    "ConcurrencyLimit",
    "MemoryBudget",
]

log = logging.getLogger(__name__)

STREAMS = "streams"
QUERIES = "queries"
MEMORY = "memory"

STREAM_RETRY_DELAY = 0.5
"""Seconds a refused stream is told to wait: streams last seconds, so a slot frees soon."""
QUERY_RETRY_DELAY = 0.1
"""Seconds a refused query is told to wait: queries take milliseconds to a second or so."""
MEMORY_RETRY_DELAY = 1.0
"""Seconds a stream refused for memory is told to wait, on top of the patience it spent."""


class ConcurrencyLimit:
    """At most `limit` calls at once; `try_enter` says whether one more may start."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the {name} limit must be at least 1")
        self.name = name
        self.limit = limit
        self.in_use = 0

    def try_enter(self) -> bool:
        """Count one more call, unless `limit` are already in progress."""
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def leave(self) -> None:
        """A call counted by `try_enter` has finished."""
        self.in_use -= 1


class MemoryBudget:
    """`capacity` bytes handed out first come, first served.

    `take` waits, up to a patience, until the bytes asked for are free and no earlier caller
    is still waiting; `give_back` returns them and hands them on to the next in line.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the memory budget must be at least 1 byte")
        self.capacity = capacity
        self.in_use = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for room right now."""
        return len(self._queue)

    async def take(self, size: int, patience: float) -> bool:
        """Take `size` bytes; False when they did not come free within `patience` seconds.

        Raises:
            ValueError: `size` is more than the whole budget, so it could never be granted.
        """
        if size > self.capacity:
            raise ValueError(f"{size} bytes is more than the whole budget of {self.capacity}")
        if not self._queue and self.in_use + size <= self.capacity:
            self.in_use += size
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._queue.append(entry)
        try:
            await asyncio.wait((turn,), timeout=patience)
        except BaseException:  # cancelled: the client went away
            self._leave(entry)
            raise
        if turn.done():
            return True
        self._leave(entry)
        return False

    def give_back(self, size: int) -> None:
        """Return `size` bytes taken with `take`."""
        self.in_use -= size
        self._hand_on()

    def _leave(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        """Stop waiting; room granted in the same instant is given back rather than lost."""
        size, turn = entry
        if turn.done():
            self.give_back(size)
            return
        self._queue.remove(entry)
        turn.cancel()
        self._hand_on()  # whoever stood behind may fit now

    def _hand_on(self) -> None:
        """Grant waiting callers in order while the first of them fits."""
        while self._queue and self.in_use + self._queue[0][0] <= self.capacity:
            size, turn = self._queue.popleft()
            self.in_use += size
            turn.set_result(None)


RefusalHook = Callable[[str], None]
"""Called with a limit's name ("streams", "queries" or "memory") on each refusal."""


class Admission:
    """The service's concurrency limits and memory budget, applied by `interceptor()`.

    Args:
        max_streams: Client-streaming calls in progress at once, held-back ones included.
        max_queries: Unary calls in progress at once.
        max_bytes_in_flight: The memory budget, in bytes of stream messages on the wire.
        max_message_bytes: The largest stream message the server accepts.
        memory_patience: Seconds a stream may wait for room before it is refused.
        on_refusal: Called with the limit's name on each refusal (for metrics); exceptions
            it raises are logged and otherwise ignored. Also settable later, as the
            attribute of the same name.
    """

    def __init__(
        self,
        *,
        max_streams: int,
        max_queries: int,
        max_bytes_in_flight: int,
        max_message_bytes: int,
        memory_patience: float,
        on_refusal: RefusalHook | None = None,
    ) -> None:
        self.streams = ConcurrencyLimit(STREAMS, max_streams)
        self.queries = ConcurrencyLimit(QUERIES, max_queries)
        self.memory = MemoryBudget(max_bytes_in_flight)
        self.stream_room = 2 * max_message_bytes
        """Bytes of the budget one stream takes: two messages of the largest size."""
        if self.stream_room > max_bytes_in_flight:
            raise ValueError(
                f"a memory budget of {max_bytes_in_flight} bytes cannot hold two messages of"
                f" {max_message_bytes} bytes, what one stream needs"
            )
        self.memory_patience = memory_patience
        self.on_refusal = on_refusal
        self._turn = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, on_refusal: RefusalHook | None = None) -> Admission:
        """The limits `settings` ask for."""
        return cls(
            max_streams=settings.max_concurrent_streams,
            max_queries=settings.max_concurrent_queries,
            max_bytes_in_flight=settings.max_bytes_in_flight,
            max_message_bytes=settings.max_message_bytes,
            memory_patience=settings.memory_patience,
            on_refusal=on_refusal,
        )

    def interceptor(self, prefix: str) -> AdmissionInterceptor:
        """The interceptor that applies these limits to the methods under `prefix`."""
        return AdmissionInterceptor(self, prefix)

    def streaming(self, method: str, behavior: Behavior) -> Behavior:
        """`behavior` of a client-streaming method, run within the streams limit and the budget."""

        async def call(grpc_requests: Any, context: grpc.aio.ServicerContext) -> Any:
            if not self.streams.try_enter():
                await self._refuse(context, STREAMS, self._streams_refusal(method))
            try:
                if not await self.memory.take(self.stream_room, self.memory_patience):
                    await self._refuse(context, MEMORY, self._memory_refusal(method))
                try:
                    # Response headers now tell the client its stream is admitted and read.
                    await context.send_initial_metadata(())
                    return await behavior(_Messages(grpc_requests, self._turn), context)
                finally:
                    self.memory.give_back(self.stream_room)
            finally:
                self.streams.leave()

        return call

    def query(self, behavior: Behavior) -> Behavior:
        """`behavior` of a unary method, run within the queries limit."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not self.queries.try_enter():
                await self._refuse(context, QUERIES, self._queries_refusal())
            try:
                return await behavior(request, context)
            finally:
                self.queries.leave()

        return call

    def _streams_refusal(self, method: str) -> grpc.Status:
        return resource_exhausted_status(
            f"too many concurrent {method} streams (limit {self.streams.limit},"
            f" --max-concurrent-streams); retry after {STREAM_RETRY_DELAY:g} s",
            STREAM_RETRY_DELAY,
        )

    def _queries_refusal(self) -> grpc.Status:
        return resource_exhausted_status(
            f"too many concurrent queries (limit {self.queries.limit},"
            f" --max-concurrent-queries); retry after {QUERY_RETRY_DELAY:g} s",
            QUERY_RETRY_DELAY,
        )

    def _memory_refusal(self, method: str) -> grpc.Status:
        return resource_exhausted_status(
            f"no room for another {method} stream in the memory budget within"
            f" {self.memory_patience:g} s (limit {self.memory.capacity} bytes,"
            f" --max-bytes-in-flight); retry after {MEMORY_RETRY_DELAY:g} s",
            MEMORY_RETRY_DELAY,
        )

    async def _refuse(
        self, context: grpc.aio.ServicerContext, limit: str, status: grpc.Status
    ) -> None:
        if self.on_refusal is not None:
            try:
                self.on_refusal(limit)
            except Exception:
                log.exception("on_refusal callback failed")
        await context.abort_with_status(status)


class _Messages:
    """The messages of a client stream, each handed out in its turn.

    They come from the request iterator the interceptors before this one see (they count
    messages or slow a stream down), which may hold the last message until the next one
    arrives: the memory budget leaves room for that one.

    Each message is handed out in its turn: a handler validates a message in one go (a
    4 MiB message takes a few hundred milliseconds of the event loop), so when many
    messages arrive at once they take turns, one at a time, each queueing behind whatever
    else the loop has to do by then, rather than running back to back ahead of it.
    """

    def __init__(self, requests: Any, turn: asyncio.Lock) -> None:
        self._requests = requests
        self._turn = turn

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Any:
        message = await anext(self._requests)
        await self._turn.acquire()
        # The handler works on the message until it next awaits; the turn passes on only
        # after that, and to a stream that then queues behind the loop's other work.
        asyncio.get_running_loop().call_soon(self._turn.release)
        return message


class AdmissionInterceptor(ServiceInterceptor):
    """Runs the calls to methods under `prefix` within an `Admission`'s limits.

    Client-streaming methods count as streams and take room in the memory budget; every
    other method counts as a query. Health checking and reflection are not limited, so
    probes see a busy service as SERVING.
    """

    def __init__(self, admission: Admission, prefix: str) -> None:
        super().__init__(prefix)
        self._admission = admission

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if handler.request_streaming:
            return with_behavior(
                handler, lambda behavior: self._admission.streaming(method, behavior)
            )
        return with_behavior(handler, self._admission.query)
