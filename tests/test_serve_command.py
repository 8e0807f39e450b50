"""`daily-aggregator serve` as a user runs it: a real process, signals and all."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import cli, event, record

COMMAND = str(Path(sys.executable).parent / "daily-aggregator")
SERVING = re.compile(rb"serving \S+ on port (\d+)")


@dataclass
class Service:
    process: asyncio.subprocess.Process
    port: int
    log: bytearray

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _drain(stream: asyncio.StreamReader, log: bytearray) -> None:
    while line := await stream.readline():
        log.extend(line)


def environment(**overrides: str | None) -> dict[str, str]:
    """This process's environment without DAILY_AGGREGATOR_* variables, changed by `overrides`
    (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAILY_AGGREGATOR_")}
    for name, value in overrides.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


async def start_serve(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start `daily-aggregator serve ARGS` on a free port, its log on a pipe."""
    return await asyncio.create_subprocess_exec(
        COMMAND,
        "serve",
        "--listen",
        "127.0.0.1:0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=environment() if env is None else env,
    )


@asynccontextmanager
async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Service]:
    """Run `daily-aggregator serve ARGS` on a free port until the block ends."""
    process = await start_serve(*args, env=env)
    assert process.stderr is not None
    log = bytearray()
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(120):
            while not (match := SERVING.search(log)):
                line = await process.stderr.readline()
                assert line, f"serve exited before serving:\n{log.decode()}"
                log.extend(line)
        drain = asyncio.create_task(_drain(process.stderr, log))
        yield Service(process, int(match[1]), log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            await drain


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


async def stored_events(database_url: str, *, at_least: int) -> None:
    """Wait until the database holds `at_least` events."""
    conn = await asyncpg.connect(database_url)
    try:
        async with asyncio.timeout(30):
            while await conn.fetchval("SELECT count(*) FROM events") < at_least:
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_sigterm_lets_a_stream_in_flight_finish_then_exits_zero(database_url: str) -> None:
    async with serve("--database-url", database_url, "--grace-seconds", "20") as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            call = aggregator_pb2_grpc.AggregatorServiceStub(channel).RecordEvents()
            await call.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
            # The signal must find the stream in flight, not still on its way to the server:
            # wait until the server has stored the first message.
            await stored_events(database_url, at_least=10)
            service.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            await call.write(pb.RecordEventsRequest(events=[event() for _ in range(10)]))
            await call.done_writing()
            response = await call
        assert (response.received, response.inserted) == (20, 20)
        assert await asyncio.wait_for(service.process.wait(), 30) == 0
    assert re.search(
        rb"daily_aggregator.access: RecordEvents \S+ OK [\d.]+ ms received=20 inserted=20 ",
        service.log,
    )


async def test_log_level_warning_leaves_a_healthy_service_silent(database_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    process = await asyncio.create_subprocess_exec(
        COMMAND, "serve", "--listen", address, "--database-url", database_url,
        "--log-level", "warning", stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
            assert (await record(stub, [[event()]])).inserted == 1
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert stderr == b""


async def test_embedded_database_keeps_data_across_restarts_and_stops_with_the_service(
    tmp_path: Path,
) -> None:
    batches = [[event() for _ in range(50)] for _ in range(2)]
    async with serve("--data-dir", str(tmp_path)) as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            first = await record(aggregator_pb2_grpc.AggregatorServiceStub(channel), batches)
        pid = postmaster_pid(tmp_path)
        service.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0
    assert first.inserted == 100
    assert not alive(pid), "the embedded PostgreSQL outlived the service"

    async with serve("--data-dir", str(tmp_path)) as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            again = await record(aggregator_pb2_grpc.AggregatorServiceStub(channel), batches)
        service.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0
    assert (again.inserted, again.duplicates) == (0, 100)


async def test_after_kill_9_no_database_is_left_behind_and_the_next_start_recovers(
    tmp_path: Path,
) -> None:
    batches = [[event() for _ in range(50)] for _ in range(2)]
    async with serve("--data-dir", str(tmp_path)) as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            first = await record(aggregator_pb2_grpc.AggregatorServiceStub(channel), batches)
        pid = postmaster_pid(tmp_path)
        service.process.kill()
        await service.process.wait()
    assert first.inserted == 100
    async with asyncio.timeout(15):
        while alive(pid):
            await asyncio.sleep(0.1)

    async with serve("--data-dir", str(tmp_path)) as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            again = await record(aggregator_pb2_grpc.AggregatorServiceStub(channel), batches)
        service.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0
    assert (again.inserted, again.duplicates) == (0, 100)


async def test_a_taken_address_is_one_line_and_exit_1(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        process = await asyncio.create_subprocess_exec(
            COMMAND,
            "serve",
            "--listen",
            address,
            "--database-url",
            database_url,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert f"daily-aggregator serve: cannot listen on {address}" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=1"
    process = await asyncio.create_subprocess_exec(
        COMMAND,
        "serve",
        "--database-url",
        missing,
        "--database-patience",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1
    assert "daily-aggregator serve: cannot use PostgreSQL" in stderr.decode()
    assert "Traceback" not in stderr.decode()


@pytest.mark.parametrize("where", ["XDG_DATA_HOME", "HOME"])
async def test_without_a_data_dir_the_data_lives_in_xdg_data_home_else_the_home(
    where: str, tmp_path: Path
) -> None:
    if where == "XDG_DATA_HOME":
        env = environment(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "unused"))
        data_dir = tmp_path / "xdg" / "daily-aggregator"
    else:
        env = environment(XDG_DATA_HOME=None, HOME=str(tmp_path / "home"))
        data_dir = tmp_path / "home" / ".local" / "share" / "daily-aggregator"
    async with serve(env=env) as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stored = await record(aggregator_pb2_grpc.AggregatorServiceStub(channel), [[event()]])
        service.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0
    assert stored.inserted == 1
    assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    assert f"embedded PostgreSQL running in {data_dir}".encode() in service.log
    assert not (tmp_path / "unused").exists()


async def test_a_home_that_cannot_be_written_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # A regular file as the home: no user, root included, can create a directory in it.
    home = tmp_path / "home"
    home.write_text("")
    process = await start_serve(env=environment(XDG_DATA_HOME=None, HOME=str(home)))
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode().splitlines() == [
        "daily-aggregator serve: cannot start the embedded PostgreSQL: cannot create the data"
        f" directory {home}/.local/share/daily-aggregator: Not a directory; choose another"
        " directory with --data-dir or DAILY_AGGREGATOR_DATA_DIR"
    ]


async def test_json_logs_are_one_object_per_line_and_access_lines_carry_their_fields(
    database_url: str,
) -> None:
    async with serve("--database-url", database_url, "--log-format", "json") as service:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
            await record(stub, [[event(), event()], [event(words=2_000_000)]])
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Uniques(pb.UniquesRequest())
        service.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0

    lines = [json.loads(line) for line in service.log.decode().splitlines()]
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message"}, line
        assert line["time"].endswith("Z")
        assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
    assert {line["level"] for line in lines} == {"info"}
    assert lines[-1]["message"] == "stopped"
    access = [line for line in lines if line["logger"] == "daily_aggregator.access"]
    assert [line["method"] for line in access] == ["RecordEvents", "Uniques"]
    for line in access:
        assert re.fullmatch(r"ipv[46]:\S+", line["peer"])
        assert isinstance(line["duration_ms"], float)
        assert line["token"] is None
    assert {k: v for k, v in access[0].items() if k not in ("time", "peer", "duration_ms")} == {
        "level": "info",
        "logger": "daily_aggregator.access",
        "pid": service.process.pid,
        "message": access[0]["message"],
        "method": "RecordEvents",
        "code": "OK",
        "token": None,
        "received": 3,
        "inserted": 2,
        "duplicates": 0,
        "conflicts": 0,
        "rejected": 1,
    }
    # The message is the text line, as --log-format text prints it.
    assert re.fullmatch(
        r"RecordEvents \S+ OK [\d.]+ ms received=3 inserted=2 duplicates=0 conflicts=0 "
        r"rejected=1",
        access[0]["message"],
    )
    assert access[1]["code"] == "INVALID_ARGUMENT"
    assert "received" not in access[1]


METRICS_AT = re.compile(rb"Prometheus metrics at (http://\S+/metrics)")


async def test_with_prometheus_multiproc_dir_metrics_are_kept_in_files_and_served(
    database_url: str, tmp_path: Path
) -> None:
    env = environment(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    args = ("--database-url", database_url, "--metrics-listen", "127.0.0.1:0")
    async with serve(*args, env=env) as service:
        async with asyncio.timeout(30):
            while not (match := METRICS_AT.search(service.log)):
                await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
            await record(stub, [[event(), event()]])
        text = await asyncio.to_thread(_fetch, match[1].decode())
        service.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.process.wait(), 60) == 0

    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    stream = {
        "grpc_type": "client_stream",
        "grpc_service": "daily_aggregator.v1.AggregatorService",
        "grpc_method": "RecordEvents",
    }
    assert samples[("grpc_server_handled_total", frozenset({**stream, "grpc_code": "OK"}.items()))]
    assert samples[("grpc_server_handling_seconds_count", frozenset(stream.items()))] == 1
    assert samples[("daily_aggregator_events_total", frozenset({("outcome", "inserted")}))] == 2
    assert samples[("daily_aggregator_pool_connections", frozenset({("state", "in_use")}))] >= 1
    kept = [name for name in os.listdir(tmp_path) if name.startswith("counter_")]
    assert kept, "counters are kept in PROMETHEUS_MULTIPROC_DIR"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
    return body.decode()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--metrics-listen", "9100", "--metrics-listen must be HOST:PORT"),
        ("--otlp-endpoint", "collector:4317", "--otlp-endpoint must be http://HOST:PORT"),
        ("--log-format", "yaml", "invalid choice: 'yaml'"),
    ],
)
async def test_a_bad_telemetry_flag_is_a_usage_error(flag: str, value: str, says: str) -> None:
    run = await cli("serve", flag, value)
    assert run.code == 2
    assert says in run.err


async def test_with_json_logs_a_start_up_failure_is_a_json_line_too(tmp_path: Path) -> None:
    missing = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=1"
    run = await cli(
        "serve", "--log-format", "json", "--database-url", missing, "--database-patience", "0"
    )
    assert run.code == 1
    lines = [json.loads(line) for line in run.err.splitlines()]
    assert lines[-1]["level"] == "error"
    assert lines[-1]["message"].startswith("daily-aggregator serve: cannot use PostgreSQL")


async def test_an_open_health_watch_sees_not_serving_and_does_not_hold_the_exit(
    database_url: str,
) -> None:
    async with (
        serve("--database-url", database_url, "--grace-seconds", "1") as service,
        grpc.aio.insecure_channel(service.target) as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        before = (await watch.read()).status
        service.process.send_signal(signal.SIGTERM)
        during = (await watch.read()).status
        # The watch stays open: the grace period ends it, and the process exits.
        assert await asyncio.wait_for(service.process.wait(), 30) == 0
    assert before == health_pb2.HealthCheckResponse.SERVING
    assert during == health_pb2.HealthCheckResponse.NOT_SERVING
