"""Traces over OTLP/gRPC: a span per AggregatorService call, a child span per named statement.

Optional: the OpenTelemetry SDK comes with the ``tracing`` extra
(``pip install 'daily-aggregator[tracing]'``) and is imported only when tracing is on.
Without ``--otlp-endpoint`` nothing here runs: no interceptor, no statement watcher, so
an untraced server pays nothing for it.

Each call's span (``daily_aggregator.v1.AggregatorService/Summary``, kind SERVER) carries
the ``rpc.*`` attributes, the status code, and continues the caller's trace when the call
carries W3C ``traceparent`` metadata. Statements are timed by asyncpg's query logger on
every pool connection (`watch_statements`), so every statement loaded with
`queries.query` is a child span, ``sql <name>``, of the call it ran for, with no code at
the places that run them. Statements outside calls (the folder's) and unnamed ones
(BEGIN, COMMIT, migrations) make no span.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc

from daily_aggregator.server.interception import (
    Behavior,
    Outcome,
    ServiceInterceptor,
    observed,
    with_behavior,
)
from daily_aggregator.server.queries import statement_name
from daily_aggregator.v1 import aggregator_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = [
    "INSTALL_HINT",
    "Tracing",
    "TracingInterceptor",
    "TracingUnavailable",
    "require_sdk",
    "watch_statements",
]

INSTALL_HINT = (
    "tracing needs the OpenTelemetry SDK: install daily-aggregator[tracing] "
    "(pip install 'daily-aggregator[tracing]', or uv sync --extra tracing)"
)

SERVICE_NAME = "daily-aggregator"
"""The ``service.name`` of the spans, unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
name another."""

EXPORT_TIMEOUT_SECONDS = 5.0
"""How long one export may take before the batch is dropped."""

_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""The codes that mark a server span as failed (OpenTelemetry's gRPC conventions): the
others are the caller's doing, not the server's."""

_SDK_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")

_COUNTS = ("received", "inserted", "duplicates", "conflicts", "rejected")

_active: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar(
    "daily_aggregator_tracing", default=None
)
"""The tracing of the call running in this context; statements read it to find their span."""


class TracingUnavailable(Exception):
    """Tracing was asked for, but the OpenTelemetry SDK is not installed."""


def require_sdk() -> None:
    """Raise TracingUnavailable unless the SDK and the OTLP exporter can be imported."""
    try:
        for module in _SDK_MODULES:
            importlib.import_module(module)
    except ImportError as exc:
        raise TracingUnavailable(f"{INSTALL_HINT} ({exc})") from exc


class Tracing:
    """Spans of this server, batched and exported to the OTLP/gRPC collector at `endpoint`.

    `endpoint` is ``http://HOST:PORT`` (plaintext) or ``https://HOST:PORT`` (TLS with the
    system's roots); OTEL_EXPORTER_OTLP_HEADERS adds headers, e.g. an API key.

    Raises:
        TracingUnavailable: the SDK is not installed.
    """

    def __init__(self, endpoint: str) -> None:
        require_sdk()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self._provider: TracerProvider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer: Tracer = self._provider.get_tracer("daily_aggregator.server")

    def interceptor(self, prefix: str) -> TracingInterceptor:
        """The interceptor that traces the calls of the methods under `prefix`."""
        return TracingInterceptor(prefix, self)

    async def shutdown(self) -> None:
        """Export the spans not yet sent, then stop exporting."""
        await asyncio.to_thread(self._provider.shutdown)

    def traced(
        self,
        service: str,
        method: str,
        metadata: Sequence[tuple[str, str | bytes]],
        behavior: Behavior,
    ) -> Behavior:
        """`behavior` run inside a span of the call of `service`'s `method`, continuing the
        trace its `metadata` names, if any."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._tracer.start_as_current_span(
                f"{service}/{method}",
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={**attributes, **_peer(context.peer())},
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                active = _active.set(self)

                def finished(context: grpc.aio.ServicerContext, outcome: Outcome) -> None:
                    _active.reset(active)
                    span.set_attribute("rpc.grpc.status_code", outcome.code.value[0])
                    if outcome.code in _ERROR_CODES:
                        details = _details(context) or outcome.code.name
                        span.set_status(Status(StatusCode.ERROR, details))
                        error = outcome.error
                        if error is not None and not isinstance(error, grpc.aio.AbortError):
                            span.record_exception(error)
                    if isinstance(outcome.response, pb.RecordEventsResponse):
                        for count in _COUNTS:
                            span.set_attribute(
                                f"daily_aggregator.events.{count}",
                                getattr(outcome.response, count),
                            )

                return await observed(behavior, finished)(request, context)

        return call

    def statement_finished(self, record: Any) -> None:
        """Record a finished named statement as a span of the current call."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        name = statement_name(record.query)
        if name is None:
            return
        end = time.time_ns()
        params = record.conn_params
        span = self._tracer.start_span(
            f"sql {name}",
            kind=SpanKind.CLIENT,
            start_time=end - int(record.elapsed * 1e9),
            attributes={
                "db.system.name": "postgresql",
                "db.namespace": getattr(params, "database", None) or "",
                "db.query.summary": name,
                "db.query.text": record.query,
            },
        )
        if record.exception is not None:
            span.record_exception(record.exception)
            span.set_status(Status(StatusCode.ERROR, type(record.exception).__name__))
        span.end(end_time=end)


async def watch_statements(conn: asyncpg.Connection) -> None:
    """Make `conn` report each statement it finishes, as a span of the call it ran for.

    Pass it as the pool's ``init`` when tracing is on; asyncpg then times every statement.
    """
    conn.add_query_logger(_statement_finished)


def _statement_finished(record: Any) -> None:
    # asyncpg calls this soon after the statement, in a copy of the context it ran in.
    tracing = _active.get()
    if tracing is not None:
        tracing.statement_finished(record)


class TracingInterceptor(ServiceInterceptor):
    """Runs each call to a method under `prefix` inside a span of its own."""

    def __init__(self, prefix: str, tracing: Tracing) -> None:
        super().__init__(prefix)
        self._service = prefix.strip("/")
        self._tracing = tracing

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not (handler.unary_unary or handler.stream_unary):
            return handler  # no streamed responses in this service
        metadata = details.invocation_metadata or ()
        return with_behavior(
            handler,
            lambda behavior: self._tracing.traced(self._service, method, metadata, behavior),
        )


def _peer(peer: str) -> dict[str, str | int]:
    """``ipv4:10.0.0.7:51234`` or ``ipv6:[::1]:51234`` as network.peer.* attributes."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return {}
    return {
        "network.peer.address": host.removeprefix("[").removesuffix("]"),
        "network.peer.port": int(port),
    }


def _details(context: grpc.aio.ServicerContext) -> str | None:
    details = context.details()
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details if isinstance(details, str) else None
