"""Breakdown: the top countries or learners of a range by one metric."""

from __future__ import annotations

import asyncpg

from daily_aggregator.server import activity
from daily_aggregator.server.answers.top_learners import top_learners
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
            rows = await _top_countries(conn, q)
    return pb.BreakdownResponse(rows=rows)


async def _top_countries(conn: asyncpg.Connection, q: BreakdownQuery) -> list[pb.BreakdownRow]:
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
    return rows[: q.limit]
