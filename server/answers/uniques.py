"""Uniques: distinct learners per bucket and over the whole range, rolling windows of local
days, and the same for the previous period."""

from __future__ import annotations

import asyncpg
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from daily_aggregator.server import activity, learner_sets, rolling
from daily_aggregator.server.answers.series import (
    Period,
    local_start,
    period,
    previous_period,
    set_timestamp,
    spans,
)
from daily_aggregator.server.database import snapshot
from daily_aggregator.server.requests import SeriesQuery
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["uniques"]


async def uniques(pool: asyncpg.Pool, zones: TimeZones, q: SeriesQuery) -> pb.UniquesResponse:
    """Answer a validated UniquesRequest."""
    response = pb.UniquesResponse(time_zone=q.time_zone.name)
    async with snapshot(pool) as conn:
        current = await period(conn, zones, q)
        response.unique_users = await _answer(conn, q, current, response.buckets)
        if q.compare_previous:
            previous = await previous_period(conn, zones, q, current)
            set_timestamp(response.previous_start_time, previous.start)
            set_timestamp(response.previous_end_time, previous.end)
            response.previous_unique_users = await _answer(
                conn, q, previous, response.previous_buckets
            )
    return response


async def _answer(
    conn: asyncpg.Connection,
    q: SeriesQuery,
    answered: Period,
    into: RepeatedCompositeFieldContainer[pb.UniquesBucket],
) -> int:
    """Add the buckets of `answered` to `into`; return its distinct learners."""
    if not answered.buckets:
        return 0
    if q.rolling_days:
        per_bucket, rolling_counts, total = await _with_windows(conn, q, answered)
    else:
        *per_bucket, total = await activity.learner_counts(
            conn, [*spans(answered.buckets, *answered.span), answered.span], q.filter.countries
        )
        rolling_counts = [0] * len(per_bucket)
    for bucket, count, rolling_count in zip(
        answered.buckets, per_bucket, rolling_counts, strict=True
    ):
        added = into.add(
            local_start=local_start(bucket), unique_users=count, rolling_unique_users=rolling_count
        )
        set_timestamp(added.start_time, bucket.start)
    return total


async def _with_windows(
    conn: asyncpg.Connection, q: SeriesQuery, answered: Period
) -> tuple[list[int], list[int], int]:
    """Per bucket its learners and its rolling window's, and the range's learners, from
    one set per local day (and one for the first bucket when the range starts inside it)."""
    windows = rolling.windows(answered.rules, answered.buckets, q.rolling_days, answered.end)
    first = windows.lasts[0]
    own_start = (answered.start, windows.days[first][1])
    cut = own_start != windows.days[first]
    found, _ = await activity.learners_per_span(
        conn, windows.days + ([own_start] if cut else []), q.filter.countries
    )
    days = found[: len(windows.days)]
    per_bucket = [days[i] for i in windows.lasts]
    if cut:
        per_bucket[0] = found[-1]
    return (
        [len(members) for members in per_bucket],
        rolling.counts(days, windows.firsts, windows.lasts),
        len(learner_sets.union(per_bucket)),
    )
