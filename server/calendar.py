"""Calendar buckets of a time zone: hours, days, weeks and months as the zone's clock shows them.

The rules are PostgreSQL's: `ZoneRules` holds the UTC offsets a zone had over a
stretch of time, as PostgreSQL reports them (the offset at the start and every
change, to the microsecond), and the buckets follow from those offsets alone:

- a day, week (from Monday) or month starts the first time the local clock
  reaches its midnight; where that midnight does not exist the bucket starts at
  the transition, and a local date the zone skipped has no bucket;
- an hour is a stretch of constant local hour and constant offset, so a
  repeated hour is two buckets and a 30-minute shift starts one of its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

__all__ = ["Bucket", "ZoneRules", "buckets"]

_DAY = timedelta(days=1)
_FIXED = {"day": _DAY, "week": timedelta(weeks=1)}
"""The units whose length is fixed where the offset does not change."""

_REACH = timedelta(hours=16)
"""No offset is further from UTC than this (LMT reached 15:13), so the instant a
wall time is first reached lies at most this far before that wall time read as UTC."""


class Bucket(NamedTuple):
    """One calendar bucket: [start, end), and its start as local wall time with the offset."""

    start: datetime
    end: datetime
    local_start: datetime
    utc_offset: timedelta


class ZoneRules:
    """A zone's UTC offsets from `changes[0]` on: `offsets[i]` applies from `changes[i]`.

    Only instants from `changes[0]` up to `until` are known.
    """

    def __init__(
        self, changes: Sequence[datetime], offsets: Sequence[timedelta], until: datetime
    ) -> None:
        self.changes = list(changes)
        self.offsets = list(offsets)
        self.until = until

    @classmethod
    def fixed(cls, offset: timedelta) -> ZoneRules:
        """The rules of a zone that always keeps `offset`."""
        return cls([datetime.min.replace(tzinfo=UTC)], [offset], datetime.max.replace(tzinfo=UTC))

    def covers(self, lo: datetime, hi: datetime) -> bool:
        """Whether the rules are known for every instant of [lo, hi]."""
        return self.changes[0] <= lo and hi <= self.until

    def offset(self, instant: datetime) -> timedelta:
        """The UTC offset in force at `instant`."""
        return self.offsets[bisect.bisect_right(self.changes, instant) - 1]

    def local(self, instant: datetime) -> datetime:
        """The local wall time at `instant`, naive."""
        return (instant + self.offset(instant)).replace(tzinfo=None)

    def steady(self, lo: datetime, hi: datetime) -> bool:
        """Whether the offset stays the same over [lo, hi]."""
        i = bisect.bisect_right(self.changes, lo) - 1
        return i >= 0 and (i + 1 == len(self.changes) or self.changes[i + 1] > hi)

    def next_change(self, after: datetime, upto: datetime) -> datetime | None:
        """The first change of offset in (after, upto], or None."""
        i = bisect.bisect_right(self.changes, after)
        if i < len(self.changes) and self.changes[i] <= upto:
            return self.changes[i]
        return None

    def first_reach(self, wall: datetime) -> datetime:
        """The first instant whose local time is at or after the naive wall time `wall`.

        In a gap that is the transition; for a repeated time, its first occurrence.
        """
        as_utc = wall.replace(tzinfo=UTC)
        i = max(0, bisect.bisect_right(self.changes, as_utc - _REACH) - 1)
        while True:
            offset = self.offsets[i]
            end = self.changes[i + 1] if i + 1 < len(self.changes) else None
            if end is None or end + offset > as_utc:
                return max(self.changes[i], as_utc - offset)
            i += 1


def _truncate(unit: str, wall: datetime) -> datetime:
    day = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _step(unit: str, wall: datetime, count: int = 1) -> datetime:
    if unit == "day":
        return wall + timedelta(days=count)
    if unit == "week":
        return wall + timedelta(weeks=count)
    years, month = divmod(wall.month - 1 + count, 12)
    return wall.replace(year=wall.year + years, month=month + 1)


def buckets(
    rules: ZoneRules, unit: str, range_start: datetime, range_end: datetime, most: int
) -> list[Bucket]:
    """The buckets of `unit` ('hour', 'day', 'week' or 'month') covering [range_start, range_end).

    From the bucket holding range_start to the one holding the last instant before
    range_end; at most `most` of them (callers ask for one more than they allow, to
    tell a range that is too large).
    """
    if unit == "hour":
        return _hours(rules, range_start, range_end, most)
    found: list[Bucket] = []
    cursor = _first_start(rules, unit, range_start)
    length = _FIXED.get(unit)
    while cursor < range_end and len(found) < most:
        if length is not None:
            cursor = _steady_run(rules, length, cursor, range_end, most, found)
            if cursor >= range_end or len(found) >= most:
                break
        following = _next_start(rules, unit, cursor)
        found.append(Bucket(cursor, following, rules.local(cursor), rules.offset(cursor)))
        cursor = following
    return found


def _steady_run(
    rules: ZoneRules,
    length: timedelta,
    cursor: datetime,
    range_end: datetime,
    most: int,
    into: list[Bucket],
) -> datetime:
    """Add the buckets of fixed `length` from `cursor` on while no change of offset lies
    within a day of one (where `_next_start` would find them `length` long too); return
    where they end. A year of days is one offset lookup instead of one per day."""
    i = bisect.bisect_right(rules.changes, cursor - _DAY) - 1
    if i < 0:
        return cursor
    offset = rules.offsets[i]
    calm_until = rules.changes[i + 1] - _DAY if i + 1 < len(rules.changes) else None
    local = (cursor + offset).replace(tzinfo=None)
    while (
        cursor < range_end
        and len(into) < most
        and (calm_until is None or cursor + length < calm_until)
    ):
        following = cursor + length
        into.append(Bucket(cursor, following, local, offset))
        cursor, local = following, local + length
    return cursor


def _hours(rules: ZoneRules, range_start: datetime, range_end: datetime, most: int) -> list[Bucket]:
    """Hour buckets, walking the offset changes alongside rather than looking each up."""
    found: list[Bucket] = []
    cursor = _first_start(rules, "hour", range_start)
    i = bisect.bisect_right(rules.changes, cursor) - 1
    hour = timedelta(hours=1)
    while cursor < range_end and len(found) < most:
        offset = rules.offsets[i]
        change = rules.changes[i + 1] if i + 1 < len(rules.changes) else None
        local = (cursor + offset).replace(tzinfo=None)
        top = local.replace(minute=0, second=0, microsecond=0) + hour
        following = top.replace(tzinfo=UTC) - offset
        if change is not None and change <= following:
            following = change
            i += 1
        found.append(Bucket(cursor, following, local, offset))
        cursor = following
        if cursor == change:
            continue
        # Up to the next change every hour is a whole one after the last.
        local = top
        last = range_end if change is None else min(range_end, change - hour)
        while cursor < last and len(found) < most:
            following = cursor + hour
            found.append(Bucket(cursor, following, local, offset))
            cursor, local = following, local + hour
    return found


def _first_start(rules: ZoneRules, unit: str, range_start: datetime) -> datetime:
    if unit == "hour":
        offset = rules.offset(range_start)
        hour = rules.local(range_start).replace(minute=0, second=0, microsecond=0)
        start = hour.replace(tzinfo=UTC) - offset
        # A change since the wall-clock hour began starts the bucket instead.
        return rules.next_change(start, range_start) or start
    # Local time can run behind the bucket it is in (after a fall-back across
    # midnight), so step both ways to the last start at or before range_start.
    wall = _truncate(unit, rules.local(range_start))
    while rules.first_reach(wall) > range_start:
        wall = _step(unit, wall, -1)
    while rules.first_reach(_step(unit, wall)) <= range_start:
        wall = _step(unit, wall)
    return rules.first_reach(wall)


def _next_start(rules: ZoneRules, unit: str, start: datetime) -> datetime:
    length = _FIXED.get(unit)
    if length is not None and rules.steady(start - _DAY, start + length + _DAY):
        # Far from any change of offset, a day (week) is exactly that long.
        return start + length
    wall = _step(unit, _truncate(unit, rules.local(start)))
    following = rules.first_reach(wall)
    while following <= start:
        wall = _step(unit, wall)
        following = rules.first_reach(wall)
    return following
