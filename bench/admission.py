"""Admission control under a flood: thousands of clients streaming 4 MiB messages at once.

    uv run python -m bench.admission [--clients 5000] [--channels 50] [--messages 2]
                                     [--message-bytes 4193280] [--attempts 1] [--eager]
                                     [--serve-arg=--flag=value ...]

Starts an embedded PostgreSQL (or uses --database-url) and `daily-aggregator serve` with its
default limits as a process of its own, then opens --clients RecordEvents streams at the same
moment over --channels connections. Each stream sends --messages messages of about
--message-bytes of distinct, valid events as soon as the service has admitted it (its
response headers say so), or with --eager half a second after it was not refused outright,
and gives up on the first refusal (--attempts 1) or sends the same events again after the
retry delay the service asked for.

Meanwhile it samples the service's resident memory from /proc and checks its health from a
process of its own every 0.2 s. It prints the peak RSS (the kernel's high-water mark), the
refusals (counted in the service's access log, and by limit as the clients saw them), the
health checks, and whether the events the service acknowledged are exactly the events
stored. Targets: peak RSS under 1 GiB, SERVING throughout, acknowledged == stored.

Streams that gRPC itself turned away before the service saw them (CANCELLED when thousands
arrive at once over many new connections) are listed as "failed otherwise".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from bench.common import fresh_database, postgres_server, service
from daily_aggregator.v1 import aggregator_pb2 as pb

METHOD = "/daily_aggregator.v1.AggregatorService/RecordEvents"
MARK = b"zzzzzzzz"  # where each stream's own prefix goes in every idempotency key
MiB = 1024 * 1024
ACCESS_LINE = re.compile(r".*RecordEvents \S+ ([A-Z_]+) [\d.]+ ms")


def template(message_bytes: int) -> tuple[bytes, int]:
    """A serialized RecordEventsRequest of at most `message_bytes`, and its event count.

    Every idempotency key starts with MARK; `message` puts a stream's own prefix there, so
    each stream's events are distinct without building every message from scratch.
    """
    users = [str(uuid.UUID(int=n + 1, version=4)) for n in range(1000)]
    start = datetime(2025, 6, 1, tzinfo=UTC)

    def build(count: int) -> bytes:
        events = []
        for j in range(count):
            e = pb.Event(
                user_id=users[j % len(users)],
                idempotency_key=f"{MARK.decode()}-{j >> 12 & 0xFFFF:04x}-4{j & 0xFFF:03x}"
                f"-8000-{j:012x}",
                word_count=1 + j % 50,
                study_seconds=30 + j % 600,
                country=("JP", "US", "DE", "")[j % 4],
            )
            e.occurred_at.FromDatetime(start + timedelta(seconds=j))
            events.append(e)
        return pb.RecordEventsRequest(events=events).SerializeToString()

    per_event = len(build(100)) / 100
    count = int(message_bytes / per_event)
    while len(raw := build(count)) > message_bytes:
        count -= max(1, (len(raw) - message_bytes) // int(per_event) + 1)
    return raw, count


def message(raw: bytes, client: int, index: int) -> bytes:
    """Message `index` of stream `client`: the template with keys of that stream's own."""
    return raw.replace(MARK, f"{client:06x}{index:02x}".encode())


@dataclass
class Tally:
    """What the clients saw."""

    acknowledged: int = 0
    received: int = 0
    inserted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    retry_delays: set[float] = field(default_factory=set)


FLAGS = {
    "--max-concurrent-streams": "streams",
    "--max-concurrent-queries": "queries",
    "--max-bytes-in-flight": "memory",
}


def refusal_of(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """Which limit refused the call (by the flag its message names), and the retry delay."""
    details = error.details() or ""
    limit = next((name for flag, name in FLAGS.items() if flag in details), "other")
    delay = None
    with contextlib.suppress(ValueError):
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                delay = info.retry_delay.ToNanoseconds() / 1e9
    return limit, delay


@dataclass
class Attempt:
    """One try of one stream: its messages, built once the service has admitted it."""

    number: int
    raw: bytes
    args: argparse.Namespace
    builders: asyncio.Semaphore
    call: Any = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def requests(self) -> AsyncIterator[bytes]:
        # The service sends a stream's response headers once it has room for it, so a
        # stream refused or held back costs this process nothing: thousands of 4 MiB
        # messages would not fit in it. grpcio also ends that wait when the call ends
        # without headers (a refusal) and reports the status a moment later, so a busy
        # process may take a refused stream for an admitted one: `builders` bounds how many
        # streams have messages at hand at once.
        await self.started.wait()
        if self.args.eager:
            # Like a client that streams regardless: only an outright refusal is awaited.
            await asyncio.sleep(0.5)
        else:
            await self.call.initial_metadata()
            await asyncio.sleep(0.1)
        if self.call.done():
            return
        async with self.builders:
            for index in range(self.args.messages):
                if self.call.done():
                    return
                yield message(self.raw, self.number, index)


async def client(
    number: int,
    channel: grpc.aio.Channel,
    raw: bytes,
    args: argparse.Namespace,
    builders: asyncio.Semaphore,
    tally: Tally,
) -> None:
    """One stream of `args.messages` messages, sent again after refusals up to --attempts."""
    record = channel.stream_unary(
        METHOD, request_serializer=None, response_deserializer=pb.RecordEventsResponse.FromString
    )
    for attempt in range(1, args.attempts + 1):
        this = Attempt(number, raw, args, builders)
        this.call = record(this.requests(), timeout=args.deadline)
        this.started.set()
        try:
            response: pb.RecordEventsResponse = await this.call
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                tally.failed[f"{error.code().name}: {error.details()}"] += 1
                return
            limit, delay = refusal_of(error)
            tally.refused[limit] += 1
            if delay is not None:
                tally.retry_delays.add(delay)
            if attempt == args.attempts or delay is None:
                return
            await asyncio.sleep(delay * (1 + number % 10 / 10))
            continue
        tally.acknowledged += 1
        tally.received += response.received
        tally.inserted += response.inserted
        return


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


@dataclass
class Watch:
    """The service's memory and health, sampled while the clients run."""

    rss_start: int = 0
    rss_peak_sampled: int = 0
    health_checks: int = 0
    not_serving: Counter[str] = field(default_factory=Counter)
    slowest_check: float = 0.0


BUILDERS = 64
"""Streams with messages at hand at once: more than the service reads at once by default."""
EAGER_BUILDERS = 320
"""With --eager: more than the service admits at once by default (256 streams)."""
OWN_MEMORY_LIMIT = 6 * 1024 * MiB
"""This process gives up beyond this resident size rather than crowd out the machine."""


async def watch_memory(
    pid: int, seen: Watch, stop: asyncio.Event, clients: asyncio.Future[object]
) -> None:
    while not stop.is_set():
        seen.rss_peak_sampled = max(seen.rss_peak_sampled, memory_of(pid)["VmRSS"])
        if memory_of(os.getpid())["VmRSS"] > OWN_MEMORY_LIMIT:
            clients.cancel()
            raise RuntimeError("the clients outgrew their memory limit")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def probe(target: str) -> None:
    """Check health every 0.2 s until stdin closes; one line per check: status and seconds.

    It runs as a process of its own, so that the clients' work cannot delay its checks.
    """
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    closed = asyncio.create_task(reader.read())
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not closed.done():
            began = time.perf_counter()
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            print(status, f"{time.perf_counter() - began:.3f}", flush=True)
            await asyncio.wait((closed,), timeout=0.2)


async def watch_health(target: str, seen: Watch, stop: asyncio.Event) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.admission",
        "--probe",
        target,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    await stop.wait()
    process.stdin.close()
    for line in (await process.stdout.read()).decode().splitlines():
        status, seconds = line.split()
        seen.health_checks += 1
        seen.slowest_check = max(seen.slowest_check, float(seconds))
        if status != "SERVING":
            seen.not_serving[status] += 1
    await process.wait()


async def stored_events(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM events")
        return count
    finally:
        await conn.close()


async def flood(target: str, pid: int, raw: bytes, args: argparse.Namespace) -> tuple[Tally, Watch]:
    tally, seen, stop = Tally(), Watch(), asyncio.Event()
    seen.rss_start = memory_of(pid)["VmRSS"]
    # A subchannel pool per channel: otherwise channels to one target share one connection.
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)],
        )
        for _ in range(args.channels)
    ]
    builders = asyncio.Semaphore(EAGER_BUILDERS if args.eager else BUILDERS)
    clients = asyncio.gather(
        *(
            client(n, channels[n % len(channels)], raw, args, builders, tally)
            for n in range(args.clients)
        )
    )
    watchers = [
        asyncio.create_task(watch_memory(pid, seen, stop, clients)),
        asyncio.create_task(watch_health(target, seen, stop)),
    ]
    try:
        await clients
    finally:
        stop.set()
        await asyncio.gather(*watchers)
        for channel in channels:
            await channel.close()
    return tally, seen


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--channels", type=int, default=50, help="connections the clients share")
    parser.add_argument("--messages", type=int, default=2, help="messages per stream")
    parser.add_argument("--message-bytes", type=int, default=4 * MiB - 1024)
    parser.add_argument("--attempts", type=int, default=1, help="tries per stream")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="send without waiting for the service to admit the stream, so that held-back"
        " streams have their first message under way (flow control holds it back)",
    )
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per stream")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra flag for the service"
    )
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    parser.add_argument("--probe", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        await probe(args.probe)
        return

    raw, events = template(args.message_bytes)
    print(
        f"{args.clients:,} streams of {args.messages} x {len(raw):,} bytes ({events:,} events)"
        f" over {args.channels} connections, {args.attempts} attempt(s) each",
        flush=True,
    )
    async with postgres_server(args.database_url) as server_dsn:
        dsn = await fresh_database(server_dsn, "bench_admission")
        async with service(dsn, *args.serve_arg) as running:
            began = time.perf_counter()
            tally, seen = await flood(running.target, running.pid, raw, args)
            elapsed = time.perf_counter() - began
            peak = memory_of(running.pid)["VmHWM"]
        stored = await stored_events(dsn)
    outcomes = Counter(
        match[1] for line in running.log if (match := ACCESS_LINE.match(line)) is not None
    )

    refused = outcomes["RESOURCE_EXHAUSTED"]
    print(f"elapsed: {elapsed:.1f} s")
    print(
        f"acknowledged: {tally.acknowledged:,} streams, {tally.received:,} events received,"
        f" {tally.inserted:,} inserted"
    )
    print(
        f"refused by the service: {refused:,} RecordEvents calls (its access log: "
        + ", ".join(f"{code} {count:,}" for code, count in outcomes.most_common())
        + ")"
    )
    by_limit = ", ".join(f"{name} {count:,}" for name, count in tally.refused.most_common())
    delays = ", ".join(f"{d:g} s" for d in sorted(tally.retry_delays))
    print(f"  as the clients saw them: {by_limit or 'none'} (retry delays {delays or 'none'})")
    for failure, count in tally.failed.most_common():
        print(f"failed otherwise: {count:,} {failure}")
    print(f"stored: {stored:,} events; acknowledged == stored: {stored == tally.inserted}")
    print(
        f"service RSS: {seen.rss_start / MiB:,.0f} MiB at the start, peak"
        f" {peak / MiB:,.0f} MiB (sampled peak {seen.rss_peak_sampled / MiB:,.0f} MiB);"
        " target < 1024 MiB"
    )
    print(f"this process: peak {memory_of(os.getpid())['VmHWM'] / MiB:,.0f} MiB")
    serving = "SERVING throughout" if not seen.not_serving else f"NOT: {dict(seen.not_serving)}"
    print(f"health: {seen.health_checks} checks, {serving}, slowest {seen.slowest_check:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
