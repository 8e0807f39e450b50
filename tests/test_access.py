"""Per-token scopes and names: a real server over real channels."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from daily_aggregator.client import AsyncClient, Event, PermissionDeniedError
from daily_aggregator.server.access import METHOD_SCOPES, Scope, required_scope
from daily_aggregator.server.app import RunningServer, StartupError, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import cli, event, timestamp

START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 6, 2, tzinfo=UTC)

SECRETS = {
    "etl": "ingest-secret-1a2b",
    "dashboard": "query-secret-3c4d",
    "ops": "admin-secret-5e6f",
    "token-5": "bare-secret-7a8b",
}
TOKENS_FILE = f"""\
# name -> what it may do
{SECRETS["etl"]}   scopes=ingest name=etl
{SECRETS["dashboard"]} name=dashboard scopes=query
{SECRETS["ops"]}    scopes=admin  name=ops
{SECRETS["token-5"]}
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
    }


async def test_each_scope_allows_its_methods_and_a_refusal_names_the_scope_needed(
    scoped: RunningServer, scoped_stub: Stub, pool: asyncpg.Pool
) -> None:
    allowed = {
        "etl": {"RecordEvents"},
        "dashboard": {"Summary", "Uniques", "Breakdown"},
        "ops": set(),  # no administrative RPC exists yet
        "token-5": {"RecordEvents", "Summary", "Uniques", "Breakdown"},  # a bare token
    }
    needs = {"RecordEvents": "ingest", "Summary": "query", "Uniques": "query", "Breakdown": "query"}
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

    lines = [r.getMessage() for r in caplog.records if r.name == "daily_aggregator.access"]
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
    database_url: str, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "tokens"
    for content, problem in BAD_LINES.items():
        path.write_text(content + "\n")
        with pytest.raises(StartupError) as refused:
            await start_server(pool, dataclasses.replace(settings, tokens_file=path))
        assert str(refused.value) == f"cannot use the tokens file: {path}, {problem}"
        assert "s3cr3t" not in str(refused.value)

    path.write_text("good-token name=etl\nbad-token scopes=everything\n")
    served = await cli("serve", "--listen", "127.0.0.1:0", "--database-url", database_url,
                       "--tokens-file", str(path))  # fmt: skip
    assert served.code == 1
    assert served.err.strip().splitlines()[-1] == (
        f"daily-aggregator serve: cannot use the tokens file: {path}, line 2: unknown scope "
        "'everything'; the scopes are ingest, query, admin"
    )
