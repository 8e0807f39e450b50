"""Bearer tokens and TLS: a real server, real channels, a certificate made by openssl."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from daily_aggregator.client import AsyncClient, Event, UnauthenticatedError
from daily_aggregator.server.app import SERVICE_NAME, RunningServer, StartupError, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import cli, event, timestamp

START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 6, 2, tzinfo=UTC)
TOKENS = ("first-token-7f3a", "second-token-c21e")


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# service tokens\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def guarded(
    pool: asyncpg.Pool, settings: Settings, tokens_file: Path
) -> AsyncIterator[RunningServer]:
    """A plaintext server that requires one of TOKENS."""
    running = await start_server(pool, dataclasses.replace(settings, tokens_file=tokens_file))
    yield running
    await running.stop(None)


def bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str]]:
    return (("authorization", f"{scheme} {token}"),)


async def test_calls_without_an_accepted_token_are_unauthenticated(
    guarded: RunningServer,
) -> None:
    request = pb.SummaryRequest(start_time=timestamp(START), end_time=timestamp(END))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        refusals = {
            "missing authorization metadata": None,
            "the bearer token is not accepted": bearer("not-a-token"),
            "must be 'Bearer <token>'": bearer(TOKENS[0], scheme="Basic"),
        }
        for reason, metadata in refusals.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Summary(request, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason in (refused.value.details() or "")

        for token, scheme in ((TOKENS[0], "Bearer"), (TOKENS[1], "bearer")):
            response = await stub.Summary(request, metadata=bearer(token, scheme))
            assert len(response.buckets) == 1


async def test_a_refused_stream_stores_nothing_and_an_accepted_one_everything(
    guarded: RunningServer, pool: asyncpg.Pool
) -> None:
    batches = [[event() for _ in range(10)] for _ in range(3)]
    requests = [pb.RecordEventsRequest(events=batch) for batch in batches]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecordEvents(iter(requests), metadata=bearer("wrong"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await pool.fetchval("SELECT count(*) FROM events") == 0

        response = await stub.RecordEvents(iter(requests), metadata=bearer(TOKENS[1]))
        assert response.inserted == 30
    assert await pool.fetchval("SELECT count(*) FROM events") == 30


async def test_health_and_reflection_need_no_token(guarded: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [listing] = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
    assert SERVICE_NAME in {s.name for s in listing.list_services_response.service}


async def test_client_token_option_and_unauthenticated_error(guarded: RunningServer) -> None:
    target = f"127.0.0.1:{guarded.port}"
    user = "11111111-1111-4111-8111-111111111111"
    async with AsyncClient(target, token=TOKENS[0]) as client:
        result = await client.record([Event(user, 5, 50, occurred_at=START)])
        assert result.inserted == 1
        assert (await client.summary(START, END, user_id=user)).totals.word_count == 5
    async with AsyncClient(target, token="wrong") as client:
        with pytest.raises(UnauthenticatedError) as refused:
            await client.uniques(START, END)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "not accepted" in refused.value.message


async def test_tls_with_a_token_end_to_end(
    pool: asyncpg.Pool, settings: Settings, tokens_file: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    secured = dataclasses.replace(settings, tokens_file=tokens_file, tls_cert=cert, tls_key=key)
    running = await start_server(pool, secured)
    target = f"127.0.0.1:{running.port}"
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with AsyncClient(target, credentials=credentials, token=TOKENS[0]) as client:
            user = "22222222-2222-4222-8222-222222222222"
            assert (await client.record([Event(user, 7, 70, occurred_at=START)])).inserted == 1
            assert (await client.uniques(START, END)).unique_users == 1

        # A plaintext client cannot talk to the TLS port.
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

        # The command line, over TLS: without a token it says so in one line.
        span = ("--from", "2025-06-01T00:00:00Z", "--to", "2025-06-02T00:00:00Z", "--json")
        ok = await cli("uniques", "--target", target, "--tls-ca", str(cert), *span,
                       env={"DAILY_AGGREGATOR_TOKEN": TOKENS[1]})  # fmt: skip
        assert ok.code == 0, ok.err
        assert '"unique_users": 1' in ok.out
        refused = await cli("uniques", "--target", target, "--tls-ca", str(cert), *span)
        assert refused.code == 2
        assert refused.err.strip().splitlines() == [
            "daily-aggregator uniques: not authenticated: missing authorization metadata; "
            "send 'authorization: Bearer <token>' (pass --token or set DAILY_AGGREGATOR_TOKEN)"
        ]
    finally:
        await running.stop(None)


async def test_unusable_tokens_or_tls_files_stop_the_start(
    database_url: str, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# no token yet\n\n")
    missing = tmp_path / "missing.pem"
    for broken, message in (
        ({"tokens_file": missing}, "cannot use the tokens file: [Errno 2]"),
        ({"tokens_file": empty}, f"cannot use the tokens file: {empty} holds no token"),
        ({"tls_cert": missing, "tls_key": missing}, "cannot read the TLS files: [Errno 2]"),
    ):
        with pytest.raises(StartupError) as refused:
            await start_server(pool, dataclasses.replace(settings, **broken))
        assert str(refused.value).startswith(message)

    with pytest.raises(SystemExit):
        Settings.from_args(["--tls-cert", str(tmp_path / "cert.pem")], env={})
    parsed = Settings.from_args([], env={"DAILY_AGGREGATOR_TOKENS_FILE": str(empty)})
    assert parsed.tokens_file == empty

    served = await cli("serve", "--listen", "127.0.0.1:0", "--database-url", database_url,
                       "--tokens-file", str(empty))  # fmt: skip
    assert served.code == 1
    assert served.err.strip().splitlines()[-1] == (
        f"daily-aggregator serve: cannot use the tokens file: {empty} holds no token"
    )
