"""Query latency: Summary, Uniques and Breakdown against plain SQL over raw events.

    uv run python -m bench.queries [--events 10000000] [--users 100000] [--repeat 15]

Builds a realistic year of activity in an embedded PostgreSQL (or --database-url):
users with skewed activity (a minority of heavy learners), events arriving in
sessions of several events a few minutes apart, a handful of countries. Then,
for each question, measures p50/p95 of
- the service, a separate `daily-aggregator serve` process, through gRPC, and
- the baseline: for the one-user Summary the service's own SQL run directly;
  for the others the plain SQL over the raw events table that the original
  implementations run (date_trunc + GROUP BY, count(DISTINCT ...)),
checks that both give identical results, and prints the ratios.
Pass --data-dir to keep the generated data set between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from bench.common import fresh_database, service_process
from daily_aggregator.server.database import with_database
from daily_aggregator.server.embedded import EmbeddedPostgres
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import MAX_BUCKETS
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

DATABASE = "bench_queries"
YEAR_START = datetime(2025, 1, 1, 5, tzinfo=UTC)  # midnight in New York
ZONE = "America/New_York"

# Sessions of 3-7 events, 2-6 minutes apart, by users drawn with a power law
# (user 0 is the heaviest), each user studying from one country. Rows are
# stored in time order, as live ingest stores them.
GENERATE = """
SELECT setseed(0.42);
CREATE TEMPORARY TABLE users AS
SELECT i AS idx,
       md5('user-' || i)::uuid AS user_id,
       (ARRAY['JP', 'JP', 'JP', 'US', 'US', 'DE', 'FR', 'BR', 'IN', ''])[1 + (i % 10)] AS country
FROM generate_series(0, $1 - 1) AS i;
CREATE TEMPORARY TABLE sessions AS
SELECT s AS id,
       floor($1 * power(random(), 2))::int AS user_idx,
       $3::timestamptz + random() * interval '365 days' AS started,
       3 + floor(random() * 5)::int AS events
FROM generate_series(1, $2 / 5) AS s;
ALTER TABLE events SET UNLOGGED;
DROP INDEX events_user_id_occurred_at_idx, events_occurred_at_idx;
ALTER TABLE events DROP CONSTRAINT events_pkey;
INSERT INTO events (user_id, idempotency_key, occurred_at, word_count, study_seconds, country)
SELECT u.user_id,
       md5('event-' || s.id || '-' || j)::uuid,
       s.started + j * (interval '2 minutes' + random() * interval '4 minutes'),
       1 + floor(random() * 60)::int,
       30 + floor(random() * 600)::int,
       u.country
FROM sessions AS s
JOIN users AS u ON u.idx = s.user_idx
CROSS JOIN LATERAL generate_series(0, s.events - 1) AS j
ORDER BY 3;
ALTER TABLE events ADD PRIMARY KEY (user_id, idempotency_key);
CREATE INDEX events_user_id_occurred_at_idx ON events (user_id, occurred_at);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
ALTER TABLE events SET LOGGED;
TRUNCATE slot_rollups, day_rollups;
INSERT INTO slot_rollups (slot, user_id, country, events, word_count, study_seconds)
SELECT slot_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
FROM events
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
INSERT INTO day_rollups (day, user_id, country, events, word_count, study_seconds)
SELECT day_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
FROM events
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
"""

PLAIN_SUMMARY = """
SELECT date_trunc('day', occurred_at, $3) AS day,
       count(*) AS events, sum(word_count) AS word_count, sum(study_seconds) AS study_seconds
FROM events WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY 1 ORDER BY 1
"""
PLAIN_ACTIVE = """
SELECT count(DISTINCT user_id) FROM events WHERE occurred_at >= $1 AND occurred_at < $2
"""
PLAIN_UNIQUES = """
SELECT date_trunc($4, occurred_at, $3) AS bucket, count(DISTINCT user_id) AS users
FROM events WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY 1 ORDER BY 1
"""
PLAIN_TOP_USERS = """
SELECT user_id::text AS key, count(*) AS events, sum(word_count) AS word_count,
       sum(study_seconds) AS study_seconds
FROM events WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY user_id ORDER BY sum(word_count) DESC, user_id LIMIT 10
"""


@dataclass
class Result:
    name: str
    service: list[float]
    baseline: list[float]
    target: str
    identical: bool

    def row(self) -> str:
        s50, s95 = percentiles(self.service)
        b50, b95 = percentiles(self.baseline)
        return (
            f"{self.name:<34} {s50:>8.1f} {s95:>8.1f} {b50:>8.1f} {b95:>8.1f} "
            f"{b50 / s50:>7.2f}x  {self.target:<16} {'yes' if self.identical else 'NO'}"
        )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """Run `call` once to warm up, then `repeat` times; return the durations and the answer."""
    answer = await call()
    durations = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - began)
    return durations, answer


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def ensure_data(server_dsn: str, events: int, users: int) -> str:
    dsn = with_database(server_dsn, DATABASE)
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        conn = None
    if conn is not None:
        have = await conn.fetchval("SELECT count(*) FROM events")
        await conn.close()
        if have >= events * 0.9:
            print(f"reusing {have:,} events in {DATABASE}", flush=True)
            return dsn
    print(f"generating ~{events:,} events for {users:,} users ...", flush=True)
    began = time.perf_counter()
    dsn = await fresh_database(server_dsn, DATABASE)
    conn = await asyncpg.connect(dsn)
    try:
        for statement in filter(str.strip, GENERATE.split(";")):
            args = [a for i, a in enumerate((users, events, YEAR_START), 1) if f"${i}" in statement]
            await conn.execute(statement, *args) if args else await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE slot_rollups")
        await conn.execute("VACUUM ANALYZE day_rollups")
        total = await conn.fetchval("SELECT count(*) FROM events")
        slots = await conn.fetchval("SELECT count(*) FROM slot_rollups")
    finally:
        await conn.close()
    print(
        f"generated {total:,} events, {slots:,} rollup rows in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    return dsn


async def measure(dsn: str, target: str, repeat: int) -> list[Result]:
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_custom_plan"})
    heavy = await conn.fetchval(
        "SELECT user_id FROM events GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
    )
    year_end = YEAR_START + timedelta(days=365)
    q90_start = YEAR_START + timedelta(days=180)
    q90_end = q90_start + timedelta(days=90)  # spans the November DST change
    m30_start = YEAR_START + timedelta(days=200)
    m30_end = m30_start + timedelta(days=30)
    results = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)

        # One user, daily, over the year: the service against its own SQL.
        request = pb.SummaryRequest(
            user_id=str(heavy), start_time=ts(YEAR_START), end_time=ts(year_end), time_zone=ZONE
        )
        service, answer = await timed(repeat, lambda: stub.Summary(request))
        args = (YEAR_START, year_end, "day", ZONE, MAX_BUCKETS, heavy, [], [], 2)
        baseline, rows = await timed(repeat, lambda: conn.fetch(query("summary"), *args))
        same = [b.word_count for b in answer.buckets] == [r["word_count"] for r in rows]
        results.append(
            Result("Summary, one user, daily, 1 year", service, baseline, ">= 0.67x", same)
        )

        # Everyone, daily, 90 days.
        request = pb.SummaryRequest(start_time=ts(q90_start), end_time=ts(q90_end), time_zone=ZONE)
        service, answer = await timed(repeat, lambda: stub.Summary(request))

        async def plain_summary() -> tuple[list[asyncpg.Record], int]:
            days = await conn.fetch(PLAIN_SUMMARY, q90_start, q90_end, ZONE)
            return days, await conn.fetchval(PLAIN_ACTIVE, q90_start, q90_end)

        baseline, (days, active) = await timed(repeat, plain_summary)
        got = [(b.events, b.word_count, b.study_seconds) for b in answer.buckets if b.events]
        want = [(r["events"], r["word_count"], r["study_seconds"]) for r in days]
        same = got == want and answer.totals.active_users == active
        results.append(
            Result("Summary, all users, daily, 90 days", service, baseline, ">= 3x", same)
        )

        # Uniques, daily over 90 days and monthly over the year.
        for name, unit, granularity, start, end in [
            ("Uniques, daily, 90d", "day", pb.GRANULARITY_DAY, q90_start, q90_end),
            ("Uniques, monthly, 1y", "month", pb.GRANULARITY_MONTH, YEAR_START, year_end),
        ]:
            request = pb.UniquesRequest(
                start_time=ts(start), end_time=ts(end), granularity=granularity, time_zone=ZONE
            )
            service, answer = await timed(repeat, lambda r=request: stub.Uniques(r))

            async def plain_uniques(
                s: datetime = start, e: datetime = end, u: str = unit
            ) -> tuple[list[asyncpg.Record], int]:
                buckets = await conn.fetch(PLAIN_UNIQUES, s, e, ZONE, u)
                return buckets, await conn.fetchval(PLAIN_ACTIVE, s, e)

            baseline, (rows, total) = await timed(repeat, plain_uniques)
            got_counts = [b.unique_users for b in answer.buckets if b.unique_users]
            same = got_counts == [r["users"] for r in rows] and answer.unique_users == total
            results.append(Result(name, service, baseline, ">= 3x", same))

        # Top 10 learners by words over 30 days.
        request = pb.BreakdownRequest(
            start_time=ts(m30_start),
            end_time=ts(m30_end),
            dimension=pb.DIMENSION_USER,
            metric=pb.METRIC_WORD_COUNT,
        )
        service, answer = await timed(repeat, lambda: stub.Breakdown(request))
        baseline, rows = await timed(
            repeat, lambda: conn.fetch(PLAIN_TOP_USERS, m30_start, m30_end)
        )
        got_rows = [(r.key, r.events, r.word_count, r.study_seconds) for r in answer.rows]
        want_rows = [(r["key"], r["events"], r["word_count"], r["study_seconds"]) for r in rows]
        results.append(
            Result(
                "Breakdown, top 10 users, 30 days",
                service,
                baseline,
                ">= 3x",
                got_rows == want_rows,
            )
        )
    await conn.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded database here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="da-bench-") as tmp:
        embedded = None
        server_dsn = args.database_url
        if server_dsn is None:
            embedded = EmbeddedPostgres(args.data_dir or Path(tmp))
            server_dsn = await embedded.start()
        try:
            dsn = await ensure_data(server_dsn, args.events, args.users)
            async with service_process(dsn) as target:
                results = await measure(dsn, target, args.repeat)
        finally:
            if embedded is not None:
                await embedded.stop()

    print()
    print(
        f"{'query':<34} {'service p50':>8} {'p95':>8} {'baseline p50':>8} {'p95':>8} "
        f"{'speed-up':>8}  {'target':<16} identical"
    )
    for result in results:
        print(result.row())
    print("times in ms; speed-up = baseline p50 / service p50")


if __name__ == "__main__":
    asyncio.run(main())
