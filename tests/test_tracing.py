"""Traces exported over OTLP/gRPC to a collector the test runs, from a real server."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from daily_aggregator.server.app import StartupError, database, serve, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record, timestamp

SERVICE = "daily_aggregator.v1.AggregatorService"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict[str, str]] = []

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            self.resources.append(
                {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    """A running OTLP/gRPC collector and its port."""
    receiver = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield receiver, port
    await server.stop(None)


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    found: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        found[a.key] = getattr(a.value, kind) if kind else None
    return found


async def test_each_call_is_a_span_with_its_sql_statements_as_children(
    database_url: str, collector: tuple[Collector, int]
) -> None:
    receiver, port = collector
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        otlp_endpoint=f"http://127.0.0.1:{port}",
        pool_min_size=1,
    )
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with database(settings) as pool:
        running = await start_server(pool, settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
                await record(stub, [[event(), event()]])
                await stub.Summary(
                    pb.SummaryRequest(
                        start_time=timestamp(datetime(2025, 6, 1, tzinfo=UTC)),
                        end_time=timestamp(datetime(2025, 6, 2, tzinfo=UTC)),
                    ),
                    metadata=[("traceparent", f"00-{caller_trace}-{caller_span}-01")],
                )
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Uniques(pb.UniquesRequest())
        finally:
            await running.stop(None)  # sends the spans not yet sent

    calls = {s.name: s for s in receiver.spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER}
    assert sorted(calls) == [f"{SERVICE}/{m}" for m in ("RecordEvents", "Summary", "Uniques")]
    summary = calls[f"{SERVICE}/Summary"]
    assert attributes(summary) | {"network.peer.port": 0} == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Summary",
        "rpc.grpc.status_code": 0,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": 0,
    }
    # The call continues the trace its caller sent.
    assert (summary.trace_id.hex(), summary.parent_span_id.hex()) == (caller_trace, caller_span)
    stream = calls[f"{SERVICE}/RecordEvents"]
    assert attributes(stream)["daily_aggregator.events.inserted"] == 2
    # A refused request is the caller's mistake: the span says which code, but is no error.
    uniques = calls[f"{SERVICE}/Uniques"]
    assert attributes(uniques)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert uniques.status.code == trace_pb2.Status.STATUS_CODE_UNSET

    statements = [s for s in receiver.spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT]
    children = {
        name: sorted(s.name for s in statements if s.parent_span_id == call.span_id)
        for name, call in calls.items()
    }
    assert children[f"{SERVICE}/RecordEvents"] == ["sql insert_events"]
    assert "sql lock_pending_log" in children[f"{SERVICE}/Summary"]
    assert "sql bucket_sums" in children[f"{SERVICE}/Summary"]
    assert children[f"{SERVICE}/Uniques"] == []
    # Every statement span lies inside a call's: the folder's statements make none.
    by_id = {call.span_id: call for call in calls.values()}
    for statement in statements:
        call = by_id[statement.parent_span_id]
        assert statement.trace_id == call.trace_id
        assert call.start_time_unix_nano <= statement.start_time_unix_nano
        assert statement.end_time_unix_nano <= call.end_time_unix_nano
        assert attributes(statement)["db.system.name"] == "postgresql"
    assert {r["service.name"] for r in receiver.resources} == {"daily-aggregator"}


async def test_without_the_sdk_tracing_fails_start_up_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an installation without the `tracing` extra looks like to an import.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    settings = Settings(otlp_endpoint="http://127.0.0.1:4317", database_url="postgresql://nowhere/")
    with pytest.raises(StartupError, match=r"install daily-aggregator\[tracing\]"):
        await serve(settings)
