"""Client writers against hand-built RecordEvents streams, measured in the same run.

    uv run python -m bench.writer [--events 200000] [--batch 1000]

Starts an embedded PostgreSQL (or uses --database-url) and `daily-aggregator serve`, then
feeds the same events, each time into a fresh database:
1. raw: one RecordEvents stream of ready-made messages of `--batch` events, what a caller
   that does its own batching with the generated stub gets: the limit for the writers;
2. AsyncEventWriter, one `await writer.write(event)` per event;
3. EventWriter (the synchronous client), one `writer.write(event)` per event.
Prints each rate and its ratio to raw.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC

import grpc

from bench.common import fresh_database, postgres_server, service_process
from bench.ingest import make_batches, make_events
from daily_aggregator.client import AsyncClient, Client, Event, RecordResult
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc


def as_client_events(messages: list[pb.Event]) -> list[Event]:
    return [
        Event(
            m.user_id,
            m.word_count,
            m.study_seconds,
            occurred_at=m.occurred_at.ToDatetime(tzinfo=UTC),
            country=m.country,
            idempotency_key=m.idempotency_key,
        )
        for m in messages
    ]


async def raw(target: str, batches: list[list[pb.Event]]) -> tuple[float, int]:
    requests = [pb.RecordEventsRequest(events=b) for b in batches]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        began = time.perf_counter()
        response = await stub.RecordEvents(iter(requests))
        return time.perf_counter() - began, response.inserted


async def async_writer(target: str, events: list[Event], batch: int) -> tuple[float, int]:
    async with AsyncClient(target) as client:
        began = time.perf_counter()
        async with client.writer(max_batch_events=batch) as writer:
            for event in events:
                await writer.write(event)
        return time.perf_counter() - began, writer.totals.inserted


def sync_writer(target: str, events: list[Event], batch: int) -> tuple[float, int]:
    with Client(target) as client:
        began = time.perf_counter()
        with client.writer(max_batch_events=batch) as writer:
            for event in events:
                writer.write(event)
        totals: RecordResult = writer.totals
        return time.perf_counter() - began, totals.inserted


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per stream message")
    parser.add_argument("--database-url", help="measure on this server instead of an embedded one")
    args = parser.parse_args()

    print(f"generating {args.events:,} events ...", flush=True)
    messages = make_events(args.events, max(1, args.events // 10), "live")
    batches = make_batches(messages, args.batch)
    events = as_client_events(messages)
    runs = {
        "raw stream": lambda target: raw(target, batches),
        "AsyncEventWriter": lambda target: async_writer(target, events, args.batch),
        "EventWriter (sync)": lambda target: asyncio.to_thread(
            sync_writer, target, events, args.batch
        ),
    }
    seconds: dict[str, float] = {}
    async with postgres_server(args.database_url) as server_dsn:
        for i, (name, run) in enumerate(runs.items()):
            dsn = await fresh_database(server_dsn, f"bench_writer_{i}")
            async with service_process(dsn) as target:
                seconds[name], inserted = await run(target)
            if inserted != args.events:
                raise RuntimeError(f"{name} inserted {inserted:,} of {args.events:,}")

    baseline = args.events / seconds["raw stream"]
    for name, elapsed in seconds.items():
        rate = args.events / elapsed
        print(f"{name:<19}: {rate:>9,.0f} events/s  ({elapsed:.1f} s)  {rate / baseline:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
