"""Building, running and stopping the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from daily_aggregator.server.access_log import AccessLogInterceptor
from daily_aggregator.server.admission import Admission
from daily_aggregator.server.auth import BearerTokenInterceptor, read_tokens
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import (
    CONNECTION_ERRORS,
    create_pool,
    migrate,
    wait_for_database,
)
from daily_aggregator.server.embedded import (
    DataDirectoryError,
    EmbeddedPostgres,
    EmbeddedPostgresError,
)
from daily_aggregator.server.folding import Folder
from daily_aggregator.server.service import AggregatorService
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2, aggregator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name


class StartupError(Exception):
    """The service cannot start: the address is taken or the database is out of reach."""


@dataclass
class RunningServer:
    """A started gRPC server, the port it is bound to, its health service, its folder and
    its admission limits."""

    server: grpc.aio.Server
    port: int
    health: health.HealthServicer
    folder: Folder
    folding: asyncio.Task[None]
    admission: Admission

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, stop accepting RPCs, let in-flight ones finish within `grace`,
        then stop folding (a fold cut short rolls back and is done again later)."""
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.folding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.folding


async def start_server(pool: asyncpg.Pool, settings: Settings) -> RunningServer:
    """Start AggregatorService with health checking and reflection on `settings.listen`.

    Bind port 0 to get a free port; the bound port is returned. With `settings.tokens_file`
    every AggregatorService call needs one of its bearer tokens; with `settings.tls_cert`
    the port speaks TLS. Calls beyond the admission limits in `settings` are refused (see
    server/admission.py).

    Raises:
        StartupError: the address is taken, the tokens or TLS files cannot be used, or the
            admission limits contradict each other.
    """
    prefix = f"/{SERVICE_NAME}/"
    # The access log is outermost so that it also logs refusals; tokens are checked before
    # admission, so calls without an accepted token take no slot.
    interceptors: list[grpc.aio.ServerInterceptor] = [AccessLogInterceptor(prefix)]
    if settings.tokens_file is not None:
        try:
            tokens = read_tokens(settings.tokens_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the tokens file: {exc}") from exc
        interceptors.append(BearerTokenInterceptor(tokens, prefix=prefix))
    try:
        admission = Admission.from_settings(settings, on_refusal=None)
    except ValueError as exc:
        raise StartupError(f"cannot use the admission limits: {exc}") from exc
    interceptors.append(admission.interceptor(prefix))
    server = grpc.aio.server(interceptors=interceptors, options=_server_options(settings))
    zones = await TimeZones.load(pool)
    aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(
        AggregatorService(pool, zones), server
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = _tls_credentials(settings.tls_cert, settings.tls_key)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
        raise StartupError(
            f"cannot listen on {settings.listen}: address in use or invalid"
        ) from exc
    await server.start()
    folder = Folder(pool, idle_seconds=settings.fold_idle_seconds)
    folding = asyncio.create_task(folder.run(), name="folder")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, folder, folding, admission)


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core options that keep what the transport buffers per stream small and fixed."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
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


def _tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        chain = cert.read_bytes()
        private_key = key.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([(private_key, chain)])


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool on `settings.database_url`, or on an embedded PostgreSQL when it is None."""
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
        pool = await create_pool(
            dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size
        )
        stack.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("applied migrations %s", applied)
        yield pool


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with database(settings) as pool:
        running = await start_server(pool, settings)
        log.info("serving %s on port %d", SERVICE_NAME, running.port)
        await stopping.wait()
        log.info("shutting down; in-flight RPCs have %.0f s to finish", settings.grace_seconds)
        await running.stop(settings.grace_seconds)
    log.info("stopped")
