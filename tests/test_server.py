"""The server around the service: health, reflection, outages, message limits, shutdown."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from daily_aggregator.server.app import SERVICE_NAME, RunningServer, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import create_pool, migrate
from daily_aggregator.server.embedded import EmbeddedPostgres
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record

Stub = aggregator_pb2_grpc.AggregatorServiceStub


async def test_health_reports_serving_for_the_server_and_the_service(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_each_finished_call_is_one_access_log_line(
    channel: grpc.aio.Channel, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daily_aggregator.access")
    await record(stub, [[event(), event()], [event(words=2_000_000)]])
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Uniques(pb.UniquesRequest())
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    lines = [r.getMessage() for r in caplog.records if r.name == "daily_aggregator.access"]
    assert len(lines) == 2, lines
    peer = r"ipv[46]:\S+"
    assert re.fullmatch(
        rf"RecordEvents {peer} OK \d+\.\d ms received=3 inserted=2 duplicates=0 conflicts=0 "
        r"rejected=1",
        lines[0],
    )
    assert re.fullmatch(rf"Uniques {peer} INVALID_ARGUMENT \d+\.\d ms", lines[1])


async def test_reflection_lists_and_describes_the_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    responses = [r async for r in reflection.ServerReflectionInfo(iter(requests))]
    listed = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= listed
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    [service] = [s for f in files for s in f.service if s.name == "AggregatorService"]
    assert {m.name for m in service.method} == {
        "RecordEvents",
        "Summary",
        "Uniques",
        "Breakdown",
        "Retention",
        "LearnerStats",
        "DeleteUser",
    }


async def test_graceful_stop_lets_a_stream_in_flight_finish(
    server: RunningServer, stub: Stub, pool: asyncpg.Pool
) -> None:
    call = stub.RecordEvents()
    await call.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
    # The stop must find the stream in flight, not still on its way to the server.
    async with asyncio.timeout(30):
        while await pool.fetchval("SELECT count(*) FROM events") < 10:
            await asyncio.sleep(0.02)
    stopping = asyncio.create_task(server.stop(60))
    await asyncio.sleep(0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as late:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await aggregator_pb2_grpc.AggregatorServiceStub(late).RecordEvents(
                iter([pb.RecordEventsRequest(events=[event()])]), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    await call.write(pb.RecordEventsRequest(events=[event() for _ in range(5)]))
    await call.done_writing()
    response = await call
    assert (response.received, response.inserted) == (15, 15)
    await stopping
    assert await pool.fetchval("SELECT count(*) FROM events") == 15


async def test_database_outage_is_unavailable_and_a_resend_is_clean(
    tmp_path: Path, settings: Settings
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    dsn = await postgres.start()
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(dsn, min_size=1, max_size=4)
    running = await start_server(pool, settings)
    batches = [[event() for _ in range(100)] for _ in range(4)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)

            outage = asyncio.Event()

            async def stream_with_outage() -> AsyncIterator[pb.RecordEventsRequest]:
                for batch in batches[:2]:
                    yield pb.RecordEventsRequest(events=batch)
                await outage.wait()
                # One message more, with the stream's end right behind it, so the client has
                # sent everything before the service can fail the stream: a stream ended while
                # its client is still sending surfaces as INTERNAL (grpc/grpc#36066).
                yield pb.RecordEventsRequest(events=batches[2])

            call = stub.RecordEvents(stream_with_outage())
            # Both batches committed, so nothing is in flight when the database goes away.
            while await pool.fetchval("SELECT count(*) FROM events") < 200:
                await asyncio.sleep(0.02)
            await postgres.stop()
            outage.set()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database unavailable" in (failed.value.details() or "")

            await postgres.start()
            response = await record(stub, batches)
            assert (response.inserted, response.duplicates) == (200, 200)
            assert (response.conflicts, response.rejected) == (0, 0)
            assert await pool.fetchval("SELECT count(*) FROM events") == 400
    finally:
        await running.stop(None)
        await pool.close()
        await postgres.stop()


async def test_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    connections = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in connections))
        assert sorted(len(a) for a in applied)[:-1] == [0, 0, 0]
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == max(applied, key=len)
    finally:
        for c in [conn, *connections]:
            await c.close()
