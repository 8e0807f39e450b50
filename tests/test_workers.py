"""`serve --workers 2` as a user runs it: processes sharing a port, a database and the folding."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from daily_aggregator.client import AsyncClient, Event, RecordResult
from daily_aggregator.server.app import SERVICE_NAME
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import COMMAND, event, record, timestamp
from tests.test_folding import TOTALS, assert_folded_exactly, folded
from tests.test_serve_command import Service, alive, environment, serve, stored_events

Stub = aggregator_pb2_grpc.AggregatorServiceStub
ACCESS = re.compile(rb"\[(\d+)\] daily_aggregator\.access: \w+ ")
STARTED = re.compile(rb"worker (\d+) started, pid (\d+)")
READY = re.compile(rb"\[(\d+)\] daily_aggregator\.server\.workers: worker \d+ ready")
START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = {"start_time": timestamp(START), "end_time": timestamp(START + timedelta(days=30))}


@asynccontextmanager
async def two_workers(database_url: str, *args: str) -> AsyncIterator[Service]:
    """`daily-aggregator serve --workers 2` on the test's database until the block ends."""
    async with serve("--database-url", database_url, "--workers", "2", *args) as service:
        yield service


def worker_pids(service: Service) -> dict[int, int]:
    """The pid of the latest process of each worker, by worker number, from the log."""
    return {int(number): int(pid) for number, pid in STARTED.findall(service.log)}


def ready_pids(service: Service) -> set[int]:
    """The pids of the worker processes that have said they serve."""
    return {int(pid) for pid in READY.findall(service.log)}


def new_channel(service: Service) -> grpc.aio.Channel:
    """A channel with a connection of its own (channels otherwise share connections)."""
    return grpc.aio.insecure_channel(
        service.target, options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def answering_pid(service: Service, channel: grpc.aio.Channel) -> int:
    """The pid of the worker that answers a call on `channel`: the pid its access-log line
    names. Calls must not overlap, so that the newest line is this call's."""
    before = len(ACCESS.findall(service.log))
    await Stub(channel).Summary(pb.SummaryRequest(**SPAN), timeout=30)
    async with asyncio.timeout(30):
        while len(lines := ACCESS.findall(service.log)) == before:
            await asyncio.sleep(0.01)
    return int(lines[-1])


async def channel_to_each_worker(service: Service) -> dict[int, grpc.aio.Channel]:
    """Channels by the pid of the worker that serves them, one for each worker."""
    found: dict[int, grpc.aio.Channel] = {}
    for _ in range(60):  # the kernel picks a worker per connection at random
        channel = new_channel(service)
        pid = await answering_pid(service, channel)
        if pid in found:
            await channel.close()
        else:
            found[pid] = channel
        if len(found) == 2:
            return found
    raise AssertionError(f"every connection went to the worker {set(found)}")


async def record_with_client(service: Service) -> RecordResult:
    """Ten events stored through the bundled client, over a connection of its own."""
    async with AsyncClient(
        service.target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as client:
        return await client.record(
            [Event(str(uuid.uuid4()), 10, 60, occurred_at=START) for _ in range(10)]
        )


async def close_all(channels: dict[int, grpc.aio.Channel]) -> None:
    for channel in channels.values():
        await channel.close()


async def test_two_workers_answer_on_one_port_and_ingest_through_both_is_exact(
    database_url: str,
) -> None:
    learners = [str(uuid.uuid4()) for _ in range(30)]
    rng = random.Random(11)
    streams = [
        [
            [
                event(
                    user_id=rng.choice(learners),
                    at=START + timedelta(minutes=rng.randrange(60 * 24 * 30)),
                    words=rng.randrange(100),
                    country=rng.choice(["JP", "US", ""]),
                )
                for _ in range(200)
            ]
            for _ in range(5)
        ]
        for _ in range(8)
    ]
    sent = [e for stream in streams for batch in stream for e in batch]
    async with two_workers(database_url) as service:
        channels = await channel_to_each_worker(service)
        assert set(channels) == set(worker_pids(service).values())
        stubs = [Stub(channel) for channel in channels.values()]
        responses = await asyncio.gather(
            *(record(stubs[i % 2], stream) for i, stream in enumerate(streams))
        )
        conn = await asyncpg.connect(database_url)
        try:
            await folded(conn)
            totals = await conn.fetchrow(TOTALS)
        finally:
            await conn.close()
        summaries = [await stub.Summary(pb.SummaryRequest(**SPAN)) for stub in stubs]
        await close_all(channels)
    assert sum(r.inserted for r in responses) == len(sent) == 8000
    assert_folded_exactly(totals, len(sent))
    for summary in summaries:
        assert summary.totals.events == len(sent)
        assert summary.totals.word_count == sum(e.word_count for e in sent)
        assert summary.totals.active_users == len(learners)


async def test_a_second_service_on_the_port_is_refused(database_url: str) -> None:
    async with two_workers(database_url) as service:
        for workers in ("1", "2"):
            process = await asyncio.create_subprocess_exec(
                COMMAND, "serve", "--listen", service.target, "--database-url", database_url,
                "--workers", workers, stderr=asyncio.subprocess.PIPE, env=environment(),
            )  # fmt: skip
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 1, workers
            assert f"cannot listen on {service.target}: address in use" in stderr.decode()
        async with new_channel(service) as channel:
            assert (await record(Stub(channel), [[event()]])).inserted == 1


async def test_a_killed_worker_is_replaced_while_the_other_answers(database_url: str) -> None:
    async with two_workers(database_url) as service:
        channels = await channel_to_each_worker(service)
        victim, survivor = channels
        os.kill(victim, signal.SIGKILL)
        # Connections the dying worker had accepted but not served are reset; the client
        # resends, and the calls reach the worker left.
        meanwhile = await asyncio.gather(*(record_with_client(service) for _ in range(4)))
        on_survivor = await record(Stub(channels[survivor]), [[event() for _ in range(10)]])
        async with asyncio.timeout(60):
            while not (replacements := ready_pids(service) - {victim, survivor}):
                await asyncio.sleep(0.05)
        [replacement] = replacements
        await close_all(channels)
        again = await channel_to_each_worker(service)
        await close_all(again)
    assert [r.inserted + r.duplicates for r in meanwhile] == [10] * 4
    assert on_survivor.inserted == 10
    assert re.search(
        rb"worker \d \(pid %d\) exited with signal SIGKILL; starting another in" % victim,
        service.log,
    )
    assert set(again) == {survivor, replacement}
    assert set(worker_pids(service).values()) == {survivor, replacement}
    assert not alive(victim)


async def test_sigterm_drains_every_worker_then_exits_zero(database_url: str) -> None:
    async with two_workers(database_url, "--grace-seconds", "20") as service:
        channels = await channel_to_each_worker(service)
        watches = [
            health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            )
            for channel in channels.values()
        ]
        before = [(await watch.read()).status for watch in watches]
        calls = [Stub(channel).RecordEvents() for channel in channels.values()]
        for call in calls:
            await call.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
        # The signal must find both streams in flight, not still on their way.
        await stored_events(database_url, at_least=20)
        service.process.send_signal(signal.SIGTERM)
        during = [(await watch.read()).status for watch in watches]
        for watch in watches:
            watch.cancel()
        for call in calls:
            await call.write(pb.RecordEventsRequest(events=[event() for _ in range(5)]))
            await call.done_writing()
        responses = [await call for call in calls]
        assert await asyncio.wait_for(service.process.wait(), 60) == 0
        await close_all(channels)
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    assert before == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert during == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
    assert [(r.received, r.inserted) for r in responses] == [(15, 15), (15, 15)]
    assert stored == 30
    for number in (1, 2):
        assert b"worker %d stopped" % number in service.log
    assert not any(alive(pid) for pid in worker_pids(service).values())


async def test_a_long_lived_channel_reaches_both_workers_as_its_connections_age(
    database_url: str,
) -> None:
    age = ("--max-connection-age-seconds", "0.5", "--max-connection-age-grace-seconds", "60")
    async with two_workers(database_url, *age) as service, new_channel(service) as channel:
        # A stream that outlives many connection ages still finishes on its own connection.
        stream = Stub(channel).RecordEvents()
        await stream.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
        seen: set[int] = set()
        async with asyncio.timeout(60):
            while len(seen) < 2:
                seen.add(await answering_pid(service, channel))
        await stream.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
        await stream.done_writing()
        response = await stream
    assert seen == set(worker_pids(service).values())
    assert (response.received, response.inserted) == (20, 20)


METRICS_AT = re.compile(rb"Prometheus metrics at (http://\S+/metrics)")


def summaries_handled(text: str) -> float:
    """grpc_server_handled_total of successful Summary calls, from a scrape."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels.get("grpc_method") == "Summary"
        and sample.labels.get("grpc_code") == "OK"
    )


async def scrape(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=30) as response:
            body: bytes = response.read()
            return body.decode()

    return await asyncio.to_thread(get)


async def test_the_supervisor_serves_the_metrics_of_every_worker(database_url: str) -> None:
    async with two_workers(database_url, "--metrics-listen", "127.0.0.1:0") as service:
        [url] = {m.decode() for m in METRICS_AT.findall(service.log)}
        channels = await channel_to_each_worker(service)
        before = summaries_handled(await scrape(url))
        for channel in channels.values():
            for _ in range(3):
                await Stub(channel).Summary(pb.SummaryRequest(**SPAN))
        after = summaries_handled(await scrape(url))
        text = await scrape(url)
        await close_all(channels)
    # Both workers answered three calls each; the supervisor's view counts all six.
    assert after - before == 6
    assert "daily_aggregator_pool_connections" in text
