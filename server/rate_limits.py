"""Per-token rates: token buckets by token name, and the interceptor that applies them.

Each token with ``events_per_second`` or ``queries_per_second`` gets a bucket that holds
one second's worth and starts full. Calls that store events are slowed down, never
failed: before a stream message is handed on, the stream waits until the bucket holds as
many units as the message has events (or is full, for a message larger than a second's
worth, which then leaves the bucket in debt). Every other call takes one unit at once or
is refused with RESOURCE_EXHAUSTED and google.rpc.RetryInfo saying when a unit will be
there. The state lives in this process only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal

import grpc

from daily_aggregator.server.access import Scope, Token, TokenRegistry, required_scope
from daily_aggregator.server.errors import refusing_with_status, resource_exhausted_status
from daily_aggregator.server.interception import Behavior, ServiceInterceptor, with_behavior

__all__ = ["OnLimited", "RateLimitInterceptor", "RateLimiter", "TokenBucket"]

Meter = Literal["events", "queries"]

OnLimited = Callable[[str, str], None]
"""Told (token name, "events" or "queries") each time a call is refused or held back."""


class TokenBucket:
    """`rate` units per second, holding at most one second's worth; it starts full."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = rate
        self._level = rate
        self._stamp = time.monotonic()
        # asyncio.Lock wakes its waiters in order, so waiting streams are served in turn and
        # a large message is not starved by a run of small ones.
        self._lock = asyncio.Lock()

    def _refill(self) -> float:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    def try_take(self, amount: float = 1.0) -> float:
        """Take `amount` and return 0 when it is there; else take nothing and return how
        many seconds until it will be."""
        level = self._refill()
        if level >= amount:
            self._level -= amount
            return 0.0
        return (amount - level) / self.rate

    async def take(self, amount: float) -> bool:
        """Wait until the bucket holds `amount` (or is full, when `amount` is more than it can
        hold), then take `amount`, going into debt for the part it lacks.

        Waiters are served first come, first served. Returns whether the call had to wait.
        """
        if amount <= 0:
            return False
        need = min(amount, self.capacity)
        held_back = self._lock.locked()
        async with self._lock:
            while (level := self._refill()) < need:
                held_back = True
                await asyncio.sleep((need - level) / self.rate)
            self._level -= amount
        return held_back


class RateLimiter:
    """The buckets of every token that has a limit, by token name.

    Args:
        tokens: The accepted tokens; those without limits get no bucket.
        on_limited: Called with (token name, "events" or "queries") whenever a call is
            refused or held back, for metrics.
    """

    def __init__(self, tokens: Iterable[Token], on_limited: OnLimited | None = None) -> None:
        self._events: dict[str, TokenBucket] = {}
        self._queries: dict[str, TokenBucket] = {}
        for token in tokens:
            if token.events_per_second is not None:
                self._events[token.name] = TokenBucket(token.events_per_second)
            if token.queries_per_second is not None:
                self._queries[token.name] = TokenBucket(token.queries_per_second)
        self._on_limited = on_limited

    def limits_events(self, name: str) -> bool:
        """Whether the token called `name` has an events rate."""
        return name in self._events

    def admit_query(self, name: str) -> float:
        """0 when the token called `name` may make a call now (and it is counted); else the
        seconds until it may."""
        bucket = self._queries.get(name)
        if bucket is None:
            return 0.0
        delay = bucket.try_take()
        if delay > 0:
            self._limited(name, "queries")
        return delay

    async def admit_events(self, name: str, count: int) -> None:
        """Wait until the token called `name` may store `count` more events, and count them."""
        bucket = self._events.get(name)
        if bucket is not None and await bucket.take(count):
            self._limited(name, "events")

    def queries_per_second(self, name: str) -> float:
        """The queries rate of the token called `name`; 0 when it has none."""
        bucket = self._queries.get(name)
        return bucket.rate if bucket is not None else 0.0

    def _limited(self, name: str, meter: Meter) -> None:
        if self._on_limited is not None:
            self._on_limited(name, meter)


class RateLimitInterceptor(ServiceInterceptor):
    """Applies each token's rates to the calls under `prefix` that present it.

    Methods that need the ingest scope are metered in events (the length of each message's
    `events`) and slowed down; every other method is metered in calls and refused when
    over. Calls without an accepted token pass by untouched: BearerTokenInterceptor, which
    must run before this one, turns them away.
    """

    def __init__(self, registry: TokenRegistry, limiter: RateLimiter, prefix: str) -> None:
        super().__init__(prefix)
        self._registry = registry
        self._limiter = limiter

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        token = self._registry.caller(details)
        if token is None:
            return handler
        name = token.name
        if required_scope(method) is Scope.INGEST:
            if not self._limiter.limits_events(name):
                return handler

            async def admit(message: Any) -> None:
                await self._limiter.admit_events(name, len(message.events))

            streaming = bool(handler.request_streaming)
            return with_behavior(handler, lambda behavior: _metered(behavior, admit, streaming))
        delay = self._limiter.admit_query(name)
        if delay == 0:
            return handler
        rate = self._limiter.queries_per_second(name)
        message = f"token {name!r} is over its {rate:g} queries per second; retry in {delay:.3f} s"
        return refusing_with_status(handler, resource_exhausted_status(message, delay))


def _metered(
    behavior: Behavior, admit: Callable[[Any], Awaitable[None]], streaming: bool
) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if streaming:
            return await behavior(_Throttled(request, admit), context)
        await admit(request)
        return await behavior(request, context)

    return call


class _Throttled:
    """A request stream whose next message is handed on only once `admit` lets it through."""

    def __init__(
        self, requests: AsyncIterable[Any], admit: Callable[[Any], Awaitable[None]]
    ) -> None:
        self._requests: AsyncIterator[Any] = aiter(requests)
        self._admit = admit

    def __aiter__(self) -> _Throttled:
        return self

    async def __anext__(self) -> Any:
        message = await anext(self._requests)
        await self._admit(message)
        return message
