"""Prometheus metrics scraped over HTTP from a real server after real calls."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from daily_aggregator.server import metrics
from daily_aggregator.server.app import RunningServer, StartupError, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record, timestamp

Stub = aggregator_pb2_grpc.AggregatorServiceStub
SERVICE = "daily_aggregator.v1.AggregatorService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings() -> Settings:
    """Metrics on a free port; a folder that looks once, so the test decides when to fold."""
    return Settings(
        listen="127.0.0.1:0", grace_seconds=5, metrics_listen="127.0.0.1:0", fold_idle_seconds=3600
    )


def _get(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(server: RunningServer) -> Samples:
    """Every sample /metrics serves, keyed by name and labels."""
    assert server.metrics_port is not None
    status, content_type, text = await asyncio.to_thread(_get, server.metrics_port)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**names: str) -> frozenset[tuple[str, str]]:
    return frozenset(names.items())


def value(samples: Samples, name: str, **names: str) -> float:
    return samples[(name, labels(**names))]


def rpc(method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method}


def changes(
    before: Samples, after: Samples, name: str
) -> Mapping[frozenset[tuple[str, str]], float]:
    """How each series of `name` changed, leaving out those that did not."""
    moved = {}
    for (sample, labels), now in after.items():
        if sample == name and now != before.get((sample, labels), 0.0):
            moved[labels] = now - before.get((sample, labels), 0.0)
    return moved


async def test_calls_are_counted_by_type_method_and_code(
    server: RunningServer, channel: grpc.aio.Channel, stub: Stub, pool: asyncpg.Pool
) -> None:
    before = await scrape(server)
    # Every method is there from the start, with every code, even one nothing answers with.
    assert ("grpc_server_handled_total", labels(**rpc("Breakdown"), grpc_code="DataLoss")) in before
    assert ("grpc_server_started_total", labels(**rpc("RecordEvents", "client_stream"))) in before

    stored, again, changed = event(), event(), event()
    conflicting = pb.Event()
    conflicting.CopyFrom(changed)
    conflicting.word_count += 1
    response = await record(
        stub, [[stored, changed], [stored, conflicting, event(words=2_000_000)], [again]]
    )
    assert (response.inserted, response.duplicates, response.conflicts) == (3, 1, 1)
    await stub.Summary(
        pb.SummaryRequest(
            start_time=timestamp(datetime(2025, 6, 1, tzinfo=UTC)),
            end_time=timestamp(datetime(2025, 6, 2, tzinfo=UTC)),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Uniques(pb.UniquesRequest())
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    after = await scrape(server)

    stream, summary, uniques = rpc("RecordEvents", "client_stream"), rpc("Summary"), rpc("Uniques")
    one = {frozenset(labels.items()): 1.0 for labels in (stream, summary, uniques)}
    assert changes(before, after, "grpc_server_started_total") == one
    assert changes(before, after, "grpc_server_handling_seconds_count") == one
    assert changes(before, after, "grpc_server_handled_total") == {
        frozenset({**stream, "grpc_code": "OK"}.items()): 1.0,
        frozenset({**summary, "grpc_code": "OK"}.items()): 1.0,
        frozenset({**uniques, "grpc_code": "InvalidArgument"}.items()): 1.0,
    }
    assert changes(before, after, "grpc_server_msg_received_total") == {
        frozenset(stream.items()): 3.0,
        frozenset(summary.items()): 1.0,
        frozenset(uniques.items()): 1.0,
    }
    # A refused call sends no response.
    assert changes(before, after, "grpc_server_msg_sent_total") == {
        frozenset(stream.items()): 1.0,
        frozenset(summary.items()): 1.0,
    }
    # Each call lands in the buckets from its duration up: all of them in +Inf.
    assert (
        changes(before, after, "grpc_server_handling_seconds_bucket")[
            frozenset({**summary, "le": "+Inf"}.items())
        ]
        == 1.0
    )
    assert changes(before, after, "daily_aggregator_events_total") == {
        frozenset({("outcome", "inserted")}): 3.0,
        frozenset({("outcome", "duplicate")}): 1.0,
        frozenset({("outcome", "conflict")}): 1.0,
        frozenset({("outcome", "rejected")}): 1.0,
    }
    # Health checks and reflection are not counted.
    assert not [
        labels for _, labels in after if ("grpc_service", "grpc.health.v1.Health") in labels
    ]


async def test_pool_and_fold_gauges_are_read_when_scraped(
    server: RunningServer, stub: Stub, pool: asyncpg.Pool
) -> None:
    samples = await scrape(server)
    # The folder keeps one connection of the pool to itself.
    assert value(samples, "daily_aggregator_pool_connections", state="in_use") >= 1
    assert value(samples, "daily_aggregator_pool_connections", state="idle") >= 0
    assert value(samples, "daily_aggregator_pool_max_connections") == pool.get_max_size()
    assert value(samples, "daily_aggregator_fold_backlog_events") == 0

    # Only this test folds from here on: the folder's own loop could otherwise take its
    # first look after the events arrived and fold them, or find them gone and report 0.
    server.folding.cancel()
    await asyncio.gather(server.folding, return_exceptions=True)
    await record(stub, [[event() for _ in range(7)]])
    async with pool.acquire() as conn:
        assert await server.folder.drain(conn) == 7
    samples = await scrape(server)
    assert value(samples, "daily_aggregator_fold_backlog_events") == 7
    assert 0 < value(samples, "daily_aggregator_fold_lag_seconds") < 600


async def test_refusals_of_admission_control_and_rate_limits_are_counted(
    server: RunningServer,
) -> None:
    before = await scrape(server)
    for limit in metrics.ADMISSION_LIMITS:
        assert value(before, "daily_aggregator_admission_refusals_total", limit=limit) >= 0
    metrics.admission_refused("memory")
    metrics.admission_refused("memory")
    metrics.rate_limited("ingest-7", "events")
    after = await scrape(server)
    assert changes(before, after, "daily_aggregator_admission_refusals_total") == {
        frozenset({("limit", "memory")}): 2.0
    }
    assert changes(before, after, "daily_aggregator_rate_limited_total") == {
        frozenset({("token_name", "ingest-7"), ("limit", "events")}): 1.0
    }
    with pytest.raises(ValueError, match="streams, queries, memory"):
        metrics.admission_refused("bandwidth")
    with pytest.raises(ValueError, match="events, queries"):
        metrics.rate_limited("ingest-7", "streams")


async def test_the_endpoint_answers_only_at_metrics_and_stops_with_the_server(
    server: RunningServer,
) -> None:
    assert server.metrics_port is not None
    status, _, _ = await asyncio.to_thread(_get, server.metrics_port, "/")
    assert status == 404
    await server.stop(None)
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, server.metrics_port)


async def test_a_taken_metrics_address_fails_start_up_naming_it(pool: asyncpg.Pool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = Settings(listen="127.0.0.1:0", metrics_listen=address)
        with pytest.raises(StartupError, match=f"cannot serve metrics on {address}"):
            await start_server(pool, settings)


async def test_calls_refused_for_want_of_a_token_are_counted(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    settings = Settings(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", tokens_file=tokens)
    running = await start_server(pool, settings)
    try:
        before = await scrape(running)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await Stub(channel).Uniques(pb.UniquesRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        after = await scrape(running)
    finally:
        await running.stop(None)
    assert changes(before, after, "grpc_server_handled_total") == {
        labels(**rpc("Uniques"), grpc_code="Unauthenticated"): 1.0
    }
