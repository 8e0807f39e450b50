"""Retention: per bucket of the range, the learners who started in it, and their return.

Everything is a learner set, read as Uniques reads its buckets
(`activity.learners_per_span`: rollup units, edges and the pending log, in one
snapshot):

- `before`, the learners with a passing event before start_time;
- per cohort bucket, its learners inside the range (the first and last cohort
  clipped to it);
- per bucket after a cohort's, up to `periods` of them, its whole set: those
  buckets reach past end_time, and the ones that have not begun count 0.

A cohort is the learners of its bucket seen neither before start_time nor in an
earlier cohort's bucket: exactly those whose first passing event falls in it. Its
k-th period is the cohort's size in the k-th bucket's set. Learners of pending
events without a number get one for the answer from the same numbering in every
set, so the sets agree on them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from daily_aggregator.server import activity, calendar, learner_sets
from daily_aggregator.server.activity import Span
from daily_aggregator.server.answers.series import local_start, set_timestamp
from daily_aggregator.server.database import snapshot
from daily_aggregator.server.errors import InvalidArgument
from daily_aggregator.server.requests import (
    EARLIEST,
    MAX_BUCKETS,
    MAX_RETENTION_CELLS,
    RetentionQuery,
)
from daily_aggregator.server.timezones import TimeZones
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["retention"]

_LONGER_THAN = {"day": timedelta(days=2), "week": timedelta(days=8), "month": timedelta(days=32)}
"""More than any bucket of the unit lasts in any zone: how far each period may reach."""

_MICROSECOND = timedelta(microseconds=1)


async def retention(
    pool: asyncpg.Pool, zones: TimeZones, q: RetentionQuery
) -> pb.RetentionResponse:
    """Answer a validated RetentionRequest.

    Raises:
        InvalidArgument: on `granularity` when the range holds more than MAX_BUCKETS
            cohorts; on `periods` when cohorts x periods is more than MAX_RETENTION_CELLS.
    """
    f = q.filter
    now = datetime.now(UTC)
    # The buckets the periods reach, up to the last one begun by now (later ones count 0).
    horizon = max(f.end, min(now + _MICROSECOND, f.end + q.periods * _LONGER_THAN[q.unit]))
    async with snapshot(pool) as conn:
        rules = await zones.rules(conn, q.time_zone, f.start, horizon)
        buckets = calendar.buckets(rules, q.unit, f.start, horizon, MAX_BUCKETS + 1 + q.periods)
        cohorts = [b for b in buckets if b.start < f.end]
        _check_size(len(cohorts), q.periods)
        before: Span = (EARLIEST, f.start)
        entered: list[Span] = [(max(b.start, f.start), min(b.end, f.end)) for b in cohorts]
        later = {
            j: (buckets[j].start, buckets[j].end)
            for j in range(1, min(len(buckets), len(cohorts) + q.periods))
            if buckets[j].start <= now
        }
        spans = list(dict.fromkeys([before, *entered, *later.values()]))
        sets, _ = await activity.learners_per_span(conn, spans, f.countries)
    learners = dict(zip(spans, sets, strict=True))
    seen = learner_sets.LearnerSet(learners[before])
    response = pb.RetentionResponse(time_zone=q.time_zone.name)
    for i, bucket in enumerate(cohorts):
        active = learners[entered[i]]
        cohort = active - seen
        seen |= active
        retained = [len(cohort)]
        for k in range(1, q.periods + 1):
            span = later.get(i + k)
            retained.append(
                cohort.intersection_cardinality(learners[span]) if span and cohort else 0
            )
        added = response.cohorts.add(
            local_start=local_start(bucket), users=retained[0], retained=retained
        )
        set_timestamp(added.start_time, bucket.start)
    return response


def _check_size(cohorts: int, periods: int) -> None:
    if cohorts > MAX_BUCKETS:
        raise InvalidArgument(
            "granularity",
            f"the range holds more than {MAX_BUCKETS} cohorts; "
            "use a coarser granularity or a shorter range",
        )
    if cohorts * periods > MAX_RETENTION_CELLS:
        raise InvalidArgument(
            "periods",
            f"{cohorts} cohorts followed for {periods} periods is more than "
            f"{MAX_RETENTION_CELLS} cells; ask for fewer periods, a shorter range "
            "or a coarser granularity",
        )
