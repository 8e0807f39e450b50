"""PostgreSQL restarts under a streaming writer and a query load: nothing lost, nothing twice.

Each flavour gets a cluster of its own (restarting the session's would disturb
other tests), kept by a helper process (tests/pg_keeper.py), which the service
reaches through `--database-url`, as it would an external server. The cluster
goes down twice while a client writer streams and questions keep coming: once
by a fast shutdown, once by kill -9 of its postmaster (PostgreSQL then recovers
from its WAL). Afterwards the writer's totals, the events table, every answer
and the rollups all agree exactly with what was generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from daily_aggregator.client import AsyncClient, Event, RecordResult, RetryPolicy
from daily_aggregator.server.app import database, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.conftest import FLAVOURS
from tests.pg_keeper import KeptPostgres
from tests.support import timestamp
from tests.test_folding import TOTALS, assert_folded_exactly, folded

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 2, 1, tzinfo=UTC)
RANGE = {"start_time": timestamp(START), "end_time": timestamp(END)}
PHASES = 4
EVENTS_PER_PHASE = 1500
# Patient enough for a restart of PostgreSQL on a busy machine: about a minute in all.
PATIENT = RetryPolicy(max_attempts=80, initial_backoff=0.05, max_backoff=1.0)


def generated(seed: int) -> list[Event]:
    rng = random.Random(seed)
    learners = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(60)]
    return [
        Event(
            rng.choice(learners),
            rng.randrange(100),
            rng.randrange(900),
            occurred_at=START + timedelta(seconds=rng.randrange(31 * 86_400)),
            country=rng.choice(["JP", "US", "DE", ""]),
            idempotency_key=str(uuid.UUID(int=rng.getrandbits(128))),
        )
        for _ in range(PHASES * EVENTS_PER_PHASE)
    ]


class Questions:
    """Asks Summary, Uniques and Breakdown over and over, counting how each call ended."""

    def __init__(self, stub: aggregator_pb2_grpc.AggregatorServiceStub) -> None:
        self._calls: list[Callable[[], Awaitable[object]]] = [
            lambda: stub.Summary(pb.SummaryRequest(**RANGE, time_zone="Asia/Tokyo"), timeout=30),
            lambda: stub.Uniques(
                pb.UniquesRequest(**RANGE, granularity=pb.GRANULARITY_WEEK), timeout=30
            ),
            lambda: stub.Breakdown(
                pb.BreakdownRequest(**RANGE, dimension=pb.DIMENSION_USER, limit=5), timeout=30
            ),
        ]
        self.ended: Counter[str] = Counter()
        self.unavailable = asyncio.Event()
        """Set whenever a call fails with UNAVAILABLE; cleared by the test."""
        self.answered = asyncio.Event()
        """Set whenever a call succeeds; cleared by the test."""

    async def run(self) -> None:
        while True:
            for ask in self._calls:
                try:
                    await ask()
                except grpc.aio.AioRpcError as exc:
                    self.ended[exc.code().name] += 1
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        self.unavailable.set()
                else:
                    self.ended["OK"] += 1
                    self.answered.set()
            await asyncio.sleep(0.01)


async def outage(postgres: KeptPostgres, questions: Questions, *, kill: bool) -> None:
    """Take PostgreSQL down, wait until questions fail with UNAVAILABLE, start it again,
    and wait until they are answered again."""
    questions.unavailable.clear()
    await (postgres.kill() if kill else postgres.stop())
    async with asyncio.timeout(60):
        await questions.unavailable.wait()
    await postgres.start()
    questions.answered.clear()
    async with asyncio.timeout(60):
        await questions.answered.wait()


async def reached(phase: asyncio.Event, writing: asyncio.Task[RecordResult]) -> None:
    """Wait until the writer has written a phase; a writer that failed says why instead."""
    waiting = asyncio.ensure_future(phase.wait())
    await asyncio.wait({waiting, writing}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        if writing.done():
            writing.result()  # raises what the writer failed with
        raise TimeoutError("the writer made no progress for 120 s")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
async def test_postgres_restarts_under_writes_and_questions_lose_and_double_nothing(
    tmp_path: Path, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="daily_aggregator")
    events = generated(seed=len(flavour))
    async with KeptPostgres(tmp_path / "pg", FLAVOURS[flavour]) as postgres:
        dsn = postgres.dsn
        settings = Settings(listen="127.0.0.1:0", database_url=dsn, grace_seconds=5)
        async with database(settings) as pool:
            running = await start_server(pool, settings)
            target = f"127.0.0.1:{running.port}"
            try:
                async with (
                    AsyncClient(target, retry=PATIENT) as client,
                    grpc.aio.insecure_channel(target) as channel,
                    contextlib.AsyncExitStack() as stack,
                ):
                    questions = Questions(aggregator_pb2_grpc.AggregatorServiceStub(channel))
                    asking = asyncio.create_task(questions.run())
                    stack.callback(asking.cancel)
                    written = [asyncio.Event() for _ in range(PHASES)]
                    go_on = [asyncio.Event() for _ in range(PHASES)]

                    async def write() -> RecordResult:
                        writer = client.writer(max_batch_events=100, rotate_events=700)
                        async with writer:
                            for phase in range(PHASES):
                                part = events[
                                    phase * EVENTS_PER_PHASE : (phase + 1) * EVENTS_PER_PHASE
                                ]
                                for e in part:
                                    await writer.write(e)
                                written[phase].set()
                                await go_on[phase].wait()
                        return writer.totals

                    writing = asyncio.create_task(write())
                    stack.callback(writing.cancel)
                    # The first phase is written against a running database; each outage
                    # begins once the next phase has been handed to the writer, so some of
                    # its streams are cut and resent.
                    await reached(written[0], writing)
                    go_on[0].set()
                    await outage(postgres, questions, kill=False)
                    await reached(written[1], writing)
                    folded_before = running.folder.folded
                    go_on[1].set()
                    await outage(postgres, questions, kill=True)
                    go_on[2].set()
                    go_on[3].set()
                    totals = await asyncio.wait_for(writing, 120)
                    asking.cancel()

                    # Every event is stored exactly once: resends came back as duplicates.
                    assert totals.received == len(events)
                    assert totals.inserted + totals.duplicates == len(events)
                    assert (totals.conflicts, totals.rejected) == (0, 0)
                    # Questions during the outages were UNAVAILABLE, never anything worse.
                    assert set(questions.ended) <= {"OK", "UNAVAILABLE"}, questions.ended
                    assert questions.ended["UNAVAILABLE"] > 0

                    await assert_every_answer_counts_all(channel, pool, events)
                    conn = await asyncpg.connect(dsn)
                    try:
                        await folded(conn)
                        assert_folded_exactly(await conn.fetchrow(TOTALS), len(events))
                    finally:
                        await conn.close()
                    # The folder outlived both outages and folded what came after them. Its
                    # count moves a moment after the fold's commit, which the log showed.
                    async with asyncio.timeout(10):
                        while running.folder.folded <= folded_before:
                            await asyncio.sleep(0.01)
            finally:
                await running.stop(None)
    problems = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == []


async def assert_every_answer_counts_all(
    channel: grpc.aio.Channel, pool: asyncpg.Pool, events: list[Event]
) -> None:
    """Summary, Uniques and Breakdown equal both the generated events and SQL over the table."""
    stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
    words = sum(e.word_count for e in events)
    seconds = sum(e.study_seconds for e in events)
    learners = len({e.user_id for e in events})
    stored = await pool.fetchrow(
        "SELECT count(*) AS n, sum(word_count) AS w, sum(study_seconds) AS s,"
        " count(DISTINCT user_id) AS u FROM events"
    )
    assert tuple(stored) == (len(events), words, seconds, learners)
    keys = {r["k"] for r in await pool.fetch("SELECT idempotency_key::text AS k FROM events")}
    assert keys == {e.idempotency_key for e in events}

    summary = await stub.Summary(pb.SummaryRequest(**RANGE, time_zone="Asia/Tokyo"))
    totals = summary.totals
    assert (totals.events, totals.word_count, totals.study_seconds) == (len(events), words, seconds)
    assert totals.active_users == learners
    assert sum(b.events for b in summary.buckets) == len(events)
    uniques = await stub.Uniques(pb.UniquesRequest(**RANGE, granularity=pb.GRANULARITY_WEEK))
    assert uniques.unique_users == learners
    countries = await stub.Breakdown(pb.BreakdownRequest(**RANGE, dimension=pb.DIMENSION_COUNTRY))
    expected = Counter(e.country for e in events)
    assert {r.key: r.events for r in countries.rows} == dict(expected)
