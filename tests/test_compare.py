"""compare_previous on Summary, Uniques and Breakdown, and rolling_days against the reference.

The hand-computed cases come first. Then the shift of a range's ends is compared
with PostgreSQL's own expression, ``((t AT TIME ZONE zone) - k * interval '1 day')
AT TIME ZONE zone``, asked of PostgreSQL in the test, on and around daylight-saving
edges and month ends. Last, random questions over random events (those of
test_queries_reference) are compared with a reference computed in Python with
zoneinfo, the previous period's ends again taken from PostgreSQL.
"""

from __future__ import annotations

import random
from calendar import monthrange
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from daily_aggregator.server import periods
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2 as pb
from tests import test_queries_reference as reference
from tests.conftest import serving
from tests.support import event, fold_everything, folder_held_off, pending, record, timestamp
from tests.test_queries import (
    USER_A,
    USER_B,
    USER_C,
    Stub,
    breakdown,
    rows,
    store,
    summary,
    sums,
    totals,
    uniques,
    utc,
    violated_field,
)

if TYPE_CHECKING:
    from tests.conftest import Cluster

HOUR = pb.GRANULARITY_HOUR
DAY = pb.GRANULARITY_DAY
WEEK = pb.GRANULARITY_WEEK
MONTH = pb.GRANULARITY_MONTH

SHIFT = """
SELECT (($1::timestamptz AT TIME ZONE $2) - $3::int * $4::text::interval) AT TIME ZONE $2
"""
"""PostgreSQL's shift of an instant back by $3 days, weeks or months in zone $2."""
INTERVALS = {"day": "1 day", "week": "7 days", "month": "1 month"}


def instant_of(ts: Any) -> datetime:
    when: datetime = ts.ToDatetime(tzinfo=UTC)
    return when


def previous_range(response: Any) -> tuple[datetime, datetime]:
    return instant_of(response.previous_start_time), instant_of(response.previous_end_time)


def postgres_zone(zone: str) -> str:
    """A zone as PostgreSQL reads it: offsets have the POSIX sign."""
    if zone[:1] in "+-":
        return ("-" if zone[0] == "+" else "+") + zone[1:]
    return zone


async def postgres_shift(
    conn: asyncpg.Connection | asyncpg.Pool, zone: str, unit: str, when: datetime, count: int
) -> datetime:
    """`when` moved back by `count` units: hours by absolute time, else as PostgreSQL does."""
    if unit == "hour":
        return when - count * timedelta(hours=1)
    shifted: datetime = await conn.fetchval(
        SHIFT, when, postgres_zone(zone), count, INTERVALS[unit]
    )
    return shifted


# --- Hand-computed ------------------------------------------------------------


async def test_summary_and_uniques_compare_with_the_buckets_before(stub: Stub) -> None:
    await store(
        stub,
        [
            event(user_id=USER_A, at=utc("2025-06-01T00:00Z"), words=1),
            event(user_id=USER_B, at=utc("2025-06-03T10:00Z"), words=2),
            event(user_id=USER_B, at=utc("2025-06-03T23:59:59.999999Z"), words=4),
            event(user_id=USER_C, at=utc("2025-06-05T12:00Z"), words=8),
            event(user_id=USER_C, at=utc("2025-06-07T00:00Z"), words=16),  # after the range
            event(user_id=USER_A, at=utc("2025-05-31T23:59:59.999999Z"), words=32),  # before
        ],
    )
    span = ("2025-06-04T00:00Z", "2025-06-07T00:00Z")
    response = await summary(stub, *span, compare_previous=True, moving_average_window=2)
    assert previous_range(response) == (utc("2025-06-01T00:00Z"), utc("2025-06-04T00:00Z"))
    assert [b.local_start for b in response.previous_buckets] == [
        "2025-06-01T00:00:00+00:00",
        "2025-06-02T00:00:00+00:00",
        "2025-06-03T00:00:00+00:00",
    ]
    assert [(b.events, b.word_count) for b in response.previous_buckets] == [(1, 1), (0, 0), (2, 6)]
    # The moving averages start afresh in each period.
    assert [b.word_count_sma for b in response.previous_buckets] == [1.0, 0.5, 3.0]
    assert [b.word_count_sma for b in response.buckets] == [0.0, 4.0, 4.0]
    assert [b.average_word_count for b in response.previous_buckets] == [1.0, 0.0, 3.0]
    t = response.previous_totals
    assert (t.events, t.word_count, t.active_users) == (3, 7, 2)
    assert totals(response)[:2] == (1, 8)

    learner = await summary(stub, *span, compare_previous=True, user_id=USER_B)
    assert [(b.events, b.word_count) for b in learner.previous_buckets] == [(0, 0), (0, 0), (2, 6)]
    assert (learner.previous_totals.events, learner.previous_totals.active_users) == (2, 1)
    assert totals(learner) == (0, 0, 0, 0)

    counted = await uniques(stub, *span, compare_previous=True)
    assert previous_range(counted) == (utc("2025-06-01T00:00Z"), utc("2025-06-04T00:00Z"))
    assert [b.unique_users for b in counted.previous_buckets] == [1, 0, 1]
    assert [b.unique_users for b in counted.buckets] == [0, 1, 0]
    assert (counted.previous_unique_users, counted.unique_users) == (2, 1)

    # Without compare_previous nothing of the previous period is sent.
    plain = await summary(stub, *span)
    assert not plain.HasField("previous_start_time")
    assert not plain.HasField("previous_totals")
    assert len(plain.previous_buckets) == 0


async def test_months_move_back_like_postgresql_cutting_the_day_to_the_months_end(
    stub: Stub,
) -> None:
    await store(
        stub,
        [
            event(at=utc("2024-12-30T12:00Z"), words=1),  # before the previous period
            event(at=utc("2024-12-31T00:00Z"), words=2),
            event(at=utc("2025-02-27T23:59Z"), words=4),
            event(at=utc("2025-02-28T00:00Z"), words=8),  # the previous period's end
        ],
    )
    # March, April and May: three months back from March 31 is December 31, and from
    # May 31 it is February 28, as 2025 has no February 29.
    response = await summary(
        stub, "2025-03-31T00:00Z", "2025-05-31T00:00Z", granularity=MONTH, compare_previous=True
    )
    assert len(response.buckets) == 3
    assert previous_range(response) == (utc("2024-12-31T00:00Z"), utc("2025-02-28T00:00Z"))
    assert [b.local_start for b in response.previous_buckets] == [
        "2024-12-01T00:00:00+00:00",
        "2025-01-01T00:00:00+00:00",
        "2025-02-01T00:00:00+00:00",
    ]
    assert [b.word_count for b in response.previous_buckets] == [2, 0, 4]

    # March 29 and March 31 less a month are both February 28: the previous period is
    # empty, with no buckets and zero totals.
    empty = await summary(
        stub, "2025-03-29T00:00Z", "2025-03-31T00:00Z", granularity=MONTH, compare_previous=True
    )
    assert previous_range(empty) == (utc("2025-02-28T00:00Z"), utc("2025-02-28T00:00Z"))
    assert len(empty.previous_buckets) == 0
    assert empty.HasField("previous_totals")
    assert empty.previous_totals.events == 0
    nobody = await uniques(
        stub, "2025-03-29T00:00Z", "2025-03-31T00:00Z", granularity=MONTH, compare_previous=True
    )
    assert (len(nobody.previous_buckets), nobody.previous_unique_users) == (0, 0)


async def test_hours_move_back_by_absolute_time_and_days_by_the_local_clock(stub: Stub) -> None:
    await store(stub, [event(at=utc("2025-11-02T03:30Z"), words=1)])  # Nov 1 23:30 EDT
    # The four hour buckets of New York's fall-back night (01:00 twice) move back four
    # absolute hours.
    hours = await summary(
        stub,
        "2025-11-02T04:00Z",
        "2025-11-02T08:00Z",
        time_zone="America/New_York",
        granularity=HOUR,
        compare_previous=True,
    )
    assert [b.local_start for b in hours.buckets] == [
        "2025-11-02T00:00:00-04:00",
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T02:00:00-05:00",
    ]
    assert previous_range(hours) == (utc("2025-11-02T00:00Z"), utc("2025-11-02T04:00Z"))
    assert [b.local_start for b in hours.previous_buckets] == [
        f"2025-11-01T{h}:00:00-04:00" for h in ("20", "21", "22", "23")
    ]
    assert [b.word_count for b in hours.previous_buckets] == [0, 0, 0, 1]

    # The day after the spring-forward day moves back one local day, to 23 hours.
    day = await uniques(
        stub,
        "2025-03-10T04:00Z",
        "2025-03-11T04:00Z",
        time_zone="America/New_York",
        compare_previous=True,
    )
    assert previous_range(day) == (utc("2025-03-09T05:00Z"), utc("2025-03-10T04:00Z"))
    # 02:30 on March 10 moves to 02:30 on March 9, which New York skipped: PostgreSQL
    # reads it as 03:30 EDT; the end, 12:00 on March 10, moves to 12:00 EDT.
    gap = await uniques(
        stub,
        "2025-03-10T06:30Z",
        "2025-03-10T16:00Z",
        time_zone="America/New_York",
        compare_previous=True,
    )
    assert previous_range(gap) == (utc("2025-03-09T07:30Z"), utc("2025-03-09T16:00Z"))
    assert [b.local_start for b in gap.previous_buckets] == ["2025-03-09T00:00:00-05:00"]
    # 01:30 on Nov 3 moves to 01:30 on Nov 2, which New York showed twice: PostgreSQL
    # takes the second, 01:30 EST.
    twice = await summary(
        stub,
        "2025-11-03T06:30Z",
        "2025-11-03T12:00Z",
        time_zone="America/New_York",
        compare_previous=True,
    )
    assert previous_range(twice) == (utc("2025-11-02T06:30Z"), utc("2025-11-02T12:00Z"))


async def test_breakdown_gives_the_same_keys_over_the_stretch_before(stub: Stub) -> None:
    await store(
        stub,
        [
            event(user_id=USER_A, at=utc("2025-06-04T01:00Z"), words=1, country="JP"),
            event(user_id=USER_A, at=utc("2025-06-05T01:00Z"), words=2, country="JP"),
            event(user_id=USER_C, at=utc("2025-06-06T01:00Z"), words=4, country="US"),
            event(user_id=USER_A, at=utc("2025-06-03T23:59Z"), words=8, country="JP"),
            event(user_id=USER_B, at=utc("2025-06-02T00:00Z"), words=16, country="DE"),
            event(user_id=USER_B, at=utc("2025-06-01T00:00Z"), words=32, country="DE"),
            event(user_id=USER_B, at=utc("2025-05-31T23:59Z"), words=64, country="DE"),  # before
        ],
    )
    span = ("2025-06-04T00:00Z", "2025-06-07T00:00Z")
    users = await breakdown(stub, *span, dimension=pb.DIMENSION_USER, compare_previous=True)
    assert previous_range(users) == (utc("2025-06-01T00:00Z"), utc("2025-06-04T00:00Z"))
    assert rows(users) == [(USER_A, 2, 3, 120, 1), (USER_C, 1, 4, 60, 1)]
    # Row i is rows[i]'s key over the previous period; C had nothing there. B, who
    # led it, is in no row.
    assert [(r.key, r.events, r.word_count, r.unique_users) for r in users.previous_rows] == [
        (USER_A, 1, 8, 1),
        (USER_C, 0, 0, 0),
    ]
    by_words = await breakdown(
        stub,
        *span,
        dimension=pb.DIMENSION_USER,
        metric=pb.METRIC_UNIQUE_USERS,
        limit=1,
        compare_previous=True,
    )
    assert [(r.key, r.events) for r in by_words.previous_rows] == [(USER_A, 1)]

    countries = await breakdown(stub, *span, dimension=pb.DIMENSION_COUNTRY, compare_previous=True)
    assert [r.key for r in countries.rows] == ["JP", "US"]
    assert [(r.key, r.events, r.word_count, r.unique_users) for r in countries.previous_rows] == [
        ("JP", 1, 8, 1),
        ("US", 0, 0, 0),
    ]
    filtered = await breakdown(
        stub, *span, dimension=pb.DIMENSION_COUNTRY, countries=["US"], compare_previous=True
    )
    assert rows(filtered) == [("US", 1, 4, 60, 1)]
    assert [r.events for r in filtered.previous_rows] == [0]

    # Half a day: the previous period is the half day before.
    half = await breakdown(
        stub,
        "2025-06-04T12:00Z",
        "2025-06-05T12:00Z",
        dimension=pb.DIMENSION_USER,
        compare_previous=True,
    )
    assert previous_range(half) == (utc("2025-06-03T12:00Z"), utc("2025-06-04T12:00Z"))
    assert [(r.key, r.events, r.word_count) for r in half.previous_rows] == [(USER_A, 2, 9)]


async def test_the_previous_period_counts_pending_and_folded_events(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    span = ("2025-06-04T00:00Z", "2025-06-07T00:00Z")
    async with folder_held_off(pool):
        await store(
            stub,
            [
                event(user_id=USER_A, at=utc("2025-06-01T10:00Z"), words=1, country="JP"),
                event(user_id=USER_B, at=utc("2025-06-02T10:00Z"), words=2, country="US"),
                event(user_id=USER_A, at=utc("2025-06-05T10:00Z"), words=4, country="JP"),
            ],
        )
        assert await pending(pool) == 3
        before = [
            await summary(stub, *span, compare_previous=True),
            await uniques(stub, *span, compare_previous=True),
            await breakdown(stub, *span, dimension=pb.DIMENSION_COUNTRY, compare_previous=True),
        ]
    assert sums(before[0])[1] == (1, 4, 60)
    assert before[0].previous_totals.word_count == 3
    assert before[1].previous_unique_users == 2
    assert [(r.key, r.word_count) for r in before[2].previous_rows] == [("JP", 1)]
    await fold_everything(pool)
    assert await pending(pool) == 0
    after = [
        await summary(stub, *span, compare_previous=True),
        await uniques(stub, *span, compare_previous=True),
        await breakdown(stub, *span, dimension=pb.DIMENSION_COUNTRY, compare_previous=True),
    ]
    assert after == before


# --- Refused ------------------------------------------------------------------------


def _series(kind: type[Any], start: str, end: str, **fields: Any) -> Any:
    return kind(start_time=timestamp(utc(start)), end_time=timestamp(utc(end)), **fields)


REFUSED = [
    pytest.param(
        "Summary",
        _series(pb.SummaryRequest, "1900-01-01T00:00Z", "1900-01-03T00:00Z", compare_previous=True),
        "compare_previous",
        id="summary-days-before-1900",
    ),
    pytest.param(
        "Uniques",
        _series(
            pb.UniquesRequest,
            "1900-01-01T00:00Z",
            "1900-01-01T02:00Z",
            granularity=HOUR,
            compare_previous=True,
        ),
        "compare_previous",
        id="uniques-hours-before-1900",
    ),
    pytest.param(
        "Summary",
        _series(
            pb.SummaryRequest,
            "1950-01-01T00:00Z",
            "2200-01-01T00:00Z",
            granularity=MONTH,
            compare_previous=True,
        ),
        "compare_previous",
        id="3000-months-back",
    ),
    pytest.param(
        "Uniques",
        _series(
            pb.UniquesRequest,
            "1900-01-08T00:00Z",
            "1900-01-09T00:00Z",
            granularity=WEEK,
            time_zone="-14:00",
            compare_previous=True,
        ),
        "compare_previous",
        id="a-week-before-1900-at-minus-14",
    ),
    pytest.param(
        "Breakdown",
        _series(
            pb.BreakdownRequest,
            "1900-01-01T12:00Z",
            "1900-01-03T00:00Z",
            dimension=pb.DIMENSION_USER,
            compare_previous=True,
        ),
        "compare_previous",
        id="breakdown-before-1900",
    ),
    pytest.param(
        "Uniques",
        _series(pb.UniquesRequest, "2025-06-01T00:00Z", "2025-06-02T00:00Z", rolling_days=367),
        "rolling_days",
        id="rolling-367-days",
    ),
    pytest.param(
        "Uniques",
        _series(
            pb.UniquesRequest,
            "2025-06-01T00:00Z",
            "2025-06-02T00:00Z",
            rolling_days=7,
            granularity=HOUR,
        ),
        "rolling_days",
        id="rolling-hours",
    ),
    pytest.param(
        "Uniques",
        _series(
            pb.UniquesRequest,
            "2025-06-01T00:00Z",
            "2025-06-02T00:00Z",
            rolling_days=7,
            granularity=WEEK,
        ),
        "rolling_days",
        id="rolling-weeks",
    ),
    pytest.param(
        "Uniques",
        _series(
            pb.UniquesRequest,
            "2025-06-01T00:00Z",
            "2025-06-02T00:00Z",
            rolling_days=1,
            granularity=MONTH,
        ),
        "rolling_days",
        id="rolling-months",
    ),
]


@dataclass
class Quiet:
    """A server over an empty database, and a pool on that database."""

    stub: Stub
    pool: asyncpg.Pool


@pytest.fixture(scope="module")
async def quiet(cluster: Cluster) -> AsyncIterator[Quiet]:
    """One server and database per flavour for questions that need no events.

    A database per test (the `stub` fixture) would cost more than the requests themselves.
    """
    async with serving(await cluster.new_database(), max_size=4) as served:
        yield Quiet(served.stub, served.pool)


@pytest.mark.parametrize(("rpc", "request_", "field"), REFUSED)
async def test_refused_requests_name_the_field(
    quiet: Quiet, rpc: str, request_: Any, field: str
) -> None:
    assert await violated_field(getattr(quiet.stub, rpc)(request_)) == field


async def test_previous_periods_at_the_range_limits_are_answered(quiet: Quiet) -> None:
    days = await summary(
        quiet.stub, "1900-01-02T00:00Z", "1900-01-03T00:00Z", compare_previous=True
    )
    assert previous_range(days) == (utc("1900-01-01T00:00Z"), utc("1900-01-02T00:00Z"))
    ranked = await breakdown(
        quiet.stub,
        "1900-01-01T12:00Z",
        "1900-01-02T00:00Z",
        dimension=pb.DIMENSION_COUNTRY,
        compare_previous=True,
    )
    assert previous_range(ranked) == (utc("1900-01-01T00:00Z"), utc("1900-01-01T12:00Z"))
    # The rolling windows of the first days reach back before 1900: nothing is there.
    rolled = await uniques(quiet.stub, "1900-01-01T00:00Z", "1900-01-03T00:00Z", rolling_days=366)
    assert [b.rolling_unique_users for b in rolled.buckets] == [0, 0]
    latest = await uniques(
        quiet.stub,
        "2199-12-01T00:00Z",
        "2200-01-01T00:00Z",
        granularity=MONTH,
        compare_previous=True,
    )
    assert previous_range(latest) == (utc("2199-11-01T00:00Z"), utc("2199-12-01T00:00Z"))


# --- The shift against PostgreSQL ----------------------------------------------------

# Zones and days with hard transitions: skipped and repeated hours, midnight skipped
# (Havana) or repeated (Sao Paulo), a fall-back at 00:01 (St_Johns), 30 minutes (Lord
# Howe), a skipped date (Apia).
EDGES = [
    ("America/New_York", date(2025, 3, 9)),
    ("America/New_York", date(2025, 11, 2)),
    ("America/Havana", date(2025, 3, 9)),
    ("America/Sao_Paulo", date(2018, 2, 18)),
    ("America/St_Johns", date(2009, 11, 1)),
    ("Australia/Lord_Howe", date(2019, 4, 7)),
    ("Pacific/Apia", date(2011, 12, 30)),
    ("Europe/London", date(2021, 3, 28)),
]


def edge_walls(zone: str, day: date) -> list[datetime]:
    """Local wall times (naive) around the transitions of `zone` near `day`: either side
    of each, every 15 minutes for two hours, and a microsecond off."""
    lo = reference.micros(datetime(day.year, day.month, day.day, tzinfo=UTC)) // 1_000_000
    found = []
    for t in reference.transitions(zone, lo - 2 * 86_400, lo + 2 * 86_400):
        for instant_s in (t - 1, t):
            wall = datetime.fromtimestamp(instant_s, reference.reference_zone(zone))
            wall = wall.replace(tzinfo=None) + timedelta(seconds=t - instant_s)
            for minutes in range(-120, 121, 15):
                found.append(wall + timedelta(minutes=minutes))
            found += [wall - timedelta(microseconds=1), wall + timedelta(microseconds=1)]
    return sorted(set(found))


async def test_at_wall_reads_local_times_as_postgresql_does(quiet: Quiet) -> None:
    async with quiet.pool.acquire() as conn:
        zones = await TimeZones.load(quiet.pool)
        differences = []
        for zone, day in EDGES:
            around = datetime(day.year, day.month, day.day, tzinfo=UTC)
            rules = await zones.rules(
                conn, zones.parse(zone), around - timedelta(days=3), around + timedelta(days=3)
            )
            walls = edge_walls(zone, day)
            expected = await conn.fetch(
                "SELECT w AT TIME ZONE $2 AS at FROM unnest($1::timestamp[]) AS w", walls, zone
            )
            for wall, row in zip(walls, expected, strict=True):
                if periods.at_wall(rules, wall) != row["at"]:
                    differences.append((zone, wall, periods.at_wall(rules, wall), row["at"]))
    assert not differences


def _walls_back(unit: str, wall: datetime, count: int) -> datetime:
    """A wall time `count` units later, from which moving back lands on `wall` (or on a
    month's end, where the later month is shorter)."""
    if unit == "month":
        year, month = divmod(wall.year * 12 + wall.month - 1 + count, 12)
        last = monthrange(year, month + 1)[1]
        return wall.replace(year=year, month=month + 1, day=min(wall.day, last))
    return wall + count * timedelta(days=7 if unit == "week" else 1)


async def test_range_ends_move_back_as_postgresql_moves_them(quiet: Quiet) -> None:
    units = {"day": DAY, "week": WEEK, "month": MONTH}
    lengths = [timedelta(minutes=30), timedelta(days=3)]
    cases = []
    for zone, day in EDGES:
        for unit, granularity in units.items():
            for wall in edge_walls(zone, day)[::4]:
                # A start one unit after a local time next to a transition moves back onto it.
                later = _walls_back(unit, wall, 1)
                start = later.replace(tzinfo=reference.reference_zone(zone)).astimezone(UTC)
                for length in lengths:
                    cases.append((zone, unit, granularity, start, start + length))
    differences = []
    for zone, unit, granularity, start, end in cases:
        answered = await quiet.stub.Uniques(
            pb.UniquesRequest(
                start_time=timestamp(start),
                end_time=timestamp(end),
                granularity=granularity,
                time_zone=zone,
                compare_previous=True,
            )
        )
        k = len(answered.buckets)
        lo = await postgres_shift(quiet.pool, zone, unit, start, k)
        hi = await postgres_shift(quiet.pool, zone, unit, end, k)
        expected = (lo, max(lo, hi))
        if previous_range(answered) != expected:
            differences.append((zone, unit, start, end, previous_range(answered), expected))
    assert len(cases) > 300
    assert not differences[:5]


# --- Random questions against the reference -------------------------------------


def _wall_s(day: date) -> int:
    return (day - date(1970, 1, 1)).days * reference.DAY


def rolling_counts(
    q: reference.Question,
    starts_s: Sequence[int],
    lo_us: int,
    hi_us: int,
    events: Sequence[reference.Sent],
    length: int,
) -> list[int]:
    """The distinct learners of each day bucket's window: from the start of the local day
    `length - 1` days before the bucket's to min(the bucket's end, hi_us)."""
    zone = reference.reference_zone(q.zone)
    found = []
    for i, start_s in enumerate(starts_s):
        local_day = datetime.fromtimestamp(start_s, zone).date()
        first = reference.first_reach(q.zone, _wall_s(local_day - timedelta(days=length - 1)))
        end_us = min(starts_s[i + 1] * 1_000_000 if i + 1 < len(starts_s) else hi_us, hi_us)
        found.append(len({e.user_id for e in events if first * 1_000_000 <= e.at_us < end_us}))
    return found


@dataclass(frozen=True)
class Expected:
    """The reference answer for one period."""

    starts_s: list[int]
    buckets: list[reference.Totals]
    everything: reference.Totals


def expected_series(
    q: reference.Question, lo_us: int, hi_us: int, events: Sequence[reference.Sent]
) -> Expected:
    """Buckets and totals of [lo_us, hi_us) for events already filtered by country."""
    if hi_us <= lo_us:
        return Expected([], [], reference.Totals())
    inside = [e for e in events if lo_us <= e.at_us < hi_us]
    starts_s = reference.reference_bucket_starts(q.zone, q.unit, lo_us, hi_us)
    everything = reference.Totals()
    for e in inside:
        everything.add(e)
    return Expected(starts_s, reference.bucketed(starts_s, inside), everything)


async def previous_of(pool: asyncpg.Pool, q: reference.Question, count: int) -> tuple[int, int]:
    """The previous period's ends in microseconds, from PostgreSQL (the end never before
    the start)."""
    lo, hi = [
        reference.micros(await postgres_shift(pool, q.zone, q.unit, reference.instant(t), count))
        for t in (q.start_us, q.end_us)
    ]
    return lo, max(lo, hi)


async def check_compared_summary(
    stub: Stub,
    pool: asyncpg.Pool,
    diffs: reference.Differences,
    q: reference.Question,
    events: Sequence[reference.Sent],
    user_id: str,
) -> None:
    context = q.describe(diffs.seed, f"Summary(compare_previous, user={user_id or 'all'})")
    response = await diffs.ask(
        context,
        stub.Summary(
            pb.SummaryRequest(
                user_id=user_id,
                start_time=timestamp(reference.instant(q.start_us)),
                end_time=timestamp(reference.instant(q.end_us)),
                granularity=q.granularity,
                time_zone=q.zone,
                moving_average_window=2,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
                compare_previous=True,
            )
        ),
    )
    if response is None:
        return
    kept = [e for e in events if passes_filters(q, e) and (not user_id or e.user_id == user_id)]
    current = expected_series(q, q.start_us, q.end_us, kept)
    diffs.check(context, "bucket count", len(response.buckets), len(current.starts_s))
    lo, hi = await previous_of(pool, q, len(response.buckets))
    diffs.check(
        context,
        "previous range",
        [reference.micros(t) for t in previous_range(response)],
        [lo, hi],
    )
    previous = expected_series(q, lo, hi, kept)
    diffs.check(
        context,
        "previous buckets",
        [
            (instant_of(b.start_time), b.local_start, b.events, b.word_count, b.study_seconds)
            for b in response.previous_buckets
        ],
        [
            (
                reference.instant(s * 1_000_000),
                reference.local_start(q.zone, s),
                b.events,
                b.word_count,
                b.study_seconds,
            )
            for s, b in zip(previous.starts_s, previous.buckets, strict=True)
        ],
    )
    diffs.check(
        context,
        "previous word_count_sma",
        [b.word_count_sma for b in response.previous_buckets],
        reference.moving_average([b.word_count for b in previous.buckets], 2),
        floats=True,
    )
    t, e = response.previous_totals, previous.everything
    diffs.check(
        context,
        "previous totals",
        (t.events, t.word_count, t.study_seconds, t.active_users),
        (e.events, e.word_count, e.study_seconds, e.unique_users),
    )


def passes_filters(q: reference.Question, e: reference.Sent) -> bool:
    """Whether `e` passes the country filters of `q`, wherever it is in time."""
    return (not q.countries or e.country in q.countries) and e.country not in q.exclude_countries


async def check_compared_uniques(
    stub: Stub,
    pool: asyncpg.Pool,
    diffs: reference.Differences,
    q: reference.Question,
    events: Sequence[reference.Sent],
    length: int,
) -> None:
    context = q.describe(diffs.seed, f"Uniques(compare_previous, rolling_days={length})")
    response = await diffs.ask(
        context,
        stub.Uniques(
            pb.UniquesRequest(
                start_time=timestamp(reference.instant(q.start_us)),
                end_time=timestamp(reference.instant(q.end_us)),
                granularity=q.granularity,
                time_zone=q.zone,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
                rolling_days=length,
                compare_previous=True,
            )
        ),
    )
    if response is None:
        return
    kept = [e for e in events if passes_filters(q, e)]
    lo, hi = await previous_of(pool, q, len(response.buckets))
    diffs.check(
        context,
        "previous range",
        [reference.micros(t) for t in previous_range(response)],
        [lo, hi],
    )
    for what, (lo_us, hi_us), buckets, total in (
        ("buckets", (q.start_us, q.end_us), response.buckets, response.unique_users),
        ("previous buckets", (lo, hi), response.previous_buckets, response.previous_unique_users),
    ):
        expected = expected_series(q, lo_us, hi_us, kept)
        rolled = (
            rolling_counts(q, expected.starts_s, lo_us, hi_us, kept, length)
            if length
            else [0] * len(expected.starts_s)
        )
        diffs.check(
            context,
            what,
            [(b.local_start, b.unique_users, b.rolling_unique_users) for b in buckets],
            [
                (reference.local_start(q.zone, s), b.unique_users, r)
                for s, b, r in zip(expected.starts_s, expected.buckets, rolled, strict=True)
            ],
        )
        diffs.check(context, f"{what}: unique users", total, expected.everything.unique_users)


async def check_compared_breakdown(
    stub: Stub,
    diffs: reference.Differences,
    q: reference.Question,
    events: Sequence[reference.Sent],
    rng: random.Random,
) -> None:
    dimension = rng.choice([pb.DIMENSION_USER, pb.DIMENSION_COUNTRY])
    metric = rng.choice(list(reference.BREAKDOWN_METRICS))
    limit = rng.choice([1, 3, 10])
    context = q.describe(
        diffs.seed,
        f"Breakdown(compare_previous, dimension={pb.Dimension.Name(dimension)}, "
        f"metric={pb.Metric.Name(metric)}, limit={limit})",
    )
    response = await diffs.ask(
        context,
        stub.Breakdown(
            pb.BreakdownRequest(
                start_time=timestamp(reference.instant(q.start_us)),
                end_time=timestamp(reference.instant(q.end_us)),
                dimension=dimension,
                metric=metric,
                limit=limit,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
                compare_previous=True,
            )
        ),
    )
    if response is None:
        return
    current = reference.breakdown_rows(dimension, [e for e in events if q.keeps(e)])
    diffs.check(
        context,
        "rows",
        [(r.key, r.events, r.word_count, r.study_seconds, r.unique_users) for r in response.rows],
        reference.top_rows(current, metric, limit),
    )
    length = q.end_us - q.start_us
    before = reference.Question(
        q.zone,
        q.granularity,
        q.start_us - length,
        q.start_us,
        q.countries,
        q.exclude_countries,
    )
    diffs.check(
        context,
        "previous range",
        [reference.micros(t) for t in previous_range(response)],
        [before.start_us, before.end_us],
    )
    previous = reference.breakdown_rows(dimension, [e for e in events if before.keeps(e)])
    diffs.check(
        context,
        "previous rows",
        [
            (r.key, r.events, r.word_count, r.study_seconds, r.unique_users)
            for r in response.previous_rows
        ],
        [(r.key, *previous.get(r.key, (0, 0, 0, 0))) for r in response.rows],
    )


COMPARE_SEEDS = [0, 6]
"""Seeds whose hotspots are St_Johns, Kathmandu, New York's fall-back, Apia and Berlin."""
QUESTIONS_PER_SEED = 24


@pytest.mark.parametrize("seed", COMPARE_SEEDS)
async def test_compared_and_rolling_answers_match_the_reference(
    stub: Stub, pool: asyncpg.Pool, seed: int
) -> None:
    rng = random.Random(1000 + seed)
    sent = reference.random_events(rng, seed)
    response = await record(
        stub, [[e.message() for e in sent[i : i + 100]] for i in range(0, len(sent), 100)]
    )
    assert response.inserted == len(sent)
    users = sorted({e.user_id for e in sent})
    diffs = reference.Differences(seed)
    for _ in range(QUESTIONS_PER_SEED):
        q = reference.random_question(rng, seed, sent)
        await check_compared_summary(stub, pool, diffs, q, sent, "")
        await check_compared_summary(stub, pool, diffs, q, sent, rng.choice(users))
        daily = reference.Question(
            q.zone, DAY, q.start_us, q.end_us, q.countries, q.exclude_countries
        )
        await check_compared_uniques(stub, pool, diffs, daily, sent, rng.randrange(1, 10))
        if q.granularity != DAY:
            await check_compared_uniques(stub, pool, diffs, q, sent, 0)
        await check_compared_breakdown(stub, diffs, q, sent, rng)
    assert not diffs.found, diffs.report()
