"""Uniques with rolling_days: distinct learners of the local days ending with each bucket.

Every expected number is worked out by hand from the events of its test; the
zoneinfo reference over random data is in test_compare.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from daily_aggregator.v1 import aggregator_pb2 as pb
from tests.support import event, fold_everything, folder_held_off, pending
from tests.test_queries import USER_A, USER_B, USER_C, Stub, store, uniques, utc

USER_D = "d0000000-0000-4000-8000-000000000000"
USER_E = "e0000000-0000-4000-8000-000000000000"
USER_F = "f0000000-0000-4000-8000-000000000000"
USER_G = "00000000-0000-4000-8000-000000000007"


def counts(response: pb.UniquesResponse) -> list[tuple[str, int, int]]:
    """(local_start, unique_users, rolling_unique_users) of each bucket."""
    return [(b.local_start, b.unique_users, b.rolling_unique_users) for b in response.buckets]


async def test_each_day_counts_the_learners_of_its_window_reaching_back_before_the_range(
    stub: Stub,
) -> None:
    await store(
        stub,
        [
            event(user_id=USER_E, at=utc("2025-05-31T12:00Z"), country="JP"),  # before every window
            event(user_id=USER_A, at=utc("2025-06-01T12:00Z"), country="JP"),
            event(user_id=USER_B, at=utc("2025-06-02T23:59:59.999999Z"), country="US"),
            event(user_id=USER_C, at=utc("2025-06-03T00:00Z"), country="JP"),
            event(user_id=USER_A, at=utc("2025-06-05T08:00Z"), country="DE"),
            event(user_id=USER_D, at=utc("2025-06-06T00:00Z"), country="JP"),  # the range's end
        ],
    )
    response = await uniques(stub, "2025-06-03T00:00Z", "2025-06-06T00:00Z", rolling_days=3)
    assert counts(response) == [
        ("2025-06-03T00:00:00+00:00", 1, 3),  # C; window June 1-3: A, B, C
        ("2025-06-04T00:00:00+00:00", 0, 2),  # window June 2-4: B, C
        ("2025-06-05T00:00:00+00:00", 1, 2),  # A; window June 3-5: C, A
    ]
    assert response.unique_users == 2

    japan = await uniques(
        stub, "2025-06-03T00:00Z", "2025-06-06T00:00Z", rolling_days=3, countries=["JP"]
    )
    assert [(b.unique_users, b.rolling_unique_users) for b in japan.buckets] == [
        (1, 2),  # C; A and C
        (0, 1),  # C
        (0, 1),  # C: A studied from DE on the 5th
    ]
    one_day = await uniques(
        stub, "2025-06-03T00:00Z", "2025-06-06T00:00Z", rolling_days=1, exclude_countries=["DE"]
    )
    assert [(b.unique_users, b.rolling_unique_users) for b in one_day.buckets] == [
        (1, 1),
        (0, 0),
        (0, 0),
    ]


async def test_partial_first_and_last_buckets_on_new_yorks_25_hour_day(stub: Stub) -> None:
    # 2025-11-02 in New York runs from 04:00Z to 05:00Z the next day (25 hours).
    await store(
        stub,
        [
            event(user_id=USER_F, at=utc("2025-10-31T12:00Z")),  # Oct 31: outside every window
            event(user_id=USER_B, at=utc("2025-11-01T12:00Z")),  # Nov 1
            event(user_id=USER_A, at=utc("2025-11-02T04:30Z")),  # Nov 2 00:30 EDT, before start
            event(user_id=USER_C, at=utc("2025-11-03T04:30Z")),  # Nov 2 23:30 EST, the 25th hour
            event(user_id=USER_G, at=utc("2025-11-02T06:30Z")),  # Nov 2 01:30 EST, the repeat
            event(user_id=USER_D, at=utc("2025-11-04T11:59:59.999999Z")),  # Nov 4, last instant
            event(user_id=USER_E, at=utc("2025-11-04T12:00Z")),  # the range's end: not counted
        ],
    )
    response = await uniques(
        stub, "2025-11-02T12:00Z", "2025-11-04T12:00Z", time_zone="America/New_York", rolling_days=2
    )
    assert counts(response) == [
        # Only C is inside the range; the window is Nov 1 and all of Nov 2: B, A, G, C.
        ("2025-11-02T00:00:00-04:00", 1, 4),
        # Nov 2 and 3 whole: A and G (before start_time) and C.
        ("2025-11-03T00:00:00-05:00", 0, 3),
        # Nov 3 and Nov 4 up to end_time.
        ("2025-11-04T00:00:00-05:00", 1, 1),
    ]
    assert response.unique_users == 2


async def test_new_yorks_23_hour_day_and_kathmandus_quarter_past_days(stub: Stub) -> None:
    await store(
        stub,
        [
            event(user_id=USER_B, at=utc("2025-03-10T03:59Z")),  # Mar 9 23:59 EDT
            event(user_id=USER_A, at=utc("2025-03-10T04:00Z")),  # Mar 10 00:00 EDT
            # Kathmandu is +05:45: its Jan 4 starts at Jan 3 18:15Z.
            event(user_id=USER_B, at=utc("2023-01-03T18:14:59.999999Z")),  # Jan 3 23:59:59 local
            event(user_id=USER_A, at=utc("2023-01-03T18:15Z")),  # Jan 4 00:00 local
            event(user_id=USER_C, at=utc("2023-01-10T18:14Z")),  # Jan 10 23:59 local
        ],
    )
    new_york = await uniques(
        stub, "2025-03-09T05:00Z", "2025-03-11T04:00Z", time_zone="America/New_York", rolling_days=1
    )
    assert counts(new_york) == [
        ("2025-03-09T00:00:00-05:00", 1, 1),
        ("2025-03-10T00:00:00-04:00", 1, 1),
    ]
    kathmandu = await uniques(
        stub, "2023-01-09T18:15Z", "2023-01-11T18:15Z", time_zone="Asia/Kathmandu", rolling_days=7
    )
    assert counts(kathmandu) == [
        ("2023-01-10T00:00:00+05:45", 1, 2),  # window Jan 4-10: A and C, not B
        ("2023-01-11T00:00:00+05:45", 0, 1),  # window Jan 5-11: C
    ]


async def test_a_skipped_date_shortens_the_window_by_a_bucket(stub: Stub) -> None:
    # Pacific/Apia skipped 2011-12-30: the window of Dec 31 over 2 dates is Dec 30 (which
    # has no bucket) and Dec 31, so it holds Dec 31 alone.
    await store(
        stub,
        [
            event(user_id=USER_A, at=utc("2011-12-29T12:00Z")),  # Dec 29 02:00 -10:00
            event(user_id=USER_B, at=utc("2011-12-30T12:00Z")),  # Dec 31 02:00 +14:00
        ],
    )
    response = await uniques(
        stub, "2011-12-29T10:00Z", "2011-12-31T10:00Z", time_zone="Pacific/Apia", rolling_days=2
    )
    assert counts(response) == [
        ("2011-12-29T00:00:00-10:00", 1, 1),
        ("2011-12-31T00:00:00+14:00", 1, 1),
    ]
    three = await uniques(
        stub, "2011-12-29T10:00Z", "2011-12-31T10:00Z", time_zone="Pacific/Apia", rolling_days=3
    )
    assert [b.rolling_unique_users for b in three.buckets] == [1, 2]


async def test_rolling_counts_see_pending_and_folded_events_alike(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    question: dict[str, Any] = {
        "time_zone": "America/New_York",
        "rolling_days": 7,
        "compare_previous": True,
    }
    start, end = "2025-06-10T04:00Z", "2025-06-13T04:00Z"  # June 10, 11 and 12 in New York
    async with folder_held_off(pool):
        await store(
            stub,
            [
                event(user_id=USER_A, at=utc("2025-06-04T04:00Z")),  # June 4: in every window
                event(user_id=USER_B, at=utc("2025-06-05T03:59Z")),  # June 4 too
                event(user_id=USER_C, at=utc("2025-06-11T12:00Z")),  # June 11
                event(user_id=USER_D, at=utc("2025-06-01T12:00Z")),  # the previous period
            ],
        )
        assert await pending(pool) == 4
        unfolded = await uniques(stub, start, end, **question)
    expected = [
        ("2025-06-10T00:00:00-04:00", 0, 2),  # window June 4-10: A, B
        ("2025-06-11T00:00:00-04:00", 1, 1),  # June 5-11: C
        ("2025-06-12T00:00:00-04:00", 0, 1),  # June 6-12: C
    ]
    assert counts(unfolded) == expected
    # The previous period is June 7, 8 and 9; its windows reach back to June 1.
    assert [b.rolling_unique_users for b in unfolded.previous_buckets] == [3, 2, 2]
    assert unfolded.previous_unique_users == 0

    await fold_everything(pool)
    assert await pending(pool) == 0
    folded = await uniques(stub, start, end, **question)
    assert counts(folded) == expected
    assert folded.previous_buckets == unfolded.previous_buckets

    # Folded and pending together: a learner already counted, and a new one.
    async with folder_held_off(pool):
        await store(
            stub,
            [
                event(user_id=USER_C, at=utc("2025-06-12T12:00Z")),
                event(user_id=USER_E, at=utc("2025-06-12T13:00Z")),
            ],
        )
        mixed = await uniques(stub, start, end, **question)
    assert counts(mixed)[2] == ("2025-06-12T00:00:00-04:00", 2, 2)
    assert mixed.unique_users == 2


async def test_rolling_days_up_to_366_and_with_unspecified_granularity(stub: Stub) -> None:
    await store(stub, [event(user_id=USER_A, at=utc("2024-06-01T12:00Z"))])
    response = await uniques(
        stub,
        "2025-05-31T00:00Z",
        "2025-06-02T00:00Z",
        rolling_days=366,
        granularity=pb.GRANULARITY_UNSPECIFIED,
    )
    # 2024 was a leap year: June 1 2024 is 365 days before May 31 2025 and 366 before June 1.
    assert [b.rolling_unique_users for b in response.buckets] == [1, 1]
    off = await uniques(stub, "2025-05-31T00:00Z", "2025-06-02T00:00Z")
    assert [b.rolling_unique_users for b in off.buckets] == [0, 0]
