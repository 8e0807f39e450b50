"""Breakdown: the top countries or learners of a range by one metric, and the same keys' metrics
over the stretch of the same length before it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from daily_aggregator.server import activity, periods
from daily_aggregator.server.answers.series import set_timestamp
from daily_aggregator.server.answers.top_learners import learner_rows, top_learners
from daily_aggregator.server.database import snapshot
from daily_aggregator.server.requests import BreakdownQuery
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["breakdown"]


async def breakdown(pool: asyncpg.Pool, q: BreakdownQuery) -> pb.BreakdownResponse:
    """Answer a validated BreakdownRequest."""
    async with snapshot(pool) as conn:
        if q.dimension == "user":
            rows = await top_learners(conn, q)
        else:
            rows = (await _countries(conn, q))[: q.limit]
        response = pb.BreakdownResponse(rows=rows)
        if q.compare_previous:
            start, end = periods.before(q.filter.start, q.filter.end)
            previous = dataclasses.replace(
                q, filter=dataclasses.replace(q.filter, start=start, end=end)
            )
            keys = [row.key for row in rows]
            set_timestamp(response.previous_start_time, start)
            set_timestamp(response.previous_end_time, end)
            if q.dimension == "user":
                response.previous_rows.extend(await learner_rows(conn, previous, keys))
            else:
                response.previous_rows.extend(_of(await _countries(conn, previous), keys))
    return response


async def _countries(conn: asyncpg.Connection, q: BreakdownQuery) -> list[pb.BreakdownRow]:
    """Every country of the range, ranked."""
    span = (q.filter.start, q.filter.end)
    sums = await activity.sums_by_country(conn, span, q.filter.countries)
    users = await activity.learner_counts_by_country(conn, span, q.filter.countries)
    rows = [
        pb.BreakdownRow(
            key=country,
            events=s.events,
            word_count=s.word_count,
            study_seconds=s.study_seconds,
            unique_users=users.get(country, 0),
        )
        for country, s in sums.items()
    ]
    rows.sort(key=lambda row: (-getattr(row, q.metric), row.key))
    return rows


def _of(rows: list[pb.BreakdownRow], keys: Sequence[str]) -> list[pb.BreakdownRow]:
    """The rows of `keys`, in their order; zeros for a key without one."""
    by_key = {row.key: row for row in rows}
    return [by_key.get(key, pb.BreakdownRow(key=key)) for key in keys]
