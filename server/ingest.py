"""RecordEvents: validate each stream message, store it in one statement, tally the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from daily_aggregator.server.database import RETRYABLE_ERRORS
from daily_aggregator.server.queries import query
from daily_aggregator.server.validation import Rejection, ValidEvents, validate
from daily_aggregator.v1 import aggregator_pb2

MAX_ERRORS = 100
"""Most rejections described in one RecordEvents response."""

_ATTEMPTS = 3


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to the valid events of one batch."""

    inserted: int
    duplicates: int
    conflicts: int
    checked: bool = False
    """Whether a key of the batch was stored before, so it had to be inserted key by key."""


@dataclass
class Tally:
    """Running counts of a whole RecordEvents stream."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    errors: list[Rejection] = field(default_factory=list)
    errors_truncated: bool = False

    def reject(self, rejections: Sequence[Rejection]) -> None:
        """Count rejections, keeping the first MAX_ERRORS descriptions."""
        self.rejected += len(rejections)
        room = MAX_ERRORS - len(self.errors)
        self.errors.extend(rejections[:room])
        self.errors_truncated = self.errors_truncated or len(rejections) > room

    def add(self, outcome: StoreOutcome) -> None:
        """Count one stored batch."""
        self.inserted += outcome.inserted
        self.duplicates += outcome.duplicates
        self.conflicts += outcome.conflicts


async def store(pool: asyncpg.Pool, events: ValidEvents, *, optimistic: bool) -> StoreOutcome:
    """Insert a batch in one statement; classify what was not inserted in a second one.

    `optimistic` first tries the statement for keys never stored, which fails as a
    whole when one was; the batch is then inserted with the statement that skips
    stored keys. Both statements commit on their own. A deadlock between
    overlapping concurrent batches rolls the statement back whole, so it is
    simply retried.
    """
    checked = not optimistic
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with pool.acquire() as conn:
                rows = None
                if not checked:
                    try:
                        rows = await conn.fetch(query("insert_events"), *events.columns())
                    except asyncpg.UniqueViolationError:
                        checked = True
                if rows is None:
                    rows = await conn.fetch(query("insert_events_checked"), *events.columns())
                if not rows:
                    return StoreOutcome(len(events), 0, 0, checked)
                skipped = events.subset([row["position"] - 1 for row in rows])
                compared = await conn.fetch(
                    query("compare_events"), *skipped.columns(), skipped.occurred_given
                )
        except RETRYABLE_ERRORS:
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.01 * attempt)
            continue
        duplicates = sum(1 for row in compared if row["same_payload"])
        return StoreOutcome(len(events) - len(rows), duplicates, len(rows) - duplicates, checked)
    raise AssertionError("unreachable")


async def record_stream(
    pool: asyncpg.Pool, requests: AsyncIterable[aggregator_pb2.RecordEventsRequest]
) -> Tally:
    """Store every batch of a stream and return the counts once all have committed.

    While one batch is being stored the next is read and validated, so at most
    two batches are held in memory whatever the stream's length. A batch being
    stored is shielded: when the call fails or is cancelled it still commits,
    so nothing received before the failure is lost.
    """
    tally = Tally()
    storing: asyncio.Task[StoreOutcome] | None = None
    # A stream that resends stored keys once is a resend: check its keys from then on.
    optimistic = True
    try:
        async for request in requests:
            now_us = time.time_ns() // 1000
            valid, rejections = validate(request.events, tally.received, now_us)
            tally.received += len(request.events)
            tally.reject(rejections)
            # The decoded message is twice its size on the wire and of no use once validated;
            # drop it now rather than hold it while the previous batch commits.
            del request
            if storing is not None:
                outcome = await asyncio.shield(storing)
                tally.add(outcome)
                optimistic = optimistic and not outcome.checked
                storing = None
            if valid:
                storing = asyncio.create_task(store(pool, valid, optimistic=optimistic))
        if storing is not None:
            tally.add(await asyncio.shield(storing))
            storing = None
    except BaseException:
        if storing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(storing)
        raise
    return tally
