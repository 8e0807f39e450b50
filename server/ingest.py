"""RecordEvents: validate each stream message, store it in one statement, tally the outcome.

The statement also refuses the events of erased learners that occurred before their
erasure (see `erasure`), so a replayed stream cannot bring an erased learner back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter

import asyncpg

from daily_aggregator.server.database import RETRYABLE_ERRORS
from daily_aggregator.server.queries import query
from daily_aggregator.server.validation import Rejection, ValidEvents, validate
from daily_aggregator.v1 import aggregator_pb2

MAX_ERRORS = 100
"""Most rejections described in one RecordEvents response."""

_ATTEMPTS = 3
_INDEX = attrgetter("index")


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to the valid events of one batch."""

    inserted: int
    duplicates: int
    conflicts: int
    checked: bool = False
    """Whether a key of the batch was stored before, so it had to be inserted key by key."""
    refused: list[Rejection] = field(default_factory=list)
    """Events of erased learners that occurred before the erasure, refused unstored."""


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

    def add(self, outcome: StoreOutcome, invalid: Sequence[Rejection] = ()) -> None:
        """Count one stored batch and the invalid events of the same message, in stream order."""
        self.inserted += outcome.inserted
        self.duplicates += outcome.duplicates
        self.conflicts += outcome.conflicts
        if outcome.refused:
            self.reject(sorted([*invalid, *outcome.refused], key=_INDEX))
        else:
            self.reject(invalid)


def erased_reason(erased_at: datetime) -> str:
    """Why an event of a learner erased at `erased_at` that occurred before then is refused."""
    when = erased_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"learner was erased at {when}; events before then are refused"


async def store(pool: asyncpg.Pool, events: ValidEvents, *, optimistic: bool) -> StoreOutcome:
    """Insert a batch in one statement; classify what was not inserted in a second one.

    `optimistic` first tries the statement for keys never stored, which fails as a
    whole when one was; the batch is then inserted with the statement that skips
    stored keys. Both statements commit on their own, and both refuse the events
    of erased learners that occurred before the erasure. A deadlock between
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
                refused = [
                    Rejection(
                        events.indexes[row["position"] - 1],
                        events.idempotency_keys[row["position"] - 1],
                        "user_id",
                        erased_reason(row["erased_at"]),
                    )
                    for row in rows
                    if row["erased_at"] is not None
                ]
                skipped = events.subset(
                    [row["position"] - 1 for row in rows if row["erased_at"] is None]
                )
                compared = []
                if skipped:
                    compared = await conn.fetch(
                        query("compare_events"), *skipped.columns(), skipped.occurred_given
                    )
        except RETRYABLE_ERRORS:
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.01 * attempt)
            continue
        duplicates = sum(1 for row in compared if row["same_payload"])
        return StoreOutcome(
            len(events) - len(rows),
            duplicates,
            len(skipped) - duplicates,
            checked,
            refused,
        )
    raise AssertionError("unreachable")


async def record_stream(
    pool: asyncpg.Pool, requests: AsyncIterable[aggregator_pb2.RecordEventsRequest]
) -> Tally:
    """Store every batch of a stream and return the counts once all have committed.

    While one batch is being stored the next is read and validated, so at most
    two batches are held in memory whatever the stream's length. A batch being
    stored is shielded: when the call fails or is cancelled it still commits,
    so nothing received before the failure is lost. When that batch fails to
    commit, its failure is what the stream fails with. A message's invalid events
    are counted with its stored batch, so that errors stay in stream order with
    the events the batch refused.
    """
    tally = Tally()
    storing: asyncio.Task[StoreOutcome] | None = None
    invalid: list[Rejection] = []
    # A stream that resends stored keys once is a resend: check its keys from then on.
    optimistic = True
    try:
        async for request in requests:
            now_us = time.time_ns() // 1000
            valid, rejections = validate(request.events, tally.received, now_us)
            tally.received += len(request.events)
            # The decoded message is twice its size on the wire and of no use once validated;
            # drop it now rather than hold it while the previous batch commits.
            del request
            if storing is not None:
                outcome = await asyncio.shield(storing)
                tally.add(outcome, invalid)
                optimistic = optimistic and not outcome.checked
                storing = None
            if valid:
                storing = asyncio.create_task(store(pool, valid, optimistic=optimistic))
                invalid = rejections
            else:
                tally.reject(rejections)
        if storing is not None:
            tally.add(await asyncio.shield(storing), invalid)
            storing = None
    except BaseException as exc:
        if storing is not None:
            try:
                await asyncio.shield(storing)
            except Exception as failure:
                # A stream that fails (a malformed message, say) after a batch that could not
                # commit fails as that batch did, so its status never hides lost events.
                if isinstance(exc, Exception):
                    raise failure from exc
        raise
    return tally
