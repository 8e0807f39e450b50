"""Summary: events, words and study time per bucket, with averages, for everyone or one learner."""

from __future__ import annotations

import asyncpg

from daily_aggregator.server import activity, learner_activity
from daily_aggregator.server.answers.series import (
    calendar_buckets,
    local_start,
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
    whole = (q.filter.start, q.filter.end)
    async with snapshot(pool) as conn:
        buckets = await calendar_buckets(conn, zones, q)
        parts = spans(buckets, *whole)
        if q.user_id is None:
            sums = await activity.sums(conn, parts, q.filter.countries)
            (active,) = await activity.learner_counts(conn, [whole], q.filter.countries)
        else:
            sums = await learner_activity.sums(conn, q.user_id, parts, q.filter.countries)
            active = int(any(s.events for s in sums))
    words = _moving_averages([s.word_count for s in sums], q.moving_average_window)
    seconds = _moving_averages([s.study_seconds for s in sums], q.moving_average_window)
    response = pb.SummaryResponse(
        time_zone=q.time_zone.name,
        totals=pb.SummaryTotals(
            events=sum(s.events for s in sums),
            word_count=sum(s.word_count for s in sums),
            study_seconds=sum(s.study_seconds for s in sums),
            active_users=active,
        ),
    )
    for bucket, s, word_sma, seconds_sma in zip(buckets, sums, words, seconds, strict=True):
        added = response.buckets.add(
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
    return response


def _moving_averages(values: list[int], window: int) -> list[float]:
    """Simple moving averages over `window` values; the first ones average what there is."""
    averages = []
    total = 0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averages.append(total / min(i + 1, window))
    return averages


def _per_event(total: int, events: int) -> float:
    return total / events if events else 0.0
