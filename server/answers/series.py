"""What every bucketed answer shares: its calendar buckets, and their form in a reply."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
from google.protobuf import timestamp_pb2

from daily_aggregator.server import calendar, periods
from daily_aggregator.server.activity import Span
from daily_aggregator.server.errors import InvalidArgument
from daily_aggregator.server.requests import (
    EARLIEST,
    MAX_BUCKETS,
    SeriesQuery,
    check_previous_range,
)
from daily_aggregator.server.timezones import TimeZones

__all__ = [
    "Period",
    "calendar_buckets",
    "local_start",
    "period",
    "previous_period",
    "set_timestamp",
    "spans",
    "timestamp",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Period:
    """A range of a bucketed question, its zone's rules and its buckets.

    `rules` reach back as far as the question's rolling window does.
    """

    start: datetime
    end: datetime
    rules: calendar.ZoneRules
    buckets: list[calendar.Bucket]

    @property
    def span(self) -> Span:
        """The whole range."""
        return (self.start, self.end)


async def period(conn: asyncpg.Connection, zones: TimeZones, q: SeriesQuery) -> Period:
    """The question's own range and buckets.

    Raises:
        InvalidArgument: on `granularity`, when the range holds more than MAX_BUCKETS.
    """
    start, end = q.filter.start, q.filter.end
    rules = await zones.rules(conn, q.time_zone, start - _reach_back(q), end)
    return Period(start, end, rules, _buckets(rules, q.unit, start, end))


async def previous_period(
    conn: asyncpg.Connection, zones: TimeZones, q: SeriesQuery, current: Period
) -> Period:
    """The previous period of `current`: its ends moved back by as many units as it has
    buckets (see `periods`), bucketed by the same rules.

    Where moving back brings the end to or before the start (March 29 to 31 less a
    month are all February 28; a range inside a repeated hour), the previous period is
    the empty range at the moved start, with no buckets.

    Raises:
        InvalidArgument: on `compare_previous`, when the previous period does not lie
            within the range limits.
    """
    count = len(current.buckets)
    # A previous period far out of range is refused before the rules of its time are read.
    earliest = periods.reach(current.rules, q.unit, current.start, count)
    check_previous_range(min(earliest + _DAY, EARLIEST), current.end)
    rules = await zones.rules(conn, q.time_zone, earliest - _DAY - _reach_back(q), current.end)
    start, end = (periods.back(rules, q.unit, t, count) for t in current.span)
    check_previous_range(start, end)
    if end <= start:
        return Period(start, start, rules, [])
    return Period(start, end, rules, _buckets(rules, q.unit, start, end, MAX_BUCKETS * 2))


def _reach_back(q: SeriesQuery) -> timedelta:
    """How far before a range its buckets' rolling windows reach, at most."""
    return (q.rolling_days + 1) * _DAY if q.rolling_days else timedelta(0)


async def calendar_buckets(
    conn: asyncpg.Connection, zones: TimeZones, q: SeriesQuery
) -> list[calendar.Bucket]:
    """The buckets of the question's range in its zone.

    Raises:
        InvalidArgument: on `granularity`, when the range holds more than MAX_BUCKETS.
    """
    rules = await zones.rules(conn, q.time_zone, q.filter.start, q.filter.end)
    return _buckets(rules, q.unit, q.filter.start, q.filter.end)


def _buckets(
    rules: calendar.ZoneRules, unit: str, start: datetime, end: datetime, most: int = MAX_BUCKETS
) -> list[calendar.Bucket]:
    found = calendar.buckets(rules, unit, start, end, most + 1)
    if len(found) > most:
        raise InvalidArgument(
            "granularity",
            f"the range holds more than {most} buckets; "
            "use a coarser granularity or a shorter range",
        )
    return found


def spans(buckets: list[calendar.Bucket], lo: datetime, hi: datetime) -> list[Span]:
    """The part of each bucket inside [lo, hi): only events there count."""
    return [(max(b.start, lo), min(b.end, hi)) for b in buckets]


def timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    set_timestamp(ts, instant)
    return ts


def set_timestamp(ts: timestamp_pb2.Timestamp, instant: datetime) -> None:
    """Set a Timestamp field in place to an aware datetime (no message is copied)."""
    since = instant - _EPOCH
    ts.seconds = since.days * 86_400 + since.seconds
    ts.nanos = since.microseconds * 1000


def local_start(bucket: calendar.Bucket) -> str:
    """The bucket's start as local wall time with its offset, ISO 8601."""
    return bucket.local_start.isoformat() + _offset_suffix(bucket.utc_offset)


@functools.cache
def _offset_suffix(offset: timedelta) -> str:
    """The "+HH:MM" (or "+HH:MM:SS") an aware isoformat() ends with."""
    return datetime(2000, 1, 1, tzinfo=timezone(offset)).isoformat()[len("2000-01-01T00:00:00") :]
