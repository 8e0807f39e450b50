"""Query latency: the service against plain SQL and against ClickHouse and DuckDB, same events.

    uv run python -m bench.queries [--events 10000000] [--users 100000] [--repeat 10]
    uv run --with chdb --with duckdb python -m bench.queries --peers
    uv run python -m bench.queries --events 1000000,10000000,30000000
    uv run python -m bench.queries --only Retention   # the questions whose name has it

Builds a year of activity in an embedded PostgreSQL (or --database-url): users with
skewed activity (a minority of heavy learners), sessions of several events a few
minutes apart, a handful of countries; then folds it into the rollups with the
service's own folder. For each question of `bench.questions` it measures the p50 of
- the service, a separate `daily-aggregator serve` process, through gRPC;
- plain SQL over the raw events table (date_trunc, GROUP BY, count(DISTINCT));
- with --peers, ClickHouse (chDB) and DuckDB in this process, loaded with the same
  events exported from PostgreSQL,
checks that every answer is identical, and prints the ratios. With several sizes it
prints how the service's p50 grows from the first size to the others.
Pass --data-dir to keep the generated data sets between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench.common import fresh_database, service_process
from bench.questions import YEAR_START, Answer, Question, questions
from daily_aggregator.server.database import create_pool, with_database
from daily_aggregator.server.embedded import EmbeddedPostgres
from daily_aggregator.server.folding import Folder
from daily_aggregator.v1 import aggregator_pb2_grpc

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
DROP INDEX events_occurred_at_idx;
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
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
ALTER TABLE events SET LOGGED;
"""
# Every engine reads the events table as the service keeps it. An index on
# (user_id, occurred_at), which data sets of earlier versions of this script had
# for plain SQL, would also serve the service's reads of one learner's events and
# so hide what they cost on the service's own schema; plain SQL reads one
# learner's events through the primary key, which starts with user_id, as the
# service does.
DROP_PLAIN_SQL_INDEX = "DROP INDEX IF EXISTS events_user_id_occurred_at_idx"
PEND_MONTH = """
INSERT INTO pending_events (half, user_id, occurred_at, word_count, study_seconds, country)
SELECT (SELECT half FROM pending_half), user_id, occurred_at, word_count, study_seconds, country
FROM events
WHERE occurred_at >= $1 AND occurred_at < $1 + interval '1 month'
"""
EXPORT = """
SELECT user_id::text, (extract(epoch FROM occurred_at) * 1000000)::bigint AS us, word_count,
       study_seconds, country
FROM events ORDER BY occurred_at
"""


@dataclass
class Measured:
    """The p50s of one question, in ms, by engine, and whether every answer agreed."""

    question: Question
    p50: dict[str, float] = field(default_factory=dict)
    identical: bool = True


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """Run `call` once to warm up, then `repeat` times; return the durations and the answer."""
    answer = await call()
    durations = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - began)
    return durations, answer


async def ensure_data(server_dsn: str, events: int, users: int) -> str:
    """The DSN of a folded data set of about `events` events, generated when missing."""
    name = f"bench_queries_{events}"
    dsn = with_database(server_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        conn = None
    if conn is not None:
        have = await conn.fetchval("SELECT count(*) FROM events")
        pending = await conn.fetchval("SELECT count(*) FROM pending_events")
        await conn.execute(DROP_PLAIN_SQL_INDEX)
        await conn.close()
        if have >= events * 0.9 and pending == 0:
            print(f"reusing {have:,} events in {name}", flush=True)
            return dsn
    print(f"generating ~{events:,} events for {users:,} users ...", flush=True)
    began = time.perf_counter()
    dsn = await fresh_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        for statement in filter(str.strip, GENERATE.split(";")):
            args = [a for i, a in enumerate((users, events, YEAR_START), 1) if f"${i}" in statement]
            await conn.execute(statement, *args)
        await conn.execute("TRUNCATE pending_events")
        generated = time.perf_counter() - began
        # Month by month, so that each fold is a month of events.
        pool = await create_pool(dsn, min_size=1, max_size=2)
        folder = Folder(pool, idle_seconds=0.05)
        async with pool.acquire() as folding:
            month = YEAR_START.replace(day=1, hour=0)
            while month < YEAR_START + timedelta(days=366):
                await conn.execute(PEND_MONTH, month)
                await folder.drain(folding)
                month = month.replace(
                    year=month.year + month.month // 12, month=month.month % 12 + 1
                )
        await pool.close()
        for table in (
            "events",
            "rollups",
            "learner_hours",
            "learner_months",
            "learners",
        ):
            await conn.execute(f"VACUUM ANALYZE {table}")
        total = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    folded = time.perf_counter() - began - generated
    print(
        f"generated {total:,} events in {generated:.0f} s, folded them in {folded:.0f} s"
        f" ({total / folded:,.0f} events/s)",
        flush=True,
    )
    return dsn


async def export_events(dsn: str, path: Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_from_query(EXPORT, output=str(path), format="csv", header=True)
    finally:
        await conn.close()


async def measure(
    dsn: str, target: str, repeat: int, baseline_repeat: int, peers: list[Any], only: str = ""
) -> list[Measured]:
    conn = await asyncpg.connect(dsn, server_settings={"work_mem": "256MB"})
    heaviest = str(
        await conn.fetchval(
            "SELECT user_id FROM learner_months GROUP BY 1 ORDER BY sum(events) DESC LIMIT 1"
        )
    )
    results = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        for q in questions(heaviest):
            if only not in q.name:
                continue
            m = Measured(q)
            samples, answer = await timed(repeat, lambda q=q: q.ask_service(stub))
            m.p50["service"] = p50(samples)
            answers: dict[str, Answer] = {"service": answer}
            if baseline_repeat:
                samples, answers["plain SQL"] = await timed(
                    baseline_repeat, lambda q=q: q.ask_plain_sql(conn)
                )
                m.p50["plain SQL"] = p50(samples)
            for peer in peers:
                samples, answers[peer.name] = await timed(
                    repeat, lambda q=q, peer=peer: asyncio.to_thread(peer.answer, q)
                )
                m.p50[peer.name] = p50(samples)
            m.identical = all(a == answers["service"] for a in answers.values())
            if not m.identical:
                print(f"DIFFERENT ANSWERS for {q.name}:")
                for engine, a in answers.items():
                    print(f"  {engine}: {str(a)[:300]}")
            results.append(m)
            print(f"  {q.name}: {m.p50}", flush=True)
    await conn.close()
    return results


def print_table(results: list[Measured], peer_names: list[str]) -> None:
    engines = ["service", "plain SQL", *peer_names]
    shown = [e for e in engines if any(e in m.p50 for m in results)]
    header = f"{'question':<40}" + "".join(f"{e:>12}" for e in shown)
    if peer_names:
        header += f"{'best peer / service':>21}"
    print(header + f"  {'target':<18} identical")
    for m in results:
        line = f"{m.question.name:<40}" + "".join(
            f"{m.p50[e]:>12,.1f}" if e in m.p50 else f"{'':>12}" for e in shown
        )
        if peer_names:
            best = min(m.p50[name] for name in peer_names)
            line += f"{best / m.p50['service']:>20.2f}x"
        print(line + f"  {m.question.target:<18} {'yes' if m.identical else 'NO'}")
    print("p50 in ms over the repeats; the peers run in this process, the service behind gRPC")


def print_growth(by_size: dict[int, list[Measured]]) -> None:
    sizes = sorted(by_size)
    print()
    print(f"{'question':<40}" + "".join(f"{size:>14,}" for size in sizes) + f"{'growth':>10}")
    for i, m in enumerate(by_size[sizes[0]]):
        row = [by_size[size][i].p50["service"] for size in sizes]
        print(
            f"{m.question.name:<40}"
            + "".join(f"{v:>14,.1f}" for v in row)
            + f"{row[-1] / row[0]:>9.2f}x"
        )
    print("service p50 in ms per data set size (events); growth = largest / smallest")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", default="10000000", help="one size, or several: 1000000,10000000"
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument(
        "--baseline-repeat", type=int, default=3, help="repeats of plain SQL; 0 skips it"
    )
    parser.add_argument("--peers", action="store_true", help="also ask ClickHouse and DuckDB")
    parser.add_argument(
        "--only", default="", metavar="TEXT", help="ask only the questions whose name has TEXT"
    )
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded database here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.events.split(",")]

    by_size: dict[int, list[Measured]] = {}
    peer_names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="da-bench-") as tmp:
        embedded = None
        server_dsn = args.database_url
        if server_dsn is None:
            embedded = EmbeddedPostgres(args.data_dir or Path(tmp))
            server_dsn = await embedded.start()
        try:
            for size in sizes:
                dsn = await ensure_data(server_dsn, size, args.users)
                peers = []
                if args.peers:
                    from bench.peers import load_peers

                    csv = Path(tmp) / f"events-{size}.csv"
                    print("exporting the events and loading the peers ...", flush=True)
                    await export_events(dsn, csv)
                    peers = load_peers(csv)
                    csv.unlink()
                    peer_names = [peer.name for peer in peers]
                try:
                    async with service_process(dsn) as target:
                        by_size[size] = await measure(
                            dsn, target, args.repeat, args.baseline_repeat, peers, args.only
                        )
                finally:
                    for peer in peers:
                        peer.close()
                print(f"\n{size:,} events")
                print_table(by_size[size], peer_names)
        finally:
            if embedded is not None:
                await embedded.stop()
    if len(sizes) > 1:
        print_growth(by_size)


if __name__ == "__main__":
    asyncio.run(main())
