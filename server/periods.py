"""The previous period of a question: its range moved back, as PostgreSQL would move it.

A bucketed question (Summary, Uniques) of k buckets compares with the range
whose ends are its own moved back by k units of its granularity:

- hours by absolute time: ``t - k * interval '1 hour'``;
- days, weeks and months in the zone's wall-clock time, like PostgreSQL's
  ``((t AT TIME ZONE zone) - k * interval '1 day') AT TIME ZONE zone``
  (``'7 days'``, ``'1 month'``): the local time moved back by whole days, or by
  months with the day of the month cut to the month's last (March 31 less one
  month is February 28, or 29), then read in the zone again. A local time the
  zone skipped, or one it shows twice, is read as PostgreSQL reads it
  (`at_wall`).

A Breakdown compares with the stretch of the same length just before its range.
"""

from __future__ import annotations

import bisect
import calendar as dates
from datetime import UTC, datetime, timedelta

from daily_aggregator.server.calendar import ZoneRules

__all__ = ["at_wall", "back", "before", "reach", "wall_back"]

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)


def back(rules: ZoneRules, unit: str, instant: datetime, count: int) -> datetime:
    """`instant` moved back `count` hours, days, weeks or months, as described above.

    `rules` must cover `instant` and the day around where it lands (see `reach`).

    Raises:
        OverflowError: the result is before year 1.
    """
    if unit == "hour":
        return instant - count * _HOUR
    return at_wall(rules, wall_back(unit, rules.local(instant), count))


def reach(rules: ZoneRules, unit: str, instant: datetime, count: int) -> datetime:
    """Within a day of where `back` lands, from the rules of `instant` alone: its local time
    moved back, read as UTC (no offset reaches a day). The earliest instant for a result
    before year 1."""
    if unit == "hour":
        return instant - count * _HOUR
    try:
        return wall_back(unit, rules.local(instant), count).replace(tzinfo=UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def wall_back(unit: str, wall: datetime, count: int) -> datetime:
    """The naive local time `wall` less `count` days, weeks or months, as PostgreSQL
    subtracts an interval from a timestamp without time zone.

    Raises:
        OverflowError: the result is before year 1 (no range can start there).
    """
    if unit == "day":
        return wall - count * _DAY
    if unit == "week":
        return wall - count * 7 * _DAY
    months = wall.year * 12 + wall.month - 1 - count
    year, month = divmod(months, 12)
    if year < 1:
        raise OverflowError(f"{count} months before {wall} is before year 1")
    last = dates.monthrange(year, month + 1)[1]
    return wall.replace(year=year, month=month + 1, day=min(wall.day, last))


def at_wall(rules: ZoneRules, wall: datetime) -> datetime:
    """The instant PostgreSQL gives ``wall AT TIME ZONE zone`` for the naive local time `wall`.

    PostgreSQL looks at the first change of offset after `wall` read as UTC less a
    day, and reads `wall` with the offsets before and after it. When both readings
    fall on the same side of the change, that side's reading is the instant. When
    they do not, `wall` was skipped (spring forward) or shown twice (fall back), and
    PostgreSQL takes the later of the two readings: a skipped time is read with the
    offset before the change (02:30 on New York's spring-forward day is 03:30 EDT),
    a repeated one with the offset after it (01:30 on its fall-back day is 01:30 EST).

    `rules` must cover the day around `wall`.
    """
    as_utc = wall.replace(tzinfo=UTC)
    looked_from = as_utc - _DAY
    i = bisect.bisect_right(rules.changes, looked_from)
    before = rules.offsets[i - 1] if i else rules.offsets[0]
    if i == len(rules.changes):
        return as_utc - before
    change, after = rules.changes[i], rules.offsets[i]
    read_before, read_after = as_utc - before, as_utc - after
    if read_before < change and read_after < change:
        return read_before
    if read_before >= change and read_after >= change:
        return read_after
    return max(read_before, read_after)


def before(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The stretch of the same length as [start, end) that ends at `start`."""
    return start - (end - start), start
