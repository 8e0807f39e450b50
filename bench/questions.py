"""The questions the query benchmark asks, and how each engine's answer is compared.

Every answer is reduced to the same plain form: for a bucketed question, the
non-empty buckets as (start in Unix seconds, values...) and the range's total;
for a ranking, its rows; for retention, the non-zero cells as (cohort start in
Unix seconds, period, learners). The service, plain SQL over the raw events, ClickHouse
and DuckDB must give identical forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from google.protobuf import timestamp_pb2

from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc

__all__ = ["Answer", "Question", "questions", "stats_answer"]

Answer = Any
"""A comparable answer: (buckets, total) for series, a list of rows for rankings."""

YEAR_START = datetime(2025, 1, 1, 5, tzinfo=UTC)  # midnight in New York
ZONE = "America/New_York"
PERIOD_REACH = {"day": timedelta(days=2), "week": timedelta(days=8), "month": timedelta(days=32)}
"""More than one bucket of the unit lasts: retention reads events this far per period
past the range's end."""
_GRANULARITIES = {
    "hour": pb.GRANULARITY_HOUR,
    "day": pb.GRANULARITY_DAY,
    "week": pb.GRANULARITY_WEEK,
    "month": pb.GRANULARITY_MONTH,
}


@dataclass(frozen=True)
class Question:
    """One benchmark question and the target the service must meet on it."""

    name: str
    kind: str
    """summary, uniques, learner (a one-learner summary), countries, top_learners, rolling
    (uniques with a rolling window of `rolling_days`), retention, or stats (LearnerStats of
    `user_id` as of `end`)."""
    start: datetime
    end: datetime
    target: str
    unit: str = "day"
    zone: str = ZONE
    user_id: str = ""
    limit: int = 10
    rolling_days: int = 0
    periods: int = 0
    """Retention: buckets followed after each cohort's."""

    def rolling_days_range(self) -> tuple[date, date, datetime]:
        """The local dates of a rolling question's first and last buckets, and the start of
        its first window (the local midnight rolling_days - 1 days before the first)."""
        zone = ZoneInfo(self.zone)
        first = self.start.astimezone(zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(zone).date()
        reach = datetime.combine(first - timedelta(days=self.rolling_days - 1), time(), zone)
        return first, last, reach.astimezone(UTC)

    def rolling_answer(self, rows: list[tuple[date, int]]) -> Answer:
        """(bucket start in Unix seconds, rolling count) of each day with a count, from rows
        of (local date, count)."""
        zone = ZoneInfo(self.zone)
        return [
            (int(datetime.combine(day, time(), zone).timestamp()), int(count))
            for day, count in sorted(rows)
            if count
        ]

    def series_answer(self, rows: list[tuple[Any, ...]]) -> Answer:
        """(buckets, total) from rows of (bucket start or None for the total, values...).

        Summaries keep (start, events, words, seconds) per bucket and the distinct
        learners of the range; uniques keep (start, learners) and the range's learners.
        """
        buckets = [r[: (4 if self.kind != "uniques" else 2)] for r in rows if r[0] is not None]
        totals = [r for r in rows if r[0] is None]
        total = totals[0][-1] if totals else 0
        return buckets, total

    def stats_answer(self, days: Sequence[Sequence[Any]]) -> Answer:
        """LearnerStats' fields from the learner's days before `end`, in date order.

        Each day is (local date YYYY-MM-DD, events, words, seconds, first and last event
        in Unix microseconds). The zones asked about skip no date, so consecutive dates
        are one day apart.
        """
        return stats_answer(days, self.end.astimezone(ZoneInfo(self.zone)).date())

    def retention_reach(self) -> datetime:
        """An instant past the end of every bucket a retention question follows."""
        return self.end + (self.periods + 1) * PERIOD_REACH[self.unit]

    # -- the service ------------------------------------------------------------------

    async def ask_service(self, stub: aggregator_pb2_grpc.AggregatorServiceStub) -> Answer:
        """Ask the service through gRPC and reduce its answer."""
        span = {"start_time": _timestamp(self.start), "end_time": _timestamp(self.end)}
        if self.kind == "stats":
            stats = await stub.LearnerStats(
                pb.LearnerStatsRequest(
                    user_id=self.user_id, time_zone=self.zone, as_of=_timestamp(self.end)
                )
            )
            return (
                stats.events,
                stats.word_count,
                stats.study_seconds,
                stats.first_active.seconds * 1_000_000 + stats.first_active.nanos // 1000,
                stats.last_active.seconds * 1_000_000 + stats.last_active.nanos // 1000,
                stats.active_days,
                stats.current_streak_days,
                stats.longest_streak_days,
                stats.longest_streak_start,
                stats.longest_streak_end,
            )
        if self.kind in ("summary", "learner"):
            response = await stub.Summary(
                pb.SummaryRequest(
                    **span,
                    user_id=self.user_id,
                    granularity=_GRANULARITIES[self.unit],
                    time_zone=self.zone,
                )
            )
            rows = [
                (b.start_time.seconds, b.events, b.word_count, b.study_seconds)
                for b in response.buckets
                if b.events
            ]
            return rows, response.totals.active_users
        if self.kind == "rolling":
            response = await stub.Uniques(
                pb.UniquesRequest(**span, time_zone=self.zone, rolling_days=self.rolling_days)
            )
            return [
                (b.start_time.seconds, b.rolling_unique_users)
                for b in response.buckets
                if b.rolling_unique_users
            ]
        if self.kind == "uniques":
            response = await stub.Uniques(
                pb.UniquesRequest(
                    **span, granularity=_GRANULARITIES[self.unit], time_zone=self.zone
                )
            )
            rows = [
                (b.start_time.seconds, b.unique_users) for b in response.buckets if b.unique_users
            ]
            return rows, response.unique_users
        if self.kind == "retention":
            response = await stub.Retention(
                pb.RetentionRequest(
                    **span,
                    granularity=_GRANULARITIES[self.unit],
                    periods=self.periods,
                    time_zone=self.zone,
                )
            )
            return [
                (c.start_time.seconds, k, learners)
                for c in response.cohorts
                for k, learners in enumerate(c.retained)
                if learners
            ]
        dimension, metric = (
            (pb.DIMENSION_COUNTRY, pb.METRIC_UNIQUE_USERS)
            if self.kind == "countries"
            else (pb.DIMENSION_USER, pb.METRIC_WORD_COUNT)
        )
        response = await stub.Breakdown(
            pb.BreakdownRequest(**span, dimension=dimension, metric=metric, limit=self.limit)
        )
        if self.kind == "countries":
            return [
                (r.key, r.events, r.word_count, r.study_seconds, r.unique_users)
                for r in response.rows
            ]
        return [(r.key, r.events, r.word_count, r.study_seconds) for r in response.rows]

    # -- plain SQL over the raw events ----------------------------------------------------

    async def ask_plain_sql(self, conn: asyncpg.Connection) -> Answer:
        """The plain SQL a deployment without rollups runs over the events table."""
        where = "occurred_at >= $1 AND occurred_at < $2" + (
            " AND user_id = $3::uuid" if self.user_id else ""
        )
        args: list[Any] = [self.start, self.end] + ([self.user_id] if self.user_id else [])
        if self.kind == "stats":
            rows = await conn.fetch(
                f"SELECT (occurred_at AT TIME ZONE '{self.zone}')::date::text, count(*),"
                " sum(word_count), sum(study_seconds),"
                " (extract(epoch FROM min(occurred_at)) * 1000000)::bigint,"
                " (extract(epoch FROM max(occurred_at)) * 1000000)::bigint"
                " FROM events WHERE user_id = $1::uuid AND occurred_at < $2 GROUP BY 1 ORDER BY 1",
                self.user_id,
                self.end,
            )
            return self.stats_answer([tuple(r) for r in rows])
        if self.kind == "rolling":
            # Each learner's active local days, then every day joined to the days of its window.
            first, last, reach = self.rolling_days_range()
            rows = await conn.fetch(
                "WITH active AS ("
                f" SELECT DISTINCT user_id, (occurred_at AT TIME ZONE '{self.zone}')::date AS day"
                " FROM events WHERE occurred_at >= $1 AND occurred_at < $2),"
                " days AS (SELECT d::date AS day FROM generate_series($3::date, $4::date,"
                " interval '1 day') AS d)"
                " SELECT d.day, count(DISTINCT a.user_id) FROM days AS d JOIN active AS a"
                f" ON a.day BETWEEN d.day - {self.rolling_days - 1} AND d.day GROUP BY d.day",
                reach,
                self.end,
                first,
                last,
            )
            return self.rolling_answer([(r[0], r[1]) for r in rows])
        if self.kind in ("summary", "uniques", "learner"):
            # The zones asked about keep whole-hour offsets: their hours are UTC hours.
            bucket = (
                "date_bin('1 hour', occurred_at, timestamptz 'epoch')"
                if self.unit == "hour"
                else f"date_trunc('{self.unit}', occurred_at, '{self.zone}')"
            )
            values = (
                "count(*), sum(word_count), sum(study_seconds), count(DISTINCT user_id)"
                if self.kind != "uniques"
                else "count(DISTINCT user_id)"
            )
            rows = await conn.fetch(
                f"SELECT extract(epoch FROM {bucket})::bigint AS b, {values} FROM events"
                f" WHERE {where} GROUP BY ROLLUP (b) ORDER BY b NULLS LAST",
                *args,
            )
            return self.series_answer([tuple(r) for r in rows])
        if self.kind == "retention":
            rows = await conn.fetch(
                self._retention_sql(), self.start, self.end, self.retention_reach()
            )
            return [tuple(r) for r in rows]
        if self.kind == "countries":
            rows = await conn.fetch(
                "SELECT country, count(*), sum(word_count), sum(study_seconds),"
                f" count(DISTINCT user_id) AS u FROM events WHERE {where}"
                f" GROUP BY country ORDER BY u DESC, country LIMIT {self.limit}",
                *args,
            )
        else:
            rows = await conn.fetch(
                "SELECT user_id::text, count(*), sum(word_count) AS w, sum(study_seconds)"
                f" FROM events WHERE {where}"
                f" GROUP BY user_id ORDER BY w DESC, user_id LIMIT {self.limit}",
                *args,
            )
        return [tuple(r) for r in rows]

    def _retention_sql(self) -> str:
        """Each learner's first event ever (an event before the last period's end, when
        it is in the range), its local bucket, and the local buckets of the learner's
        events up to the last period: cells of (cohort, period, learners)."""
        local_bucket = f"date_trunc('{self.unit}', occurred_at AT TIME ZONE '{self.zone}')"
        period = {
            "day": "a.bucket::date - c.cohort::date",
            "week": "(a.bucket::date - c.cohort::date) / 7",
            "month": "(extract(year FROM a.bucket) * 12 + extract(month FROM a.bucket))::int"
            " - (extract(year FROM c.cohort) * 12 + extract(month FROM c.cohort))::int",
        }[self.unit]
        return f"""
            WITH c AS (
                SELECT user_id, {local_bucket.replace("occurred_at", "min(occurred_at)")} AS cohort
                FROM events WHERE occurred_at < $3
                GROUP BY user_id HAVING min(occurred_at) >= $1 AND min(occurred_at) < $2
            ), a AS (
                SELECT DISTINCT user_id, {local_bucket} AS bucket
                FROM events WHERE occurred_at >= $1 AND occurred_at < $3
            ), cells AS (
                SELECT c.cohort, {period} AS period
                FROM c JOIN a USING (user_id)
                WHERE a.bucket >= c.cohort
            )
            SELECT extract(epoch FROM cohort AT TIME ZONE '{self.zone}')::bigint, period, count(*)
            FROM cells WHERE period <= {self.periods}
            GROUP BY 1, 2 ORDER BY 1, 2
        """


def stats_answer(days: Sequence[Sequence[Any]], today: date) -> Answer:
    """See `Question.stats_answer`; `today` is the local date of as_of."""
    dates = [date.fromisoformat(d[0]) for d in days]
    runs: list[list[date]] = []
    for day in dates:
        if runs and day - runs[-1][-1] == timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    current = len(runs[-1]) if runs and (today - runs[-1][-1]).days <= 1 else 0
    longest = max(reversed(runs), key=len) if runs else []
    return (
        sum(int(d[1]) for d in days),
        sum(int(d[2]) for d in days),
        sum(int(d[3]) for d in days),
        min((int(d[4]) for d in days), default=0),
        max((int(d[5]) for d in days), default=0),
        len(days),
        current,
        len(longest),
        longest[0].isoformat() if longest else "",
        longest[-1].isoformat() if longest else "",
    )


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def questions(heaviest: str) -> list[Question]:
    """The questions of the benchmark over the generated year."""
    year = (YEAR_START, YEAR_START + timedelta(days=365))
    start = YEAR_START + timedelta(days=180)  # 90 days spanning the November DST change
    days90 = (start, start + timedelta(days=90))
    start = YEAR_START + timedelta(days=200)
    days30 = (start, start + timedelta(days=30))
    x3, beat = "3x the best peer", "beat the best peer"
    # 12 weekly cohorts from the first day of the data (a Wednesday: the first is partial)
    # to Monday 2025-03-24, across the March DST change, each followed for 8 weeks.
    weeks12 = (YEAR_START, datetime(2025, 3, 24, 4, tzinfo=UTC))
    return [
        Question("Summary, all, daily, 90 days, NY", "summary", *days90, x3),
        Question("Summary, all, monthly, 1 year, NY", "summary", *year, x3, unit="month"),
        Question("Uniques, daily, 90 days, NY", "uniques", *days90, x3),
        Question(
            "Uniques, WAU per day, 90 days, New York",
            "rolling",
            *days90,
            "<= 100 ms",
            rolling_days=7,
        ),
        Question("Uniques, monthly, 1 year, NY", "uniques", *year, x3, unit="month"),
        Question("Uniques, hourly, 1 year, NY", "uniques", *year, beat, unit="hour"),
        Question("Uniques, daily, 1 year, Kolkata", "uniques", *year, beat, zone="Asia/Kolkata"),
        Question("Summary, all, hourly, 1 year, NY", "summary", *year, beat, unit="hour"),
        Question("Breakdown, countries by users, 1 year", "countries", *year, beat),
        Question("Breakdown, top 10 by words, 30 days", "top_learners", *days30, beat),
        Question("Breakdown, top 10 by words, 1 year", "top_learners", *year, beat),
        Question(
            "Summary, heaviest learner, daily, 1 y", "learner", *year, "<= 10 ms", user_id=heaviest
        ),
        # Each local midnight of Kolkata falls at half past a UTC hour: every day has
        # edges, read from the learner's own events.
        Question(
            "Summary, heaviest, daily, 1 y, Kolkata",
            "learner",
            *year,
            "<= 100 ms",
            user_id=heaviest,
            zone="Asia/Kolkata",
        ),
        Question(
            "LearnerStats, heaviest learner, NY", "stats", *year, "<= 100 ms", user_id=heaviest
        ),
        Question(
            "Retention, weekly, 12 cohorts x 8, NY",
            "retention",
            *weeks12,
            "<= 100 ms",
            unit="week",
            periods=8,
        ),
    ]
