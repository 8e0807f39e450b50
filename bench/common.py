"""Shared pieces of the benchmarks: a PostgreSQL to measure on and the service as a process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from daily_aggregator.server.database import migrate, with_database
from daily_aggregator.server.embedded import EmbeddedPostgres

SERVING = re.compile(rb"serving \S+ on port (\d+)")


async def fresh_database(server_dsn: str, name: str) -> str:
    """Create (or recreate) a migrated database `name` and return its DSN."""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = with_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


@asynccontextmanager
async def postgres_server(database_url: str | None) -> AsyncIterator[str]:
    """Yield `database_url`, or when it is None the DSN of a throwaway embedded PostgreSQL."""
    if database_url is not None:
        yield database_url
        return
    with tempfile.TemporaryDirectory(prefix="da-bench-") as tmp:
        async with EmbeddedPostgres(Path(tmp)) as embedded:
            yield embedded.dsn


@dataclass(frozen=True)
class Service:
    """`daily-aggregator serve` running as a process of its own."""

    target: str
    pid: int
    log: list[str] = field(default_factory=list)
    """Its stderr lines once it has stopped."""


@asynccontextmanager
async def service(database_url: str, *args: str) -> AsyncIterator[Service]:
    """Run `daily-aggregator serve ARGS` on a free port; stop it with SIGTERM at the end."""
    command = str(Path(sys.executable).parent / "daily-aggregator")
    process = await asyncio.create_subprocess_exec(
        command,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        *args,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log = b""
    try:
        while not (match := SERVING.search(log)):
            line = await process.stderr.readline()
            if not line:
                raise RuntimeError(f"the service did not start:\n{log.decode()}")
            log += line
        drain = asyncio.create_task(process.stderr.read())
        running = Service(f"127.0.0.1:{int(match[1])}", process.pid)
        yield running
        process.send_signal(signal.SIGTERM)
        await process.wait()
        running.log.extend((log + await drain).decode(errors="replace").splitlines())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def service_process(database_url: str, *args: str) -> AsyncIterator[str]:
    """Run `daily-aggregator serve ARGS` on a free port and yield its target."""
    async with service(database_url, *args) as running:
        yield running.target
