"""Uniques: distinct learners per bucket and over the whole range."""

from __future__ import annotations

import asyncpg

from daily_aggregator.server import activity
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

__all__ = ["uniques"]


async def uniques(pool: asyncpg.Pool, zones: TimeZones, q: SeriesQuery) -> pb.UniquesResponse:
    """Answer a validated UniquesRequest."""
    whole = (q.filter.start, q.filter.end)
    async with snapshot(pool) as conn:
        buckets = await calendar_buckets(conn, zones, q)
        *per_bucket, total = await activity.learner_counts(
            conn, [*spans(buckets, *whole), whole], q.filter.countries
        )
    response = pb.UniquesResponse(time_zone=q.time_zone.name, unique_users=total)
    for bucket, count in zip(buckets, per_bucket, strict=True):
        added = response.buckets.add(local_start=local_start(bucket), unique_users=count)
        set_timestamp(added.start_time, bucket.start)
    return response
