"""Retention: cohorts of new learners and their return, hand-computed and against an oracle.

The hand-computed cases pin the rules one at a time (local days of 23 and 25 hours, a
45-minute offset, weeks and months, periods past end_time and in the future, filters
that change who is new, a partial first bucket, refused requests, read-your-writes).
The oracle finds each learner's first passing event in the events that were sent and
the buckets with zoneinfo (tests/test_queries_reference.py), and is compared with the
service's answers while events are pending, folded, and folded out of order.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from daily_aggregator.client import AsyncClient, Client, Granularity, RetentionResult
from daily_aggregator.server.app import RunningServer
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests import test_queries_reference as reference
from tests.conftest import Cluster, serving
from tests.support import cli, event, fold_everything, folder_held_off, pending, record, timestamp
from tests.test_queries import violated_field

Stub = aggregator_pb2_grpc.AggregatorServiceStub
DAY, WEEK, MONTH = pb.GRANULARITY_DAY, pb.GRANULARITY_WEEK, pb.GRANULARITY_MONTH

A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
C = "cccccccc-0000-4000-8000-000000000003"
D = "dddddddd-0000-4000-8000-000000000004"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def store(stub: Stub, *events: tuple[str, str] | tuple[str, str, str]) -> None:
    """Record (user, instant[, country]) events in one batch; every one must be stored."""
    response = await record(
        stub,
        [[event(user_id=e[0], at=utc(e[1]), country=e[2] if len(e) > 2 else "") for e in events]],
    )
    assert response.inserted == len(events), response


async def retention(
    stub: Stub, start: str, end: str, *, granularity: int = DAY, periods: int = 0, **fields: Any
) -> pb.RetentionResponse:
    response: pb.RetentionResponse = await stub.Retention(
        pb.RetentionRequest(
            start_time=timestamp(utc(start)),
            end_time=timestamp(utc(end)),
            granularity=granularity,
            periods=periods,
            **fields,
        )
    )
    return response


def triangle(response: pb.RetentionResponse) -> list[tuple[str, list[int]]]:
    """(local start, retained) per cohort; retained[0] is the cohort's size."""
    for cohort in response.cohorts:
        assert cohort.retained[0] == cohort.users
    return [(c.local_start, list(c.retained)) for c in response.cohorts]


# --- Hand-computed cases ------------------------------------------------------------


async def test_cohorts_are_the_learners_first_seen_in_each_bucket_and_their_return(
    stub: Stub,
) -> None:
    await store(
        stub,
        (A, "2025-06-01T10:00Z"),
        (A, "2025-06-02T09:00Z"),
        (A, "2025-06-04T12:00Z"),
        (B, "2025-06-01T23:59:59.999999Z"),
        (B, "2025-06-03T08:00Z"),
        (C, "2025-06-02T00:00Z"),
        (C, "2025-06-02T18:00Z"),
        (D, "2025-06-03T07:00Z"),
        (D, "2025-06-06T07:00Z"),  # 3 days after its cohort's: past end_time, still counted
        (D, "2025-06-07T07:00Z"),  # beyond the periods asked for
    )
    response = await retention(stub, "2025-06-01T00:00Z", "2025-06-04T00:00Z", periods=3)
    assert response.time_zone == "UTC"
    assert [c.start_time.ToDatetime(tzinfo=UTC) for c in response.cohorts] == [
        utc("2025-06-01T00:00Z"),
        utc("2025-06-02T00:00Z"),
        utc("2025-06-03T00:00Z"),
    ]
    assert triangle(response) == [
        ("2025-06-01T00:00:00+00:00", [2, 1, 1, 1]),
        ("2025-06-02T00:00:00+00:00", [1, 0, 0, 0]),
        ("2025-06-03T00:00:00+00:00", [1, 0, 0, 1]),
    ]
    # Unset periods follow 7 buckets; empty cohorts are present as zeros.
    week = await retention(stub, "2025-06-03T00:00Z", "2025-06-05T00:00Z")
    assert triangle(week) == [
        ("2025-06-03T00:00:00+00:00", [1, 0, 0, 1, 1, 0, 0, 0]),
        ("2025-06-04T00:00:00+00:00", [0] * 8),
    ]


async def test_a_partial_first_bucket_counts_only_from_start_time(stub: Stub) -> None:
    await store(
        stub,
        (A, "2025-06-01T10:00Z"),  # first seen before start_time: never new in the range
        (A, "2025-06-01T13:00Z"),
        (A, "2025-06-02T09:00Z"),
        (B, "2025-06-01T12:00Z"),  # exactly start_time: new in the partial first bucket
        (B, "2025-06-02T12:00Z"),
        (C, "2025-06-02T12:00Z"),
    )
    response = await retention(stub, "2025-06-01T12:00Z", "2025-06-03T00:00Z", periods=1)
    assert response.cohorts[0].start_time.ToDatetime(tzinfo=UTC) == utc("2025-06-01T00:00Z")
    assert triangle(response) == [
        ("2025-06-01T00:00:00+00:00", [1, 1]),
        ("2025-06-02T00:00:00+00:00", [1, 0]),
    ]


async def test_daylight_saving_days_of_23_and_25_hours_are_one_cohort_each(stub: Stub) -> None:
    await store(
        stub,
        # 2025-03-09 in New York lasts 23 hours: [05:00Z, 04:00Z the next day).
        (A, "2025-03-09T04:30Z"),  # 23:30 on the 8th (EST): the 8th's cohort
        (A, "2025-03-09T05:30Z"),  # 00:30 on the 9th: its first period
        (B, "2025-03-10T03:30Z"),  # 23:30 on the 9th (EDT): the 9th's cohort
        (B, "2025-03-10T04:30Z"),  # 00:30 on the 10th: its first period
        # 2025-11-02 lasts 25 hours: [04:00Z, 05:00Z the next day).
        (C, "2025-11-03T04:30Z"),  # 23:30 on the 2nd (EST): the 2nd's cohort
        (C, "2025-11-03T05:30Z"),  # 00:30 on the 3rd: its first period
        (D, "2025-11-02T04:30Z"),  # 00:30 EDT on the 2nd: the same cohort
    )
    ny = {"time_zone": "America/New_York", "periods": 1}
    spring = await retention(stub, "2025-03-08T05:00Z", "2025-03-10T04:00Z", **ny)
    assert triangle(spring) == [
        ("2025-03-08T00:00:00-05:00", [1, 1]),
        ("2025-03-09T00:00:00-05:00", [1, 1]),
    ]
    autumn = await retention(stub, "2025-11-02T04:00Z", "2025-11-03T05:00Z", **ny)
    assert triangle(autumn) == [("2025-11-02T00:00:00-04:00", [2, 1])]


async def test_kathmandu_days_start_at_a_quarter_past_six_utc(stub: Stub) -> None:
    await store(
        stub,
        (A, "2023-01-01T18:14Z"),  # 23:59 on the 1st in +05:45
        (A, "2023-01-01T18:16Z"),  # 00:01 on the 2nd: the first period
        (B, "2023-01-01T18:15Z"),  # 00:00 on the 2nd
    )
    response = await retention(
        stub,
        "2022-12-31T18:15Z",
        "2023-01-02T18:15Z",
        time_zone="Asia/Kathmandu",
        periods=1,
    )
    assert triangle(response) == [
        ("2023-01-01T00:00:00+05:45", [1, 1]),
        ("2023-01-02T00:00:00+05:45", [1, 0]),
    ]


async def test_weekly_cohorts_start_on_monday_and_monthly_ones_on_the_first(stub: Stub) -> None:
    await store(
        stub,
        (A, "2025-01-05T14:59Z"),  # Sunday 23:59 in Tokyo: the week of 2024-12-30
        (A, "2025-01-05T15:00Z"),  # Monday 00:00: the first period
        (A, "2025-02-01T00:00Z"),  # 09:00 on Feb 1st: the week of Jan 27th, and February
        (B, "2025-01-31T14:59Z"),  # 23:59 on the 31st: the week of Jan 27th, January
        (B, "2025-03-03T00:00Z"),  # March: two months after B's first
    )
    tokyo = {"time_zone": "Asia/Tokyo"}
    weeks = await retention(
        stub, "2025-01-01T00:00Z", "2025-02-02T15:00Z", granularity=WEEK, periods=5, **tokyo
    )
    assert triangle(weeks) == [
        ("2024-12-30T00:00:00+09:00", [1, 1, 0, 0, 1, 0]),
        ("2025-01-06T00:00:00+09:00", [0] * 6),
        ("2025-01-13T00:00:00+09:00", [0] * 6),
        ("2025-01-20T00:00:00+09:00", [0] * 6),
        ("2025-01-27T00:00:00+09:00", [1, 0, 0, 0, 0, 1]),
    ]
    months = await retention(
        stub, "2024-12-31T15:00Z", "2025-02-28T15:00Z", granularity=MONTH, periods=2, **tokyo
    )
    assert triangle(months) == [
        ("2025-01-01T00:00:00+09:00", [2, 1, 1]),
        ("2025-02-01T00:00:00+09:00", [0, 0, 0]),
    ]


async def test_filters_decide_which_event_is_a_learners_first(stub: Stub) -> None:
    await store(
        stub,
        (A, "2025-06-01T12:00Z", "JP"),
        (A, "2025-06-02T12:00Z", "US"),
        (A, "2025-06-03T12:00Z", "JP"),
        (B, "2025-06-02T12:00Z", ""),
    )
    span = ("2025-06-01T00:00Z", "2025-06-04T00:00Z")
    assert triangle(await retention(stub, *span, periods=1)) == [
        ("2025-06-01T00:00:00+00:00", [1, 1]),
        ("2025-06-02T00:00:00+00:00", [1, 0]),
        ("2025-06-03T00:00:00+00:00", [0, 0]),
    ]
    # From the US, A is new on the 2nd (and not back on the 3rd, from JP).
    us_only = [
        ("2025-06-01T00:00:00+00:00", [0, 0]),
        ("2025-06-02T00:00:00+00:00", [1, 0]),
        ("2025-06-03T00:00:00+00:00", [0, 0]),
    ]
    assert triangle(await retention(stub, *span, periods=1, countries=["US"])) == us_only
    # Without JP, B (no country) is new on the 2nd too.
    without_jp = await retention(stub, *span, periods=1, exclude_countries=["JP"])
    assert triangle(without_jp)[1] == ("2025-06-02T00:00:00+00:00", [2, 0])
    jp_only = await retention(stub, *span, periods=2, countries=["JP"])
    assert triangle(jp_only)[0] == ("2025-06-01T00:00:00+00:00", [1, 0, 1])


def _near_noon_zone(now: datetime) -> str:
    """A fixed offset whose clock reads between 11:00 and 13:00 at `now`: the local day
    after today begins at least 11 hours later."""
    hours = 12 - now.hour  # -11 to +12, within the offsets allowed
    return f"{'-' if hours < 0 else '+'}{abs(hours):02d}:00"


async def test_buckets_that_have_not_begun_count_zero(stub: Stub) -> None:
    now = datetime.now(UTC)
    zone = _near_noon_zone(now)
    offset = timedelta(hours=int(zone[:3]))
    today = (now + offset).replace(hour=0, minute=0, second=0, microsecond=0) - offset
    soon = now + timedelta(hours=18)  # tomorrow, local: accepted, up to 24 hours ahead
    await record(
        stub,
        [
            [
                event(user_id=A, at=today - timedelta(hours=12)),  # yesterday: A's cohort
                event(user_id=A, at=now - timedelta(minutes=30)),  # today: begun
                event(user_id=A, at=soon),  # tomorrow: not begun
                event(user_id=B, at=now - timedelta(minutes=30)),
                event(user_id=B, at=soon),
                event(user_id=C, at=soon),
            ]
        ],
    )
    response = await stub.Retention(
        pb.RetentionRequest(
            start_time=timestamp(today - timedelta(days=1)),
            end_time=timestamp(today + timedelta(days=2)),
            time_zone=zone,
            periods=2,
        )
    )
    # Tomorrow's cohort holds C, whose first event is stored; as a period it counts 0.
    assert [list(c.retained) for c in response.cohorts] == [[1, 1, 0], [1, 0, 0], [1, 0, 0]]
    uniques = await stub.Uniques(
        pb.UniquesRequest(
            start_time=timestamp(today + timedelta(days=1)),
            end_time=timestamp(today + timedelta(days=2)),
            time_zone=zone,
        )
    )
    assert uniques.unique_users == 3


async def test_answers_count_every_acknowledged_event_pending_or_folded(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    span = ("2025-06-01T00:00Z", "2025-06-03T00:00Z")
    async with folder_held_off(pool):
        await store(stub, (A, "2025-06-02T10:00Z"), (B, "2025-06-02T11:00Z"))
        await store(stub, (B, "2025-06-03T11:00Z"))
        assert await pending(pool) == 3
        while_pending = await retention(stub, *span, periods=1)
    await fold_everything(pool)
    assert await pending(pool) == 0
    expected = [("2025-06-01T00:00:00+00:00", [0, 0]), ("2025-06-02T00:00:00+00:00", [2, 1])]
    assert triangle(while_pending) == expected
    assert triangle(await retention(stub, *span, periods=1)) == expected

    # A backfill: A's earlier event, still pending, makes A new on the 1st instead.
    async with folder_held_off(pool):
        await store(stub, (A, "2025-06-01T23:00Z"))
        assert await pending(pool) == 1
        backfilled = await retention(stub, *span, periods=1)
    await fold_everything(pool)
    expected = [("2025-06-01T00:00:00+00:00", [1, 1]), ("2025-06-02T00:00:00+00:00", [1, 1])]
    assert triangle(backfilled) == expected
    assert triangle(await retention(stub, *span, periods=1)) == expected


# --- The clients and the command line ------------------------------------------------


async def test_both_clients_return_typed_cohorts(stub: Stub, server: RunningServer) -> None:
    await store(stub, (A, "2025-06-01T10:00Z"), (B, "2025-06-01T11:00Z"), (A, "2025-06-09T10:00Z"))
    start, end = utc("2025-06-01T00:00+09:00"), utc("2025-06-15T00:00+09:00")
    target = f"127.0.0.1:{server.port}"
    async with AsyncClient(target) as client:
        result = await client.retention(
            start, end, granularity=Granularity.WEEK, periods=2, time_zone="Asia/Tokyo"
        )

    def ask_synchronously() -> RetentionResult:
        with Client(target) as sync_client:
            return sync_client.retention(
                start, end, granularity=Granularity.WEEK, periods=2, time_zone="Asia/Tokyo"
            )

    assert await asyncio.to_thread(ask_synchronously) == result
    assert isinstance(result, RetentionResult)
    assert result.time_zone == "Asia/Tokyo"
    [first, second, third] = result.cohorts
    assert first.start_time == utc("2025-05-25T15:00Z")
    assert first.local_start == utc("2025-05-26T00:00+09:00")
    assert first.local_start_text == "2025-05-26T00:00:00+09:00"
    assert (first.users, first.retained, first.rates) == (2, [2, 0, 1], [1.0, 0.0, 0.5])
    assert (second.users, second.rates, third.users) == (0, [0.0, 0.0, 0.0], 0)


async def test_the_command_prints_a_triangle_or_json(stub: Stub, server: RunningServer) -> None:
    await store(
        stub,
        *((u, "2025-06-01T10:00Z") for u in (A, B, C, D)),
        (A, "2025-06-02T10:00Z"),
        (B, "2025-06-02T10:00Z"),
        (C, "2025-06-03T10:00Z"),
        (D, "2025-06-04T10:00Z"),
    )
    span = ["--from", "2025-06-01T00:00:00Z", "--to", "2025-06-03T00:00:00Z", "--periods", "3"]
    target = ["--target", f"127.0.0.1:{server.port}"]
    table = await cli("retention", *target, *span)
    assert table.code == 0, table.err
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in table.out.splitlines() if line}
    # New learners, then per period: how many came back, what share, and its shade.
    assert rows["2025-06-01T00:00:00+00:00"] == "4 2 50% ▓ 1 25% ▒ 1 25% ▒"
    assert rows["2025-06-02T00:00:00+00:00"] == "0 - - -"
    assert "4 new learners in 2 cohorts" in table.out

    run = await cli(
        "retention", *target, *span, "--json", "--granularity", "week", "--tz", "+09:00"
    )
    assert run.code == 0, run.err
    assert json.loads(run.out) == {
        "time_zone": "+09:00",
        "cohorts": [
            {"start_time": "2025-05-25T15:00:00Z", "local_start": "2025-05-26T00:00:00+09:00",
             "users": 4, "retained": [4, 4, 0, 0]},
            {"start_time": "2025-06-01T15:00:00Z", "local_start": "2025-06-02T00:00:00+09:00",
             "users": 0, "retained": [0, 0, 0, 0]},
        ],
    }  # fmt: skip

    refused = await cli("retention", *target, *span[:4], "--periods", "366")
    assert (refused.code, refused.err.strip()) == (
        2,
        "daily-aggregator retention: refused: periods: must be at most 365",
    )
    hours = await cli("retention", *target, "--granularity", "hour")
    assert hours.code == 2
    assert "invalid choice: 'hour'" in hours.err


# --- Refused requests -----------------------------------------------------------------


@pytest.fixture(scope="module")
async def refusing_stub(cluster: Cluster) -> AsyncIterator[Stub]:
    """One server per flavour for the requests refused before any activity is read."""
    async with serving(await cluster.new_database()) as served:
        yield served.stub


def _request(
    start: str = "2025-06-01T00:00Z", end: str = "2025-06-02T00:00Z", **fields: Any
) -> Any:
    return pb.RetentionRequest(
        start_time=timestamp(utc(start)), end_time=timestamp(utc(end)), **fields
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(pb.RetentionRequest(end_time=timestamp(utc("2025-06-01T00:00Z"))),
                     "start_time", id="no-start"),
        pytest.param(_request(end="2025-06-01T00:00Z"), "end_time", id="empty-range"),
        pytest.param(_request(granularity=pb.GRANULARITY_HOUR), "granularity", id="hours"),
        pytest.param(_request(granularity=9), "granularity", id="unknown-granularity"),
        pytest.param(_request(periods=366), "periods", id="too-many-periods"),
        pytest.param(_request(time_zone="Mars/Olympus"), "time_zone", id="unknown-zone"),
        pytest.param(_request(countries=["US", "usa"]), "countries[1]", id="bad-country"),
        pytest.param(_request(exclude_countries=["u"]), "exclude_countries[0]", id="bad-excluded"),
        # 10,001 days: more cohorts than buckets in any answer.
        pytest.param(_request("2000-01-01T00:00Z", "2027-05-20T00:00Z"), "granularity",
                     id="too-many-cohorts"),
        # 411 daily cohorts of 365 periods: 150,015 cells.
        pytest.param(_request("2025-01-01T00:00Z", "2026-02-16T00:00Z", periods=365), "periods",
                     id="too-many-cells"),
    ],
)  # fmt: skip
async def test_invalid_requests_name_the_field(
    refusing_stub: Stub, request_: pb.RetentionRequest, field: str
) -> None:
    assert await violated_field(refusing_stub.Retention(request_)) == field


async def test_the_largest_requests_are_answered(refusing_stub: Stub) -> None:
    # 410 daily cohorts of 365 periods, 149,650 cells, and 10,000 cohorts of 15.
    most_periods = await refusing_stub.Retention(
        _request("2025-01-01T00:00Z", "2026-02-15T00:00Z", periods=365)
    )
    assert len(most_periods.cohorts) == 410
    assert {len(c.retained) for c in most_periods.cohorts} == {366}
    most_cohorts = await refusing_stub.Retention(
        _request("2170-01-01T00:00Z", "2197-05-19T00:00Z", periods=15)
    )
    assert len(most_cohorts.cohorts) == 10_000
    assert sum(c.users for c in most_cohorts.cohorts) == 0


# --- Against the oracle ---------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """A random retention question."""

    zone: str
    granularity: int
    start_us: int
    end_us: int
    periods: int
    countries: tuple[str, ...] = ()
    exclude_countries: tuple[str, ...] = ()

    def passes(self, e: reference.Sent) -> bool:
        return (not self.countries or e.country in self.countries) and (
            e.country not in self.exclude_countries
        )

    def describe(self, seed: int) -> str:
        return (
            f"seed={seed} Retention zone={self.zone}"
            f" granularity={reference.UNITS[self.granularity]}"
            f" range=[{reference.instant(self.start_us).isoformat()},"
            f" {reference.instant(self.end_us).isoformat()}) periods={self.periods}"
            f" countries={list(self.countries)} exclude={list(self.exclude_countries)}"
        )


_LONGER_THAN = {DAY: 2 * reference.DAY, WEEK: 8 * reference.DAY, MONTH: 32 * reference.DAY}


def expected_cohorts(
    q: Question, events: Sequence[reference.Sent], now_us: int
) -> list[tuple[int, str, list[int]]]:
    """(start in seconds, local start, retained) per cohort, from the events and zoneinfo."""
    unit = reference.UNITS[q.granularity]
    periods = q.periods or 7
    starts = reference.reference_bucket_starts(q.zone, unit, q.start_us, q.end_us)
    reach_us = q.end_us + (periods + 1) * _LONGER_THAN[q.granularity] * reference.SECOND_US
    following = reference.reference_bucket_starts(q.zone, unit, q.start_us, reach_us)
    following = following[: len(starts) + periods + 1]
    bounds_us = [s * reference.SECOND_US for s in following]
    first: dict[str, int] = {}
    active: dict[int, set[str]] = defaultdict(set)
    for e in events:
        if not q.passes(e):
            continue
        first[e.user_id] = min(first.get(e.user_id, e.at_us), e.at_us)
        j = bisect.bisect_right(bounds_us, e.at_us) - 1
        if 0 <= j < len(bounds_us) - 1:
            active[j].add(e.user_id)
    cohorts: list[set[str]] = [set() for _ in starts]
    for user, at_us in first.items():
        if q.start_us <= at_us < q.end_us:
            cohorts[bisect.bisect_right(bounds_us, at_us) - 1].add(user)
    found = []
    for i, (start_s, members) in enumerate(zip(starts, cohorts, strict=True)):
        retained = [len(members)]
        for k in range(1, periods + 1):
            begun = bounds_us[i + k] <= now_us
            retained.append(len(members & active[i + k]) if begun else 0)
        found.append((start_s, reference.local_start(q.zone, start_s), retained))
    return found


def random_events(rng: random.Random, seed: int) -> list[reference.Sent]:
    """Learners who join over a few months around the seed's hotspots and come back now
    and then, from a country of their own or another, often right at a bucket edge."""
    spots = reference.hotspots_of(seed)
    events = []
    for _ in range(80):
        user = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        zone, spot = rng.choice(spots)
        lo_us, hi_us = reference.window_of(spot)
        lo_us -= 40 * reference.DAY * reference.SECOND_US
        marks = reference.landmarks(zone, lo_us, hi_us)
        joined = reference.random_instant(rng, lo_us, hi_us, marks)
        home = rng.choice(reference.COUNTRIES)
        for _ in range(rng.randrange(1, 10)):
            later = min(
                hi_us + 60 * reference.DAY * reference.SECOND_US,
                joined + int(rng.expovariate(1 / (12 * reference.DAY)) * reference.SECOND_US),
            )
            at = reference.random_instant(rng, joined, later + 1, marks)
            events.append(
                reference.Sent(
                    user_id=user,
                    key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    at_us=at,
                    words=rng.randrange(50),
                    seconds=rng.randrange(600),
                    country=home if rng.random() < 0.7 else rng.choice(reference.COUNTRIES),
                )
            )
    return events


def random_question(rng: random.Random, seed: int) -> Question:
    spot_zone, spot = rng.choice(reference.hotspots_of(seed))
    zone = spot_zone if rng.random() < 0.6 else rng.choice(reference.ZONES)
    lo_us, hi_us = reference.window_of(spot)
    lo_us -= 30 * reference.DAY * reference.SECOND_US
    marks = reference.landmarks(zone, lo_us, hi_us)
    granularity = rng.choice([DAY, DAY, WEEK, MONTH])
    longest = {DAY: 20, WEEK: 60, MONTH: 100}[granularity] * reference.DAY * reference.SECOND_US
    start_us = reference.random_instant(rng, lo_us, hi_us, marks)
    end_us = start_us + rng.randrange(1, longest)
    if rng.random() < 0.3:
        edges = [m for m in marks if start_us < m <= start_us + longest]
        end_us = rng.choice(edges) if edges else end_us
    countries: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    roll = rng.random()
    if roll < 0.25:
        countries = tuple(rng.sample(["JP", "US", "DE", "FR"], rng.randrange(1, 3)))
    elif roll < 0.4:
        exclude = tuple(rng.sample(["JP", "US", "DE"], rng.randrange(1, 3)))
    periods = rng.choice([0, 1, 2, 3, 5, 8, 12])
    return Question(zone, granularity, start_us, end_us, periods, countries, exclude)


async def check(
    stub: Stub, diffs: reference.Differences, q: Question, events: Sequence[reference.Sent]
) -> None:
    context = q.describe(diffs.seed)
    response = await diffs.ask(
        context,
        stub.Retention(
            pb.RetentionRequest(
                start_time=timestamp(reference.instant(q.start_us)),
                end_time=timestamp(reference.instant(q.end_us)),
                granularity=q.granularity,
                periods=q.periods,
                time_zone=q.zone,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
            )
        ),
    )
    if response is None:
        return
    now_us = reference.micros(datetime.now(UTC))
    actual = [(c.start_time.seconds, c.local_start, list(c.retained)) for c in response.cohorts]
    diffs.check(context, "cohorts", actual, expected_cohorts(q, events, now_us))
    diffs.check(context, "users", [c.users for c in response.cohorts], [a[2][0] for a in actual])


QUESTIONS_PER_STATE = 25


@pytest.mark.parametrize("seed", [0, 3, 6])
async def test_answers_match_the_oracle_pending_and_folded(
    stub: Stub, pool: asyncpg.Pool, seed: int
) -> None:
    rng = random.Random(seed)
    sent = random_events(rng, seed)
    rng.shuffle(sent)
    diffs = reference.Differences(seed)
    async with folder_held_off(pool):
        response = await record(
            stub, [[e.message() for e in sent[i : i + 40]] for i in range(0, len(sent), 40)]
        )
        assert response.inserted == len(sent)
        assert await pending(pool) == len(sent)
        for _ in range(QUESTIONS_PER_STATE):
            await check(stub, diffs, random_question(rng, seed), sent)
    await fold_everything(pool)
    for _ in range(QUESTIONS_PER_STATE):
        await check(stub, diffs, random_question(rng, seed), sent)
    assert not diffs.found, diffs.report()


async def test_cohorts_stay_exact_when_earlier_events_are_folded_after_later_ones(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    rng = random.Random(11)
    sent = sorted(random_events(rng, 11), key=lambda e: e.at_us, reverse=True)
    diffs = reference.Differences(11)
    # Latest first: each fold brings earlier events of learners already folded.
    thirds = [
        sent[: len(sent) // 3],
        sent[len(sent) // 3 : 2 * len(sent) // 3],
        sent[2 * len(sent) // 3 :],
    ]
    folded: list[reference.Sent] = []
    for part in thirds:
        async with folder_held_off(pool):
            await record(stub, [[e.message() for e in part]])
            folded += part
            for _ in range(5):
                await check(stub, diffs, random_question(rng, 11), folded)
        await fold_everything(pool)
        for _ in range(5):
            await check(stub, diffs, random_question(rng, 11), folded)
    assert not diffs.found, diffs.report()


async def test_a_day_the_zone_skipped_is_no_period(stub: Stub) -> None:
    # Pacific/Apia skipped 2011-12-30: the 29th ended at 10:00Z, when the 31st began.
    await store(stub, (A, "2011-12-29T12:00Z"), (A, "2011-12-30T12:00Z"))
    response = await retention(
        stub, "2011-12-29T10:00Z", "2011-12-30T10:00Z", time_zone="Pacific/Apia", periods=1
    )
    assert triangle(response) == [("2011-12-29T00:00:00-10:00", [1, 1])]
