"""Ingest throughput: the service against raw PostgreSQL, measured in the same run.

    uv run python -m bench.ingest [--events 1000000] [--streams 4] [--batch 2000]
                                  [--arrival live|scattered] [--rounds 1]

Starts an embedded PostgreSQL (or uses --database-url), then:
1. raw: the same rows inserted straight into an events table indexed for plain SQL (the
   unique key and (user_id, occurred_at)) with asyncpg, one
   `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING` per batch over
   `--streams` connections; then "lean raw", the same without the second index;
2. service: `daily-aggregator serve` as a separate process, fed by `--streams`
   concurrent RecordEvents streams of `--batch` events per message, timed until the
   last acknowledgement and until the folder has folded every acknowledged event.
Prints the rates, service/raw and the largest fold lag seen (events and seconds).
With `--rounds N` the three runs are made N times in turn on the same events, each
round's service/raw is printed, and then their median: the raw baseline moves with
the machine's load as much as the service does, and a ratio of two runs made minutes
apart on a shared machine is one sample of that noise.
Targets: folded rate at least 0.9 of raw on the live feed, 0.6 on the scattered one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc

from bench.common import fresh_database, postgres_server, service_process
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

RAW_INSERT = """
INSERT INTO events (user_id, idempotency_key, occurred_at, word_count, study_seconds, country)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::integer[], $5::integer[],
                     $6::text[])
ON CONFLICT DO NOTHING
"""
COUNTRIES = ["JP", "US", "DE", "FR", "BR", "IN", ""]
TARGETS = {"live": 0.9, "scattered": 0.6}
# Plain SQL answers one learner's questions from this index, which the service's
# events table no longer has (its per-learner rollups answer them).
PLAIN_SQL_INDEX = "CREATE INDEX ON events (user_id, occurred_at)"


def make_events(events: int, users: int, arrival: str) -> list[pb.Event]:
    """Learners in sessions of 3-7 events a few minutes apart, each from one country.

    Users are drawn with a power law (a minority of heavy learners). With
    arrival "live" the events come in time order over two weeks, as a live
    feed delivers them; with "scattered" they are shuffled over a year, the
    worst case for rollups (nearly every event starts a rollup row of its own).
    """
    rng = random.Random(42)
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    countries = {u: COUNTRIES[i % len(COUNTRIES)] for i, u in enumerate(user_ids)}
    span = timedelta(days=14 if arrival == "live" else 365)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    out: list[tuple[datetime, pb.Event]] = []
    while len(out) < events:
        user = user_ids[int(users * rng.random() ** 2)]
        at = start + span * rng.random()
        for _ in range(rng.randint(3, 7)):
            e = pb.Event(
                user_id=user,
                idempotency_key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                word_count=rng.randint(1, 60),
                study_seconds=rng.randint(30, 630),
                country=countries[user],
            )
            e.occurred_at.FromDatetime(at)
            out.append((at, e))
            at += timedelta(seconds=rng.randint(120, 360))
    del out[events:]
    if arrival == "live":
        out.sort(key=lambda pair: pair[0])
    else:
        rng.shuffle(out)
    return [e for _, e in out]


def make_batches(events: list[pb.Event], batch: int) -> list[list[pb.Event]]:
    """Consecutive batches of `batch` events."""
    return [events[i : i + batch] for i in range(0, len(events), batch)]


def as_columns(batch: list[pb.Event]) -> tuple[list[object], ...]:
    return (
        [e.user_id for e in batch],
        [e.idempotency_key for e in batch],
        [e.occurred_at.ToDatetime(tzinfo=UTC) for e in batch],
        [e.word_count for e in batch],
        [e.study_seconds for e in batch],
        [e.country for e in batch],
    )


async def index_for_plain_sql(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(PLAIN_SQL_INDEX)
    finally:
        await conn.close()


async def raw(dsn: str, batches: list[list[pb.Event]], streams: int) -> float:
    """Seconds to insert every batch straight into PostgreSQL over `streams` connections."""
    columns = [as_columns(b) for b in batches]
    connections = [await asyncpg.connect(dsn) for _ in range(streams)]

    async def feed(conn: asyncpg.Connection, share: list[tuple[list[object], ...]]) -> None:
        for cols in share:
            await conn.execute(RAW_INSERT, *cols)

    began = time.perf_counter()
    await asyncio.gather(*(feed(c, columns[i::streams]) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - began
    for c in connections:
        await c.close()
    return elapsed


PENDING = """
SELECT count(*) AS events,
       coalesce(extract(epoch FROM clock_timestamp() - min(received_at)), 0)::float8 AS seconds
FROM pending_events
"""


@dataclass
class Lag:
    """The largest fold lag seen: events in the log, and the age of the oldest."""

    events: int = 0
    seconds: float = 0.0

    def see(self, row: asyncpg.Record) -> None:
        self.events = max(self.events, row["events"])
        self.seconds = max(self.seconds, row["seconds"])


async def watch(dsn: str, lag: Lag, stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            lag.see(await conn.fetchrow(PENDING))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
    finally:
        await conn.close()


async def until_folded(dsn: str) -> None:
    """Return once the pending log is empty: every acknowledged event is folded."""
    conn = await asyncpg.connect(dsn)
    try:
        folded = False
        while not folded:
            folded = (await conn.fetchrow(PENDING))["events"] == 0
            await asyncio.sleep(0 if folded else 0.05)
    finally:
        await conn.close()


async def service(
    target: str, dsn: str, batches: list[list[pb.Event]], streams: int
) -> tuple[float, float, Lag]:
    """Stream every batch through the service over `streams` concurrent streams.

    Returns the seconds until every stream was acknowledged, the seconds until every
    acknowledged event was folded, and the largest fold lag seen meanwhile.
    """
    requests = [pb.RecordEventsRequest(events=b) for b in batches]
    lag, stop = Lag(), asyncio.Event()
    watcher = asyncio.create_task(watch(dsn, lag, stop))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        began = time.perf_counter()
        responses = await asyncio.gather(
            *(stub.RecordEvents(iter(requests[i::streams])) for i in range(streams))
        )
        acknowledged = time.perf_counter() - began
    await until_folded(dsn)
    folded = time.perf_counter() - began
    stop.set()
    await watcher
    inserted = sum(r.inserted for r in responses)
    if inserted != sum(len(b) for b in batches):
        raise RuntimeError(f"service inserted {inserted}, expected every event")
    return acknowledged, folded, lag


@dataclass(frozen=True)
class Round:
    """One round: the service, then raw PostgreSQL with and without the plain-SQL index."""

    acknowledged: float
    folded: float
    lag: Lag
    raw: float
    lean: float

    @property
    def folded_of_raw(self) -> float:
        """The service's folded rate as a share of raw PostgreSQL's (indexed for plain SQL)."""
        return self.raw / self.folded


async def one_round(server_dsn: str, batches: list[list[pb.Event]], streams: int) -> Round:
    """Measure the service and both raw baselines on fresh databases of `server_dsn`."""
    # The service goes first so the raw baseline gets the warmed-up server.
    service_dsn = await fresh_database(server_dsn, "bench_service")
    async with service_process(service_dsn) as target:
        acknowledged, folded, lag = await service(target, service_dsn, batches, streams)
    raw_dsn = await fresh_database(server_dsn, "bench_raw")
    await index_for_plain_sql(raw_dsn)
    raw_seconds = await raw(raw_dsn, batches, streams)
    lean_dsn = await fresh_database(server_dsn, "bench_raw_lean")
    lean_seconds = await raw(lean_dsn, batches, streams)
    return Round(acknowledged, folded, lag, raw_seconds, lean_seconds)


def report(events: int, measured: Round) -> None:
    """Print one round's rates, its ratios to raw and its largest fold lag."""
    raw_rate, lean_rate = events / measured.raw, events / measured.lean
    for name, rate, seconds in (
        ("indexed for plain SQL", raw_rate, measured.raw),
        ("the service's indexes", lean_rate, measured.lean),
    ):
        print(f"raw PostgreSQL, {name:<22}: {rate:>10,.0f} events/s  ({seconds:.1f} s)")
    for name, seconds in (
        ("acknowledged", measured.acknowledged),
        ("acknowledged and folded", measured.folded),
    ):
        rate = events / seconds
        print(
            f"service, {name:<29}: {rate:>10,.0f} events/s  ({seconds:.1f} s)"
            f"  {rate / raw_rate:.2f} of raw, {rate / lean_rate:.2f} of lean raw"
        )
    print(f"largest fold lag seen: {measured.lag.events:,} events, {measured.lag.seconds:.1f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2000, help="events per stream message")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument(
        "--arrival",
        choices=["live", "scattered"],
        default="live",
        help="live: time-ordered sessions over two weeks; scattered: shuffled over a year",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure service and raw this many times in turn"
    )
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    print(
        f"generating {args.events:,} events ({args.arrival}) in batches of {args.batch:,} ...",
        flush=True,
    )
    batches = make_batches(make_events(args.events, args.users, args.arrival), args.batch)
    ratios: list[float] = []
    async with postgres_server(args.database_url) as server_dsn:
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}:", flush=True)
            measured = await one_round(server_dsn, batches, args.streams)
            report(args.events, measured)
            ratios.append(measured.folded_of_raw)
            print(flush=True)
    if args.rounds > 1:
        listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"folded / raw in each round: {listed}; median {statistics.median(ratios):.2f}")
    print(f"target: folded rate >= {TARGETS[args.arrival]:.2f} of raw indexed for plain SQL")


if __name__ == "__main__":
    asyncio.run(main())
