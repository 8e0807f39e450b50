"""Summary: events, words and study time per bucket, with averages, for everyone or one learner,
and the same for the previous period."""

from __future__ import annotations

import itertools

import asyncpg
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from daily_aggregator.server import activity, learner_activity
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

__all__ = ["summary"]


async def summary(pool: asyncpg.Pool, zones: TimeZones, q: SeriesQuery) -> pb.SummaryResponse:
    """Answer a validated SummaryRequest."""
    response = pb.SummaryResponse(time_zone=q.time_zone.name)
    async with snapshot(pool) as conn:
        current = await period(conn, zones, q)
        await _answer(conn, q, current, response.buckets, response.totals)
        if q.compare_previous:
            previous = await previous_period(conn, zones, q, current)
            set_timestamp(response.previous_start_time, previous.start)
            set_timestamp(response.previous_end_time, previous.end)
            await _answer(conn, q, previous, response.previous_buckets, response.previous_totals)
    return response


async def _answer(
    conn: asyncpg.Connection,
    q: SeriesQuery,
    answered: Period,
    into: RepeatedCompositeFieldContainer[pb.SummaryBucket],
    totals: pb.SummaryTotals,
) -> None:
    """Add the buckets of `answered` to `into` and set `totals` to its totals."""
    parts = spans(answered.buckets, *answered.span)
    if not parts:
        sums: list[activity.Sums] = []
        active = 0
    elif q.user_id is None:
        sums = await activity.sums(conn, parts, q.filter.countries)
        (active,) = await activity.learner_counts(conn, [answered.span], q.filter.countries)
    else:
        sums = await learner_activity.sums(conn, q.user_id, parts, q.filter.countries)
        active = int(any(s.events for s in sums))
    words = _moving_averages([s.word_count for s in sums], q.moving_average_window)
    seconds = _moving_averages([s.study_seconds for s in sums], q.moving_average_window)
    totals.SetInParent()
    totals.events = sum(s.events for s in sums)
    totals.word_count = sum(s.word_count for s in sums)
    totals.study_seconds = sum(s.study_seconds for s in sums)
    totals.active_users = active
    for bucket, s, word_sma, seconds_sma in zip(
        answered.buckets, sums, words, seconds, strict=True
    ):
        added = into.add(
            local_start=local_start(bucket),
            events=s.events,
            word_count=s.word_count,
            study_seconds=s.study_seconds,
            average_word_count=_per_event(s.word_count, s.events),
            average_study_seconds=_per_event(s.study_seconds, s.events),
            word_count_sma=word_sma,
            study_seconds_sma=seconds_sma,
        )
        set_timestamp(added.start_time, bucket.start)


def _moving_averages(values: list[int], window: int) -> list[float]:
    """Simple moving averages over `window` values; the first ones average what there is."""
    # Differences of running totals: the same integer sums as a sliding window's, so the
    # same averages, in C-level passes (a year of hours has 8,760 values).
    totals = list(itertools.accumulate(values, initial=0))
    head = [totals[i] / i for i in range(1, min(window, len(values)) + 1)]
    # Each later total less the one `window` before it; the later ones run out first.
    behind = zip(totals[1:], totals[window + 1 :], strict=False)
    return head + [(hi - lo) / window for lo, hi in behind]


def _per_event(total: int, events: int) -> float:
    return total / events if events else 0.0
