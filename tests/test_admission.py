"""Admission control through a real server: stream and query limits, the memory budget, and
the bundled client waiting out the retry delay the service asks for."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from daily_aggregator.client import AsyncClient, Event, RetryPolicy
from daily_aggregator.server.app import RunningServer, StartupError, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record, timestamp

Stub = aggregator_pb2_grpc.AggregatorServiceStub
START = datetime(2025, 6, 1, tzinfo=UTC)
SMALL_MESSAGES = 64 * 1024
# Quick retries, so that a client ignoring the service's retry delay would come back at once.
EAGER = RetryPolicy(max_attempts=50, initial_backoff=0.01, max_backoff=0.05)


@dataclasses.dataclass
class Limited:
    """A running server with changed settings, a stub to it, and the refusals it reported."""

    running: RunningServer
    stub: Stub
    channel: grpc.aio.Channel
    refusals: list[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@asynccontextmanager
async def serving(pool: asyncpg.Pool, settings: Settings, **changes: Any) -> AsyncIterator[Limited]:
    running = await start_server(pool, dataclasses.replace(settings, **changes))
    refusals: list[str] = []
    running.admission.on_refusal = refusals.append
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Limited(running, Stub(channel), channel, refusals)
    finally:
        await running.stop(None)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def stored(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM events")
    return count


async def until_stored(pool: asyncpg.Pool, expected: int) -> None:
    async with asyncio.timeout(30):
        while await stored(pool) < expected:
            await asyncio.sleep(0.01)


async def open_stream(stub: Stub, batch: Sequence[pb.Event]) -> Any:
    """A RecordEvents stream that has sent `batch` and stays open."""
    call = stub.RecordEvents()
    await call.write(pb.RecordEventsRequest(events=list(batch)))
    return call


async def finish(call: Any) -> pb.RecordEventsResponse:
    await call.done_writing()
    response: pb.RecordEventsResponse = await call
    return response


def batch(n: int) -> list[pb.Event]:
    return [event() for _ in range(n)]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    [detail] = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    return info.retry_delay.ToNanoseconds() / 1e9


def summary_request() -> pb.SummaryRequest:
    return pb.SummaryRequest(
        start_time=timestamp(START), end_time=timestamp(START + timedelta(days=2))
    )


@asynccontextmanager
async def queries_stalled(database_url: str) -> AsyncIterator[None]:
    """Every answer waits while this holds the pending log, which each answer locks first."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE pending_events IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def test_a_stream_beyond_the_limit_is_refused_with_a_retry_delay_and_nothing_of_it_read(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with serving(pool, settings, max_concurrent_streams=2) as limited:
        held = [await open_stream(limited.stub, batch(5)) for _ in range(2)]
        await until(lambda: limited.running.admission.streams.in_use == 2)

        refused_batch = batch(7)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await record(limited.stub, [refused_batch])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "too many concurrent RecordEvents streams (limit 2, --max-concurrent-streams);"
            " retry after 0.5 s"
        )
        assert retry_delay(refused.value) == 0.5
        assert limited.refusals == ["streams"]
        health = health_pb2_grpc.HealthStub(limited.channel)
        checked = await health.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING

        assert [(await finish(call)).inserted for call in held] == [5, 5]
        assert await stored(pool) == 10
        # The slots are free again: the refused stream goes through when sent again.
        assert (await record(limited.stub, [refused_batch])).inserted == 7
        assert await stored(pool) == 17


async def test_a_query_beyond_the_limit_is_refused_with_a_retry_delay(
    pool: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    async with serving(pool, settings, max_concurrent_queries=2) as limited:
        async with queries_stalled(database_url):
            stalled = [asyncio.ensure_future(limited.stub.Summary(summary_request())) for _ in "ab"]
            await until(lambda: limited.running.admission.queries.in_use == 2)
            uniques = pb.UniquesRequest(
                start_time=timestamp(START), end_time=timestamp(START + timedelta(days=1))
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await limited.stub.Uniques(uniques)
            # Streams have a limit of their own: ingest goes on while queries are at theirs.
            streaming = asyncio.create_task(record(limited.stub, [batch(3)]))
            await until(lambda: limited.running.admission.streams.in_use == 1)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "too many concurrent queries (limit 2, --max-concurrent-queries); retry after 0.1 s"
        )
        assert retry_delay(refused.value) == 0.1
        assert limited.refusals == ["queries"]
        for answer in await asyncio.gather(*stalled):
            assert len(answer.buckets) == 2
        assert (await streaming).inserted == 3
        assert (await limited.stub.Uniques(uniques)).unique_users == 3


async def test_the_memory_budget_holds_a_stream_back_and_everything_acknowledged_is_stored(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # Room for one stream only: two messages of the largest size.
    async with serving(
        pool,
        settings,
        max_message_bytes=SMALL_MESSAGES,
        max_bytes_in_flight=2 * SMALL_MESSAGES,
        memory_patience=60,
    ) as limited:
        admission = limited.running.admission
        first = await open_stream(limited.stub, batch(20))
        async with asyncio.timeout(30):
            await first.initial_metadata()  # headers: the stream is admitted and being read
        await until_stored(pool, 20)
        second = await open_stream(limited.stub, batch(30))
        await until(lambda: admission.memory.waiting == 1)
        # Held back, not failed, and not read: only the first stream's batch is stored.
        assert await stored(pool) == 20
        assert not second.done()

        await first.write(pb.RecordEventsRequest(events=batch(10)))
        assert (await finish(first)).inserted == 30
        assert (await finish(second)).inserted == 30
        assert await stored(pool) == 60
        assert (admission.memory.in_use, admission.memory.waiting) == (0, 0)
        assert limited.refusals == []


async def test_a_client_that_gives_up_waiting_leaves_the_queue_and_its_slot(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with serving(
        pool,
        settings,
        max_message_bytes=SMALL_MESSAGES,
        max_bytes_in_flight=2 * SMALL_MESSAGES,
        memory_patience=60,
    ) as limited:
        admission = limited.running.admission
        first = await open_stream(limited.stub, batch(2))
        await until(lambda: admission.memory.in_use > 0)
        impatient = await open_stream(limited.stub, batch(3))
        await until(lambda: admission.memory.waiting == 1)
        impatient.cancel()
        await until(lambda: (admission.memory.waiting, admission.streams.in_use) == (0, 1))
        assert (await finish(first)).inserted == 2
        # The room the impatient stream waited for is not lost: the next one gets it.
        assert (await record(limited.stub, [batch(4)])).inserted == 4
        assert await stored(pool) == 6


async def test_a_stream_that_finds_no_room_within_its_patience_is_refused_for_memory(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with serving(
        pool,
        settings,
        max_message_bytes=SMALL_MESSAGES,
        max_bytes_in_flight=3 * SMALL_MESSAGES,  # room for one stream, not for two
        memory_patience=0,
    ) as limited:
        first = await open_stream(limited.stub, batch(4))
        await until(lambda: limited.running.admission.memory.in_use > 0)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await record(limited.stub, [batch(6)])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "no room for another RecordEvents stream in the memory budget within 0 s"
            " (limit 196608 bytes, --max-bytes-in-flight); retry after 1 s"
        )
        assert retry_delay(refused.value) == 1.0
        assert limited.refusals == ["memory"]
        assert limited.running.admission.streams.in_use == 1  # the refused one let go of its slot
        assert (await finish(first)).inserted == 4
        assert await stored(pool) == 4


async def test_a_budget_too_small_for_one_stream_is_a_startup_error(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    too_small = dataclasses.replace(settings, max_bytes_in_flight=settings.max_message_bytes)
    with pytest.raises(StartupError, match="cannot hold two messages"):
        await start_server(pool, too_small)


def test_the_limits_come_from_flags_and_environment() -> None:
    defaults = Settings.from_args([], env={})
    assert (defaults.max_concurrent_streams, defaults.max_concurrent_queries) == (256, 40)
    assert defaults.max_bytes_in_flight == 128 * 1024 * 1024
    parsed = Settings.from_args(
        ["--max-concurrent-streams", "8", "--memory-patience", "2.5"],
        env={
            "DAILY_AGGREGATOR_MAX_CONCURRENT_QUERIES": "3",
            "DAILY_AGGREGATOR_MAX_BYTES_IN_FLIGHT": str(64 * 1024 * 1024),
        },
    )
    assert (parsed.max_concurrent_streams, parsed.max_concurrent_queries) == (8, 3)
    assert (parsed.max_bytes_in_flight, parsed.memory_patience) == (64 * 1024 * 1024, 2.5)
    with pytest.raises(SystemExit):
        Settings.from_args(["--max-bytes-in-flight", str(4 * 1024 * 1024)], env={})


def client_events(n: int) -> list[Event]:
    user = str(uuid.uuid4())
    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    return [Event(user, 10, 60, occurred_at=at + timedelta(seconds=i)) for i in range(n)]


async def test_the_client_waits_out_the_retry_delay_of_a_refused_stream_and_then_stores_it(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with serving(pool, settings, max_concurrent_streams=1) as limited:
        refused_at: list[float] = []

        def note(limit: str) -> None:
            limited.refusals.append(limit)
            refused_at.append(time.monotonic())

        limited.running.admission.on_refusal = note
        async with AsyncClient(limited.target, retry=EAGER) as client:
            for send in (record_all, write_all):
                refused_at.clear()
                held = await open_stream(limited.stub, batch(1))
                await until(lambda: limited.running.admission.streams.in_use == 1)
                sending = asyncio.create_task(send(client, client_events(25)))
                # The writer may learn of its first refusal only as a broken stream (it
                # overtook a batch being sent); every resend then sees the status itself.
                await until(lambda: len(refused_at) == 2)
                await finish(held)
                inserted = await sending
                done_at = time.monotonic()
                assert inserted == 25
                assert done_at - refused_at[1] >= 0.5  # the delay the service asked for
        assert set(limited.refusals) == {"streams"}
        assert await stored(pool) == 2 * (25 + 1)


async def record_all(client: AsyncClient, events: list[Event]) -> int:
    return (await client.record(events, batch_size=10)).inserted


async def write_all(client: AsyncClient, events: list[Event]) -> int:
    async with client.writer(max_batch_events=10) as writer:
        for e in events:
            await writer.write(e)
    return writer.totals.inserted


async def test_the_client_waits_out_the_retry_delay_of_a_refused_query(
    pool: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    async with serving(pool, settings, max_concurrent_queries=1) as limited:
        refused_at: list[float] = []
        limited.running.admission.on_refusal = lambda limit: refused_at.append(time.monotonic())
        async with AsyncClient(limited.target, retry=EAGER) as client:
            async with queries_stalled(database_url):
                stalled = asyncio.ensure_future(limited.stub.Summary(summary_request()))
                await until(lambda: limited.running.admission.queries.in_use == 1)
                asking = asyncio.create_task(client.uniques(START, START + timedelta(days=1)))
                await until(lambda: bool(refused_at))
            answer = await asking
            done_at = time.monotonic()
        assert answer.unique_users == 0
        assert len((await stalled).buckets) == 2
        assert done_at - refused_at[0] >= 0.1
