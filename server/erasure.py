"""DeleteUser: erase one learner from every answer, exactly, and remember the erasure.

An erasure runs in three transactions on one connection:

1. it records the erasure (`erasures`, erased_at = now) and commits, so every
   ingest statement that starts from then on refuses the learner's events that
   occurred before it (the refusal is part of the insert statement itself);
2. it waits for the ingest statements already under way, which may not have
   seen the erasure (a SHARE lock on the log, released at once: each of them
   holds its lock on the log from before it took its snapshot);
3. holding the folder's lock (so that nothing is folded meanwhile), it takes
   the learner's folded events out of everyone's rollups, subtracting their
   sums and removing their number from every learner set they were in, and
   deletes their events (stored and pending), their per-learner rollups, their
   learner number and their entries in the month leaders lists, in one commit.

What the learner's folded events added is their stored events less their
pending ones, summed per rollup unit in SQL; the learner sets are rewritten
here. Answers read in snapshots, so each sees the learner either whole or not
at all. Ingest goes on during step 3: only the learner's events that occurred
after the erasure can still be stored, and those are pending, which the rollups
do not hold; step 3 deletes them too when they are stored before it commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from daily_aggregator.server import learner_sets
from daily_aggregator.server.queries import query

__all__ = ["Erasure", "erase", "erase_stored"]

_ROWS_PER_CHUNK = 5000
"""Rollups rewritten at a time, so memory holds one chunk of learner sets."""


@dataclass(frozen=True)
class Erasure:
    """What one DeleteUser call did."""

    deleted_events: int
    """Stored events of the learner deleted, pending or folded."""
    erased_at: datetime
    """The erasure's instant: older events of the learner are refused from now on."""


async def erase(pool: asyncpg.Pool, user_id: uuid.UUID) -> Erasure:
    """Erase the learner `user_id` from every answer and refuse their older events from now on.

    A learner with nothing stored is erased all the same: their events that
    occurred before now are refused when they arrive later. Calling it again
    moves `erased_at` forward and deletes what was stored since.
    """
    async with pool.acquire() as conn:
        erased_at: datetime = await conn.fetchval(query("erase_record"), user_id)
        async with conn.transaction():
            await conn.execute(query("erase_wait_for_ingest"))
        async with conn.transaction():
            deleted = await erase_stored(conn, user_id)
    return Erasure(deleted, erased_at)


async def erase_stored(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Step 3: delete everything stored of the learner; return how many events went.

    Runs in the caller's transaction, which must be READ COMMITTED: each statement
    then reads what was committed before it began, the folder's last fold included
    once the fold lock is granted. `erase` commits it. Without steps 1 and 2 first,
    an old event of the learner may still be stored afterwards.
    """
    await conn.execute(query("erase_lock"))
    learner = await conn.fetchval(query("erase_learner_number"), user_id)
    folded = await conn.fetch(query("erase_contribution"), user_id)
    for first in range(0, len(folded), _ROWS_PER_CHUNK):
        await _subtract(conn, learner, folded[first : first + _ROWS_PER_CHUNK])
    deleted: int = await conn.fetchval(query("erase_learner"), user_id)
    return deleted


async def _subtract(
    conn: asyncpg.Connection, learner: int | None, folded: Sequence[asyncpg.Record]
) -> None:
    """Take one learner's contribution `folded` out of these rollups and their learner sets."""
    key_columns = (
        [row["unit"] for row in folded],
        [row["start"] for row in folded],
        [row["country"] for row in folded],
    )
    stored = {
        (row["unit"], row["start"], row["country"]): row["learners"]
        for row in await conn.fetch(query("stored_learner_sets"), *key_columns)
    }
    remaining = []
    for row in folded:
        members = learner_sets.load(stored[row["unit"], row["start"], row["country"]])
        if learner is not None:
            members.discard(learner)
        remaining.append(members)
    await conn.execute(
        query("erase_rollups"),
        *key_columns,
        [row["events"] for row in folded],
        [row["word_count"] for row in folded],
        [row["study_seconds"] for row in folded],
        [len(members) for members in remaining],
        [learner_sets.dump(members) for members in remaining],
    )
