"""The top learners of a range by events, words or study time, exact.

Ranking every learner of a long range means adding up every learner's rows. The
month leaders make that unnecessary (Fagin's threshold algorithm): a learner's
score over the range is at most the sum of their totals in the UTC months the
range touches, and each month lists its leading learners by total. So take the
top `depth` of each month's list, compute exact scores for just those learners
(and for every learner with pending events, which the lists do not know yet);
every learner outside them scores at most `threshold`, the sum over the months
of the total at depth `depth`. When the `limit`-th best exact score is above
the threshold, nobody outside can enter the top, and the answer is exact. If
not, go deeper, and past the end of the lists rank every learner in SQL.

METRIC_UNIQUE_USERS is 1 for every learner, so its top is the smallest user ids
among the range's learners, taken from the learner sets.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from daily_aggregator.server import activity, units
from daily_aggregator.server.folding import LEADERS_LENGTH
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import BreakdownQuery
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["learner_rows", "top_learners"]

_FIRST_DEPTH = 64


async def top_learners(conn: asyncpg.Connection, q: BreakdownQuery) -> list[pb.BreakdownRow]:
    """The top `q.limit` learners by `q.metric` over the range, ties to the smaller user id."""
    pieces = _Pieces(q)
    if q.metric == "unique_users":
        found = await _first_learners(conn, q)
        scores = await pieces.scores(conn, found)
        return _rows(sorted(scores, key=lambda row: row["key"]))
    months = _months(q.filter.start, q.filter.end)
    pending = [
        row["user_id"]
        for row in await conn.fetch(
            query("pending_learners"),
            q.filter.start,
            q.filter.end,
            q.filter.countries.only,
            q.filter.countries.excluded,
        )
    ]
    depth = min(max(_FIRST_DEPTH, 4 * q.limit), LEADERS_LENGTH)
    while True:
        lists = await conn.fetch(query("month_leaders"), q.metric, months, depth)
        candidates = set(pending)
        threshold = 0
        for month_list in lists:
            candidates.update(month_list["user_ids"])
            listed = len(month_list["totals"])
            deeper = month_list["listed"] > listed
            threshold += month_list["totals"][-1] if deeper and listed else month_list["bound"]
        scores = sorted(await pieces.scores(conn, list(candidates)), key=_order(q.metric))
        if len(scores) >= q.limit and scores[q.limit - 1][q.metric] > threshold:
            return _rows(scores[: q.limit])
        if depth == LEADERS_LENGTH or not any(m["listed"] > depth for m in lists):
            break
        depth = min(4 * depth, LEADERS_LENGTH)
    return _rows(await pieces.ranking(conn, q.metric, q.limit))


async def learner_rows(
    conn: asyncpg.Connection, q: BreakdownQuery, user_ids: list[str]
) -> list[pb.BreakdownRow]:
    """The rows of these learners over the range, in their order; zeros (and 0 unique
    users) for a learner with no events there."""
    scores = {row["key"]: row for row in await _Pieces(q).scores(conn, user_ids)}
    return [
        _rows([scores[user_id]])[0] if user_id in scores else pb.BreakdownRow(key=user_id)
        for user_id in user_ids
    ]


async def _first_learners(conn: asyncpg.Connection, q: BreakdownQuery) -> list[str]:
    """The `q.limit` smallest user ids among the learners active in the range."""
    found, numbering = await activity.learners(
        conn, (q.filter.start, q.filter.end), q.filter.countries
    )
    stored, unstored = numbering.split(found)
    rows = await conn.fetch(query("learners_by_number"), stored, q.limit)
    return sorted([str(row["user_id"]) for row in rows] + unstored)[: q.limit]


class _Pieces:
    """The range tiled for learners: whole months (only without country filters), whole
    hours, and edges shorter than an hour."""

    def __init__(self, q: BreakdownQuery) -> None:
        self._q = q
        unfiltered = not q.filter.countries.only and not q.filter.countries.excluded
        tiling = units.tile(
            q.filter.start, q.filter.end, ("month", "hour") if unfiltered else ("hour",)
        )
        self._months = units.Runs.of(run for run in tiling.runs if run.unit == "month")
        self._hours = units.Runs.of(run for run in tiling.runs if run.unit == "hour")
        self._edges = tiling.edges

    async def scores(self, conn: asyncpg.Connection, user_ids: list[str]) -> list[asyncpg.Record]:
        """Exact sums of these learners over the range; those with nothing there are left out."""
        return await self._totals(conn, user_ids, "events", None)

    async def ranking(
        self, conn: asyncpg.Connection, metric: str, limit: int
    ) -> list[asyncpg.Record]:
        """The top `limit` learners by `metric`, ranking every learner."""
        return await self._totals(conn, None, metric, limit)

    async def _totals(
        self, conn: asyncpg.Connection, user_ids: list[str] | None, metric: str, limit: int | None
    ) -> list[asyncpg.Record]:
        f = self._q.filter
        rows: list[asyncpg.Record] = await conn.fetch(
            query("learner_totals"),
            user_ids,
            self._months.froms,
            self._months.tos,
            self._hours.froms,
            self._hours.tos,
            [lo for lo, _ in self._edges],
            [hi for _, hi in self._edges],
            f.start,
            f.end,
            f.countries.only,
            f.countries.excluded,
            metric,
            limit,
        )
        return rows


def _months(lo: datetime, hi: datetime) -> list[datetime]:
    """The starts of the UTC months [lo, hi) touches."""
    months = []
    month = units.floor("month", lo)
    while month < hi:
        months.append(month)
        month = units.following("month", month)
    return months


def _order(metric: str) -> Callable[[asyncpg.Record], tuple[int, str]]:
    """Best first by `metric`, ties to the smaller user id."""
    return lambda row: (-row[metric], row["key"])


def _rows(rows: list[asyncpg.Record]) -> list[pb.BreakdownRow]:
    return [
        pb.BreakdownRow(
            key=row["key"],
            events=row["events"],
            word_count=row["word_count"],
            study_seconds=row["study_seconds"],
            unique_users=1,
        )
        for row in rows
    ]
