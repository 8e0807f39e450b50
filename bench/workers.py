"""Throughput with one worker and with two: ingest and questions, measured in the same run.

    uv run python -m bench.workers [--events 400000] [--streams 8] [--clients 8]
                                   [--seconds 20] [--max-workers 2]

Starts an embedded PostgreSQL (or uses --database-url) and, for 1 up to --max-workers
workers, `daily-aggregator serve --workers N` as a separate process:
1. ingest: --streams concurrent RecordEvents streams, each over a connection of its own
   (so the kernel spreads them over the workers), of a live feed (bench.ingest's) into a
   fresh database; the rate counts events acknowledged;
2. questions: --clients concurrent callers, each over a connection of its own, asking in
   turn Summary (everyone, daily, 14 days, America/New_York), Uniques (daily, 14 days) and
   Breakdown (top 10 learners by words, 7 days) about the events the first run stored,
   folded, for --seconds after one warm-up round; the rate counts answers.
Prints events/s and queries/s per worker count and each count's ratio to one worker, and
the cores each part used meanwhile: PostgreSQL, the service's processes, and this one
(the clients), which all share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from bench.common import fresh_database, postgres_server, service_process
from bench.ingest import make_batches, make_events, until_folded
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

START = datetime(2025, 1, 1, tzinfo=UTC)  # bench.ingest's live feed covers 14 days from here
Stub = aggregator_pb2_grpc.AggregatorServiceStub


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, by part: "postgres",
    "service" or "clients". Children that exited count with the parent that reaped them."""
    parents: dict[int, int] = {}
    used: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        used[pid] = (name, sum(int(f) for f in fields[11:15]) / TICKS)
    me = os.getpid()
    parts: dict[str, float] = {}
    for pid, (name, seconds) in used.items():
        ancestor = pid
        while ancestor not in (me, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == me:
            part = "clients" if pid == me else "postgres" if name == "postgres" else "service"
            parts[part] = parts.get(part, 0.0) + seconds
    return parts


@dataclass
class Cores:
    """Cores each part kept busy over a phase."""

    postgres: float
    service: float
    clients: float

    @classmethod
    async def during(cls, phase: Awaitable[float]) -> tuple[float, Cores]:
        """`phase`'s result, and the cores each part used while it ran."""
        before, began = cpu_seconds(), time.perf_counter()
        result = await phase
        after, elapsed = cpu_seconds(), time.perf_counter() - began
        used = {part: (after[part] - before.get(part, 0.0)) / elapsed for part in after}
        return result, cls(used.get("postgres", 0.0), used.get("service", 0.0), used["clients"])

    def __str__(self) -> str:
        return (
            f"cores: PostgreSQL {self.postgres:.2f}, service {self.service:.2f},"
            f" clients {self.clients:.2f}"
        )


def own_connection(target: str) -> grpc.aio.Channel:
    """A channel that shares its connection with no other channel of this process."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def span(days: int) -> dict[str, Any]:
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(START)
    end.FromDatetime(START + timedelta(days=days))
    return {"start_time": start, "end_time": end}


def questions() -> list[Callable[[aggregator_pb2_grpc.AggregatorServiceStub], Awaitable[Any]]]:
    """The questions every caller asks in turn."""
    summary = pb.SummaryRequest(
        **span(14), granularity=pb.GRANULARITY_DAY, time_zone="America/New_York"
    )
    uniques = pb.UniquesRequest(**span(14), granularity=pb.GRANULARITY_DAY)
    breakdown = pb.BreakdownRequest(
        **span(7), dimension=pb.DIMENSION_USER, metric=pb.METRIC_WORD_COUNT, limit=10
    )
    return [
        lambda stub: stub.Summary(summary),
        lambda stub: stub.Uniques(uniques),
        lambda stub: stub.Breakdown(breakdown),
    ]


async def ingest(target: str, batches: list[list[pb.Event]], streams: int) -> float:
    """Seconds until `streams` concurrent streams of every batch were acknowledged."""
    requests = [pb.RecordEventsRequest(events=b) for b in batches]
    channels = [own_connection(target) for _ in range(streams)]
    try:
        began = time.perf_counter()
        responses = await asyncio.gather(
            *(Stub(c).RecordEvents(iter(requests[i::streams])) for i, c in enumerate(channels))
        )
        elapsed = time.perf_counter() - began
    finally:
        for channel in channels:
            await channel.close()
    inserted = sum(r.inserted for r in responses)
    if inserted != sum(len(b) for b in batches):
        raise RuntimeError(f"the service inserted {inserted}, expected every event")
    return elapsed


async def ask(target: str, clients: int, seconds: float) -> float:
    """Answers per second `clients` concurrent callers got over `seconds`, after a warm-up
    round each."""
    asked = questions()
    channels = [own_connection(target) for _ in range(clients)]
    answered = 0

    async def caller(
        stub: aggregator_pb2_grpc.AggregatorServiceStub, first: int, deadline: float
    ) -> None:
        nonlocal answered
        turn = first
        while time.perf_counter() < deadline:
            await asked[turn % len(asked)](stub)
            answered += 1
            turn += 1

    try:
        stubs = [Stub(c) for c in channels]
        await asyncio.gather(*(q(s) for s in stubs for q in asked))
        answered = 0
        deadline = time.perf_counter() + seconds
        began = time.perf_counter()
        await asyncio.gather(*(caller(s, i, deadline) for i, s in enumerate(stubs)))
        elapsed = time.perf_counter() - began
    finally:
        for channel in channels:
            await channel.close()
    return answered / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2000, help="events per stream message")
    parser.add_argument("--streams", type=int, default=8, help="concurrent ingest streams")
    parser.add_argument("--clients", type=int, default=8, help="concurrent question callers")
    parser.add_argument("--seconds", type=float, default=20.0, help="question time per run")
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    args = parser.parse_args()

    print(f"generating {args.events:,} events ...", flush=True)
    batches = make_batches(make_events(args.events, args.users, "live"), args.batch)
    counts = list(range(1, args.max_workers + 1))
    ingest_rates: dict[int, float] = {}
    query_rates: dict[int, float] = {}
    cores: dict[tuple[str, int], Cores] = {}
    async with postgres_server(args.database_url) as server_dsn:
        loaded = ""
        for workers in counts:
            dsn = await fresh_database(server_dsn, f"bench_workers_{workers}")
            async with service_process(dsn, "--workers", str(workers)) as target:
                seconds, used = await Cores.during(ingest(target, batches, args.streams))
            ingest_rates[workers] = args.events / seconds
            cores["ingest", workers] = used
            print(f"ingest, {workers} worker(s): {ingest_rates[workers]:>10,.0f} events/s; {used}")
            loaded = loaded or dsn
        for workers in counts:
            async with service_process(loaded, "--workers", str(workers)) as target:
                await until_folded(loaded)  # the first run's service folds what it stored
                rate, used = await Cores.during(ask(target, args.clients, args.seconds))
            query_rates[workers] = rate
            cores["questions", workers] = used
            print(f"questions, {workers} worker(s): {rate:>8,.1f} queries/s; {used}")

    print()
    print("| workload | workers | rate | vs 1 worker | cores: PostgreSQL / service / clients |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, rates, unit in (
        ("ingest", ingest_rates, "events/s"),
        ("questions", query_rates, "queries/s"),
    ):
        for workers in counts:
            used = cores[name, workers]
            print(
                f"| {name} | {workers} | {rates[workers]:,.0f} {unit} |"
                f" {rates[workers] / rates[1]:.2f} |"
                f" {used.postgres:.2f} / {used.service:.2f} / {used.clients:.2f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
