"""LearnerStats: totals, first and last activity, active local days and streaks.

Hand-computed cases for the rules (local dates, skipped dates, the current streak's
two endings, ties), and random learners checked against a reference computed here
with zoneinfo from the events that were sent.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from daily_aggregator.server.app import RunningServer
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import event, record, timestamp
from tests.test_queries import violated_field

Stub = aggregator_pb2_grpc.AggregatorServiceStub


async def stats(
    stub: Stub, user_id: str, *, time_zone: str = "", as_of: datetime | None = None
) -> pb.LearnerStatsResponse:
    request = pb.LearnerStatsRequest(user_id=user_id, time_zone=time_zone)
    if as_of is not None:
        request.as_of.CopyFrom(timestamp(as_of))
    response: pb.LearnerStatsResponse = await stub.LearnerStats(request)
    return response


async def studied(stub: Stub, user_id: str, instants: Sequence[datetime]) -> None:
    response = await record(stub, [[event(user_id=user_id, at=at) for at in instants]])
    assert response.inserted == len(instants), response


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def in_zone(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


def streak(response: pb.LearnerStatsResponse) -> tuple[int, int, str, str]:
    return (
        response.current_streak_days,
        response.longest_streak_days,
        response.longest_streak_start,
        response.longest_streak_end,
    )


async def test_totals_first_and_last_activity_count_only_events_before_as_of(stub: Stub) -> None:
    user = str(uuid.uuid4())
    first = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    last = datetime(2025, 3, 4, 9, 30, 0, 654321, tzinfo=UTC)
    batch = [
        event(user_id=user, at=first, words=5, seconds=50),
        event(user_id=user, at=utc(2025, 3, 2, 10), words=7, seconds=70),
        event(user_id=user, at=last, words=11, seconds=110),
        event(user_id=user, at=utc(2025, 3, 9, 10), words=1000, seconds=1000),
        event(words=99),  # someone else
    ]
    assert (await record(stub, [batch])).inserted == 5

    response = await stats(stub, user.upper(), as_of=utc(2025, 3, 9, 10))  # the last is excluded

    assert response.user_id == user
    assert response.time_zone == "UTC"
    assert (response.events, response.word_count, response.study_seconds) == (3, 23, 230)
    assert response.first_active.ToDatetime(tzinfo=UTC) == first
    assert response.last_active.ToDatetime(tzinfo=UTC) == last
    assert response.active_days == 3
    # 1-2 March is a run of two, 4 March one; nothing on 8 or 9 March.
    assert streak(response) == (0, 2, "2025-03-01", "2025-03-02")


async def test_the_current_streak_ends_on_as_ofs_date_or_the_date_before(stub: Stub) -> None:
    user = str(uuid.uuid4())
    await studied(stub, user, [utc(2025, 5, d, 12) for d in (1, 2, 3, 10, 11)])

    assert (await stats(stub, user, as_of=utc(2025, 5, 11, 18))).current_streak_days == 2
    # 12 May has no event yet: the run ending on 11 May still counts.
    assert (await stats(stub, user, as_of=utc(2025, 5, 12, 23))).current_streak_days == 2
    # Right at midnight the new date has begun and 11 May is the date before.
    assert (await stats(stub, user, as_of=utc(2025, 5, 12))).current_streak_days == 2
    assert (await stats(stub, user, as_of=utc(2025, 5, 13))).current_streak_days == 0
    # As of 11 May 12:00 the event at 12:00 is not before as_of: the run is 10 May alone.
    assert (await stats(stub, user, as_of=utc(2025, 5, 11, 12))).current_streak_days == 1
    assert (await stats(stub, user, as_of=utc(2025, 5, 4))).current_streak_days == 3


async def test_of_equally_long_streaks_the_latest_is_the_longest(stub: Stub) -> None:
    user = str(uuid.uuid4())
    days = (1, 2, 3, 6, 7, 8, 20)
    await studied(stub, user, [utc(2025, 7, d, 9) for d in days])

    response = await stats(stub, user, as_of=utc(2025, 8, 1))

    assert streak(response) == (0, 3, "2025-07-06", "2025-07-08")
    assert response.active_days == len(days)


async def test_local_dates_follow_the_time_zone(stub: Stub) -> None:
    user = str(uuid.uuid4())
    # Kathmandu is UTC+05:45: 18:14Z is 23:59 on the 1st, 18:16Z is 00:01 on the 2nd.
    await studied(stub, user, [utc(2025, 6, 1, 18, 14), utc(2025, 6, 1, 18, 16)])

    in_utc = await stats(stub, user, as_of=utc(2025, 6, 3))
    kathmandu = await stats(stub, user, time_zone="Asia/Kathmandu", as_of=utc(2025, 6, 3))
    offset = await stats(stub, user, time_zone="+05:45", as_of=utc(2025, 6, 3))

    assert in_utc.active_days == 1
    assert streak(in_utc) == (0, 1, "2025-06-01", "2025-06-01")
    assert kathmandu.time_zone == "Asia/Kathmandu"
    assert kathmandu.active_days == 2
    # As of 2025-06-03T00:00Z it is 05:45 on the 3rd there: the run ending on the 2nd counts.
    assert streak(kathmandu) == (2, 2, "2025-06-01", "2025-06-02")
    assert streak(offset) == streak(kathmandu)


async def test_a_daylight_saving_day_is_one_date_and_the_repeated_hour_too(stub: Stub) -> None:
    user = str(uuid.uuid4())
    zone = "America/New_York"
    # 2025-11-02 lasts 25 hours there; 01:30 happens twice (05:30Z and 06:30Z).
    await studied(
        stub,
        user,
        [
            in_zone(zone, 2025, 11, 1, 23, 59),
            utc(2025, 11, 2, 5, 30),
            utc(2025, 11, 2, 6, 30),
            in_zone(zone, 2025, 11, 2, 23, 59),
            in_zone(zone, 2025, 11, 3, 0, 1),
        ],
    )

    response = await stats(stub, user, time_zone=zone, as_of=in_zone(zone, 2025, 11, 3, 12))

    assert response.active_days == 3
    assert streak(response) == (3, 3, "2025-11-01", "2025-11-03")


async def test_a_date_the_zone_skipped_does_not_break_a_streak(stub: Stub) -> None:
    user = str(uuid.uuid4())
    zone = "Pacific/Apia"  # went from 2011-12-29 straight to 2011-12-31
    await studied(
        stub,
        user,
        [
            in_zone(zone, 2011, 12, 28, 12),
            in_zone(zone, 2011, 12, 29, 12),
            in_zone(zone, 2011, 12, 31, 12),
        ],
    )

    response = await stats(stub, user, time_zone=zone, as_of=in_zone(zone, 2012, 1, 1, 8))
    in_utc = await stats(stub, user, as_of=in_zone(zone, 2012, 1, 1, 8))

    assert response.active_days == 3
    assert streak(response) == (3, 3, "2011-12-28", "2011-12-31")
    # In UTC the same instants fall on 28, 29 and 30 December (22:00Z each).
    assert streak(in_utc) == (3, 3, "2011-12-28", "2011-12-30")


async def test_an_unknown_learner_gets_zeros(stub: Stub) -> None:
    response = await stats(stub, str(uuid.uuid4()), time_zone="Asia/Tokyo")

    assert response.time_zone == "Asia/Tokyo"
    assert not response.HasField("first_active")
    assert not response.HasField("last_active")
    assert (response.events, response.word_count, response.study_seconds) == (0, 0, 0)
    assert response.active_days == 0
    assert streak(response) == (0, 0, "", "")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.LearnerStatsRequest(), "user_id"),
        (pb.LearnerStatsRequest(user_id="not-a-uuid"), "user_id"),
        (pb.LearnerStatsRequest(user_id=str(uuid.uuid4()), time_zone="Mars/Olympus"), "time_zone"),
        (
            pb.LearnerStatsRequest(
                user_id=str(uuid.uuid4()), as_of=timestamp(datetime(2300, 1, 1, tzinfo=UTC))
            ),
            "as_of",
        ),
    ],
)
async def test_invalid_requests_name_the_field(
    stub: Stub, request_: pb.LearnerStatsRequest, field: str
) -> None:
    assert await violated_field(stub.LearnerStats(request_)) == field


async def test_acknowledged_events_count_before_and_after_they_are_folded(
    stub: Stub, server: RunningServer, pool: asyncpg.Pool
) -> None:
    user = str(uuid.uuid4())
    now = datetime.now(UTC)
    await studied(stub, user, [now - timedelta(days=2), now - timedelta(days=1)])
    fresh = await stats(stub, user)
    async with pool.acquire() as conn:
        await server.folder.drain(conn)
    folded = await stats(stub, user)

    for response in (fresh, folded):
        assert response.events == 2
        assert response.current_streak_days == 2


def reference(
    instants: Sequence[tuple[datetime, int, int]], zone: str, as_of: datetime
) -> tuple[object, ...]:
    """The expected answer, from the definitions and zoneinfo alone."""
    tz = ZoneInfo(zone)
    kept = sorted(e for e in instants if e[0] < as_of)
    days = sorted({at.astimezone(tz).date() for at, _, _ in kept})

    def exists(day: date) -> bool:
        # A date the zone skipped has no wall time: noon on it maps to another date.
        noon = datetime.combine(day, time(12), tzinfo=tz)
        return noon.astimezone(UTC).astimezone(tz).date() == day

    def follows(earlier: date, later: date) -> bool:
        step = earlier + timedelta(days=1)
        while step < later and not exists(step):
            step += timedelta(days=1)
        return step == later

    runs: list[list[date]] = []
    for day in days:
        if runs and follows(runs[-1][-1], day):
            runs[-1].append(day)
        else:
            runs.append([day])
    today = as_of.astimezone(tz).date()
    current = 0
    if runs and (runs[-1][-1] == today or follows(runs[-1][-1], today)):
        current = len(runs[-1])
    longest = max(reversed(runs), key=len) if runs else []
    return (
        len(kept),
        sum(w for _, w, _ in kept),
        sum(s for _, _, s in kept),
        kept[0][0] if kept else None,
        kept[-1][0] if kept else None,
        len(days),
        current,
        len(longest),
        longest[0].isoformat() if longest else "",
        longest[-1].isoformat() if longest else "",
    )


def answered(response: pb.LearnerStatsResponse) -> tuple[object, ...]:
    return (
        response.events,
        response.word_count,
        response.study_seconds,
        response.first_active.ToDatetime(tzinfo=UTC) if response.HasField("first_active") else None,
        response.last_active.ToDatetime(tzinfo=UTC) if response.HasField("last_active") else None,
        response.active_days,
        response.current_streak_days,
        response.longest_streak_days,
        response.longest_streak_start,
        response.longest_streak_end,
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_learners_match_a_zoneinfo_reference(stub: Stub, seed: int) -> None:
    rng = random.Random(seed)
    zones = ["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Apia"]
    learners: dict[str, list[tuple[datetime, int, int]]] = {}
    for _ in range(6):
        user = str(uuid.uuid4())
        start = utc(2011, 12, 1) if rng.random() < 0.4 else utc(2025, 3, 1)
        active_days = [d for d in range(60) if rng.random() < 0.6]
        learners[user] = [
            (
                start
                + timedelta(
                    days=d, seconds=rng.randrange(86_400), microseconds=rng.randrange(10**6)
                ),
                rng.randrange(100),
                rng.randrange(600),
            )
            for d in active_days
            for _ in range(rng.randint(1, 3))
        ]
    batches = [
        [event(user_id=u, at=at, words=w, seconds=s) for at, w, s in evs]
        for u, evs in learners.items()
    ]
    response = await record(stub, batches)
    assert response.inserted == sum(len(b) for b in batches)

    for user, evs in learners.items():
        for zone in zones:
            as_of = rng.choice(evs)[0] + timedelta(hours=rng.choice([-30, 0, 5, 40]))
            got = answered(await stats(stub, user, time_zone=zone, as_of=as_of))
            assert got == reference(evs, zone, as_of), (seed, user, zone, as_of)
