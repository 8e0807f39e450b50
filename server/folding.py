"""The folder: the one loop that moves pending events into the rollups.

Ingest appends what it stores to one half of `pending_events`. Every server runs
a folder; the one that takes the fold lock (an advisory lock, so any one of
several servers may be the folder) folds a batch in three steps:

1. seals the half ingest appends to, so new events go to the other half;
2. in one transaction: waits for the appends already under way into the sealed
   half, sums it per learner, slot and country, numbers the learners it has not
   seen, adds it to each learner's hours and months and to the month leaders,
   adds it to everyone's slots, hours, days and months (per country and for
   every country together, merging its learners into each unit's learner set),
   and empties the half with TRUNCATE;
3. lets go of the lock.

The transaction commits all of it together, so every snapshot counts an event
exactly once: in the log or in the rollups. A folder killed in the middle
leaves nothing behind: the transaction rolls back and a later fold takes the
same half again. A batch is what arrived while the previous one was folded,
so batches grow, and cost less per event, while ingest runs ahead; memory in
this process is bounded by the rollup units a batch touches.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from daily_aggregator.server import learner_sets, units
from daily_aggregator.server.database import UNAVAILABLE_ERRORS
from daily_aggregator.server.queries import query

__all__ = ["LEADERS_LENGTH", "Fold", "Folder"]

log = logging.getLogger(__name__)

LEADERS_LENGTH = 500
"""Learners listed per month and metric in month_leaders."""

_CLEAR_ATTEMPTS = 5
_CLEAR_PATIENCE = timedelta(milliseconds=200)
"""TRUNCATE waits for answers reading the log, and new answers wait behind it: it tries
`_CLEAR_ATTEMPTS` times, waiting at most `_CLEAR_PATIENCE` each, before deleting rows."""

_ROWS_PER_CHUNK = 5000
"""Rows read, and rollups written, at a time: the folder lets the event loop serve calls
between chunks, and holds one chunk of stored learner sets at a time."""


@dataclass(frozen=True)
class Fold:
    """What one fold moved: how many events, and how long the oldest of them had waited."""

    events: int
    lag_seconds: float


@dataclass
class _Delta:
    """What a batch adds to one rollup: sums, and its learners (then merged with the stored)."""

    events: int = 0
    word_count: int = 0
    study_seconds: int = 0
    learners: learner_sets.LearnerSet = field(default_factory=learner_sets.LearnerSet)


class Folder:
    """Moves pending events into the rollups, batch by batch, while this server holds the lock.

    Args:
        pool: the server's pool; the folder keeps one of its connections.
        idle_seconds: how long to wait before looking again when the log was
            found (nearly) empty or another server holds the lock.
    """

    def __init__(self, pool: asyncpg.Pool, *, idle_seconds: float) -> None:
        self._pool = pool
        self._idle_seconds = idle_seconds
        self.folded = 0
        """Events this folder has moved since it started."""
        self.largest_lag_seconds = 0.0
        """The longest an event folded here had waited in the log."""
        self.pending = 0
        """Events this folder found pending at its latest look: the batch it took, or 0 when
        the log was empty or another server holds the fold lock (so the largest value over
        all servers is the backlog)."""
        self.latest_lag_seconds = 0.0
        """How long the oldest event of the latest fold had waited in the log; 0 when the
        latest look found nothing to fold or another server folds."""

    async def run(self) -> None:
        """Fold until cancelled, on a connection of its own; outages are waited out."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(query("fold_batch_table"))
                    while True:
                        fold = await self.fold_once(conn)
                        if fold is None or fold.events == 0:
                            await asyncio.sleep(self._idle_seconds)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("folding paused, database unavailable: %r", exc)
            except Exception:
                log.exception("folding failed; retrying")
            await asyncio.sleep(max(self._idle_seconds, 1.0))

    async def fold_once(self, conn: asyncpg.Connection) -> Fold | None:
        """Fold what is pending; None when another server is the folder.

        `conn` must have run `fold_batch_table` once.
        """
        if not await conn.fetchval(query("fold_lock")):
            self.pending, self.latest_lag_seconds = 0, 0.0
            return None
        try:
            if not await conn.fetchval(query("fold_anything")):
                self.pending, self.latest_lag_seconds = 0, 0.0
                return Fold(0, 0.0)
            sealed = await conn.fetchval(query("fold_seal"))
            async with conn.transaction():
                await conn.execute(query("fold_hold"), sealed)
                taken = await conn.fetchrow(query("fold_take"), sealed)
                self.pending = taken["events"]
                if taken["events"]:
                    await conn.execute(query("fold_number_learners"))
                    await conn.execute(query("fold_learner_hours"))
                    await conn.execute(query("fold_learner_months"), LEADERS_LENGTH)
                    await _fold_rollups(conn)
                    await _clear(conn, sealed)
        finally:
            await conn.execute(query("fold_unlock"))
        if not taken["events"]:
            self.latest_lag_seconds = 0.0
            return Fold(0, 0.0)
        lag = max(0.0, (datetime.now(UTC) - taken["oldest"]).total_seconds())
        self.folded += taken["events"]
        self.latest_lag_seconds = lag
        self.largest_lag_seconds = max(self.largest_lag_seconds, lag)
        return Fold(taken["events"], lag)

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Fold until the log is empty, waiting for another folder meanwhile; return the count.

        For tests and benchmarks that need a fully folded state; a running
        service never needs it.
        """
        await conn.execute(query("fold_batch_table"))
        moved = 0
        while await conn.fetchval(query("fold_anything")):
            fold = await self.fold_once(conn)
            if fold is None:
                await asyncio.sleep(self._idle_seconds)
            else:
                moved += fold.events
        return moved


async def _clear(conn: asyncpg.Connection, sealed: int) -> None:
    """Empty the folded half; row by row if answers keep it busy too long for TRUNCATE."""
    for _ in range(_CLEAR_ATTEMPTS):
        try:
            async with conn.transaction():
                await conn.execute(query("fold_clear"), sealed, _CLEAR_PATIENCE)
            return
        except asyncpg.LockNotAvailableError:
            continue
    await conn.execute(query("fold_delete"), sealed)


async def _fold_rollups(conn: asyncpg.Connection) -> None:
    """Add fold_batch to everyone's rollups, merging the learner sets in this process.

    PostgreSQL sums the batch per slot (every country together) and per hour and
    country, listing each one's learners; here each hour also counts towards its
    day, its month and the same units of every country together. Units come a UTC
    day at a time, and each day is written back (merged with what is stored) as
    soon as the next begins, months at the end: memory holds one day of units,
    however long the batch.
    """
    deltas: dict[tuple[str, datetime, str], _Delta] = {}
    day: datetime | None = None
    async for row in conn.cursor(query("fold_rollup_deltas"), prefetch=_ROWS_PER_CHUNK):
        start = row["start"]
        if day is not None and start >= units.following("day", day):
            await _store_rollups(conn, [k for k in deltas if k[0] != "month"], deltas)
        day = units.floor("day", start)
        active = learner_sets.LearnerSet(row["learners"])
        if row["unit"] == "slot":
            keys = [("slot", start, "*")]
        else:
            month = units.floor("month", start)
            keys = [
                (unit, at, country)
                for unit, at in (("hour", start), ("day", day), ("month", month))
                for country in (row["country"], "*")
            ]
        for key in keys:
            delta = deltas.get(key)
            if delta is None:
                delta = deltas[key] = _Delta()
            delta.events += row["events"]
            delta.word_count += row["word_count"]
            delta.study_seconds += row["study_seconds"]
            delta.learners |= active
    await _store_rollups(conn, list(deltas), deltas)


async def _store_rollups(
    conn: asyncpg.Connection,
    keys: list[tuple[str, datetime, str]],
    deltas: dict[tuple[str, datetime, str], _Delta],
) -> None:
    """Write the rollups of `keys` back, in key order, and forget their deltas."""
    keys.sort()
    for first in range(0, len(keys), _ROWS_PER_CHUNK):
        await _store_chunk(conn, keys[first : first + _ROWS_PER_CHUNK], deltas)


async def _store_chunk(
    conn: asyncpg.Connection,
    keys: list[tuple[str, datetime, str]],
    deltas: dict[tuple[str, datetime, str], _Delta],
) -> None:
    key_columns = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    stored = {
        (row["unit"], row["start"], row["country"]): row["learners"]
        for row in await conn.fetch(query("fold_stored_sets"), *key_columns)
    }
    chunk = [deltas.pop(key) for key in keys]
    for key, delta in zip(keys, chunk, strict=True):
        if key in stored:
            delta.learners |= learner_sets.load(stored[key])
    await asyncio.sleep(0)  # a chunk's merging is the folder's longest stretch of Python
    await conn.execute(
        query("fold_store_rollups"),
        *key_columns,
        [d.events for d in chunk],
        [d.word_count for d in chunk],
        [d.study_seconds for d in chunk],
        [len(d.learners) for d in chunk],
        [learner_sets.dump(d.learners) for d in chunk],
    )
