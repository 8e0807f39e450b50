"""Building, running and stopping the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from daily_aggregator.server import logs, metrics
from daily_aggregator.server.access import TokenRegistry, TokensFileError, read_tokens
from daily_aggregator.server.access_log import AccessLogInterceptor
from daily_aggregator.server.admission import Admission
from daily_aggregator.server.auth import BearerTokenInterceptor
from daily_aggregator.server.config import Settings
from daily_aggregator.server.connections import server_options
from daily_aggregator.server.database import (
    CONNECTION_ERRORS,
    create_pool,
    migrate,
    wait_for_database,
)
from daily_aggregator.server.decoding import DecodingInterceptor
from daily_aggregator.server.embedded import (
    DataDirectoryError,
    EmbeddedPostgres,
    EmbeddedPostgresError,
)
from daily_aggregator.server.folding import Folder
from daily_aggregator.server.interception import StatusLastInterceptor
from daily_aggregator.server.metrics import MetricsEndpoint, MetricsInterceptor, watch
from daily_aggregator.server.rate_limits import RateLimiter, RateLimitInterceptor
from daily_aggregator.server.service import AggregatorService
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.server.tracing import (
    Tracing,
    TracingUnavailable,
    require_sdk,
    watch_statements,
)
from daily_aggregator.v1 import aggregator_pb2, aggregator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"]
SERVICE_NAME = SERVICE.full_name


class StartupError(Exception):
    """The service cannot start: the address is taken or the database is out of reach."""


@dataclass
class RunningServer:
    """A started gRPC server, the port it is bound to, its health service, its folder and
    its admission limits."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    folder: Folder
    folding: asyncio.Task[None]
    admission: Admission
    metrics_port: int | None = None
    """The port serving /metrics (the one picked for port 0); None without metrics."""
    telemetry: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    """Stops the metrics endpoint and sends the last spans."""

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, stop accepting RPCs, let in-flight ones finish within `grace`,
        then stop folding (a fold cut short rolls back and is done again later), serving
        metrics and tracing (the spans not yet sent are sent)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.folding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.folding
        await self.telemetry.aclose()


async def start_server(
    pool: asyncpg.Pool, settings: Settings, *, reuse_port: bool = False, serve_metrics: bool = True
) -> RunningServer:
    """Start AggregatorService with health checking and reflection on `settings.listen`.

    Bind port 0 to get a free port; the bound port is returned. With `settings.tokens_file`
    every AggregatorService call needs one of its bearer tokens, with the scope its method
    needs, within the token's rates; with `settings.tls_cert` the port speaks TLS, and with
    `settings.tls_client_ca` it also requires client certificates that CA signed. With
    `settings.metrics_listen` calls are counted and served as Prometheus metrics; with
    `settings.otlp_endpoint` they are traced (their SQL statements too when `pool` comes
    from `database`, which watches its statements); with `serve_metrics` false they are
    counted but served by the workers' supervisor. With `reuse_port` the port is bound with
    SO_REUSEPORT, so the other workers of one service can bind it too (server/workers.py
    keeps strangers out); without it, a port anyone else has bound is refused. Calls beyond
    the admission limits in `settings` are refused (see server/admission.py).

    Raises:
        StartupError: an address is taken, the tokens or TLS files cannot be used, tracing
            is asked for without the OpenTelemetry SDK, or the admission limits contradict
            each other.
    """
    telemetry = contextlib.AsyncExitStack()
    try:
        return await _start_server(pool, settings, telemetry, reuse_port, serve_metrics)
    except BaseException:
        await telemetry.aclose()
        raise


async def _start_server(
    pool: asyncpg.Pool,
    settings: Settings,
    telemetry: contextlib.AsyncExitStack,
    reuse_port: bool,
    serve_metrics: bool,
) -> RunningServer:
    prefix = f"/{SERVICE_NAME}/"
    credentials = _tls_credentials(settings)
    registry = _token_registry(settings.tokens_file)
    # Metrics and traces come first, then the access log, so that they also see the calls
    # the others turn away; tokens and rates are checked before admission, so calls turned
    # away for them take no slot. Before them all, the one that sends an aborted call's
    # status once they have all seen it.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        StatusLastInterceptor(prefix),
        *_telemetry(prefix, settings, telemetry),
        AccessLogInterceptor(
            prefix, caller_name=registry.caller_name if registry is not None else None
        ),
    ]
    counting = settings.metrics_listen is not None
    if registry is not None:
        on_limited = metrics.rate_limited if counting else None
        limiter = RateLimiter(registry.tokens, on_limited=on_limited)
        interceptors += [
            BearerTokenInterceptor(registry, prefix=prefix),
            RateLimitInterceptor(registry, limiter, prefix=prefix),
        ]
    try:
        admission = Admission.from_settings(
            settings, on_refusal=metrics.admission_refused if counting else None
        )
    except ValueError as exc:
        raise StartupError(f"cannot use the admission limits: {exc}") from exc
    interceptors.append(admission.interceptor(prefix))
    # Last, so that a refused call is refused before its bytes count, and every interceptor
    # before it sees a malformed request end as INVALID_ARGUMENT; health checks and
    # reflection too (their servicers are the asyncio ones, whose handlers the interceptor
    # can wrap).
    interceptors += [
        DecodingInterceptor(service)
        for service in (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        )
    ]
    server = grpc.aio.server(
        interceptors=interceptors, options=_server_options(settings, reuse_port)
    )
    zones = await TimeZones.load(pool)
    aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(
        AggregatorService(pool, zones), server
    )
    # The asyncio servicer: the threaded one keeps an open Watch blocked in a thread that
    # nothing wakes, so the process could not exit after the server stopped.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
        raise StartupError(
            f"cannot listen on {settings.listen}: address in use or invalid"
        ) from exc
    folder = Folder(pool, idle_seconds=settings.fold_idle_seconds)
    metrics_port = await _serve_metrics(settings, pool, folder, telemetry, serve_metrics)
    await server.start()
    folding = asyncio.create_task(folder.run(), name="folder")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server, port, health_servicer, folder, folding, admission, metrics_port, telemetry
    )


def _server_options(settings: Settings, reuse_port: bool) -> list[tuple[str, Any]]:
    """gRPC core options: the message size limit, the port's sharing, keepalive and
    connection ages (server/connections.py), and what the transport buffers per stream,
    kept small and fixed."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        *server_options(settings),
        # By default the transport grows every stream's receive window towards the measured
        # bandwidth-delay product (4 MiB and more), so each stream, even one that is held
        # back or being refused, may have megabytes sent to it before the service reads
        # anything: 5,000 eager clients took the service to 6 GiB. A fixed window bounds
        # that; a stream whose handler is reading still gets the window for its whole
        # message.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", _STREAM_WINDOW_BYTES),
        # HTTP/2 streams per connection: enough for one client to reach every limit and be
        # refused with a retry delay, beyond that the client waits for a free stream.
        (
            "grpc.max_concurrent_streams",
            settings.max_concurrent_streams + settings.max_concurrent_queries + 16,
        ),
    ]


_STREAM_WINDOW_BYTES = 256 * 1024
"""Receive window of every HTTP/2 stream. 64 KiB (HTTP/2's default) nearly halved ingest
throughput: a client could not send a typical batch (a few hundred KB) ahead while the
previous one was stored. 256 KiB keeps it, and held-back streams hold 64 MiB at most."""


def _telemetry(
    prefix: str, settings: Settings, telemetry: contextlib.AsyncExitStack
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors that count and trace calls, as `settings` asks; they come first,
    so that they see the calls later interceptors refuse too."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.metrics_listen is not None:
        interceptors.append(MetricsInterceptor(SERVICE))
    if settings.otlp_endpoint is not None:
        try:
            tracing = Tracing(settings.otlp_endpoint)
        except TracingUnavailable as exc:
            raise StartupError(str(exc)) from exc
        telemetry.push_async_callback(tracing.shutdown)
        interceptors.append(tracing.interceptor(prefix))
    return interceptors


async def _serve_metrics(
    settings: Settings,
    pool: asyncpg.Pool,
    folder: Folder,
    telemetry: contextlib.AsyncExitStack,
    serve: bool,
) -> int | None:
    """Keep `pool`'s and `folder`'s gauges and serve /metrics (unless `serve` is false: a
    worker's supervisor serves) until `telemetry` closes; return the bound port, or None
    when nothing is served."""
    if settings.metrics_listen is None:
        return None
    if not serve:
        await telemetry.enter_async_context(watch(pool, folder))
        return None
    try:
        endpoint = MetricsEndpoint.start(settings.metrics_listen)
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot serve metrics on {settings.metrics_listen}: {exc}") from exc
    telemetry.push_async_callback(endpoint.stop)
    await telemetry.enter_async_context(watch(pool, folder))
    return endpoint.port


def _token_registry(path: Path | None) -> TokenRegistry | None:
    if path is None:
        return None
    try:
        return TokenRegistry(read_tokens(path))
    except (OSError, TokensFileError) as exc:
        raise StartupError(f"cannot use the tokens file: {exc}") from exc


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials; None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise StartupError("a client CA (--tls-client-ca) needs --tls-cert and --tls-key")
        return None
    try:
        chain = settings.tls_cert.read_bytes()
        private_key = settings.tls_key.read_bytes()
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"cannot read the TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(private_key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@contextlib.asynccontextmanager
async def postgres(settings: Settings) -> AsyncIterator[str]:
    """The DSN of a PostgreSQL that answers: `settings.database_url`, or when it is None an
    embedded PostgreSQL in `settings.data_dir`, started here and stopped when the block ends.

    Raises:
        StartupError: the embedded PostgreSQL cannot start, or PostgreSQL does not answer
            within `settings.database_patience`.
    """
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            try:
                embedded = await stack.enter_async_context(EmbeddedPostgres(settings.data_dir))
            except DataDirectoryError as exc:
                raise StartupError(
                    f"cannot start the embedded PostgreSQL: {exc}; choose another directory"
                    " with --data-dir or DAILY_AGGREGATOR_DATA_DIR"
                ) from exc
            except EmbeddedPostgresError as exc:
                raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from exc
            dsn = embedded.dsn
            log.info("embedded PostgreSQL running in %s", settings.data_dir)
        try:
            await wait_for_database(dsn, patience=settings.database_patience)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StartupError(f"cannot use PostgreSQL: {exc}") from exc
        yield dsn


async def apply_migrations(conn: asyncpg.Connection) -> None:
    """Bring the schema up to date, logging what was applied."""
    applied = await migrate(conn)
    if applied:
        log.info("applied migrations %s", applied)


@contextlib.asynccontextmanager
async def database(settings: Settings, *, migrations: bool = True) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `settings.database_url`, or on an embedded PostgreSQL when it is None,
    migrated first unless `migrations` is False (a worker, whose supervisor migrated)."""
    async with postgres(settings) as dsn:
        pool = await create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            # Tracing times each statement; without it the connections do nothing extra.
            init=watch_statements if settings.otlp_endpoint is not None else None,
        )
        try:
            if migrations:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
            yield pool
        finally:
            await pool.close()


def configure_logging(settings: Settings) -> None:
    """Log to stderr from `settings.log_level` up in `settings.log_format`; with several
    workers every line also names the process that wrote it, the supervisor's or a worker's."""
    logs.configure(settings.log_level, settings.log_format, processes=settings.workers > 1)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    With `settings.workers` above 1 this process supervises that many worker processes
    (server/workers.py) instead of serving itself.
    """
    if settings.otlp_endpoint is not None:
        try:
            require_sdk()  # before PostgreSQL starts, not after
        except TracingUnavailable as exc:
            raise StartupError(str(exc)) from exc
    # A bad tokens or TLS file is reported at once, not after waiting for PostgreSQL;
    # start_server reads them again.
    _token_registry(settings.tokens_file)
    _tls_credentials(settings)
    if settings.workers > 1:
        from daily_aggregator.server.workers import supervise  # it builds on this module

        await supervise(settings)
        return
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with database(settings) as pool:
        running = await start_server(pool, settings)
        log.info("serving %s on port %d", SERVICE_NAME, running.port)
        if settings.metrics_listen is not None:
            host = settings.metrics_listen.rpartition(":")[0]
            log.info("Prometheus metrics at http://%s:%d/metrics", host, running.metrics_port)
        await stopping.wait()
        log.info("shutting down; in-flight RPCs have %.0f s to finish", settings.grace_seconds)
        await running.stop(settings.grace_seconds)
    log.info("stopped")
