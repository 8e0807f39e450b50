"""Log records as text and as JSON: access lines with the caller's name, errors with tracebacks."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from daily_aggregator.server.access_log import AccessLogInterceptor
from daily_aggregator.server.app import SERVICE_NAME
from daily_aggregator.server.logs import JsonFormatter
from daily_aggregator.server.service import AggregatorService
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record


def token_name(details: grpc.HandlerCallDetails) -> str | None:
    """Names calls that carry the bearer token `s3cret` "ingest"; others have no name."""
    metadata = dict(details.invocation_metadata or ())
    return "ingest" if metadata.get("authorization") == "Bearer s3cret" else None


@pytest.fixture
async def named_stub(
    pool: asyncpg.Pool,
) -> AsyncIterator[aggregator_pb2_grpc.AggregatorServiceStub]:
    """The service behind an access log that names callers with `token_name`."""
    server = grpc.aio.server(
        interceptors=[AccessLogInterceptor(f"/{SERVICE_NAME}/", caller_name=token_name)]
    )
    aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(
        AggregatorService(pool, await TimeZones.load(pool)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield aggregator_pb2_grpc.AggregatorServiceStub(channel)
    await server.stop(None)


async def test_access_lines_name_the_caller_when_a_name_is_known(
    named_stub: aggregator_pb2_grpc.AggregatorServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daily_aggregator.access")
    requests = iter([pb.RecordEventsRequest(events=[event()])])
    await named_stub.RecordEvents(requests, metadata=[("authorization", "Bearer s3cret")])
    await record(named_stub, [[event()]])

    named, anonymous = [r for r in caplog.records if r.name == "daily_aggregator.access"]
    counts = "received=1 inserted=1 duplicates=0 conflicts=0 rejected=0"
    assert re.fullmatch(rf"RecordEvents \S+ OK [\d.]+ ms token=ingest {counts}", named.getMessage())
    assert re.fullmatch(rf"RecordEvents \S+ OK [\d.]+ ms {counts}", anonymous.getMessage())
    assert json.loads(JsonFormatter().format(named))["token"] == "ingest"
    assert json.loads(JsonFormatter().format(anonymous))["token"] is None


def test_a_logged_error_is_one_json_line_with_its_traceback() -> None:
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("daily_aggregator.test_logs")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("the disk is\nfull")
        except RuntimeError:
            logger.error("folding failed", exc_info=True, extra={"fields": {"level": "x", "n": 1}})
    finally:
        logger.removeHandler(handler)

    [line] = written.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["time"].endswith("Z")
    assert {k: v for k, v in entry.items() if k not in ("time", "exception")} == {
        "level": "error",
        "logger": "daily_aggregator.test_logs",
        "pid": os.getpid(),
        "message": "folding failed",
        "n": 1,
    }
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("RuntimeError: the disk is\nfull")
