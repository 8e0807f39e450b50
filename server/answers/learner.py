"""LearnerStats: one learner's totals, first and last activity, active days and streaks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from daily_aggregator.server.answers.series import set_timestamp
from daily_aggregator.server.calendar import ZoneRules
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import LearnerStatsQuery
from daily_aggregator.server.timezones import TimeZone, TimeZones
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["learner_stats"]

_DAY = timedelta(days=1)


class _Streak:
    """A run of consecutive active local dates, `first` to `last` inclusive."""

    __slots__ = ("days", "first", "last")

    def __init__(self, first: date, last: date, days: int) -> None:
        self.first = first
        self.last = last
        self.days = days


async def learner_stats(
    pool: asyncpg.Pool, zones: TimeZones, q: LearnerStatsQuery
) -> pb.LearnerStatsResponse:
    """Answer a validated LearnerStatsRequest; an unknown learner gets zeros."""
    response = pb.LearnerStatsResponse(user_id=str(q.user_id), time_zone=q.time_zone.name)
    async with pool.acquire() as conn:
        rows = await conn.fetch(query("learner_days"), q.user_id, q.as_of, q.time_zone.postgres)
        if not rows:
            return response
        skipped = _SkippedDates(conn, zones, q.time_zone)
        runs = await _streaks([row["day"] for row in rows], skipped)
        today = (await skipped.rules(q.as_of, q.as_of)).local(q.as_of).date()
        last = runs[-1]
        current = last.days if await skipped.adjacent_or_same(last.last, today) else 0
    longest = max(reversed(runs), key=lambda run: run.days)  # the latest of the longest
    response.events = sum(row["events"] for row in rows)
    response.word_count = sum(row["word_count"] for row in rows)
    response.study_seconds = sum(row["study_seconds"] for row in rows)
    response.active_days = len(rows)
    response.current_streak_days = current
    response.longest_streak_days = longest.days
    response.longest_streak_start = longest.first.isoformat()
    response.longest_streak_end = longest.last.isoformat()
    set_timestamp(response.first_active, rows[0]["first_at"])
    set_timestamp(response.last_active, rows[-1]["last_at"])
    return response


async def _streaks(days: Sequence[date], skipped: _SkippedDates) -> list[_Streak]:
    """The runs of consecutive dates in the ascending, distinct `days`.

    Two dates are consecutive when every date between them is one the zone skipped.
    """
    runs = [_Streak(days[0], days[0], 1)]
    for day in days[1:]:
        run = runs[-1]
        if await skipped.adjacent_or_same(run.last, day):
            run.last = day
            run.days += 1
        else:
            runs.append(_Streak(day, day, 1))
    return runs


class _SkippedDates:
    """Which local dates a zone skipped (Pacific/Apia has no 2011-12-30), from its rules."""

    def __init__(self, conn: asyncpg.Connection, zones: TimeZones, zone: TimeZone) -> None:
        self._conn = conn
        self._zones = zones
        self._zone = zone

    async def rules(self, lo: datetime, hi: datetime) -> ZoneRules:
        """The zone's rules over [lo, hi] (kept by TimeZones once read)."""
        return await self._zones.rules(self._conn, self._zone, lo, hi)

    async def adjacent_or_same(self, earlier: date, later: date) -> bool:
        """Whether `later` is `earlier` or follows it with only skipped dates between."""
        if later - earlier <= _DAY:
            return True
        rules = await self.rules(
            _midnight(earlier).replace(tzinfo=UTC), _midnight(later + _DAY).replace(tzinfo=UTC)
        )
        day = earlier + _DAY
        while day < later:
            # A skipped date's midnight and the next one are first reached at the same instant.
            if rules.first_reach(_midnight(day)) != rules.first_reach(_midnight(day + _DAY)):
                return False
            day += _DAY
        return True


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time())
