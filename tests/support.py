"""Small builders shared by the tests."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from google.protobuf import timestamp_pb2

from daily_aggregator.server.folding import Folder
from daily_aggregator.server.queries import query
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def event(
    *,
    user_id: str | None = None,
    key: str | None = None,
    at: datetime | None = datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
    words: int = 10,
    seconds: int = 60,
    country: str = "",
) -> pb.Event:
    """An Event; `at=None` leaves occurred_at unset."""
    e = pb.Event(
        user_id=user_id or str(uuid.uuid4()),
        idempotency_key=key or str(uuid.uuid4()),
        word_count=words,
        study_seconds=seconds,
        country=country,
    )
    if at is not None:
        e.occurred_at.CopyFrom(timestamp(at))
    return e


async def record(
    stub: aggregator_pb2_grpc.AggregatorServiceStub, batches: Iterable[Sequence[pb.Event]]
) -> pb.RecordEventsResponse:
    """Stream each batch as one message and return the response."""
    requests = [pb.RecordEventsRequest(events=list(batch)) for batch in batches]
    response: pb.RecordEventsResponse = await stub.RecordEvents(iter(requests))
    return response


COMMAND = str(Path(sys.executable).parent / "daily-aggregator")
"""The console script as installed."""


@dataclass
class Run:
    """What a command-line run left: its exit code and its output."""

    code: int
    out: str
    err: str


async def cli(*args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> Run:
    """Run `daily-aggregator ARGS` without blocking the event loop the test server runs in.

    The command sees none of the caller's DAILY_AGGREGATOR_* variables, only those in `env`.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DAILY_AGGREGATOR_")}
    process = await asyncio.create_subprocess_exec(
        COMMAND,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**inherited, "NO_COLOR": "1", **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 180)
    run = Run(process.returncode or 0, out.decode(), err.decode())
    assert "Traceback" not in run.err, run.err
    return run


def logged(records: Sequence[logging.LogRecord], logger: str) -> list[logging.LogRecord]:
    """The records of `logger` among `records` (pytest's caplog.records).

    A call's access-log line is written before its status is sent, so once a caller has
    its answer or its error, the line is there.
    """
    return [r for r in records if r.name == logger]


@asynccontextmanager
async def folder_held_off(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Hold the fold lock, so that what is recorded meanwhile stays in the pending log."""
    async with pool.acquire() as conn:
        async with asyncio.timeout(30):  # a fold that never ends fails the test, not hangs it
            while not await conn.fetchval(query("fold_lock")):
                await asyncio.sleep(0.01)  # the server's folder is in the middle of a fold
        try:
            yield
        finally:
            await conn.execute(query("fold_unlock"))


async def fold_everything(pool: asyncpg.Pool) -> int:
    """Fold every pending event with a folder of `pool`'s own; return how many it folded.

    The pool must have two connections to spare: one to fold on, one for the fold to read with.
    """
    async with pool.acquire() as conn:
        return await Folder(pool, idle_seconds=0.01).drain(conn)


async def pending(pool: asyncpg.Pool) -> int:
    """Events in the pending log: acknowledged and not yet folded."""
    count: int = await pool.fetchval("SELECT count(*) FROM pending_events")
    return count
