"""The bundled Python client against a real server and real PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from daily_aggregator.client import (
    AsyncClient,
    Client,
    DailyAggregatorError,
    Dimension,
    Event,
    Granularity,
    InvalidArgumentError,
    Metric,
    RecordResult,
    RetryPolicy,
    UnavailableError,
)
from daily_aggregator.client._convert import event_to_proto, framed_size
from daily_aggregator.server.app import RunningServer, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import create_pool, migrate
from daily_aggregator.server.embedded import EmbeddedPostgres
from daily_aggregator.v1 import aggregator_pb2 as pb

COMMAND = str(Path(sys.executable).parent / "daily-aggregator")
START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 6, 3, tzinfo=UTC)
NOON = datetime(2025, 6, 1, 12, tzinfo=UTC)
# Patient enough to ride out a server restart or a PostgreSQL restart.
PATIENT = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.5)
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def events(n: int, *, user_id: str | None = None) -> list[Event]:
    user = user_id or str(uuid.uuid4())
    return [Event(user, 10, 60, occurred_at=NOON + timedelta(seconds=i)) for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def count(pool: asyncpg.Pool) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM events")
    return value


async def wait_for_count(pool: asyncpg.Pool, expected: int) -> None:
    async with asyncio.timeout(30):
        while await count(pool) < expected:
            await asyncio.sleep(0.02)


def sample() -> tuple[str, str, list[Event]]:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    return (
        alice,
        bob,
        [
            Event(alice, 10, 60, occurred_at=NOON, country="JP"),
            Event(alice, 20, 120, occurred_at=NOON + timedelta(minutes=5), country="JP"),
            Event(bob, 5, 30, occurred_at=datetime(2025, 6, 2, 3, tzinfo=UTC), country="US"),
            Event(bob, 2_000_000, 30, occurred_at=NOON),
        ],
    )


async def test_async_client_records_and_answers_with_typed_results(server: RunningServer) -> None:
    alice, _, batch = sample()
    async with AsyncClient(target(server)) as client:
        recorded = await client.record(batch, batch_size=2)
        assert (recorded.received, recorded.inserted, recorded.rejected) == (4, 3, 1)
        [error] = recorded.errors
        assert (error.index, error.field) == (3, "word_count")
        assert error.idempotency_key == batch[3].idempotency_key

        summary = await client.summary(START, END)
        assert summary.time_zone == "UTC"
        assert [b.start_time for b in summary.buckets] == [START, START + timedelta(days=1)]
        assert [(b.events, b.word_count, b.study_seconds) for b in summary.buckets] == [
            (2, 30, 180),
            (1, 5, 30),
        ]
        assert summary.buckets[0].average_word_count == 15.0
        assert summary.buckets[1].word_count_sma == 17.5
        assert (summary.totals.events, summary.totals.active_users) == (3, 2)

        tokyo = await client.summary(
            START, END, user_id=alice, granularity=Granularity.HOUR, time_zone="Asia/Tokyo"
        )
        assert len(tokyo.buckets) == 48
        busy = next(b for b in tokyo.buckets if b.events)
        assert busy.start_time == NOON
        assert busy.local_start == NOON
        assert busy.local_start.utcoffset() == timedelta(hours=9)
        assert busy.local_start_text == "2025-06-01T21:00:00+09:00"

        uniques = await client.uniques(START, END, countries=["JP", "US"])
        assert [b.unique_users for b in uniques.buckets] == [1, 1]
        assert uniques.unique_users == 2
        assert uniques.buckets[0].start_time.tzinfo is not None

        rows = await client.breakdown(
            START, END, dimension=Dimension.COUNTRY, metric=Metric.WORD_COUNT
        )
        assert [(r.key, r.word_count, r.unique_users) for r in rows] == [
            ("JP", 30, 1),
            ("US", 5, 1),
        ]

        again = await client.record(batch)
        assert (again.inserted, again.duplicates, again.rejected) == (0, 3, 1)


async def test_sync_client_mirrors_the_async_one(server: RunningServer) -> None:
    _, bob, batch = sample()
    results: list[RecordResult] = []

    def use() -> None:
        with Client(target(server)) as client:
            assert client.record(batch[:3]).inserted == 3
            assert client.summary(START, END).totals.word_count == 35
            assert client.uniques(START, END).unique_users == 2
            [row] = client.breakdown(START, END, dimension=Dimension.USER, limit=1)
            assert row.events == 2
            with client.writer(on_result=results.append) as writer:
                writer.write(Event(bob, 1, 1, occurred_at=NOON))
                writer.write(batch[3])
            assert (writer.totals.inserted, writer.totals.rejected) == (1, 1)
            with pytest.raises(InvalidArgumentError) as refused:
                client.summary(START, END, time_zone="UTC+3")
            assert refused.value.field_violations[0].field == "time_zone"

    await asyncio.to_thread(use)
    assert [r.received for r in results] == [2]


async def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Event(str(uuid.uuid4()), 1, 1, occurred_at=datetime(2025, 6, 1))
    async with AsyncClient(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(ValueError, match="start"):
            await client.summary(datetime(2025, 6, 1), END)
        with pytest.raises(ValueError, match="end"):
            await client.uniques(START, datetime(2025, 6, 2))


def test_events_get_an_idempotency_key_once() -> None:
    event = Event(str(uuid.uuid4()), 1, 1, occurred_at=datetime(2025, 6, 1, tzinfo=UTC))
    assert uuid.UUID(event.idempotency_key or "").version == 4
    assert event_to_proto(event).idempotency_key == event.idempotency_key
    assert Event("u", 1, 1, idempotency_key="k").idempotency_key == "k"


async def test_errors_carry_code_message_and_field_violations(server: RunningServer) -> None:
    async with AsyncClient(target(server)) as client:
        with pytest.raises(InvalidArgumentError) as bad_zone:
            await client.summary(START, END, time_zone="Mars/Olympus_Mons")
        assert isinstance(bad_zone.value, DailyAggregatorError)
        assert bad_zone.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "time_zone" in bad_zone.value.message
        assert [v.field for v in bad_zone.value.field_violations] == ["time_zone"]
        assert isinstance(bad_zone.value.__cause__, grpc.RpcError)

        with pytest.raises(InvalidArgumentError) as reversed_range:
            await client.breakdown(END, START, dimension=Dimension.USER)
        assert reversed_range.value.field_violations[0].field in {"start_time", "end_time"}


async def test_an_unreachable_server_is_unavailable_after_the_retries() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    async with AsyncClient(f"127.0.0.1:{free_port()}", retry=policy, timeout=5) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.uniques(START, END)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        writer = client.writer(max_batch_events=2)
        batch = events(3)
        await writer.write(batch[0])
        with pytest.raises(UnavailableError):
            await writer.write(batch[1])
        assert writer.unacknowledged == batch[:2]
        with pytest.raises(UnavailableError):
            await writer.write(batch[2])
        assert writer.totals == RecordResult()


async def test_sync_writer_takes_events_from_several_threads(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    feeds = [events(500) for _ in range(4)]

    def use() -> RecordResult:
        with Client(target(server)) as client:
            with client.writer(max_batch_events=50) as writer:

                def produce(feed: list[Event]) -> None:
                    for event in feed:
                        writer.write(event)

                threads = [threading.Thread(target=produce, args=(feed,)) for feed in feeds]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            return writer.totals

    totals = await asyncio.to_thread(use)
    assert (totals.received, totals.inserted) == (2000, 2000)
    assert await count(pool) == 2000


async def test_sync_writer_hands_back_every_event_it_accepted_but_could_not_send() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    batch = events(50)
    accepted: list[Event] = []

    def use() -> tuple[list[Event], RecordResult]:
        with Client(f"127.0.0.1:{free_port()}", retry=policy, timeout=5) as client:
            writer = client.writer(max_batch_events=5)

            def write_all() -> None:
                for event in batch:
                    writer.write(event)
                    accepted.append(event)
                writer.flush()

            with pytest.raises(UnavailableError):
                write_all()
            with pytest.raises(UnavailableError):
                writer.write(batch[0])
            with pytest.raises(UnavailableError):
                writer.close()
            return writer.unacknowledged, writer.totals

    unacknowledged, totals = await asyncio.to_thread(use)
    assert accepted
    assert unacknowledged == accepted
    assert totals == RecordResult()


@asynccontextmanager
async def recording_server(
    *failures: grpc.StatusCode,
) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A real gRPC server whose Summary records each call's metadata and fails the first
    calls with `failures`, in order."""
    calls: list[dict[str, str]] = []

    async def summary(request: pb.SummaryRequest, context: grpc.aio.ServicerContext) -> object:
        calls.append({m.key: m.value for m in context.invocation_metadata() or ()})
        if len(calls) <= len(failures):
            await context.abort(failures[len(calls) - 1], "try again")
        return pb.SummaryResponse(time_zone=request.time_zone)

    handler = grpc.method_handlers_generic_handler(
        "daily_aggregator.v1.AggregatorService",
        {
            "Summary": grpc.unary_unary_rpc_method_handler(
                summary,
                request_deserializer=pb.SummaryRequest.FromString,
                response_serializer=pb.SummaryResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        await server.stop(None)


async def test_the_token_is_sent_as_bearer_metadata_and_queries_retry_what_is_transient() -> None:
    policy = RetryPolicy(initial_backoff=0.01)
    transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    async with recording_server(*transient) as (address, calls):
        async with AsyncClient(address, token="s3cret", retry=policy) as client:
            result = await client.summary(START, END, time_zone="Asia/Tokyo")
        assert result.time_zone == "Asia/Tokyo"
        assert [c.get("authorization") for c in calls] == ["Bearer s3cret"] * 3

    async with recording_server(grpc.StatusCode.INTERNAL) as (address, calls):
        async with AsyncClient(address, retry=policy) as client:
            with pytest.raises(DailyAggregatorError) as failed:
                await client.summary(START, END)
        assert failed.value.code == grpc.StatusCode.INTERNAL
        assert len(calls) == 1

    async with recording_server() as (address, calls):

        def use() -> None:
            with Client(address, token="other") as client:
                client.summary(START, END)

        await asyncio.to_thread(use)
        assert [c.get("authorization") for c in calls] == ["Bearer other"]


async def test_writer_sends_full_batches_by_count_and_a_partial_one_after_linger(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    async with AsyncClient(target(server)) as client:
        async with client.writer(max_batch_events=10, linger=60) as writer:
            for event in events(25):
                await writer.write(event)
            await wait_for_count(pool, 20)
            await asyncio.sleep(0.2)
            assert await count(pool) == 20

        async with client.writer(linger=0.05) as writer:
            for event in events(3):
                await writer.write(event)
            await wait_for_count(pool, 28)
            assert writer.totals.received == 0, "the stream is not complete yet"
        assert writer.totals.inserted == 3


async def test_writer_sends_a_batch_before_it_exceeds_max_batch_bytes(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    batch = events(10)
    size = framed_size(event_to_proto(batch[0]))
    async with AsyncClient(target(server)) as client:
        async with client.writer(max_batch_bytes=3 * size + size // 2, linger=60) as writer:
            for event in batch:
                await writer.write(event)
            await wait_for_count(pool, 9)
            await asyncio.sleep(0.2)
            assert await count(pool) == 9
        assert writer.totals.inserted == 10


async def test_writer_rotates_streams_and_its_totals_add_up(server: RunningServer) -> None:
    results: list[RecordResult] = []
    batch = events(35)
    batch[30] = Event(batch[30].user_id, 1, 100_000, occurred_at=NOON)
    async with AsyncClient(target(server)) as client:
        async with client.writer(
            max_batch_events=4, rotate_events=10, on_result=results.append
        ) as writer:
            for event in batch:
                await writer.write(event)
        assert [r.received for r in results] == [12, 12, 11]
        assert [e.index for r in results for e in r.errors] == [30]
        totals = writer.totals
        assert (totals.received, totals.inserted, totals.rejected) == (35, 34, 1)
        assert [(e.index, e.field) for e in totals.errors] == [(30, "study_seconds")]

        timed: list[RecordResult] = []
        async with client.writer(rotate_seconds=0.3, on_result=timed.append) as writer:
            for event in events(2):
                await writer.write(event)
            async with asyncio.timeout(10):
                while not timed:
                    await asyncio.sleep(0.05)
            assert timed[0].inserted == 2


@asynccontextmanager
async def serve_process(database_url: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`daily-aggregator serve` on a fixed port, killed when the block ends."""
    process = await asyncio.create_subprocess_exec(
        COMMAND,
        "serve",
        "--database-url",
        database_url,
        "--listen",
        f"127.0.0.1:{port}",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(60):
            while b"serving" not in (line := await process.stderr.readline()):
                assert line, "serve exited before serving"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_writer_resends_across_a_server_killed_mid_stream(
    database_url: str, pool: asyncpg.Pool
) -> None:
    port = free_port()
    first, second = events(1500), events(1500)
    async with AsyncClient(f"127.0.0.1:{port}", retry=PATIENT, options=FAST_RECONNECT) as client:
        writer = client.writer(max_batch_events=100, linger=60)
        async with serve_process(database_url, port) as process:
            for event in first:
                await writer.write(event)
            await wait_for_count(pool, 1500)
            process.kill()

        async def write_second() -> None:
            for event in second:
                await writer.write(event)
            await writer.close()

        writing = asyncio.create_task(write_second())
        await asyncio.sleep(0.5)
        async with serve_process(database_url, port):
            await writing
    totals = writer.totals
    assert totals.received == 3000
    assert totals.inserted + totals.duplicates == 3000
    assert totals.duplicates >= 1500
    assert (totals.conflicts, totals.rejected) == (0, 0)
    assert await count(pool) == 3000


async def test_writer_streams_on_through_a_graceful_restart(
    database_url: str, pool: asyncpg.Pool
) -> None:
    """A rolling deploy: SIGTERM, then a new server; streams refused meanwhile are resent."""
    port = free_port()
    feed = events(3000)
    async with AsyncClient(f"127.0.0.1:{port}", retry=PATIENT, options=FAST_RECONNECT) as client:
        writer = client.writer(max_batch_events=10, linger=60, rotate_events=20)

        async def write_all() -> None:
            for event in feed:
                await writer.write(event)
            await writer.close()

        async with serve_process(database_url, port) as process:
            writing = asyncio.create_task(write_all())
            await wait_for_count(pool, 500)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        assert not writing.done()
        async with serve_process(database_url, port):
            await writing
    totals = writer.totals
    assert totals.received == 3000
    assert totals.inserted + totals.duplicates == 3000
    assert (totals.conflicts, totals.rejected) == (0, 0)
    assert await count(pool) == 3000


async def test_writer_rides_out_a_database_outage(tmp_path: Path, settings: Settings) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    dsn = await postgres.start()
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(dsn, min_size=1, max_size=4)
    running = await start_server(pool, settings)
    first, second = events(1000), events(1000)
    try:
        async with AsyncClient(target(running), retry=PATIENT) as client:
            writer = client.writer(max_batch_events=100, linger=60)
            for event in first:
                await writer.write(event)
            await wait_for_count(pool, 1000)
            await postgres.stop()

            async def write_second() -> None:
                for event in second:
                    await writer.write(event)
                await writer.close()

            writing = asyncio.create_task(write_second())
            await asyncio.sleep(0.5)
            assert not writing.done()
            await postgres.start()
            await writing
        totals = writer.totals
        assert totals.received == 2000
        assert totals.inserted + totals.duplicates == 2000
        assert totals.duplicates >= 1000
        assert (totals.conflicts, totals.rejected) == (0, 0)
        assert await count(pool) == 2000
    finally:
        await running.stop(None)
        await pool.close()
        await postgres.stop()


def test_the_client_never_imports_the_server_or_asyncpg() -> None:
    check = (
        "import sys, daily_aggregator.client\n"
        "loaded = [m for m in sys.modules"
        " if m.startswith(('daily_aggregator.server', 'asyncpg', 'daily_aggregator.client.cli'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
