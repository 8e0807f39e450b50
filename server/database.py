"""The connection pool and start-up migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg

from daily_aggregator.server.queries import migrations, query

log = logging.getLogger(__name__)

# Errors that mean "PostgreSQL cannot be reached right now" rather than "the
# statement is wrong": OSError covers refused connections and missing sockets.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # Shutting down, starting up, or crashed and restarting.
    asyncpg.exceptions.OperatorInterventionError,
    # What asyncpg raises ("cannot switch to state 15; another operation (2) is in
    # progress", MagicStack/asyncpg#784) when PostgreSQL ended the session between two
    # statements, as a restart does; the pool then drops the connection.
    asyncpg.exceptions.InternalClientError,
)

# Errors worth a second try of the same statement: it was rolled back whole.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)

# Errors that make an RPC fail with UNAVAILABLE: the client should retry later.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    *RETRYABLE_ERRORS,
    asyncpg.exceptions.InsufficientResourcesError,
)


def with_database(dsn: str, database: str) -> str:
    """`dsn` with its database name replaced by `database`."""
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """Open a pool to `dsn`. Connections time out after 10 s so outages surface quickly.

    `init` runs on each new connection before it is first used.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        timeout=10,
        command_timeout=60,
        server_settings={
            # Query ranges vary from an hour to years; a plan per execution fits each.
            "plan_cache_mode": "force_custom_plan",
            # Grouping a quarter's activity by user fits in memory instead of spilling.
            "work_mem": "64MB",
        },
    )
    assert pool is not None
    return pool


async def wait_for_database(dsn: str, *, patience: float = 60.0) -> None:
    """Return once PostgreSQL accepts a connection, retrying for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except CONNECTION_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(0.5)
        else:
            await conn.close()
            return


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations in one transaction and return the versions applied.

    Several servers may start at once: the advisory lock makes the others wait,
    after which they find nothing left to apply.
    """
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(query("lock_migrations"))
        await conn.execute(query("schema_migrations"))
        applied = {row["version"] for row in await conn.fetch(query("applied_migrations"))}
        for migration in migrations():
            if migration.version in applied:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql)
            await conn.execute(query("record_migration"), migration.version, migration.name)
            applied_now.append(migration.version)
    return applied_now


@contextlib.asynccontextmanager
async def snapshot(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a read-only transaction that sees one state of the whole database.

    Every query inside sees the rollups and the pending log as of the same moment, so
    each event is counted once, folded or not; every event acknowledged before the
    block began is in that state.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(query("lock_pending_log"))
        yield conn
