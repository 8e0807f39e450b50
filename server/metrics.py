"""Prometheus metrics: what the server counts, the interceptor that counts calls, and /metrics.

Calls are counted as go-grpc-prometheus counts them, so its dashboards and alerts apply:
``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code`` spelled
as Go spells it: ``OK``, ``InvalidArgument``, ``Canceled`` ...),
``grpc_server_handling_seconds``, ``grpc_server_msg_received_total`` and
``grpc_server_msg_sent_total``, labelled ``grpc_type`` (``unary``, ``client_stream``, ...),
``grpc_service`` and ``grpc_method``. Every method of the service starts at zero.

The service's own: ``daily_aggregator_events_total{outcome}`` from RecordEvents responses;
the refusals of admission control and rate limits, counted through `admission_refused`
and `rate_limited`; and gauges read when scraped: the pool's connections and the fold
backlog and lag of the servers in this process (`watch`).

Several processes: when PROMETHEUS_MULTIPROC_DIR names a directory before this module is
imported, counters and histograms are kept in files there (prometheus-client's
multiprocess mode), each process refreshes its gauges every second, and the endpoint
serves the sum over all processes (gauges: the sum of live processes' pool connections,
the largest backlog and lag).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import asyncpg
import grpc
import prometheus_client
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from daily_aggregator.server.folding import Folder
from daily_aggregator.server.interception import (
    Behavior,
    Outcome,
    ServiceInterceptor,
    observed,
    with_behavior,
)
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = [
    "ADMISSION_LIMITS",
    "MULTIPROCESS",
    "RATE_LIMITS",
    "REGISTRY",
    "MetricsEndpoint",
    "MetricsInterceptor",
    "admission_refused",
    "process_exited",
    "rate_limited",
    "watch",
]

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Whether counters and histograms live in files shared by several processes."""

ADMISSION_LIMITS = ("streams", "queries", "memory")
"""The `limit` label values of admission refusals."""

RATE_LIMITS = ("events", "queries")
"""The `limit` label values of rate limiting."""

HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Prometheus' default buckets, as go-grpc-prometheus uses, and more for long streams."""

GAUGE_REFRESH_SECONDS = 1.0
"""In multiprocess mode, how often each process writes its gauges for the endpoint."""

# Counters are exposed as NAME_total only, as the Go client does, without NAME_created.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry()
"""Every metric of this module; what /metrics serves in a single process."""
if not MULTIPROCESS:
    prometheus_client.ProcessCollector(registry=REGISTRY)
    prometheus_client.PlatformCollector(registry=REGISTRY)
    prometheus_client.GCCollector(registry=REGISTRY)

_RPC = ("grpc_type", "grpc_service", "grpc_method")

_STARTED = Counter(
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
    _RPC,
    registry=REGISTRY,
)
_HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_RPC, "grpc_code"),
    registry=REGISTRY,
)
_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _RPC,
    buckets=HANDLING_BUCKETS,
    registry=REGISTRY,
)
_RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
    _RPC,
    registry=REGISTRY,
)
_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Total number of gRPC stream messages sent by the server.",
    _RPC,
    registry=REGISTRY,
)
_EVENTS = Counter(
    "daily_aggregator_events_total",
    "Events answered in RecordEvents responses, by outcome.",
    ("outcome",),
    registry=REGISTRY,
)
_ADMISSION_REFUSALS = Counter(
    "daily_aggregator_admission_refusals_total",
    "Calls turned away by admission control, by the limit they met.",
    ("limit",),
    registry=REGISTRY,
)
_RATE_LIMITED = Counter(
    "daily_aggregator_rate_limited_total",
    "Calls refused by a token's rate limit, by token name and limit.",
    ("token_name", "limit"),
    registry=REGISTRY,
)
_POOL_CONNECTIONS = Gauge(
    "daily_aggregator_pool_connections",
    "Open database connections of the pool, in use or idle.",
    ("state",),
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
_POOL_MAX = Gauge(
    "daily_aggregator_pool_max_connections",
    "The most database connections the pool opens.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
_FOLD_BACKLOG = Gauge(
    "daily_aggregator_fold_backlog_events",
    "Events the folder found pending at its latest look (0 where another server folds).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
_FOLD_LAG = Gauge(
    "daily_aggregator_fold_lag_seconds",
    "How long the oldest event of the latest fold had waited in the pending log.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

for _outcome in ("inserted", "duplicate", "conflict", "rejected"):
    _EVENTS.labels(_outcome)
for _limit in ADMISSION_LIMITS:
    _ADMISSION_REFUSALS.labels(_limit)

_GO_CODES = {
    code: "".join(word.capitalize() for word in code.name.split("_")) for code in grpc.StatusCode
}
_GO_CODES |= {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
"""Status codes as Go's codes.Code.String() names them, the grpc_code label's values."""


def admission_refused(limit: str) -> None:
    """Count one call that admission control turned away at `limit` (streams|queries|memory)."""
    if limit not in ADMISSION_LIMITS:
        raise ValueError(f"limit must be one of {', '.join(ADMISSION_LIMITS)}, not {limit!r}")
    _ADMISSION_REFUSALS.labels(limit).inc()


def rate_limited(token_name: str, limit: str) -> None:
    """Count one call of `token_name` refused by its rate limit `limit` (events|queries)."""
    if limit not in RATE_LIMITS:
        raise ValueError(f"limit must be one of {', '.join(RATE_LIMITS)}, not {limit!r}")
    _RATE_LIMITED.labels(token_name, limit).inc()


def process_exited(pid: int, directory: str | None = None) -> None:
    """Forget the gauges of worker `pid`, which has exited, in the multiprocess files of
    `directory` (by default this process's PROMETHEUS_MULTIPROC_DIR).

    A supervisor of worker processes calls this for each worker that ends; in a single
    process without `directory` it does nothing.
    """
    if directory is not None or MULTIPROCESS:
        multiprocess.mark_process_dead(pid, directory)


class MetricsInterceptor(ServiceInterceptor):
    """Counts every call of `service`'s methods: started, handled by code, time, messages.

    Successful RecordEvents calls also count their events by outcome.
    """

    def __init__(self, service: ServiceDescriptor) -> None:
        super().__init__(f"/{service.full_name}/")
        self._service = service.full_name
        for method in service.methods:
            kind = _grpc_type(method.client_streaming, method.server_streaming)
            labels = (kind, self._service, method.name)
            for family in (_STARTED, _HANDLING, _RECEIVED, _SENT):
                family.labels(*labels)
            for name in _GO_CODES.values():
                _HANDLED.labels(*labels, name)

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not (handler.unary_unary or handler.stream_unary):
            return handler  # no streamed responses in this service
        streaming = bool(handler.request_streaming)
        labels = (_grpc_type(streaming, handler.response_streaming), self._service, method)
        return with_behavior(handler, lambda behavior: _counted(labels, streaming, behavior))


def _grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


def _counted(labels: tuple[str, str, str], streaming: bool, behavior: Behavior) -> Behavior:
    def finished(context: grpc.aio.ServicerContext, outcome: Outcome) -> None:
        _HANDLED.labels(*labels, _GO_CODES[outcome.code]).inc()
        _HANDLING.labels(*labels).observe(outcome.seconds)
        if outcome.error is not None:
            return
        _SENT.labels(*labels).inc()
        if isinstance(outcome.response, pb.RecordEventsResponse):
            _EVENTS.labels("inserted").inc(outcome.response.inserted)
            _EVENTS.labels("duplicate").inc(outcome.response.duplicates)
            _EVENTS.labels("conflict").inc(outcome.response.conflicts)
            _EVENTS.labels("rejected").inc(outcome.response.rejected)

    watched = observed(behavior, finished)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _STARTED.labels(*labels).inc()
        received = _RECEIVED.labels(*labels)
        if streaming:
            request = _counting(request, received)
        else:
            received.inc()
        return await watched(request, context)

    return call


async def _counting(requests: AsyncIterator[Any], received: Counter) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request


# --------------------------------------------------------------------------- gauges


@dataclass(frozen=True, eq=False)
class _Watched:
    pool: asyncpg.Pool
    folder: Folder


_watched: list[_Watched] = []
"""The servers of this process whose gauges are exposed."""


def _refresh() -> None:
    """Set the gauges from the servers of this process; cheap: no I/O, no awaiting."""
    watched = tuple(_watched)  # the endpoint's thread reads while the event loop may change it
    size = sum(w.pool.get_size() for w in watched)
    idle = sum(w.pool.get_idle_size() for w in watched)
    _POOL_CONNECTIONS.labels("in_use").set(size - idle)
    _POOL_CONNECTIONS.labels("idle").set(idle)
    _POOL_MAX.set(sum(w.pool.get_max_size() for w in watched))
    _FOLD_BACKLOG.set(max((w.folder.pending for w in watched), default=0))
    _FOLD_LAG.set(max((w.folder.latest_lag_seconds for w in watched), default=0.0))


@contextlib.asynccontextmanager
async def watch(pool: asyncpg.Pool, folder: Folder) -> AsyncIterator[None]:
    """Expose `pool`'s connections and `folder`'s backlog and lag while the block runs.

    In a single process the gauges are read when /metrics is scraped; in multiprocess
    mode they are also written every GAUGE_REFRESH_SECONDS for the other processes'
    endpoints.
    """
    watched = _Watched(pool, folder)
    _watched.append(watched)
    refreshing = asyncio.create_task(_refresh_often()) if MULTIPROCESS else None
    try:
        _refresh()
        yield
    finally:
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        _watched.remove(watched)
        _refresh()


async def _refresh_often() -> None:
    while True:
        await asyncio.sleep(GAUGE_REFRESH_SECONDS)
        _refresh()


# --------------------------------------------------------------------------- endpoint


_POLL_SECONDS = 0.1
"""How often the endpoint's thread looks whether it should stop: how long a stop waits."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the process's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsEndpoint:
    """Serves the metrics in Prometheus' text format at ``/metrics`` over HTTP.

    The HTTP server runs on threads of its own, so a scrape never waits for the event loop.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (the one picked when asked for port 0)."""
        port: int = self._server.server_address[1]
        return port

    @classmethod
    def start(cls, listen: str, *, processes_dir: str | None = None) -> MetricsEndpoint:
        """Listen on `listen` (HOST:PORT; port 0 picks a free one) and serve in the background.

        With `processes_dir` it serves the sum of the processes that keep their metrics in
        that multiprocess directory (worker processes, for their supervisor) instead.

        Raises:
            OSError: the address is taken or invalid.
            ValueError: multiprocess mode is on and PROMETHEUS_MULTIPROC_DIR is no directory.
        """
        host, port = _host_port(listen)
        if processes_dir is not None or MULTIPROCESS:
            exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(exposed, path=processes_dir)
        else:
            exposed = REGISTRY
        serve_metrics = prometheus_client.make_wsgi_app(exposed)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"metrics are at /metrics\n"]
            _refresh()
            body: Iterable[bytes] = serve_metrics(environ, start_response)
            return body

        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        server: WSGIServer = make_server(host, port, app, server_class, handler_class=_Quiet)
        thread = threading.Thread(
            target=server.serve_forever, args=(_POLL_SECONDS,), name="metrics", daemon=True
        )
        thread.start()
        return cls(server, thread)

    async def stop(self) -> None:
        """Stop serving and close the port."""
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
        await asyncio.to_thread(self._thread.join)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
