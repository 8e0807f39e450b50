"""What every bucketed answer shares: its calendar buckets, and their form in a reply."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
from google.protobuf import timestamp_pb2

from daily_aggregator.server import calendar
from daily_aggregator.server.activity import Span
from daily_aggregator.server.errors import InvalidArgument
from daily_aggregator.server.requests import MAX_BUCKETS, SeriesQuery
from daily_aggregator.server.timezones import TimeZones

__all__ = ["calendar_buckets", "local_start", "set_timestamp", "spans", "timestamp"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def calendar_buckets(
    conn: asyncpg.Connection, zones: TimeZones, q: SeriesQuery
) -> list[calendar.Bucket]:
    """The buckets of the question's range in its zone.

    Raises:
        InvalidArgument: on `granularity`, when the range holds more than MAX_BUCKETS.
    """
    rules = await zones.rules(conn, q.time_zone, q.filter.start, q.filter.end)
    found = calendar.buckets(rules, q.unit, q.filter.start, q.filter.end, MAX_BUCKETS + 1)
    if len(found) > MAX_BUCKETS:
        raise InvalidArgument(
            "granularity",
            f"the range holds more than {MAX_BUCKETS} buckets; "
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
