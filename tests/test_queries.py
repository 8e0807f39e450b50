"""Summary, Uniques and Breakdown through a real server, fed by RecordEvents.

Every expected number below is worked out by hand from the events of its test.
Word counts are often distinct powers of two, so that a sum names exactly the
events it counted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.conftest import serving
from tests.support import event, record, timestamp

if TYPE_CHECKING:
    from tests.conftest import Cluster

Stub = aggregator_pb2_grpc.AggregatorServiceStub
SeriesResponse = pb.SummaryResponse | pb.UniquesResponse

HOUR = pb.GRANULARITY_HOUR
DAY = pb.GRANULARITY_DAY
WEEK = pb.GRANULARITY_WEEK
MONTH = pb.GRANULARITY_MONTH

# Users whose order as keys is known: A < B < C.
USER_A = "a0000000-0000-4000-8000-000000000000"
USER_B = "b0000000-0000-4000-8000-000000000000"
USER_C = "c0000000-0000-4000-8000-000000000000"


def utc(text: str) -> datetime:
    """An instant written in ISO 8601, such as "2025-06-01T10:07:30Z"."""
    return datetime.fromisoformat(text)


def new_user() -> str:
    return str(uuid.uuid4())


def span(start: str, end: str) -> dict[str, Any]:
    return {"start_time": timestamp(utc(start)), "end_time": timestamp(utc(end))}


async def store(stub: Stub, events: Sequence[pb.Event]) -> None:
    """Record `events` in one batch and check that every one was stored."""
    response = await record(stub, [events])
    assert (response.inserted, response.rejected) == (len(events), 0), response.errors


async def summary(stub: Stub, start: str, end: str, **fields: Any) -> pb.SummaryResponse:
    response: pb.SummaryResponse = await stub.Summary(
        pb.SummaryRequest(**span(start, end), **fields)
    )
    return response


async def uniques(stub: Stub, start: str, end: str, **fields: Any) -> pb.UniquesResponse:
    response: pb.UniquesResponse = await stub.Uniques(
        pb.UniquesRequest(**span(start, end), **fields)
    )
    return response


async def breakdown(stub: Stub, start: str, end: str, **fields: Any) -> pb.BreakdownResponse:
    response: pb.BreakdownResponse = await stub.Breakdown(
        pb.BreakdownRequest(**span(start, end), **fields)
    )
    return response


def starts(response: SeriesResponse) -> list[str]:
    """Each bucket's first instant, in UTC, such as "2025-06-01T10:00:00Z"."""
    return [
        b.start_time.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
        for b in response.buckets
    ]


def lengths(response: SeriesResponse) -> list[timedelta]:
    """The length of every bucket but the last (whose end the answer does not give)."""
    instants = [b.start_time.ToDatetime(tzinfo=UTC) for b in response.buckets]
    return [later - earlier for earlier, later in pairwise(instants)]


def local_starts(response: SeriesResponse) -> list[str]:
    return [b.local_start for b in response.buckets]


def events_per_bucket(response: pb.SummaryResponse) -> list[int]:
    return [b.events for b in response.buckets]


def sums(response: pb.SummaryResponse) -> list[tuple[int, int, int]]:
    """(events, word_count, study_seconds) of each bucket."""
    return [(b.events, b.word_count, b.study_seconds) for b in response.buckets]


def totals(response: pb.SummaryResponse) -> tuple[int, int, int, int]:
    t = response.totals
    return (t.events, t.word_count, t.study_seconds, t.active_users)


def users_per_bucket(response: pb.UniquesResponse) -> list[int]:
    return [b.unique_users for b in response.buckets]


def rows(response: pb.BreakdownResponse) -> list[tuple[str, int, int, int, int]]:
    """(key, events, word_count, study_seconds, unique_users) of each row."""
    return [(r.key, r.events, r.word_count, r.study_seconds, r.unique_users) for r in response.rows]


def keys(response: pb.BreakdownResponse) -> list[str]:
    return [r.key for r in response.rows]


async def violated_field(call: Awaitable[object]) -> str:
    """The field named by the INVALID_ARGUMENT that `call` fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None, "INVALID_ARGUMENT without a google.rpc.Status"
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request), detail.type_url
    [violation] = bad_request.field_violations
    assert violation.description
    return violation.field


# --- Each granularity -------------------------------------------------------


async def test_hour_buckets_are_local_wall_clock_hours(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-06-01T09:59:59.999999Z"), words=1, seconds=1),  # before the range
            event(at=utc("2025-06-01T10:00:00Z"), words=2, seconds=10),
            event(at=utc("2025-06-01T10:59:59.999999Z"), words=4, seconds=20),
            event(at=utc("2025-06-01T12:30:00Z"), words=8, seconds=40),
            event(at=utc("2025-06-01T13:00:00Z"), words=16, seconds=80),  # at end_time
        ],
    )
    response = await summary(
        stub, "2025-06-01T10:00Z", "2025-06-01T13:00Z", granularity=HOUR, time_zone="Asia/Tokyo"
    )
    assert response.time_zone == "Asia/Tokyo"
    assert starts(response) == [
        "2025-06-01T10:00:00Z",
        "2025-06-01T11:00:00Z",
        "2025-06-01T12:00:00Z",
    ]
    assert local_starts(response) == [
        "2025-06-01T19:00:00+09:00",
        "2025-06-01T20:00:00+09:00",
        "2025-06-01T21:00:00+09:00",
    ]
    assert sums(response) == [(2, 6, 30), (0, 0, 0), (1, 8, 40)]


async def test_day_buckets_start_at_local_midnight(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-05-31T14:59:59Z"), words=1),  # May 31 23:59:59 in Tokyo
            event(at=utc("2025-05-31T15:00:00Z"), words=2),  # June 1 00:00
            event(at=utc("2025-06-01T14:59:59Z"), words=4),  # June 1 23:59:59
            event(at=utc("2025-06-01T15:00:00Z"), words=8),  # June 2 00:00
        ],
    )
    response = await summary(
        stub, "2025-05-31T15:00Z", "2025-06-03T15:00Z", granularity=DAY, time_zone="Asia/Tokyo"
    )
    assert starts(response) == [
        "2025-05-31T15:00:00Z",
        "2025-06-01T15:00:00Z",
        "2025-06-02T15:00:00Z",
    ]
    assert local_starts(response) == [
        "2025-06-01T00:00:00+09:00",
        "2025-06-02T00:00:00+09:00",
        "2025-06-03T00:00:00+09:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(2, 6), (1, 8), (0, 0)]


async def test_unspecified_granularity_means_days(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-06-02T23:59:59Z"))])
    response = await summary(stub, "2025-06-01T12:00Z", "2025-06-03T12:00Z")
    assert starts(response) == [
        "2025-06-01T00:00:00Z",
        "2025-06-02T00:00:00Z",
        "2025-06-03T00:00:00Z",
    ]
    assert events_per_bucket(response) == [0, 1, 0]


async def test_week_buckets_start_on_monday_at_local_midnight(stub: Stub) -> None:
    # Berlin is at +02:00: Monday 2025-06-02 00:00 there is Sunday 22:00 UTC.
    await store(
        stub,
        [
            event(at=utc("2025-05-27T12:00:00Z"), words=1),  # in the first week, before the range
            event(at=utc("2025-06-01T21:59:59Z"), words=2),  # Sunday 23:59:59
            event(at=utc("2025-06-01T22:00:00Z"), words=4),  # Monday 00:00
            event(at=utc("2025-06-08T21:00:00Z"), words=8),  # Sunday 23:00
            event(at=utc("2025-06-09T23:59:00Z"), words=16),  # Tuesday 01:59
            event(at=utc("2025-06-10T00:00:00Z"), words=32),  # at end_time
        ],
    )
    response = await summary(
        stub, "2025-05-28T00:00Z", "2025-06-10T00:00Z", granularity=WEEK, time_zone="Europe/Berlin"
    )
    assert starts(response) == [
        "2025-05-25T22:00:00Z",
        "2025-06-01T22:00:00Z",
        "2025-06-08T22:00:00Z",
    ]
    assert local_starts(response) == [
        "2025-05-26T00:00:00+02:00",
        "2025-06-02T00:00:00+02:00",
        "2025-06-09T00:00:00+02:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 2), (2, 12), (1, 16)]


async def test_month_buckets_follow_month_ends_and_the_leap_day(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2024-01-10T00:00:00Z"), words=1),  # in January, before the range
            event(at=utc("2024-01-31T23:59:59.999999Z"), words=2),
            event(at=utc("2024-02-01T00:00:00Z"), words=4),
            event(at=utc("2024-02-29T12:00:00Z"), words=8),
            event(at=utc("2024-02-29T23:59:59Z"), words=16),
            event(at=utc("2024-03-01T00:00:00Z"), words=32),
        ],
    )
    response = await summary(stub, "2024-01-15T00:00Z", "2024-04-01T00:00Z", granularity=MONTH)
    assert starts(response) == [
        "2024-01-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        "2024-03-01T00:00:00Z",
    ]
    assert local_starts(response) == [
        "2024-01-01T00:00:00+00:00",
        "2024-02-01T00:00:00+00:00",
        "2024-03-01T00:00:00+00:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 2), (3, 28), (1, 32)]


async def test_month_buckets_start_at_local_midnight_across_a_dst_change(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2024-03-01T04:59:59Z"), words=1),  # Feb 29 23:59:59 EST
            event(at=utc("2024-03-01T05:00:00Z"), words=2),  # Mar 1 00:00 EST
            event(at=utc("2024-04-01T03:59:59Z"), words=4),  # Mar 31 23:59:59 EDT
            event(at=utc("2024-04-01T04:00:00Z"), words=8),  # Apr 1 00:00 EDT
        ],
    )
    response = await summary(
        stub,
        "2024-02-01T05:00Z",
        "2024-05-01T04:00Z",
        granularity=MONTH,
        time_zone="America/New_York",
    )
    assert starts(response) == [
        "2024-02-01T05:00:00Z",
        "2024-03-01T05:00:00Z",
        "2024-04-01T04:00:00Z",
    ]
    assert local_starts(response) == [
        "2024-02-01T00:00:00-05:00",
        "2024-03-01T00:00:00-05:00",
        "2024-04-01T00:00:00-04:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 1), (2, 6), (1, 8)]


# --- Daylight saving and odd offsets ----------------------------------------


async def test_spring_forward_day_is_23_hours_long(stub: Stub) -> None:
    # America/New_York, 2025-03-09: 02:00 EST (07:00Z) jumps to 03:00 EDT.
    await store(
        stub,
        [
            event(at=utc("2025-03-09T04:59:59Z"), words=1),  # Mar 8 23:59:59 EST
            event(at=utc("2025-03-09T05:00:00Z"), words=2),  # Mar 9 00:00 EST
            event(at=utc("2025-03-09T06:59:59Z"), words=4),  # 01:59:59 EST
            event(at=utc("2025-03-09T07:00:00Z"), words=8),  # 03:00 EDT
            event(at=utc("2025-03-10T03:59:59Z"), words=16),  # Mar 9 23:59:59 EDT
            event(at=utc("2025-03-10T04:00:00Z"), words=32),  # Mar 10 00:00 EDT
        ],
    )
    response = await summary(
        stub, "2025-03-08T05:00Z", "2025-03-11T04:00Z", time_zone="America/New_York"
    )
    assert starts(response) == [
        "2025-03-08T05:00:00Z",
        "2025-03-09T05:00:00Z",
        "2025-03-10T04:00:00Z",
    ]
    assert lengths(response) == [timedelta(hours=24), timedelta(hours=23)]
    assert local_starts(response) == [
        "2025-03-08T00:00:00-05:00",
        "2025-03-09T00:00:00-05:00",
        "2025-03-10T00:00:00-04:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 1), (4, 30), (1, 32)]


async def test_fall_back_day_is_25_hours_long(stub: Stub) -> None:
    # America/New_York, 2025-11-02: 02:00 EDT (06:00Z) falls back to 01:00 EST.
    await store(
        stub,
        [
            event(at=utc("2025-11-02T03:59:59Z"), words=1),  # Nov 1 23:59:59 EDT
            event(at=utc("2025-11-02T04:00:00Z"), words=2),  # Nov 2 00:00 EDT
            event(at=utc("2025-11-02T05:30:00Z"), words=4),  # 01:30 EDT
            event(at=utc("2025-11-02T06:30:00Z"), words=8),  # 01:30 EST, the repeat
            event(at=utc("2025-11-03T04:59:59Z"), words=16),  # Nov 2 23:59:59 EST
            event(at=utc("2025-11-03T05:00:00Z"), words=32),  # Nov 3 00:00 EST
        ],
    )
    response = await summary(
        stub, "2025-11-01T04:00Z", "2025-11-04T05:00Z", time_zone="America/New_York"
    )
    assert starts(response) == [
        "2025-11-01T04:00:00Z",
        "2025-11-02T04:00:00Z",
        "2025-11-03T05:00:00Z",
    ]
    assert lengths(response) == [timedelta(hours=24), timedelta(hours=25)]
    assert local_starts(response) == [
        "2025-11-01T00:00:00-04:00",
        "2025-11-02T00:00:00-04:00",
        "2025-11-03T00:00:00-05:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 1), (4, 30), (1, 32)]


async def test_the_repeated_autumn_hour_is_two_hour_buckets(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-11-02T05:00:00Z"), words=1),  # 01:00 EDT
            event(at=utc("2025-11-02T05:59:59Z"), words=2),  # 01:59:59 EDT
            event(at=utc("2025-11-02T06:00:00Z"), words=4),  # 01:00 EST
            event(at=utc("2025-11-02T06:30:00Z"), words=8),  # 01:30 EST
            event(at=utc("2025-11-02T06:59:59Z"), words=16),  # 01:59:59 EST
        ],
    )
    response = await summary(
        stub,
        "2025-11-02T04:00Z",
        "2025-11-02T08:00Z",
        granularity=HOUR,
        time_zone="America/New_York",
    )
    assert starts(response) == [
        "2025-11-02T04:00:00Z",
        "2025-11-02T05:00:00Z",
        "2025-11-02T06:00:00Z",
        "2025-11-02T07:00:00Z",
    ]
    assert local_starts(response) == [
        "2025-11-02T00:00:00-04:00",
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T02:00:00-05:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(0, 0), (2, 3), (3, 28), (0, 0)]


async def test_the_skipped_spring_hour_has_no_bucket(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-03-09T06:59:59Z")), event(at=utc("2025-03-09T07:00Z"))])
    response = await summary(
        stub,
        "2025-03-09T05:00Z",
        "2025-03-09T09:00Z",
        granularity=HOUR,
        time_zone="America/New_York",
    )
    assert starts(response) == [
        "2025-03-09T05:00:00Z",
        "2025-03-09T06:00:00Z",
        "2025-03-09T07:00:00Z",
        "2025-03-09T08:00:00Z",
    ]
    assert local_starts(response) == [
        "2025-03-09T00:00:00-05:00",
        "2025-03-09T01:00:00-05:00",
        "2025-03-09T03:00:00-04:00",
        "2025-03-09T04:00:00-04:00",
    ]
    assert events_per_bucket(response) == [0, 1, 1, 0]


async def test_lord_howe_half_hour_fall_back_starts_a_bucket_of_its_own(stub: Stub) -> None:
    # 2025-04-06 02:00 +11:00 (2025-04-05T15:00Z) becomes 01:30 +10:30.
    await store(
        stub,
        [
            event(at=utc("2025-04-05T14:59:59Z"), words=1),  # 01:59:59 +11:00
            event(at=utc("2025-04-05T15:00:00Z"), words=2),  # 01:30 +10:30
            event(at=utc("2025-04-05T15:29:59Z"), words=4),  # 01:59:59 +10:30
            event(at=utc("2025-04-05T15:30:00Z"), words=8),  # 02:00 +10:30
        ],
    )
    response = await summary(
        stub,
        "2025-04-05T13:00Z",
        "2025-04-05T17:00Z",
        granularity=HOUR,
        time_zone="Australia/Lord_Howe",
    )
    assert starts(response) == [
        "2025-04-05T13:00:00Z",
        "2025-04-05T14:00:00Z",
        "2025-04-05T15:00:00Z",
        "2025-04-05T15:30:00Z",
        "2025-04-05T16:30:00Z",
    ]
    assert local_starts(response) == [
        "2025-04-06T00:00:00+11:00",
        "2025-04-06T01:00:00+11:00",
        "2025-04-06T01:30:00+10:30",
        "2025-04-06T02:00:00+10:30",
        "2025-04-06T03:00:00+10:30",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [
        (0, 0),
        (1, 1),
        (2, 6),
        (1, 8),
        (0, 0),
    ]


async def test_lord_howe_half_hour_spring_forward_shortens_the_hour_and_the_day(
    stub: Stub,
) -> None:
    # 2025-10-05 02:00 +10:30 (2025-10-04T15:30Z) becomes 02:30 +11:00.
    await store(
        stub,
        [
            event(at=utc("2025-10-04T15:29:59Z"), words=1),  # 01:59:59 +10:30
            event(at=utc("2025-10-04T15:30:00Z"), words=2),  # 02:30 +11:00
            event(at=utc("2025-10-04T15:59:59Z"), words=4),  # 02:59:59 +11:00
            event(at=utc("2025-10-04T16:00:00Z"), words=8),  # 03:00 +11:00
        ],
    )
    hours = await summary(
        stub,
        "2025-10-04T14:30Z",
        "2025-10-04T17:00Z",
        granularity=HOUR,
        time_zone="Australia/Lord_Howe",
    )
    assert starts(hours) == [
        "2025-10-04T14:30:00Z",
        "2025-10-04T15:30:00Z",
        "2025-10-04T16:00:00Z",
    ]
    assert local_starts(hours) == [
        "2025-10-05T01:00:00+10:30",
        "2025-10-05T02:30:00+11:00",
        "2025-10-05T03:00:00+11:00",
    ]
    assert [(b.events, b.word_count) for b in hours.buckets] == [(1, 1), (2, 6), (1, 8)]

    days = await summary(
        stub, "2025-10-03T13:30Z", "2025-10-06T13:00Z", time_zone="Australia/Lord_Howe"
    )
    assert starts(days) == [
        "2025-10-03T13:30:00Z",
        "2025-10-04T13:30:00Z",
        "2025-10-05T13:00:00Z",
    ]
    assert lengths(days) == [timedelta(hours=24), timedelta(hours=23, minutes=30)]
    assert local_starts(days) == [
        "2025-10-04T00:00:00+10:30",
        "2025-10-05T00:00:00+10:30",
        "2025-10-06T00:00:00+11:00",
    ]
    assert events_per_bucket(days) == [0, 4, 0]


async def test_kathmandu_hours_start_at_a_quarter_past_utc(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-06-01T09:59:59Z"), words=1),  # in the first hour, before the range
            event(at=utc("2025-06-01T10:00:00Z"), words=2),
            event(at=utc("2025-06-01T10:14:59Z"), words=4),
            event(at=utc("2025-06-01T10:15:00Z"), words=8),
            event(at=utc("2025-06-01T11:15:00Z"), words=16),
        ],
    )
    response = await summary(
        stub,
        "2025-06-01T10:00Z",
        "2025-06-01T12:00Z",
        granularity=HOUR,
        time_zone="Asia/Kathmandu",
    )
    assert starts(response) == [
        "2025-06-01T09:15:00Z",
        "2025-06-01T10:15:00Z",
        "2025-06-01T11:15:00Z",
    ]
    assert local_starts(response) == [
        "2025-06-01T15:00:00+05:45",
        "2025-06-01T16:00:00+05:45",
        "2025-06-01T17:00:00+05:45",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(2, 6), (1, 8), (1, 16)]


async def test_havana_day_starts_at_the_transition_when_midnight_does_not_exist(
    stub: Stub,
) -> None:
    # America/Havana, 2025-03-09: 00:00 CST (05:00Z) jumps to 01:00 CDT.
    await store(
        stub,
        [
            event(at=utc("2025-03-09T04:59:59Z"), words=1),  # Mar 8 23:59:59 CST
            event(at=utc("2025-03-09T05:00:00Z"), words=2),  # Mar 9 01:00 CDT
            event(at=utc("2025-03-10T03:59:59Z"), words=4),  # Mar 9 23:59:59 CDT
        ],
    )
    days = await summary(stub, "2025-03-08T05:00Z", "2025-03-10T04:00Z", time_zone="America/Havana")
    assert starts(days) == ["2025-03-08T05:00:00Z", "2025-03-09T05:00:00Z"]
    assert local_starts(days) == ["2025-03-08T00:00:00-05:00", "2025-03-09T01:00:00-04:00"]
    assert [(b.events, b.word_count) for b in days.buckets] == [(1, 1), (2, 6)]

    hours = await summary(
        stub,
        "2025-03-09T04:00Z",
        "2025-03-09T06:00Z",
        granularity=HOUR,
        time_zone="America/Havana",
    )
    assert starts(hours) == ["2025-03-09T04:00:00Z", "2025-03-09T05:00:00Z"]
    assert local_starts(hours) == ["2025-03-08T23:00:00-05:00", "2025-03-09T01:00:00-04:00"]


async def test_havana_day_starts_at_the_first_of_a_repeated_midnight(stub: Stub) -> None:
    # America/Havana, 2025-11-02: 01:00 CDT (05:00Z) falls back to 00:00 CST.
    await store(
        stub,
        [
            event(at=utc("2025-11-02T03:59:59Z"), words=1),  # Nov 1 23:59:59 CDT
            event(at=utc("2025-11-02T04:00:00Z"), words=2),  # Nov 2 00:00 CDT
            event(at=utc("2025-11-02T05:00:00Z"), words=4),  # Nov 2 00:00 CST
        ],
    )
    days = await summary(stub, "2025-11-01T04:00Z", "2025-11-04T05:00Z", time_zone="America/Havana")
    assert starts(days) == [
        "2025-11-01T04:00:00Z",
        "2025-11-02T04:00:00Z",
        "2025-11-03T05:00:00Z",
    ]
    assert lengths(days) == [timedelta(hours=24), timedelta(hours=25)]
    assert local_starts(days) == [
        "2025-11-01T00:00:00-04:00",
        "2025-11-02T00:00:00-04:00",
        "2025-11-03T00:00:00-05:00",
    ]
    assert [(b.events, b.word_count) for b in days.buckets] == [(1, 1), (2, 6), (0, 0)]


async def test_a_day_skipped_by_the_zone_has_no_bucket(stub: Stub) -> None:
    # Pacific/Apia skipped 2011-12-30: Dec 29 24:00 -10:00 became Dec 31 00:00 +14:00.
    await store(
        stub,
        [
            event(at=utc("2011-12-30T09:59:59Z"), words=1),  # Dec 29 23:59:59 -10:00
            event(at=utc("2011-12-30T10:00:00Z"), words=2),  # Dec 31 00:00 +14:00
        ],
    )
    response = await summary(
        stub, "2011-12-29T10:00Z", "2012-01-01T10:00Z", time_zone="Pacific/Apia"
    )
    assert starts(response) == [
        "2011-12-29T10:00:00Z",
        "2011-12-30T10:00:00Z",
        "2011-12-31T10:00:00Z",
    ]
    assert local_starts(response) == [
        "2011-12-29T00:00:00-10:00",
        "2011-12-31T00:00:00+14:00",
        "2012-01-01T00:00:00+14:00",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 1), (1, 2), (0, 0)]


async def test_week_buckets_keep_monday_midnight_across_a_dst_change(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-03-10T03:59:59Z"), words=1),  # Sunday Mar 9 23:59:59 EDT
            event(at=utc("2025-03-10T04:00:00Z"), words=2),  # Monday Mar 10 00:00 EDT
        ],
    )
    response = await summary(
        stub,
        "2025-03-03T05:00Z",
        "2025-03-17T04:00Z",
        granularity=WEEK,
        time_zone="America/New_York",
    )
    assert starts(response) == ["2025-03-03T05:00:00Z", "2025-03-10T04:00:00Z"]
    assert local_starts(response) == ["2025-03-03T00:00:00-05:00", "2025-03-10T00:00:00-04:00"]
    assert [(b.events, b.word_count) for b in response.buckets] == [(1, 1), (1, 2)]


NEW_YORK, LORD_HOWE = "America/New_York", "Australia/Lord_Howe"
HAVANA, KATHMANDU = "America/Havana", "Asia/Kathmandu"
FIRST_BUCKETS = [
    # (time zone, granularity, start_time, first bucket's start_time, its local_start)
    (NEW_YORK, HOUR, "2025-11-02T06:30Z", "2025-11-02T06:00:00Z", "2025-11-02T01:00:00-05:00"),
    (NEW_YORK, HOUR, "2025-11-02T05:30Z", "2025-11-02T05:00:00Z", "2025-11-02T01:00:00-04:00"),
    (NEW_YORK, HOUR, "2025-03-09T07:30Z", "2025-03-09T07:00:00Z", "2025-03-09T03:00:00-04:00"),
    (NEW_YORK, DAY, "2025-11-03T04:30Z", "2025-11-02T04:00:00Z", "2025-11-02T00:00:00-04:00"),
    (LORD_HOWE, HOUR, "2025-04-05T15:10Z", "2025-04-05T15:00:00Z", "2025-04-06T01:30:00+10:30"),
    (LORD_HOWE, HOUR, "2025-04-05T14:45Z", "2025-04-05T14:00:00Z", "2025-04-06T01:00:00+11:00"),
    (LORD_HOWE, HOUR, "2025-10-04T15:40Z", "2025-10-04T15:30:00Z", "2025-10-05T02:30:00+11:00"),
    (HAVANA, DAY, "2025-03-09T12:00Z", "2025-03-09T05:00:00Z", "2025-03-09T01:00:00-04:00"),
    (HAVANA, DAY, "2025-11-02T05:30Z", "2025-11-02T04:00:00Z", "2025-11-02T00:00:00-04:00"),
    (HAVANA, MONTH, "2025-11-20T00:00Z", "2025-11-01T04:00:00Z", "2025-11-01T00:00:00-04:00"),
    (KATHMANDU, DAY, "2025-06-01T18:14:59Z", "2025-05-31T18:15:00Z", "2025-06-01T00:00:00+05:45"),
    (KATHMANDU, DAY, "2025-06-01T18:15:00Z", "2025-06-01T18:15:00Z", "2025-06-02T00:00:00+05:45"),
]


async def test_the_first_bucket_is_the_one_holding_start_time(stub: Stub) -> None:
    for zone, granularity, start, first_start, first_local in FIRST_BUCKETS:
        end = (utc(start) + timedelta(seconds=1)).isoformat()
        response = await summary(stub, start, end, granularity=granularity, time_zone=zone)
        assert (starts(response), local_starts(response)) == ([first_start], [first_local]), (
            zone,
            start,
        )


# --- Fixed offsets ----------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "zone", "start", "end"),
    [
        ("+09:00", "Asia/Tokyo", "2025-06-01T10:00Z", "2025-06-04T10:00Z"),
        ("+05:45", "Asia/Kathmandu", "2025-06-01T10:00Z", "2025-06-04T10:00Z"),
        # St. John's keeps -03:30 in winter.
        ("-03:30", "America/St_Johns", "2025-01-10T10:00Z", "2025-01-13T10:00Z"),
    ],
)
async def test_a_fixed_offset_buckets_like_the_zone_that_keeps_it(
    stub: Stub, offset: str, zone: str, start: str, end: str
) -> None:
    begin = utc(start)
    await store(stub, [event(at=begin + timedelta(minutes=45 * i)) for i in range(96)])
    for granularity in (HOUR, DAY):
        by_offset = await summary(stub, start, end, granularity=granularity, time_zone=offset)
        by_zone = await summary(stub, start, end, granularity=granularity, time_zone=zone)
        assert by_offset.time_zone == offset
        assert list(by_offset.buckets) == list(by_zone.buckets)
        assert by_offset.totals == by_zone.totals
        assert by_offset.totals.events == 96


async def test_an_offset_uses_the_iso_sign(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-06-01T03:29:59Z"), words=1),  # May 31 23:59:59 at -03:30
            event(at=utc("2025-06-01T03:30:00Z"), words=2),  # June 1 00:00 at -03:30
        ],
    )
    west = await summary(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", time_zone="-03:30")
    assert starts(west) == ["2025-05-31T03:30:00Z", "2025-06-01T03:30:00Z"]
    assert local_starts(west) == ["2025-05-31T00:00:00-03:30", "2025-06-01T00:00:00-03:30"]
    assert [(b.events, b.word_count) for b in west.buckets] == [(1, 1), (1, 2)]

    east = await summary(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", time_zone="+09:00")
    assert starts(east) == ["2025-05-31T15:00:00Z", "2025-06-01T15:00:00Z"]
    assert local_starts(east) == ["2025-06-01T00:00:00+09:00", "2025-06-02T00:00:00+09:00"]
    assert events_per_bucket(east) == [2, 0]


# --- Gaps and range edges ---------------------------------------------------


async def test_empty_buckets_are_present_as_zeros(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-06-03T08:00:00Z"), words=5, seconds=50),
            event(at=utc("2025-06-03T20:00:00Z"), words=7, seconds=70),
        ],
    )
    response = await summary(stub, "2025-06-01T00:00Z", "2025-06-06T00:00Z", time_zone="")
    assert response.time_zone == "UTC"
    assert starts(response) == [
        "2025-06-01T00:00:00Z",
        "2025-06-02T00:00:00Z",
        "2025-06-03T00:00:00Z",
        "2025-06-04T00:00:00Z",
        "2025-06-05T00:00:00Z",
    ]
    assert sums(response) == [(0, 0, 0), (0, 0, 0), (2, 12, 120), (0, 0, 0), (0, 0, 0)]
    empty = response.buckets[0]
    assert (empty.average_word_count, empty.average_study_seconds) == (0.0, 0.0)


async def test_partial_first_and_last_buckets_count_only_events_in_the_range(stub: Stub) -> None:
    await store(
        stub,
        [
            event(at=utc("2025-06-01T10:00:00Z"), words=1),
            event(at=utc("2025-06-01T10:07:29.999999Z"), words=2),  # just before start_time
            event(at=utc("2025-06-01T10:07:30Z"), words=4),  # exactly start_time
            event(at=utc("2025-06-01T10:10:00Z"), words=8),
            event(at=utc("2025-06-02T12:00:00Z"), words=16),
            event(at=utc("2025-06-03T10:05:00Z"), words=32),
            event(at=utc("2025-06-03T10:07:29.999999Z"), words=64),  # last instant in range
            event(at=utc("2025-06-03T10:07:30Z"), words=128),  # exactly end_time
            event(at=utc("2025-06-03T23:00:00Z"), words=256),
        ],
    )
    response = await summary(stub, "2025-06-01T10:07:30Z", "2025-06-03T10:07:30Z")
    assert starts(response) == [
        "2025-06-01T00:00:00Z",
        "2025-06-02T00:00:00Z",
        "2025-06-03T00:00:00Z",
    ]
    assert [(b.events, b.word_count) for b in response.buckets] == [(2, 12), (1, 16), (2, 96)]
    assert totals(response)[:2] == (5, 124)


async def test_a_range_off_the_15_minute_grid_counts_exactly_the_events_inside(
    stub: Stub,
) -> None:
    times = [
        "2025-06-01T10:00:00Z",  # 0
        "2025-06-01T10:05:00Z",  # 1
        "2025-06-01T10:07:29.999999Z",  # 2
        "2025-06-01T10:07:30Z",  # 3
        "2025-06-01T10:10:00Z",  # 4
        "2025-06-01T10:14:59.999999Z",  # 5
        "2025-06-01T10:15:00Z",  # 6
        "2025-06-01T10:30:00Z",  # 7
        "2025-06-01T10:44:59Z",  # 8
        "2025-06-01T10:45:00Z",  # 9
        "2025-06-01T10:50:00Z",  # 10
        "2025-06-01T10:52:29.999999Z",  # 11
        "2025-06-01T10:52:30Z",  # 12
        "2025-06-01T11:00:00Z",  # 13
    ]
    # Event i has 2**i words, so a word count names the events it counted.
    await store(stub, [event(at=utc(t), words=2**i) for i, t in enumerate(times)])
    cases = [
        # (start, end, the events inside)
        ("2025-06-01T10:07:30Z", "2025-06-01T10:52:30Z", [3, 4, 5, 6, 7, 8, 9, 10, 11]),
        ("2025-06-01T10:07:30Z", "2025-06-01T10:12:00Z", [3, 4]),
        ("2025-06-01T10:10:00Z", "2025-06-01T10:15:00Z", [4, 5]),
        ("2025-06-01T10:15:00Z", "2025-06-01T10:52:30Z", [6, 7, 8, 9, 10, 11]),
        ("2025-06-01T10:07:29.999999Z", "2025-06-01T10:07:30.000001Z", [2, 3]),
        ("2025-06-01T10:44:59.5Z", "2025-06-01T10:45:00.5Z", [9]),
        ("2025-06-01T09:00:00Z", "2025-06-01T12:00:00Z", list(range(14))),
    ]
    for start, end, inside in cases:
        response = await summary(stub, start, end, granularity=HOUR)
        assert totals(response)[:2] == (len(inside), sum(2**i for i in inside)), (start, end)

    # Kathmandu's hour edge at 10:15Z splits the off-grid range.
    kathmandu = await summary(
        stub,
        "2025-06-01T10:07:30Z",
        "2025-06-01T10:52:30Z",
        granularity=HOUR,
        time_zone="Asia/Kathmandu",
    )
    assert starts(kathmandu) == ["2025-06-01T09:15:00Z", "2025-06-01T10:15:00Z"]
    assert [(b.events, b.word_count) for b in kathmandu.buckets] == [
        (3, 8 + 16 + 32),
        (6, 64 + 128 + 256 + 512 + 1024 + 2048),
    ]


# --- Moving averages --------------------------------------------------------

# Daily sums over 2025-06-01 .. 06-08:
#   words   30, 0, 60, 90, 0,  31, 0, 14
#   seconds 300, 0, 0, 600, 0, 900, 0, 0
SMA_EVENTS = [
    ("2025-06-01T08:00:00Z", 10, 100),
    ("2025-06-01T20:00:00Z", 20, 200),
    ("2025-06-03T12:00:00Z", 60, 0),
    ("2025-06-04T12:00:00Z", 90, 600),
    ("2025-06-06T12:00:00Z", 31, 900),
    ("2025-06-08T12:00:00Z", 14, 0),
]
SMA_EXPECTED = {
    1: (
        [30, 0, 60, 90, 0, 31, 0, 14],
        [300, 0, 0, 600, 0, 900, 0, 0],
    ),
    3: (
        [30, 15, 30, 50, 50, 121 / 3, 31 / 3, 15],
        [300, 150, 100, 200, 200, 500, 300, 300],
    ),
    7: (
        [30, 15, 30, 45, 36, 211 / 6, 211 / 7, 195 / 7],
        [300, 150, 100, 225, 180, 300, 1800 / 7, 1500 / 7],
    ),
}


@pytest.mark.parametrize(("window", "expected"), [(1, 1), (3, 3), (7, 7), (0, 3)])
async def test_moving_averages_count_empty_buckets_as_zero(
    stub: Stub, window: int, expected: int
) -> None:
    await store(stub, [event(at=utc(t), words=w, seconds=s) for t, w, s in SMA_EVENTS])
    response = await summary(
        stub, "2025-06-01T00:00Z", "2025-06-09T00:00Z", moving_average_window=window
    )
    assert [b.word_count for b in response.buckets] == SMA_EXPECTED[1][0]
    words, seconds = SMA_EXPECTED[expected]
    assert [b.word_count_sma for b in response.buckets] == pytest.approx(words)
    assert [b.study_seconds_sma for b in response.buckets] == pytest.approx(seconds)


# --- Averages, totals, users ------------------------------------------------


async def test_averages_are_per_event_and_totals_cover_the_range(stub: Stub) -> None:
    u1, u2, u3 = new_user(), new_user(), new_user()
    await store(
        stub,
        [
            event(user_id=u1, at=utc("2025-06-01T01:00Z"), words=10, seconds=60),
            event(user_id=u2, at=utc("2025-06-01T02:00Z"), words=20, seconds=60),
            event(user_id=u1, at=utc("2025-06-01T03:00Z"), words=31, seconds=90),
            event(user_id=u3, at=utc("2025-06-03T04:00Z"), words=7, seconds=5),
        ],
    )
    response = await summary(stub, "2025-06-01T00:00Z", "2025-06-04T00:00Z")
    assert [b.average_word_count for b in response.buckets] == pytest.approx([61 / 3, 0, 7])
    assert [b.average_study_seconds for b in response.buckets] == pytest.approx([70, 0, 5])
    assert totals(response) == (4, 68, 215, 3)


async def test_one_user_summary_counts_only_that_user(stub: Stub) -> None:
    mine, other = new_user(), new_user()
    await store(
        stub,
        [
            event(user_id=mine, at=utc("2025-06-01T01:00Z"), words=1, seconds=10),
            event(user_id=mine, at=utc("2025-06-02T01:00Z"), words=2, seconds=20),
            event(user_id=other, at=utc("2025-06-02T02:00Z"), words=4, seconds=40),
        ],
    )
    everyone = await summary(stub, "2025-06-01T00:00Z", "2025-06-03T00:00Z")
    assert sums(everyone) == [(1, 1, 10), (2, 6, 60)]
    assert totals(everyone) == (3, 7, 70, 2)

    one = await summary(stub, "2025-06-01T00:00Z", "2025-06-03T00:00Z", user_id=mine)
    assert sums(one) == [(1, 1, 10), (1, 2, 20)]
    assert totals(one) == (2, 3, 30, 1)

    upper = await summary(stub, "2025-06-01T00:00Z", "2025-06-03T00:00Z", user_id=mine.upper())
    assert upper == one


async def test_an_unknown_user_gets_zeros_not_an_error(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-06-01T01:00Z"), words=3, seconds=30)])
    response = await summary(stub, "2025-06-01T00:00Z", "2025-06-03T00:00Z", user_id=new_user())
    assert starts(response) == ["2025-06-01T00:00:00Z", "2025-06-02T00:00:00Z"]
    assert sums(response) == [(0, 0, 0), (0, 0, 0)]
    assert [b.word_count_sma for b in response.buckets] == [0, 0]
    assert [b.average_word_count for b in response.buckets] == [0, 0]
    assert totals(response) == (0, 0, 0, 0)


# --- Country filters ---------------------------------------------------------


async def store_country_mix(stub: Stub) -> tuple[str, str, str, str]:
    """Five events of four users; the word count names the event."""
    u1, u2, u3, u4 = new_user(), new_user(), new_user(), new_user()
    at = utc("2025-06-01T12:00Z")
    await store(
        stub,
        [
            event(user_id=u1, at=at, words=1, country="JP"),
            event(user_id=u2, at=at, words=2, country="JP"),
            event(user_id=u1, at=at, words=4, country="FR"),
            event(user_id=u3, at=at, words=8, country="US"),
            event(user_id=u4, at=at, words=16, country=""),
        ],
    )
    return u1, u2, u3, u4


async def test_countries_keeps_only_those_and_drops_events_without_country(stub: Stub) -> None:
    await store_country_mix(stub)
    response = await summary(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", countries=["JP", "FR"])
    assert totals(response)[:2] == (3, 1 + 2 + 4)
    assert response.totals.active_users == 2
    nobody = await summary(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", countries=["DE"])
    assert totals(nobody) == (0, 0, 0, 0)


async def test_exclude_countries_drops_them_and_keeps_events_without_country(
    stub: Stub,
) -> None:
    await store_country_mix(stub)
    response = await summary(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", exclude_countries=["JP"]
    )
    assert totals(response)[:2] == (3, 4 + 8 + 16)
    assert response.totals.active_users == 3
    everything = await summary(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z")
    assert totals(everything)[:2] == (5, 31)
    assert everything.totals.active_users == 4


async def test_countries_and_exclude_countries_combine(stub: Stub) -> None:
    await store_country_mix(stub)
    response = await summary(
        stub,
        "2025-06-01T00:00Z",
        "2025-06-02T00:00Z",
        countries=["JP", "FR", "US"],
        exclude_countries=["FR", "US"],
    )
    assert totals(response) == (2, 1 + 2, 120, 2)


async def test_filters_apply_to_a_one_user_summary(stub: Stub) -> None:
    u1, *_ = await store_country_mix(stub)
    response = await summary(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", user_id=u1, exclude_countries=["JP"]
    )
    assert totals(response) == (1, 4, 60, 1)


# --- Uniques ----------------------------------------------------------------


async def test_uniques_count_a_user_in_each_bucket_and_once_over_the_range(stub: Stub) -> None:
    u1, u2, u3 = new_user(), new_user(), new_user()
    await store(
        stub,
        [
            event(user_id=u1, at=utc("2025-06-01T01:00Z"), country="JP"),
            event(user_id=u1, at=utc("2025-06-01T02:00Z"), country="JP"),
            event(user_id=u1, at=utc("2025-06-02T01:00Z"), country="JP"),
            event(user_id=u2, at=utc("2025-06-02T02:00Z"), country="JP"),
            event(user_id=u1, at=utc("2025-06-03T01:00Z"), country="JP"),
            event(user_id=u3, at=utc("2025-06-03T02:00Z"), country="FR"),
        ],
    )
    response = await uniques(stub, "2025-06-01T00:00Z", "2025-06-05T00:00Z")
    assert response.time_zone == "UTC"
    assert starts(response) == [
        "2025-06-01T00:00:00Z",
        "2025-06-02T00:00:00Z",
        "2025-06-03T00:00:00Z",
        "2025-06-04T00:00:00Z",
    ]
    assert local_starts(response)[0] == "2025-06-01T00:00:00+00:00"
    assert users_per_bucket(response) == [1, 2, 2, 0]
    assert response.unique_users == 3

    weekly = await uniques(stub, "2025-06-01T00:00Z", "2025-06-05T00:00Z", granularity=WEEK)
    assert starts(weekly) == ["2025-05-26T00:00:00Z", "2025-06-02T00:00:00Z"]
    assert users_per_bucket(weekly) == [1, 3]
    assert weekly.unique_users == 3


async def test_uniques_apply_the_country_filters(stub: Stub) -> None:
    await store_country_mix(stub)
    kept = await uniques(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", countries=["JP"])
    assert (users_per_bucket(kept), kept.unique_users) == ([2], 2)
    dropped = await uniques(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", exclude_countries=["JP", "US"]
    )
    assert (users_per_bucket(dropped), dropped.unique_users) == ([2], 2)  # u1 in FR, u4 with none
    both = await uniques(
        stub,
        "2025-06-01T00:00Z",
        "2025-06-02T00:00Z",
        countries=["JP", "FR"],
        exclude_countries=["JP"],
    )
    assert (users_per_bucket(both), both.unique_users) == ([1], 1)


async def test_uniques_buckets_follow_the_time_zone(stub: Stub) -> None:
    user = new_user()
    await store(
        stub,
        [
            event(user_id=user, at=utc("2025-11-02T05:30Z")),  # 01:30 EDT
            event(user_id=user, at=utc("2025-11-02T06:30Z")),  # 01:30 EST
        ],
    )
    response = await uniques(
        stub,
        "2025-11-02T05:00Z",
        "2025-11-02T07:00Z",
        granularity=HOUR,
        time_zone="America/New_York",
    )
    assert local_starts(response) == ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00"]
    assert users_per_bucket(response) == [1, 1]
    assert response.unique_users == 1


# --- Breakdown --------------------------------------------------------------


async def store_three_learners(stub: Stub) -> None:
    """A: 3 events, 30 words, 300 s; B: 1 event, 50 words, 10 s; C: 3 events, 3 words, 3000 s."""
    at = utc("2025-06-01T12:00Z")
    await store(
        stub,
        [
            *(event(user_id=USER_C, at=at, words=1, seconds=1000, country="FR") for _ in range(3)),
            *(event(user_id=USER_A, at=at, words=10, seconds=100, country="JP") for _ in range(3)),
            event(user_id=USER_B, at=at, words=50, seconds=10, country="JP"),
            event(user_id=USER_B, at=utc("2025-06-02T00:00Z"), words=999),  # at end_time
        ],
    )


@pytest.mark.parametrize(
    ("metric", "order"),
    [
        (pb.METRIC_UNSPECIFIED, [USER_A, USER_C, USER_B]),
        (pb.METRIC_EVENTS, [USER_A, USER_C, USER_B]),
        (pb.METRIC_WORD_COUNT, [USER_B, USER_A, USER_C]),
        (pb.METRIC_STUDY_SECONDS, [USER_C, USER_A, USER_B]),
        (pb.METRIC_UNIQUE_USERS, [USER_A, USER_B, USER_C]),
    ],
)
async def test_breakdown_ranks_users_by_the_metric_then_by_key(
    stub: Stub, metric: int, order: list[str]
) -> None:
    await store_three_learners(stub)
    response = await breakdown(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", dimension=pb.DIMENSION_USER, metric=metric
    )
    assert keys(response) == order
    by_key = {row[0]: row for row in rows(response)}
    assert by_key == {
        USER_A: (USER_A, 3, 30, 300, 1),
        USER_B: (USER_B, 1, 50, 10, 1),
        USER_C: (USER_C, 3, 3, 3000, 1),
    }


async def test_breakdown_returns_at_most_limit_rows(stub: Stub) -> None:
    await store_three_learners(stub)
    response = await breakdown(
        stub,
        "2025-06-01T00:00Z",
        "2025-06-02T00:00Z",
        dimension=pb.DIMENSION_USER,
        metric=pb.METRIC_STUDY_SECONDS,
        limit=2,
    )
    assert keys(response) == [USER_C, USER_A]


async def test_breakdown_limit_defaults_to_ten(stub: Stub) -> None:
    users = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 13)]
    await store(
        stub,
        [event(user_id=u, at=utc("2025-06-01T12:00Z"), words=i) for i, u in enumerate(users, 1)],
    )
    by_events = await breakdown(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", dimension=pb.DIMENSION_USER
    )
    assert keys(by_events) == users[:10]  # all tied at one event: key order
    by_words = await breakdown(
        stub,
        "2025-06-01T00:00Z",
        "2025-06-02T00:00Z",
        dimension=pb.DIMENSION_USER,
        metric=pb.METRIC_WORD_COUNT,
    )
    assert keys(by_words) == users[::-1][:10]
    everyone = await breakdown(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", dimension=pb.DIMENSION_USER, limit=1000
    )
    assert len(everyone.rows) == 12


async def test_breakdown_by_country_has_an_empty_key_for_no_country(stub: Stub) -> None:
    u1, u2 = new_user(), new_user()
    at = utc("2025-06-01T12:00Z")
    await store(
        stub,
        [
            event(user_id=u1, at=at, words=1, seconds=10, country="JP"),
            event(user_id=u1, at=at, words=2, seconds=20, country="JP"),
            event(user_id=u2, at=at, words=4, seconds=40, country="JP"),
            event(user_id=u1, at=at, words=8, seconds=80, country=""),
            event(user_id=u2, at=at, words=16, seconds=160, country=""),
            event(user_id=u2, at=at, words=32, seconds=320, country="FR"),
            event(user_id=u2, at=utc("2025-05-31T23:59:59Z"), country="DE"),  # before the range
        ],
    )
    start, end = "2025-06-01T00:00Z", "2025-06-02T00:00Z"
    by_events = await breakdown(stub, start, end, dimension=pb.DIMENSION_COUNTRY)
    assert rows(by_events) == [
        ("JP", 3, 7, 70, 2),
        ("", 2, 24, 240, 2),
        ("FR", 1, 32, 320, 1),
    ]
    by_users = await breakdown(
        stub, start, end, dimension=pb.DIMENSION_COUNTRY, metric=pb.METRIC_UNIQUE_USERS
    )
    assert keys(by_users) == ["", "JP", "FR"]  # "" and JP tie at 2 users
    by_words = await breakdown(
        stub, start, end, dimension=pb.DIMENSION_COUNTRY, metric=pb.METRIC_WORD_COUNT
    )
    assert keys(by_words) == ["FR", "", "JP"]


async def test_breakdown_applies_the_country_filters(stub: Stub) -> None:
    u1, u2, _, _ = await store_country_mix(stub)
    start, end = "2025-06-01T00:00Z", "2025-06-02T00:00Z"
    excluded = await breakdown(
        stub, start, end, dimension=pb.DIMENSION_COUNTRY, exclude_countries=["JP"]
    )
    assert sorted(keys(excluded)) == ["", "FR", "US"]
    kept = await breakdown(stub, start, end, dimension=pb.DIMENSION_COUNTRY, countries=["FR", "JP"])
    assert rows(kept) == [("JP", 2, 3, 120, 2), ("FR", 1, 4, 60, 1)]
    users = await breakdown(
        stub,
        start,
        end,
        dimension=pb.DIMENSION_USER,
        metric=pb.METRIC_WORD_COUNT,
        countries=["JP", "FR"],
        exclude_countries=["FR"],
    )
    assert [(r.key, r.word_count) for r in users.rows] == [(u2, 2), (u1, 1)]


# --- The ends of the accepted range ------------------------------------------


async def test_ranges_from_1900_to_2200_are_answered(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-06-01T12:00Z"))])
    everything = await breakdown(
        stub, "1900-01-01T00:00Z", "2200-01-01T00:00Z", dimension=pb.DIMENSION_COUNTRY
    )
    assert rows(everything) == [("", 1, 10, 60, 1)]

    first = await summary(stub, "1900-01-01T00:00Z", "1900-01-03T00:00Z")
    assert starts(first) == ["1900-01-01T00:00:00Z", "1900-01-02T00:00:00Z"]
    assert sums(first) == [(0, 0, 0), (0, 0, 0)]
    last = await uniques(stub, "2199-12-30T00:00Z", "2200-01-01T00:00Z")
    assert starts(last) == ["2199-12-30T00:00:00Z", "2199-12-31T00:00:00Z"]
    assert users_per_bucket(last) == [0, 0]


# --- Invalid requests -------------------------------------------------------

_START = timestamp(utc("2025-06-01T00:00Z"))
_END = timestamp(utc("2025-06-02T00:00Z"))
_RANGE: dict[str, Any] = {"start_time": _START, "end_time": _END}
_20_YEARS = span("2000-01-01T00:00Z", "2020-01-01T00:00Z")


def _summary(**fields: Any) -> pb.SummaryRequest:
    return pb.SummaryRequest(**{**_RANGE, **fields})


def _uniques(**fields: Any) -> pb.UniquesRequest:
    return pb.UniquesRequest(**{**_RANGE, **fields})


def _breakdown(**fields: Any) -> pb.BreakdownRequest:
    return pb.BreakdownRequest(**{"dimension": pb.DIMENSION_USER, **_RANGE, **fields})


INVALID = [
    pytest.param("Summary", pb.SummaryRequest(end_time=_END), "start_time", id="no-start"),
    pytest.param("Summary", pb.SummaryRequest(start_time=_START), "end_time", id="no-end"),
    pytest.param("Summary", _summary(end_time=_START), "end_time", id="empty-range"),
    pytest.param(
        "Summary", _summary(start_time=_END, end_time=_START), "end_time", id="reversed-range"
    ),
    pytest.param("Summary", _summary(time_zone="Mars/Olympus"), "time_zone", id="mars"),
    pytest.param("Summary", _summary(time_zone="UTC+3"), "time_zone", id="utc+3"),
    pytest.param("Summary", _summary(time_zone="+9"), "time_zone", id="+9"),
    pytest.param("Summary", _summary(time_zone="+15:00"), "time_zone", id="+15:00"),
    pytest.param("Summary", _summary(time_zone="asia/tokyo"), "time_zone", id="lower-case-zone"),
    pytest.param(
        "Summary", _summary(**_20_YEARS, granularity=HOUR), "granularity", id="too-many-buckets"
    ),
    pytest.param(
        "Summary",
        pb.SummaryRequest(start_time=timestamp_pb2.Timestamp(nanos=-1), end_time=_END),
        "start_time",
        id="invalid-timestamp",
    ),
    pytest.param(
        "Summary",
        _summary(start_time=timestamp(utc("1899-12-31T23:59:59Z"))),
        "start_time",
        id="before-1900",
    ),
    pytest.param(
        "Breakdown",
        _breakdown(end_time=timestamp_pb2.Timestamp(seconds=7_258_118_400, nanos=1000)),
        "end_time",
        id="after-2200",
    ),
    pytest.param("Summary", _summary(granularity=7), "granularity", id="unknown-granularity"),
    pytest.param("Summary", _summary(user_id="not-a-uuid"), "user_id", id="bad-user"),
    pytest.param(
        "Summary",
        _summary(moving_average_window=366),
        "moving_average_window",
        id="window-too-large",
    ),
    pytest.param("Summary", _summary(countries=["JP", "jp"]), "countries[1]", id="bad-country"),
    pytest.param(
        "Summary",
        _summary(exclude_countries=["JPN"]),
        "exclude_countries[0]",
        id="bad-excluded-country",
    ),
    pytest.param("Uniques", pb.UniquesRequest(end_time=_END), "start_time", id="uniques-no-start"),
    pytest.param(
        "Uniques", _uniques(start_time=_END, end_time=_START), "end_time", id="uniques-reversed"
    ),
    pytest.param("Uniques", _uniques(time_zone="Mars/Olympus"), "time_zone", id="uniques-zone"),
    pytest.param(
        "Uniques",
        _uniques(**_20_YEARS, granularity=HOUR),
        "granularity",
        id="uniques-too-many-buckets",
    ),
    pytest.param(
        "Uniques", _uniques(countries=["FR", "J1"]), "countries[1]", id="uniques-bad-country"
    ),
    pytest.param(
        "Breakdown",
        pb.BreakdownRequest(**_RANGE),
        "dimension",
        id="breakdown-no-dimension",
    ),
    pytest.param("Breakdown", _breakdown(limit=1001), "limit", id="breakdown-limit-too-large"),
    pytest.param("Breakdown", _breakdown(metric=9), "metric", id="breakdown-unknown-metric"),
    pytest.param(
        "Breakdown",
        pb.BreakdownRequest(start_time=_START, dimension=pb.DIMENSION_USER),
        "end_time",
        id="breakdown-no-end",
    ),
    pytest.param(
        "Breakdown",
        _breakdown(start_time=_END, end_time=_START),
        "end_time",
        id="breakdown-reversed",
    ),
    pytest.param(
        "Breakdown",
        _breakdown(exclude_countries=["FR", "fr"]),
        "exclude_countries[1]",
        id="breakdown-bad-excluded-country",
    ),
]


@pytest.fixture(scope="module")
async def shared_stub(cluster: Cluster) -> AsyncIterator[Stub]:
    """One server and database per flavour for the requests refused before any activity is read.

    A database per test (the `stub` fixture) would cost more than the requests themselves.
    """
    async with serving(await cluster.new_database()) as served:
        yield served.stub


@pytest.mark.parametrize(("rpc", "request_", "field"), INVALID)
async def test_invalid_requests_name_the_field(
    shared_stub: Stub, rpc: str, request_: Any, field: str
) -> None:
    assert await violated_field(getattr(shared_stub, rpc)(request_)) == field


async def test_values_at_the_limits_are_accepted(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-06-01T12:00Z"))])
    widest = await summary(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", moving_average_window=365
    )
    assert widest.buckets[0].word_count_sma == 10
    for zone in ("+14:00", "-14:00", "+00:00"):
        assert (
            await uniques(stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", time_zone=zone)
        ).unique_users == 1
    most = await breakdown(
        stub, "2025-06-01T00:00Z", "2025-06-02T00:00Z", dimension=pb.DIMENSION_COUNTRY, limit=1000
    )
    assert rows(most) == [("", 1, 10, 60, 1)]
    # 10,000 hours: exactly the most buckets one answer holds.
    hours = await summary(stub, "2025-01-01T00:00Z", "2026-02-21T16:00Z", granularity=HOUR)
    assert len(hours.buckets) == 10_000
    assert hours.totals.events == 1
