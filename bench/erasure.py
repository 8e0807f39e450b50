"""DeleteUser's cost on the question benchmark's data set, which it leaves as it found it.

    uv run python -m bench.erasure --data-dir /tmp/da-bench [--events 10000000]

Uses the folded year of events `bench.queries` generates (database bench_queries_N in the
embedded PostgreSQL of --data-dir; generate it with `python -m bench.queries --data-dir`
first). For the heaviest learner, a median one and one with nothing stored it runs every
statement of an erasure (record the erasure, wait for ingest under way, then erase under
the fold lock) in one transaction and rolls it back, 5 times after a warm-up, and prints
the p50 with how many rollups the erasure rewrites. The real call commits three
transactions instead of rolling back one. Nothing else runs meanwhile, so the waits for
ingest and for a fold under way are nil here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from daily_aggregator.server.database import create_pool, migrate, with_database
from daily_aggregator.server.embedded import EmbeddedPostgres
from daily_aggregator.server.erasure import erase_stored
from daily_aggregator.server.queries import query

REPEAT = 5
LEARNERS = """
WITH counts AS (SELECT user_id, count(*) AS events FROM events GROUP BY 1)
(SELECT 'heaviest' AS who, user_id, events FROM counts ORDER BY events DESC LIMIT 1)
UNION ALL
(SELECT 'median', user_id, events FROM counts
 ORDER BY events OFFSET (SELECT count(*) / 2 FROM counts) LIMIT 1)
"""
TOUCHED = "SELECT count(*) FROM ({}) AS units".format(
    query("erase_contribution").rstrip().rstrip(";")
)


class RolledBack(Exception):
    """Ends the measured transaction so that the data set stays as it was."""


async def erase_and_roll_back(pool: asyncpg.Pool, user_id: uuid.UUID) -> tuple[float, int]:
    """Seconds taken by every statement of an erasure of `user_id`, and the events it deleted."""
    async with pool.acquire() as conn:
        began = time.perf_counter()
        try:
            async with conn.transaction():
                await conn.fetchval(query("erase_record"), user_id)
                await conn.execute(query("erase_wait_for_ingest"))
                deleted = await erase_stored(conn, user_id)
                took = time.perf_counter() - began
                raise RolledBack
        except RolledBack:
            pass
    return took, deleted


async def measure(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            print(f"{await conn.fetchval('SELECT count(*) FROM events'):,} events stored")
            learners = [tuple(r) for r in await conn.fetch(LEARNERS)]
        learners.append(("nothing stored", uuid.uuid4(), 0))
        print(f"{'learner':<16} {'events':>8} {'rollups':>8} {'p50 ms':>9} {'min ms':>9}")
        for who, user_id, events in learners:
            touched = await pool.fetchval(TOUCHED, user_id)
            await erase_and_roll_back(pool, user_id)
            runs = [await erase_and_roll_back(pool, user_id) for _ in range(REPEAT)]
            assert {deleted for _, deleted in runs} == {events}
            took = [seconds * 1000 for seconds, _ in runs]
            print(
                f"{who:<16} {events:>8,} {touched:>8,} {statistics.median(took):>9.1f}"
                f" {min(took):>9.1f}"
            )
        # The rolled-back updates left dead row versions behind, and the rolled-back deletes
        # left the learners' pages no longer all-visible, so index-only scans of them would
        # visit the heap: vacuum every table an erasure writes, for the benchmarks after this.
        await pool.execute(
            "VACUUM ANALYZE rollups, month_leaders, events, learner_hours, learner_months, learners"
        )
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="bench.queries' --data-dir")
    parser.add_argument("--events", type=int, default=10_000_000, help="the data set's size")
    args = parser.parse_args()
    async with EmbeddedPostgres(args.data_dir) as embedded:
        await measure(with_database(embedded.dsn, f"bench_queries_{args.events}"))


if __name__ == "__main__":
    asyncio.run(main())
