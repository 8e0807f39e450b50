"""The folder: the one loop that moves pending events into the rollups.

Ingest appends what it stores to one half of `pending_events`. Every server runs
a folder; the one that takes the fold lock (an advisory lock, so any one of
several servers may be the folder) folds a batch in three steps:

1. seals the half ingest appends to, so new events go to the other half, samples
   the sealed half for the planner, and numbers its learners it has not seen;
2. in one transaction: waits for the appends already under way into the sealed
   half, sums it per learner, hour and country, adds it to each learner's hours
   and months and to the month leaders, adds it to everyone's slots, hours, days
   and months (per country and for every country together, merging its learners
   into each unit's learner set), and empties the half with TRUNCATE. Everyone's
   units are read and merged on a second connection, in a snapshot of its own,
   while the first adds the half to the learners' tables;
3. lets go of the lock.

The transaction commits all of it together, so every snapshot counts an event
exactly once: in the log or in the rollups. A folder killed in the middle
leaves nothing behind: the transaction rolls back and a later fold takes the
same half again. A batch is what arrived while the previous one was folded,
so batches grow, and cost less per event, while ingest runs ahead. Memory in
this process holds a few hundred learner lists, the months a batch touches, and
its rollup units' sums and serialized sets, however many events the batch has.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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

_DRAIN_POLL_SECONDS = 0.01
"""How often `Folder.drain` looks again while another folder holds the lock."""

_ROWS_PER_CHUNK = 5000
"""Rollup units written back per statement."""

_LISTS_PER_READ = 200
"""Rollup units read at a time: each comes with a list of its learners in the batch, a
month's as long as the batch has rows in that month."""


@dataclass(frozen=True)
class Fold:
    """What one fold moved: how many events, and how long the oldest of them had waited."""

    events: int
    lag_seconds: float


class Folder:
    """Moves pending events into the rollups, batch by batch, while this server holds the lock.

    Args:
        pool: the server's pool; the folder keeps one of its connections and
            borrows a second while it folds, so it needs at least two.
        idle_seconds: how long to wait before looking again when the log was
            found (nearly) empty or another server holds the lock.

    Raises:
        ValueError: the pool holds fewer than two connections.
    """

    def __init__(self, pool: asyncpg.Pool, *, idle_seconds: float) -> None:
        if pool.get_max_size() < 2:
            raise ValueError("folding needs a pool of at least two connections")
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
            await conn.execute(query("fold_analyze"), sealed)
            await conn.execute(query("fold_number_learners"), sealed)
            async with self._pool.acquire() as reader:
                # Everyone's rollups are read on a second connection while this one adds
                # the half to each learner's: two cores instead of one.
                rollups = asyncio.create_task(_rollup_chunks(reader, sealed))
                try:
                    async with conn.transaction():
                        await conn.execute(query("fold_hold"), sealed)
                        taken = await conn.fetchrow(query("fold_take"), sealed)
                        self.pending = taken["events"]
                        if taken["events"]:
                            await conn.execute(query("fold_learner_hours"))
                            await conn.execute(query("fold_learner_months"), LEADERS_LENGTH)
                            for chunk in await rollups:
                                columns = [list(column) for column in zip(*chunk, strict=True)]
                                await conn.execute(query("fold_store_rollups"), *columns)
                            await _clear(conn, sealed)
                finally:
                    rollups.cancel()
                    await asyncio.gather(rollups, return_exceptions=True)
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
                # Not the folder's idle time, which may be long: the other fold ends soon.
                await asyncio.sleep(_DRAIN_POLL_SECONDS)
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


@dataclass
class _Delta:
    """What a batch adds to one rollup unit: its sums and the set of its learners there."""

    events: int = 0
    word_count: int = 0
    study_seconds: int = 0
    learners: learner_sets.LearnerSet = field(default_factory=learner_sets.LearnerSet)

    def add(self, other: _Delta) -> None:
        """Add the sums and learners of a finer unit inside this one."""
        self.events += other.events
        self.word_count += other.word_count
        self.study_seconds += other.study_seconds
        self.learners |= other.learners


_Key = tuple[str, datetime, str]
"""A rollup unit's key: unit, start and country."""


async def _rollup_chunks(conn: asyncpg.Connection, sealed: int) -> list[list[tuple[Any, ...]]]:
    """Everyone's rollup units the sealed half touches, merged with what is stored.

    Read in a read-only snapshot of its own on `conn`, while the fold's
    transaction adds the half to the per-learner tables: the half does not change
    once sealed, its learners were numbered before, and only the folder writes the
    rollups, so the snapshot sees what the fold's transaction would. PostgreSQL
    sums the half per slot and per hour and country, lists each one's learners
    and brings the set stored for it; here the coarser units are derived from
    the hours per country (every country's hour, then days, then months), their
    stored sets are looked up, and every set is merged and serialized. Each unit
    is a row of fold_store_rollups.sql's arguments, `_ROWS_PER_CHUNK` to a chunk.
    The lists are the bulky part, so they are read `_LISTS_PER_READ` at a time:
    memory holds a few hundred lists, the sets of the coarser units the half
    touches, and its units' sums and serialized sets.
    """
    chunks: list[list[tuple[Any, ...]]] = []

    def emit(key: _Key, delta: _Delta, stored: bytes | None) -> None:
        if stored is not None:
            delta.learners |= learner_sets.load(stored)
        if not chunks or len(chunks[-1]) == _ROWS_PER_CHUNK:
            chunks.append([])
        chunks[-1].append(
            (
                *key,
                delta.events,
                delta.word_count,
                delta.study_seconds,
                len(delta.learners),
                learner_sets.dump(delta.learners),
            )
        )

    hours: dict[_Key, _Delta] = {}
    days: dict[_Key, _Delta] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(query("fold_read_settings"))
        deltas = conn.cursor(query("fold_rollup_deltas"), sealed, prefetch=_LISTS_PER_READ)
        async for row in deltas:
            key = (row["unit"], row["start"], row["country"])
            delta = _Delta(
                row["events"],
                row["word_count"],
                row["study_seconds"],
                learner_sets.LearnerSet(row["learners"]),
            )
            if row["unit"] == "hour":
                # Into the coarser units first: emit merges the stored set into this one.
                hours.setdefault(("hour", row["start"], "*"), _Delta()).add(delta)
                day = units.floor("day", row["start"])
                days.setdefault(("day", day, row["country"]), _Delta()).add(delta)
            emit(key, delta, row["stored"])
        whole_days: dict[_Key, _Delta] = {}
        months: dict[_Key, _Delta] = {}
        for (_, day, country), delta in days.items():
            whole_days.setdefault(("day", day, "*"), _Delta()).add(delta)
            month = units.floor("month", day)
            months.setdefault(("month", month, country), _Delta()).add(delta)
            months.setdefault(("month", month, "*"), _Delta()).add(delta)
        derived = hours | days | whole_days | months
        keys = [[key[column] for key in derived] for column in range(3)]
        stored = {
            (row["unit"], row["start"], row["country"]): row["learners"]
            for row in await conn.fetch(query("stored_learner_sets"), *keys)
        }
    for key, delta in derived.items():
        emit(key, delta, stored.get(key))
    return chunks
