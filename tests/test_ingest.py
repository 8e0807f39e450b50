"""RecordEvents through a real server and a real channel into real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from daily_aggregator.server.ingest import MAX_ERRORS
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record

Stub = aggregator_pb2_grpc.AggregatorServiceStub


async def stored(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM events")
    return count


async def test_each_message_is_a_batch_and_every_event_is_stored(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    batches = [[event(words=i, country="JP") for i in range(5)] for _ in range(3)]
    response = await record(stub, batches)
    assert (response.received, response.inserted, response.rejected) == (15, 15, 0)
    rows = await pool.fetch(
        "SELECT idempotency_key::text AS key, word_count, country FROM events ORDER BY 1"
    )
    sent = sorted((e.idempotency_key, e.word_count, e.country) for b in batches for e in b)
    assert [(r["key"], r["word_count"], r["country"]) for r in rows] == sent


async def test_empty_stream_and_empty_batches_store_nothing(stub: Stub, pool: asyncpg.Pool) -> None:
    assert await record(stub, []) == pb.RecordEventsResponse()
    assert await record(stub, [[], []]) == pb.RecordEventsResponse()
    assert await stored(pool) == 0


async def test_duplicates_inside_one_batch_count_once(stub: Stub, pool: asyncpg.Pool) -> None:
    first = event()
    again = pb.Event()
    again.CopyFrom(first)
    response = await record(stub, [[first, event(), again, again]])
    assert (response.inserted, response.duplicates, response.conflicts) == (2, 2, 0)
    assert await stored(pool) == 2


async def test_resending_a_stream_stores_nothing_twice(stub: Stub, pool: asyncpg.Pool) -> None:
    batches = [[event() for _ in range(20)] for _ in range(3)]
    first = await record(stub, batches)
    second = await record(stub, batches)
    assert (first.inserted, first.duplicates) == (60, 0)
    assert (second.inserted, second.duplicates, second.conflicts) == (0, 60, 0)
    assert await stored(pool) == 60


async def test_same_key_for_another_user_is_another_event(stub: Stub, pool: asyncpg.Pool) -> None:
    key = str(uuid.uuid4())
    response = await record(stub, [[event(key=key), event(key=key)]])
    assert response.inserted == 2
    assert await stored(pool) == 2


async def test_concurrent_streams_with_overlapping_keys_count_each_event_once(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    shared = [event() for _ in range(400)]
    streams = []
    for _ in range(4):
        mine = [*shared, *(event() for _ in range(100))]
        random.shuffle(mine)
        streams.append([mine[i : i + 50] for i in range(0, len(mine), 50)])
    responses = await asyncio.gather(*(record(stub, s) for s in streams))
    assert sum(r.inserted for r in responses) == 400 + 4 * 100
    assert sum(r.duplicates for r in responses) == 3 * 400
    assert sum(r.conflicts for r in responses) == 0
    assert await stored(pool) == 800


async def test_a_changed_payload_is_a_conflict_and_the_first_write_wins(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    original = event(words=10, seconds=60, country="JP")
    changed = [
        event(user_id=original.user_id, key=original.idempotency_key, words=11, country="JP"),
        event(user_id=original.user_id, key=original.idempotency_key, seconds=61, country="JP"),
        event(user_id=original.user_id, key=original.idempotency_key, country="FR"),
        event(
            user_id=original.user_id,
            key=original.idempotency_key,
            at=datetime(2025, 6, 1, 12, 0, 1, tzinfo=UTC),
            country="JP",
        ),
    ]
    assert (await record(stub, [[original]])).inserted == 1
    response = await record(stub, [changed, [original]])
    assert (response.inserted, response.duplicates, response.conflicts) == (0, 1, 4)
    row = await pool.fetchrow("SELECT word_count, study_seconds, country FROM events")
    assert tuple(row) == (10, 60, "JP")


async def test_a_conflict_inside_one_batch_keeps_the_first(stub: Stub, pool: asyncpg.Pool) -> None:
    first = event(words=1)
    second = event(user_id=first.user_id, key=first.idempotency_key, words=2)
    response = await record(stub, [[first, second]])
    assert (response.inserted, response.conflicts) == (1, 1)
    assert await pool.fetchval("SELECT word_count FROM events") == 1


async def test_missing_occurred_at_means_receive_time_and_resends_match(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    e = event(at=None)
    before = datetime.now(UTC)
    assert (await record(stub, [[e]])).inserted == 1
    after = datetime.now(UTC)
    occurred = await pool.fetchval("SELECT occurred_at FROM events")
    assert before - timedelta(milliseconds=1) <= occurred <= after
    await asyncio.sleep(0.01)
    again = await record(stub, [[e]])
    assert (again.duplicates, again.conflicts) == (1, 0)
    assert await pool.fetchval("SELECT occurred_at FROM events") == occurred


async def test_occurred_at_is_stored_to_the_microsecond(stub: Stub, pool: asyncpg.Pool) -> None:
    e = event()
    e.occurred_at.nanos = 123_456_789
    await record(stub, [[e]])
    occurred = await pool.fetchval("SELECT occurred_at FROM events")
    assert occurred == datetime(2025, 6, 1, 12, 0, 0, 123_456, tzinfo=UTC)


class _Future:
    """A time `hours` ahead of the moment the test runs (not of when the module was read)."""

    def __init__(self, hours: float) -> None:
        self.hours = hours

    def __repr__(self) -> str:
        return f"{self.hours} h ahead"


def _changes(change: dict[str, object]) -> dict[str, object]:
    """`change` with its future times made concrete now."""
    return {
        k: datetime.now(UTC) + timedelta(hours=v.hours) if isinstance(v, _Future) else v
        for k, v in change.items()
    }


INVALID = [
    ("user_id", {"user_id": "not-a-uuid"}, "must be a UUID"),
    ("user_id", {"user_id": "123e4567e89b12d3a456426614174000"}, "must be a UUID"),
    ("idempotency_key", {"key": "123e4567-e89b-12d3-a456-42661417400g"}, "must be a UUID"),
    ("occurred_at", {"at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)}, "2000-01-01"),
    ("occurred_at", {"at": _Future(24.1)}, "24 hours in the future"),
    ("word_count", {"words": 1_000_001}, "at most 1000000"),
    ("study_seconds", {"seconds": 86_401}, "at most 86400"),
    ("country", {"country": "jp"}, "ISO 3166-1 alpha-2"),
    ("country", {"country": "JPN"}, "ISO 3166-1 alpha-2"),
    ("country", {"country": "J1"}, "ISO 3166-1 alpha-2"),
]

VALID_EDGES = [
    {"user_id": "123E4567-E89B-12D3-A456-426614174000"},
    {"at": datetime(2000, 1, 1, tzinfo=UTC)},
    {"at": _Future(23.9)},
    {"words": 1_000_000},
    {"words": 0},
    {"seconds": 86_400},
    {"country": ""},
    {"country": "ZA"},
]


@pytest.mark.parametrize(("field", "change", "reason"), INVALID)
async def test_each_invalid_field_is_rejected_by_name(
    stub: Stub, pool: asyncpg.Pool, field: str, change: dict[str, object], reason: str
) -> None:
    bad = event(**_changes(change))  # type: ignore[arg-type]
    response = await record(stub, [[event(), bad, event()]])
    assert (response.received, response.inserted, response.rejected) == (3, 2, 1)
    [error] = response.errors
    assert (error.index, error.field, error.idempotency_key) == (1, field, bad.idempotency_key)
    assert reason in error.reason
    assert await stored(pool) == 2


async def test_invalid_nanos_are_rejected(stub: Stub) -> None:
    bad = event()
    bad.occurred_at.nanos = -1
    [error] = (await record(stub, [[bad]])).errors
    assert (error.field, error.reason) == ("occurred_at", "nanos must be between 0 and 999999999")


@pytest.mark.parametrize("change", VALID_EDGES)
async def test_values_at_the_limits_are_accepted(
    stub: Stub, pool: asyncpg.Pool, change: dict[str, object]
) -> None:
    response = await record(stub, [[event(**_changes(change))]])  # type: ignore[arg-type]
    assert (response.inserted, response.rejected) == (1, 0), response.errors
    assert await stored(pool) == 1


async def test_uuids_are_answered_in_lower_case(stub: Stub, pool: asyncpg.Pool) -> None:
    upper = "123E4567-E89B-12D3-A456-426614174000"
    await record(stub, [[event(user_id=upper, key=upper)]])
    assert await pool.fetchval("SELECT user_id::text FROM events") == upper.lower()


async def test_partial_success_names_stream_positions_across_messages(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    batches = [[event() for _ in range(5)] for _ in range(3)]
    batches[0][1].word_count = 2_000_000
    batches[1][2].user_id = "nope"
    batches[2][4].country = "xx"
    response = await record(stub, batches)
    assert (response.received, response.inserted, response.rejected) == (15, 12, 3)
    assert [(e.index, e.field) for e in response.errors] == [
        (1, "word_count"),
        (7, "user_id"),
        (14, "country"),
    ]
    assert not response.errors_truncated
    assert await stored(pool) == 12


async def test_error_list_is_capped_and_says_so(stub: Stub, pool: asyncpg.Pool) -> None:
    bad = [event(words=2_000_000) for _ in range(MAX_ERRORS + 50)]
    response = await record(stub, [bad[:70], [event()], bad[70:]])
    assert (response.rejected, response.inserted) == (MAX_ERRORS + 50, 1)
    assert len(response.errors) == MAX_ERRORS
    assert response.errors_truncated
    assert response.errors[-1].index == MAX_ERRORS  # the good event sat at position 70


async def test_a_stream_much_longer_than_one_batch(stub: Stub, pool: asyncpg.Pool) -> None:
    batches = [[event() for _ in range(500)] for _ in range(100)]
    response = await record(stub, batches)
    assert (response.received, response.inserted) == (50_000, 50_000)
    assert await stored(pool) == 50_000


async def test_a_message_over_the_size_limit_is_resource_exhausted(
    stub: Stub, pool: asyncpg.Pool, settings: object
) -> None:
    small = [event() for _ in range(10)]
    huge = [event() for _ in range(60_000)]  # ~6 MB, over the 4 MiB default
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await record(stub, [small, huge])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (raised.value.details() or "")
    # What came before the oversized message is kept.
    deadline = time.monotonic() + 5
    while await stored(pool) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await stored(pool) == 10
