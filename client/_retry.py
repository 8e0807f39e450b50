"""Retry policy and the loop that applies it to one attempt function."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import grpc

from daily_aggregator.client._errors import DailyAggregatorError, from_rpc_error

__all__ = ["QUERY_RETRYABLE", "STREAM_RETRYABLE", "RetryPolicy", "call_with_retry", "retry_wait"]

T = TypeVar("T")

# A server that is shutting down answers CANCELLED to calls that reach it after it stopped
# accepting them (a cancellation of our own surfaces as asyncio.CancelledError, never as a
# status). Queries only read, so these are safe to retry; a stream is resent whole, and
# idempotency keys make that safe after a deadline too.
# RESOURCE_EXHAUSTED is retried too, but only when the service said when (see `retry_wait`):
# without RetryInfo it means a message over the size limit, which fails however often it is
# sent.
QUERY_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
STREAM_RETRYABLE = QUERY_RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a call that failed in a retryable way.

    The n-th retry waits ``min(max_backoff, initial_backoff * multiplier ** (n - 1))``
    seconds, less a random fraction of up to `jitter` of it: ``jitter=0.2`` waits 80-100 %
    of the backoff (proportional jitter), ``jitter=1.0`` anywhere from 0 to 100 % (full
    jitter), ``jitter=0`` exactly the backoff.

    Attributes:
        max_attempts: Attempts in all, the first included; 1 disables retries.
        initial_backoff: Seconds before the first retry.
        max_backoff: Upper bound of any wait, in seconds.
        multiplier: Growth of the backoff per retry.
        jitter: Fraction of the backoff that is randomized, 0 to 1.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1 - self.jitter * random.random())


def retry_wait(
    policy: RetryPolicy,
    retryable: Collection[grpc.StatusCode],
    error: DailyAggregatorError,
    tries: int,
) -> float | None:
    """Seconds to wait before trying again after `tries` attempts failed, the last with
    `error`; None when it is not to be retried.

    A code in `retryable` waits the policy's backoff. RESOURCE_EXHAUSTED with a retry delay
    (the service was at a limit and said when to come back) waits that delay plus the
    backoff, so clients turned away together do not all come back at the same instant.
    """
    if tries >= policy.max_attempts:
        return None
    if error.code in retryable:
        return policy.backoff(tries)
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None:
        return error.retry_delay + policy.backoff(tries)
    return None


async def call_with_retry(
    policy: RetryPolicy,
    retryable: Collection[grpc.StatusCode],
    attempt: Callable[[], Awaitable[T]],
) -> T:
    """Run `attempt` until it succeeds, retrying failures per `retry_wait`.

    Raises the client error for the last failure.
    """
    tries = 1
    while True:
        try:
            return await attempt()
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            wait = retry_wait(policy, retryable, error, tries)
            if wait is None:
                raise error from exc
        await asyncio.sleep(wait)
        tries += 1
