"""Per-token scopes, rates and names, and mutual TLS: a real server over real channels."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from daily_aggregator.client import AsyncClient, Event, PermissionDeniedError
from daily_aggregator.server.access import METHOD_SCOPES, Scope, Token, required_scope
from daily_aggregator.server.app import SERVICE_NAME, RunningServer, StartupError, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.rate_limits import RateLimiter
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import cli, event, logged, timestamp

START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 6, 2, tzinfo=UTC)

SECRETS = {
    "etl": "ingest-secret-1a2b",
    "dashboard": "query-secret-3c4d",
    "ops": "admin-secret-5e6f",
    "token-5": "bare-secret-7a8b",
    "reports": "slow-queries-9c0d",
    "feeder": "slow-events-1e2f",
}
TOKENS_FILE = f"""\
# name -> what it may do
{SECRETS["etl"]}   scopes=ingest name=etl
{SECRETS["dashboard"]} name=dashboard scopes=query
{SECRETS["ops"]}    scopes=admin  name=ops
{SECRETS["token-5"]}
{SECRETS["reports"]} queries_per_second=1 name=reports
{SECRETS["feeder"]} scopes=ingest,query events_per_second=100 name=feeder
"""

Stub = aggregator_pb2_grpc.AggregatorServiceStub


@pytest.fixture
async def scoped(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """A plaintext server with the tokens of TOKENS_FILE."""
    path = tmp_path / "tokens"
    path.write_text(TOKENS_FILE)
    running = await start_server(pool, dataclasses.replace(settings, tokens_file=path))
    yield running
    await running.stop(None)


@pytest.fixture
async def scoped_stub(scoped: RunningServer) -> AsyncIterator[Stub]:
    """A stub over a channel to the `scoped` server."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scoped.port}") as channel:
        yield aggregator_pb2_grpc.AggregatorServiceStub(channel)


def bearer(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {SECRETS[name]}"),)


def calls(stub: Stub) -> dict[str, Any]:
    """One call of each RPC, by method name, taking the call's metadata."""
    span = {"start_time": timestamp(START), "end_time": timestamp(END)}
    return {
        "RecordEvents": lambda metadata: stub.RecordEvents(
            iter([pb.RecordEventsRequest(events=[event()])]), metadata=metadata
        ),
        "Summary": lambda metadata: stub.Summary(pb.SummaryRequest(**span), metadata=metadata),
        "Uniques": lambda metadata: stub.Uniques(pb.UniquesRequest(**span), metadata=metadata),
        "Breakdown": lambda metadata: stub.Breakdown(
            pb.BreakdownRequest(**span, dimension=pb.DIMENSION_USER), metadata=metadata
        ),
        "Retention": lambda metadata: stub.Retention(
            pb.RetentionRequest(**span), metadata=metadata
        ),
        "LearnerStats": lambda metadata: stub.LearnerStats(
            pb.LearnerStatsRequest(user_id=str(uuid.uuid4())), metadata=metadata
        ),
        "DeleteUser": lambda metadata: stub.DeleteUser(
            pb.DeleteUserRequest(user_id=str(uuid.uuid4())), metadata=metadata
        ),
    }


async def test_each_scope_allows_its_methods_and_a_refusal_names_the_scope_needed(
    scoped: RunningServer, scoped_stub: Stub, pool: asyncpg.Pool
) -> None:
    reads = {"Summary", "Uniques", "Breakdown", "Retention", "LearnerStats"}
    allowed = {
        "etl": {"RecordEvents"},
        "dashboard": reads,
        "ops": {"DeleteUser"},
        "token-5": {"RecordEvents", "DeleteUser", *reads},  # a bare token
    }
    needs = {"RecordEvents": "ingest", "DeleteUser": "admin"} | dict.fromkeys(reads, "query")
    for name, methods in allowed.items():
        for method, call in calls(scoped_stub).items():
            if method in methods:
                await call(bearer(name))
                continue
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(bearer(name))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, method)
            assert f"{method} needs the {needs[method]} scope; token {name!r} has" in (
                refused.value.details() or ""
            )
    # Only the two tokens with the ingest scope stored their event.
    assert await pool.fetchval("SELECT count(*) FROM events") == 2

    async with AsyncClient(f"127.0.0.1:{scoped.port}", token=SECRETS["dashboard"]) as client:
        with pytest.raises(PermissionDeniedError) as denied:
            await client.record([Event("11111111-1111-4111-8111-111111111111", 1, 1)])
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the ingest scope" in denied.value.message
    span = ("--from", "2025-06-01T00:00:00Z", "--to", "2025-06-02T00:00:00Z")
    run = await cli("uniques", "--target", f"127.0.0.1:{scoped.port}", *span,
                    env={"DAILY_AGGREGATOR_TOKEN": SECRETS["etl"]})  # fmt: skip
    assert run.code == 2
    assert run.err.strip().splitlines() == [
        "daily-aggregator uniques: not permitted: Uniques needs the query scope; "
        "token 'etl' has ingest"
    ]


def test_methods_not_in_the_scopes_table_need_admin() -> None:
    service = pb.DESCRIPTOR.services_by_name["AggregatorService"]
    assert set(METHOD_SCOPES) <= set(service.methods_by_name)
    assert required_scope("DeleteUser") is Scope.ADMIN
    assert required_scope("Summary") is Scope.QUERY


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a failed call, in seconds."""
    status = rpc_status.from_call(error)
    assert status is not None
    [detail] = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    return info.retry_delay.ToTimedelta().total_seconds()


async def test_queries_over_their_rate_get_resource_exhausted_with_retry_info(
    scoped_stub: Stub,
) -> None:
    summary = calls(scoped_stub)["Summary"]
    # 1 query per second, burst 1: twenty at once cannot all be admitted.
    outcomes = await asyncio.gather(
        *(summary(bearer("reports")) for _ in range(20)), return_exceptions=True
    )
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert 1 <= len(refusals) < 20, outcomes
    for refusal in refusals:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(
            r"token 'reports' is over its 1 queries per second; retry in [01]\.\d{3} s",
            refusal.details() or "",
        )
        assert 0 < retry_delay(refusal) <= 1.0

    # Another token's rate is its own.
    await summary(bearer("dashboard"))

    # Waiting as long as RetryInfo says is enough.
    for _ in range(20):
        try:
            await summary(bearer("reports"))
        except grpc.aio.AioRpcError as refused:
            await asyncio.sleep(retry_delay(refused))
            await summary(bearer("reports"))
            break
    else:
        pytest.fail("twenty queries in a row at 1 per second were all admitted")


async def test_a_stream_over_its_events_rate_is_slowed_down_and_stores_everything(
    scoped_stub: Stub, pool: asyncpg.Pool
) -> None:
    # 100 events per second, burst 100: the first message (over a second's worth) takes a
    # full bucket and leaves it 150 in debt, so the second can go 2 s later at the earliest.
    requests = [
        pb.RecordEventsRequest(events=[event() for _ in range(250)]),
        pb.RecordEventsRequest(events=[event() for _ in range(50)]),
    ]
    began = time.monotonic()
    response = await scoped_stub.RecordEvents(iter(requests), metadata=bearer("feeder"))
    took = time.monotonic() - began
    assert (response.received, response.inserted) == (300, 300)
    assert await pool.fetchval("SELECT count(*) FROM events") == 300
    assert took >= 2.0, took

    # Its queries are not limited by its events rate.
    await calls(scoped_stub)["Summary"](bearer("feeder"))


async def test_the_rate_limiter_reports_each_refusal_and_hold_up() -> None:
    limited: list[tuple[str, str]] = []
    token = Token("cron", frozenset(Scope), events_per_second=50, queries_per_second=1)
    limiter = RateLimiter([token], on_limited=lambda name, meter: limited.append((name, meter)))
    assert limiter.admit_query("cron") == 0
    assert limiter.admit_query("cron") > 0
    assert limiter.admit_query("someone-unlimited") == 0
    assert limited == [("cron", "queries")]

    await limiter.admit_events("cron", 50)  # the full bucket
    assert limited == [("cron", "queries")]
    began = time.monotonic()
    await limiter.admit_events("cron", 5)
    assert time.monotonic() - began >= 0.1
    assert limited == [("cron", "queries"), ("cron", "events")]


async def test_the_access_log_names_the_token_and_never_shows_it(
    scoped_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run = calls(scoped_stub)
    await run["RecordEvents"](bearer("etl"))
    await run["Summary"](bearer("token-5"))
    for name, method in (("dashboard", "RecordEvents"), ("not-a-token", "Summary")):
        metadata = bearer(name) if name in SECRETS else (("authorization", f"Bearer {name}"),)
        with pytest.raises(grpc.aio.AioRpcError):
            await run[method](metadata)

    records = logged(caplog.records, "daily_aggregator.access")
    lines = [r.getMessage() for r in records]
    peer = r"ipv[46]:\S+"
    expected = [
        rf"RecordEvents {peer} OK \d+\.\d ms token=etl received=1 inserted=1 .*",
        rf"Summary {peer} OK \d+\.\d ms token=token-5",
        rf"RecordEvents {peer} PERMISSION_DENIED \d+\.\d ms token=dashboard",
        rf"Summary {peer} UNAUTHENTICATED \d+\.\d ms",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), line
    for secret in (*SECRETS.values(), "not-a-token"):
        assert secret not in caplog.text


BAD_LINES = {
    "s3cr3t scopes=ingest,reading": "line 1: unknown scope 'reading'; the scopes are ingest, "
    "query, admin",
    "s3cr3t scopes=": "line 1: scopes= names no scope; give one or more of ingest, query, admin",
    "s3cr3t events_per_second=fast": "line 1: events_per_second must be a whole number of at "
    "least 1, not 'fast'",
    "s3cr3t queries_per_second=0": "line 1: queries_per_second must be a whole number of at "
    "least 1, not '0'",
    "s3cr3t colour=blue": "line 1: unknown option 'colour'; the options are scopes, "
    "events_per_second, queries_per_second, name",
    "s3cr3t name=a name=b": "line 1: option name is given twice",
    "s3cr3t ingest": "line 1: 'ingest' is not an option; write KEY=VALUE after the token",
    "name=etl s3cr3t": "line 1: starts with the option name=; the token comes first",
    "s3cr3t name=etl/eu": "line 1: name 'etl/eu' must be 1-64 letters, digits, '.', '_' or '-', "
    "starting with a letter or digit",
    "# tokens\ns3cr3t-a name=etl\ns3cr3t-b name=etl": "line 3: name 'etl' is already used "
    "on line 2; names must be unique",
    "s3cr3t-a\ns3cr3t-b name=token-1": "line 2: name 'token-1' is already used on line 1; "
    "names must be unique",
    "s3cr3t\n\ns3cr3t": "line 3: the same token is already on line 1",
}


async def test_a_bad_tokens_file_line_stops_the_start_naming_line_and_problem(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "tokens"
    for content, problem in BAD_LINES.items():
        path.write_text(content + "\n")
        with pytest.raises(StartupError) as refused:
            await start_server(pool, dataclasses.replace(settings, tokens_file=path))
        assert str(refused.value) == f"cannot use the tokens file: {path}, {problem}"
        assert "s3cr3t" not in str(refused.value)

    # Said at once, not after waiting (here for ever) for a database that is not there.
    path.write_text("good-token name=etl\nbad-token scopes=everything\n")
    served = await cli("serve", "--listen", "127.0.0.1:0", "--tokens-file", str(path),
                       "--database-url", "postgresql://nobody@127.0.0.1:1/none",
                       "--database-patience", "3600")  # fmt: skip
    assert served.code == 1
    assert served.err.strip().splitlines()[-1] == (
        f"daily-aggregator serve: cannot use the tokens file: {path}, line 2: unknown scope "
        "'everything'; the scopes are ingest, query, admin"
    )


def certificate(directory: Path, name: str, *, signer: str | None = None) -> tuple[Path, Path]:
    """A certificate and key `name`.pem/.key in `directory`: a CA when `signer` is None,
    else a client certificate signed by the CA `signer`."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout", str(key),
               "-out", str(cert), "-subj", f"/CN={name}"]  # fmt: skip
    if signer is not None:
        command += ["-CA", str(directory / f"{signer}.pem"),
                    "-CAkey", str(directory / f"{signer}.key"),
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-addext", "extendedKeyUsage=clientAuth"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and localhost, and its key."""
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def client_credentials(server_cert: Path, client: Sequence[Path] = ()) -> grpc.ChannelCredentials:
    if not client:
        return grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes())
    cert, key = client
    return grpc.ssl_channel_credentials(
        root_certificates=server_cert.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    server_cert, server_key = server_certificate(tmp_path)
    client_ca, _ = certificate(tmp_path, "client-ca")
    certificate(tmp_path, "other-ca")
    trusted = certificate(tmp_path, "ingest-service", signer="client-ca")
    stranger = certificate(tmp_path, "stranger", signer="other-ca")
    mutual = dataclasses.replace(
        settings, tls_cert=server_cert, tls_key=server_key, tls_client_ca=client_ca
    )
    running = await start_server(pool, mutual)
    target = f"127.0.0.1:{running.port}"
    try:
        credentials = client_credentials(server_cert, trusted)
        async with AsyncClient(target, credentials=credentials) as client:
            user = "33333333-3333-4333-8333-333333333333"
            assert (await client.record([Event(user, 7, 70, occurred_at=START)])).inserted == 1
            assert (await client.uniques(START, END)).unique_users == 1

        for refused in (client_credentials(server_cert), client_credentials(server_cert, stranger)):
            async with grpc.aio.secure_channel(target, refused) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
                    )
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

        cert, key = trusted
        span = ("--from", "2025-06-01T00:00:00Z", "--to", "2025-06-02T00:00:00Z", "--json")
        ok = await cli("uniques", "--target", target, "--tls-ca", str(server_cert),
                       "--tls-client-cert", str(cert), "--tls-client-key", str(key),
                       *span)  # fmt: skip
        assert ok.code == 0, ok.err
        assert '"unique_users": 1' in ok.out
    finally:
        await running.stop(None)

    with pytest.raises(StartupError) as refused_start:
        await start_server(pool, dataclasses.replace(settings, tls_client_ca=client_ca))
    assert str(refused_start.value) == (
        "a client CA (--tls-client-ca) needs --tls-cert and --tls-key"
    )
    with pytest.raises(SystemExit):
        Settings.from_args(["--tls-client-ca", str(client_ca)], env={})
    parsed = Settings.from_args(
        ["--tls-cert", str(server_cert), "--tls-key", str(server_key)],
        env={"DAILY_AGGREGATOR_TLS_CLIENT_CA": str(client_ca)},
    )
    assert parsed.tls_client_ca == client_ca


async def test_every_call_is_logged_before_its_caller_has_the_status(
    scoped_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused by the token check, by the handler's validation, and answered: in each case
    # the line is written before the status leaves, so a caller never gets there first.
    caplog.set_level(logging.INFO, logger="daily_aggregator.access")
    expected = []
    for attempt in range(150):
        kind = attempt % 3
        if kind == 0:
            with pytest.raises(grpc.aio.AioRpcError):
                await scoped_stub.Uniques(pb.UniquesRequest(), metadata=bearer("etl"))
            expected.append("Uniques PERMISSION_DENIED")
        elif kind == 1:
            with pytest.raises(grpc.aio.AioRpcError):
                await scoped_stub.Uniques(pb.UniquesRequest(), metadata=bearer("dashboard"))
            expected.append("Uniques INVALID_ARGUMENT")
        else:
            await scoped_stub.Summary(
                pb.SummaryRequest(start_time=timestamp(START), end_time=timestamp(END)),
                metadata=bearer("dashboard"),
            )
            expected.append("Summary OK")
        lines = [r.getMessage().split() for r in logged(caplog.records, "daily_aggregator.access")]
        assert [f"{words[0]} {words[2]}" for words in lines] == expected
