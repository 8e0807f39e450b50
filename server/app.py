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
from daily_aggregator.server.auth import BearerTokenInterceptor, read_tokens
from daily_aggregator.server.config import Settings
from daily_aggregator.server.connections import server_options
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
    """A started gRPC server, the port it is bound to, its health service and its folder."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    folder: Folder
    folding: asyncio.Task[None]

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, stop accepting RPCs, let in-flight ones finish within `grace`,
        then stop folding (a fold cut short rolls back and is done again later)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.folding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.folding


async def start_server(
    pool: asyncpg.Pool, settings: Settings, *, reuse_port: bool = False
) -> RunningServer:
    """Start AggregatorService with health checking and reflection on `settings.listen`.

    Bind port 0 to get a free port; the bound port is returned. With `settings.tokens_file`
    every AggregatorService call needs one of its bearer tokens; with `settings.tls_cert`
    the port speaks TLS. With `reuse_port` the port is bound with SO_REUSEPORT, so the
    other workers of one service can bind it too (server/workers.py keeps strangers out);
    without it, a port anyone else has bound is refused.

    Raises:
        StartupError: the address is taken, or the tokens or TLS files cannot be used.
    """
    prefix = f"/{SERVICE_NAME}/"
    interceptors: list[grpc.aio.ServerInterceptor] = [AccessLogInterceptor(prefix)]
    if settings.tokens_file is not None:
        try:
            tokens = read_tokens(settings.tokens_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the tokens file: {exc}") from exc
        interceptors.append(BearerTokenInterceptor(tokens, prefix=prefix))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *server_options(settings),
        ],
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
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, folder, folding)


def _tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        chain = cert.read_bytes()
        private_key = key.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([(private_key, chain)])


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
            dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size
        )
        try:
            if migrations:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
            yield pool
        finally:
            await pool.close()


def configure_logging(settings: Settings) -> None:
    """Log to stderr from `settings.log_level` up; with several workers every line also
    names the process that wrote it, the supervisor's or a worker's pid."""
    process = " [%(process)d]" if settings.workers > 1 else ""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s{process} %(name)s: %(message)s",
    )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    With `settings.workers` above 1 this process supervises that many worker processes
    (server/workers.py) instead of serving itself.
    """
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
        await stopping.wait()
        log.info("shutting down; in-flight RPCs have %.0f s to finish", settings.grace_seconds)
        await running.stop(settings.grace_seconds)
    log.info("stopped")
