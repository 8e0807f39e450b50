"""Request bytes that are not a valid message: INVALID_ARGUMENT, no traceback, nothing lost."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as aio_health
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from daily_aggregator.client import AsyncClient
from daily_aggregator.server.app import SERVICE_NAME, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.decoding import DecodingInterceptor
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, logged, timestamp

Stub = aggregator_pb2_grpc.AggregatorServiceStub

START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 6, 2, tzinfo=UTC)
RANGE = {"start_time": timestamp(START), "end_time": timestamp(END)}

CORRUPT = b"\xff\xff\xff"  # field 31 with wire type 7, which does not exist
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request) holding invalid UTF-8
TRUNCATED = pb.SummaryRequest(user_id="x" * 40, **RANGE).SerializeToString()[:-3]

UNARY = ["Summary", "Uniques", "Breakdown", "Retention", "LearnerStats", "DeleteUser"]


def path(method: str) -> str:
    return f"/{SERVICE_NAME}/{method}"


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records at WARNING or above, or with a traceback."""
    return [
        f"{r.name} {r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING or r.exc_info
    ]


@pytest.mark.parametrize("method", UNARY)
@pytest.mark.parametrize("raw", [CORRUPT, BAD_UTF8, TRUNCATED], ids=["corrupt", "utf8", "cut"])
async def test_a_unary_request_that_does_not_decode_is_invalid_argument(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, method: str, raw: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    call = channel.unary_unary(path(method))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(raw)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert details.startswith(f"malformed request: cannot decode daily_aggregator.v1.{method}")
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("method", ["Check", "Watch"])
async def test_a_health_request_that_does_not_decode_is_invalid_argument(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"/grpc.health.v1.Health/{method}"

    async def ask() -> None:
        if method == "Check":
            await channel.unary_unary(name)(CORRUPT)
        else:
            async for _ in channel.unary_stream(name)(CORRUPT):
                pass

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert details.startswith("malformed request: cannot decode grpc.health.v1.HealthCheckRequest")
    assert tracebacks(caplog) == []
    # And the health service answers on.
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_reflection_message_that_does_not_decode_is_invalid_argument(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    list_services = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    call = channel.stream_stream(name)(iter([list_services, CORRUPT]))
    first = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
    assert SERVICE_NAME in [s.name for s in first.list_services_response.service]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(
        "malformed request: stream message 1 (counting from 0): cannot decode"
        " grpc.reflection.v1alpha.ServerReflectionRequest"
    )
    assert tracebacks(caplog) == []
    # And reflection answers on, as grpcurl uses it.
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    services = [s.name async for r in responses for s in r.list_services_response.service]
    assert SERVICE_NAME in services


async def test_the_reason_says_what_was_wrong_with_the_bytes(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(path("Summary"))(BAD_UTF8)
    assert raised.value.details() == (
        "malformed request: cannot decode daily_aggregator.v1.SummaryRequest:"
        " String field had bad UTF-8"
    )


async def test_the_access_log_has_one_info_line_for_it(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daily_aggregator.access")
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(path("Uniques"))(CORRUPT)
    [line] = logged(caplog.records, "daily_aggregator.access")
    assert line.levelno == logging.INFO
    assert " INVALID_ARGUMENT " in line.getMessage()
    assert line.getMessage().startswith("Uniques ")


async def test_a_malformed_stream_message_fails_the_stream_after_committing_what_came_before(
    channel: grpc.aio.Channel, stub: Stub, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = [[event() for _ in range(30)], [event() for _ in range(20)]]
    after = [event() for _ in range(10)]
    messages = [
        *(pb.RecordEventsRequest(events=b).SerializeToString() for b in before),
        CORRUPT,
        pb.RecordEventsRequest(events=after).SerializeToString(),
    ]
    record = channel.stream_unary(path("RecordEvents"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await record(iter(messages))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "malformed request: stream message 2 (counting from 0): cannot decode"
        " daily_aggregator.v1.RecordEventsRequest: Wire format was corrupt"
    )
    # Both batches before it had committed when the error arrived; nothing after it was read.
    keys = {row["k"] for row in await pool.fetch("SELECT idempotency_key::text AS k FROM events")}
    assert keys == {e.idempotency_key for b in before for e in b}
    assert tracebacks(caplog) == []
    # Resending the whole stream, fixed, stores the rest and counts the rest as duplicates.
    response = await stub.RecordEvents(
        iter(
            [
                *(pb.RecordEventsRequest(events=b) for b in before),
                pb.RecordEventsRequest(events=after),
            ]
        )
    )
    assert (response.inserted, response.duplicates) == (10, 50)


async def test_a_stream_whose_first_message_is_malformed_stores_nothing(
    channel: grpc.aio.Channel, pool: asyncpg.Pool
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.stream_unary(path("RecordEvents"))(iter([BAD_UTF8]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream message 0 " in (raised.value.details() or "")
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


async def test_the_client_raises_invalid_argument_and_the_server_answers_on(
    channel: grpc.aio.Channel, stub: Stub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(path("Breakdown"))(CORRUPT)
    # Malformed requests end their own calls only: the same channel keeps working.
    await stub.RecordEvents(iter([pb.RecordEventsRequest(events=[event(at=START)])]))
    summary = await stub.Summary(pb.SummaryRequest(**RANGE))
    assert summary.totals.events == 1


async def test_a_call_without_an_accepted_token_is_refused_before_its_bytes_are_judged(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("the-token\n")
    running = await start_server(pool, dataclasses.replace(settings, tokens_file=tokens))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for method in UNARY:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await channel.unary_unary(path(method))(CORRUPT)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.stream_unary(path("RecordEvents"))(iter([CORRUPT]))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncClient(f"127.0.0.1:{running.port}", token="the-token") as client:
            assert (await client.uniques(START, END)).unique_users == 0
    finally:
        await running.stop(None)


FAIL_MARKED_INSERTS = """
CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.word_count = 999 THEN
        RAISE EXCEPTION 'terminating connection due to administrator command'
            USING ERRCODE = 'admin_shutdown';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_marked();
"""


async def test_a_batch_that_failed_to_commit_decides_the_status_not_the_malformed_message(
    channel: grpc.aio.Channel, pool: asyncpg.Pool
) -> None:
    # PostgreSQL fails the first batch as it does when an administrator ends the session.
    await pool.execute(FAIL_MARKED_INSERTS)
    failing = pb.RecordEventsRequest(events=[event(words=999)]).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.stream_unary(path("RecordEvents"))(iter([failing, CORRUPT]))
    # UNAVAILABLE says "resend the whole stream": INVALID_ARGUMENT would pass for
    # "the batches before it are committed", which the first is not.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


def yielding_health() -> grpc.GenericRpcHandler:
    """A health service whose Watch is an async generator, the other kind of streaming handler."""

    async def check(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def watch(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    codecs = {
        "request_deserializer": health_pb2.HealthCheckRequest.FromString,
        "response_serializer": health_pb2.HealthCheckResponse.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(check, **codecs),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, **codecs),
        },
    )


@pytest.mark.parametrize("watch", ["writes", "yields"])
async def test_any_service_behind_the_interceptor_answers_malformed_unary_requests(
    watch: str,
) -> None:
    # The health service has both unary kinds: Check answers once, Watch streams answers
    # (written to its context, or yielded). Behind DecodingInterceptor, bytes that do not
    # decode fail either before its handler runs.
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    server = grpc.aio.server(interceptors=[DecodingInterceptor(health)])
    if watch == "writes":
        health_pb2_grpc.add_HealthServicer_to_server(aio_health.HealthServicer(), server)
    else:
        server.add_generic_rpc_handlers((yielding_health(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, call in (
                ("Check", channel.unary_unary("/grpc.health.v1.Health/Check")(CORRUPT)),
                ("Watch", channel.unary_stream("/grpc.health.v1.Health/Watch")(CORRUPT).read()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert (raised.value.details() or "").startswith(
                    "malformed request: cannot decode grpc.health.v1.HealthCheckRequest: "
                )
            stub = health_pb2_grpc.HealthStub(channel)
            stream = stub.Watch(health_pb2.HealthCheckRequest())
            first = await stream.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stream.cancel()
            checked = await stub.Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
