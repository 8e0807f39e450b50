"""Summary, Uniques and Breakdown against an independent reference, over random data.

Each seed streams a few hundred random events, concentrated around daylight-saving
transitions, through RecordEvents, then asks many random questions: time zones with
awkward rules, ranges that start and end anywhere (often right at a transition),
every granularity, country filters, one user or all. Every answer is compared with

- a reference written here: calendar buckets found with zoneinfo from the bucket
  definition alone, and sums, distinct counts and moving averages computed in Python
  over the events that were sent; and
- the raw `events` table, aggregated with plain SQL over the reference buckets, which
  proves the rollups the service reads add up to the events it stored.

Failures name the seed, the RPC, the zone, the granularity and the range, so one
seed reproduces them.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from itertools import pairwise
from typing import TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest

from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.support import record, timestamp

Stub = aggregator_pb2_grpc.AggregatorServiceStub
T = TypeVar("T")

SECOND_US = 1_000_000
MINUTE = 60
HOUR = 3600
DAY = 86_400

# Zones whose rules for 2000-2030 agree between the system tzdata (zoneinfo) and the
# copy inside PostgreSQL, with the hard cases: 45- and 30-minute offsets, 30-minute
# shifts, transitions at midnight (Havana, Sao Paulo before 2019), at 00:01 and off the
# 15-minute grid (St_Johns until 2011), and a skipped day (Apia 2011-12-30).
IANA_ZONES = [
    "UTC",
    "Asia/Tokyo",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Australia/Adelaide",
    "America/New_York",
    "America/Havana",
    "America/Sao_Paulo",
    "America/St_Johns",
    "Europe/London",
    "Europe/Berlin",
    "Pacific/Chatham",
    "Pacific/Apia",
]
FIXED_OFFSETS = ["+05:45", "-03:30", "+14:00", "-00:00", "+05:17"]
ZONES = IANA_ZONES + FIXED_OFFSETS

# Where the events of a seed cluster: a zone and a local date at (or near) one of its
# transitions. The seeds share these out, so every one is exercised.
HOTSPOTS = [
    ("America/St_Johns", date(2009, 11, 1)),  # falls back at 00:01 on the 1st of a month
    ("America/Sao_Paulo", date(2018, 2, 18)),  # falls back at midnight to 23:00
    ("Pacific/Apia", date(2011, 12, 30)),  # the day that never happened
    ("Australia/Lord_Howe", date(2019, 4, 7)),  # 30-minute shift back
    ("America/Havana", date(2025, 3, 9)),  # springs forward over midnight
    ("Pacific/Chatham", date(2019, 9, 29)),  # +12:45 to +13:45 at 02:45
    ("America/New_York", date(2018, 11, 4)),
    ("Europe/Berlin", date(2022, 3, 27)),
    ("America/St_Johns", date(2010, 3, 14)),  # springs forward at 00:01
    ("America/Sao_Paulo", date(2017, 10, 15)),  # springs forward over midnight
    ("Australia/Lord_Howe", date(2019, 10, 6)),  # 30-minute shift forward
    ("America/Havana", date(2019, 11, 3)),
    ("Australia/Adelaide", date(2020, 4, 5)),
    ("Europe/London", date(2021, 10, 31)),
    ("Pacific/Apia", date(2011, 9, 24)),
    ("America/New_York", date(2018, 3, 11)),
    ("Asia/Kathmandu", date(2023, 1, 1)),
    ("Australia/Adelaide", date(2020, 10, 4)),
    ("Europe/London", date(2021, 3, 28)),
    ("Pacific/Chatham", date(2019, 4, 7)),
    ("America/St_Johns", date(2008, 11, 2)),
    ("Asia/Kolkata", date(2024, 2, 29)),
    ("Europe/Berlin", date(2022, 10, 30)),
    ("Asia/Tokyo", date(2025, 10, 12)),
]
SEEDS = list(range(8))
COMBOS_PER_SEED = 50
"""Random (zone, granularity, range) questions per seed; each is asked four times."""

EVENTS_PER_SEED = 320
USERS_PER_SEED = 15
COUNTRIES = ["JP", "US", "DE", ""]
WINDOW = timedelta(days=14)
"""Events fall within this far of a hotspot's date."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNITS = {
    pb.GRANULARITY_HOUR: "hour",
    pb.GRANULARITY_DAY: "day",
    pb.GRANULARITY_WEEK: "week",
    pb.GRANULARITY_MONTH: "month",
}


# --- The reference time zone rules -------------------------------------------------


@functools.cache
def reference_zone(name: str) -> tzinfo:
    """The zone `name` as Python knows it: zoneinfo, or a fixed offset with the ISO sign."""
    if name[0] in "+-":
        sign = -1 if name[0] == "-" else 1
        hours, minutes = int(name[1:3]), int(name[4:6])
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    return ZoneInfo(name)


def offset_s(zone: str, instant_s: int) -> int:
    """The UTC offset of `zone` at Unix second `instant_s`, in seconds."""
    offset = datetime.fromtimestamp(instant_s, reference_zone(zone)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


@functools.cache
def _transitions_in_day(zone: str, day: int) -> tuple[int, ...]:
    """The transitions of `zone` in the Unix-second interval (day start, next day start].

    A transition is the first second of a new UTC offset (zones change offsets on whole
    seconds). It is found by scanning the day hour by hour (no zone changes its offset
    twice within an hour) and bisecting on the offset where it changed.
    """
    found = []
    for before in range(day * DAY, (day + 1) * DAY, HOUR):
        lo, hi = before, before + HOUR
        old = offset_s(zone, lo)
        if offset_s(zone, hi) == old:
            continue
        # Invariant: offset(lo) is the old offset, offset(hi) is not.
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if offset_s(zone, mid) == old:
                lo = mid
            else:
                hi = mid
        found.append(hi)
    return tuple(found)


def transitions(zone: str, lo_s: int, hi_s: int) -> list[int]:
    """The transitions of `zone` in the Unix-second interval (lo_s, hi_s], in order."""
    days = range(lo_s // DAY - 1, hi_s // DAY + 1)
    return [t for day in days for t in _transitions_in_day(zone, day) if lo_s < t <= hi_s]


def first_reach(zone: str, wall_s: int) -> int:
    """The first instant at which the local clock of `zone` reads `wall_s` or later.

    `wall_s` is a local wall time in seconds since 1970-01-01T00:00 (local). This is
    where a day (week, month) starting at that wall time begins: the wall time itself
    when it happens once, its first occurrence when it happens twice, the transition
    that jumps over it when it never happens.
    """
    lo, hi = wall_s - 2 * DAY, wall_s + 2 * DAY
    # Between consecutive transitions the clock reads instant + offset, increasing.
    # The first stretch whose clock gets to `wall_s` holds the answer.
    for start, end in pairwise([lo, *transitions(zone, lo, hi), hi]):
        offset = offset_s(zone, start)
        if start + offset >= wall_s:
            return start  # the clock jumped to or over `wall_s` at this transition
        if wall_s - offset < end:
            return wall_s - offset  # the clock reads exactly `wall_s` in this stretch
    raise AssertionError(f"{zone} never reaches wall time {wall_s}")


def _wall_s(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY


def _unit_floor(unit: str, day: date) -> date:
    if unit == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if unit == "month":
        return day.replace(day=1)
    return day


def _unit_next(unit: str, day: date) -> date:
    if unit == "week":
        return day + timedelta(days=7)
    if unit == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day + timedelta(days=1)


def _hour_starts(zone: str, lo_s: int, hi_s: int) -> list[int]:
    """Every hour-bucket start in [lo_s, hi_s): the instants where the local clock reads
    HH:00:00, and every offset transition (so a repeated hour is two buckets and a
    30-minute shift starts a bucket of its own)."""
    shifts = transitions(zone, lo_s, hi_s)
    starts = {t for t in shifts if t < hi_s}
    for start, end in pairwise([lo_s, *shifts, hi_s]):
        offset = offset_s(zone, start)
        on_the_hour = -(-(start + offset) // HOUR) * HOUR - offset
        starts.update(range(on_the_hour, end, HOUR))
    return sorted(starts)


def reference_bucket_starts(zone: str, unit: str, start_us: int, end_us: int) -> list[int]:
    """The first instant (Unix seconds) of each bucket of [start_us, end_us), in order:
    from the bucket holding the start to the bucket holding the last instant before
    the end."""
    start_s = start_us // SECOND_US
    if unit == "hour":
        candidates = _hour_starts(zone, start_s - 3 * HOUR, -(-end_us // SECOND_US) + 1)
        first = bisect.bisect_right(candidates, start_s) - 1
        return [s for s in candidates[first:] if s * SECOND_US < end_us]

    # The bucket holding the start is the latest unit whose first reach is not after
    # it. The unit holding the start's local date qualifies (the clock has read that
    # date's midnight by then); a later one does when the clock went back across
    # midnight after reaching it (St_Johns fell back at 00:01).
    local_day = datetime.fromtimestamp(start_s, reference_zone(zone)).date()
    day = _unit_floor(unit, local_day)
    assert first_reach(zone, _wall_s(day)) <= start_s
    while first_reach(zone, _wall_s(_unit_next(unit, day))) <= start_s:
        day = _unit_next(unit, day)
    starts = [first_reach(zone, _wall_s(day))]
    while True:
        day = _unit_next(unit, day)
        begins = first_reach(zone, _wall_s(day))
        if begins * SECOND_US >= end_us:
            return starts
        # A unit whose first reach equals the next one's never happened (Apia
        # skipped 2011-12-30): it has no bucket.
        if begins != starts[-1]:
            starts.append(begins)


def local_start(zone: str, instant_s: int) -> str:
    """The local wall time of an instant with the offset then in force, ISO 8601."""
    return datetime.fromtimestamp(instant_s, reference_zone(zone)).isoformat()


# --- Events and the expected aggregates ----------------------------------------------


@dataclass(frozen=True)
class Sent:
    """An event as sent, with its instant in microseconds since the Unix epoch."""

    user_id: str
    key: str
    at_us: int
    words: int
    seconds: int
    country: str

    def message(self) -> pb.Event:
        """The Event message for this event."""
        e = pb.Event(
            user_id=self.user_id,
            idempotency_key=self.key,
            word_count=self.words,
            study_seconds=self.seconds,
            country=self.country,
        )
        e.occurred_at.CopyFrom(timestamp(instant(self.at_us)))
        return e


@dataclass(frozen=True)
class Question:
    """One random question: a range, a zone, a granularity and filters."""

    zone: str
    granularity: int
    start_us: int
    end_us: int
    countries: tuple[str, ...] = ()
    exclude_countries: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return UNITS[self.granularity]

    def describe(self, seed: int, rpc: str) -> str:
        return (
            f"seed={seed} {rpc} zone={self.zone} granularity={self.unit} "
            f"range=[{instant(self.start_us).isoformat()}, {instant(self.end_us).isoformat()}) "
            f"countries={list(self.countries)} exclude={list(self.exclude_countries)}"
        )

    def keeps(self, e: Sent) -> bool:
        """Whether `e` is in the range and passes the country filters."""
        return (
            self.start_us <= e.at_us < self.end_us
            and (not self.countries or e.country in self.countries)
            and e.country not in self.exclude_countries
        )


def instant(us: int) -> datetime:
    """The aware UTC datetime `us` microseconds after the Unix epoch."""
    return EPOCH + timedelta(microseconds=us)


def micros(when: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    return (when - EPOCH) // timedelta(microseconds=1)


@dataclass
class Totals:
    """Activity of a set of events."""

    events: int = 0
    word_count: int = 0
    study_seconds: int = 0
    users: set[str] | None = None

    def add(self, e: Sent) -> None:
        self.events += 1
        self.word_count += e.words
        self.study_seconds += e.seconds
        if self.users is None:
            self.users = set()
        self.users.add(e.user_id)

    @property
    def unique_users(self) -> int:
        return len(self.users or ())


def bucketed(starts_s: Sequence[int], events: Iterable[Sent]) -> list[Totals]:
    """The activity of each bucket; an event belongs to the last bucket starting at or
    before it."""
    starts_us = [s * SECOND_US for s in starts_s]
    buckets = [Totals() for _ in starts_s]
    for e in events:
        buckets[bisect.bisect_right(starts_us, e.at_us) - 1].add(e)
    return buckets


def moving_average(values: Sequence[int], window: int) -> list[float]:
    """The mean of each value and the `window` - 1 before it (fewer at the start)."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


BREAKDOWN_METRICS = {
    pb.METRIC_UNSPECIFIED: "events",
    pb.METRIC_EVENTS: "events",
    pb.METRIC_WORD_COUNT: "word_count",
    pb.METRIC_STUDY_SECONDS: "study_seconds",
    pb.METRIC_UNIQUE_USERS: "unique_users",
}


def breakdown_rows(dimension: int, events: Iterable[Sent]) -> dict[str, tuple[int, ...]]:
    """Every row of a breakdown by key: (events, word_count, study_seconds, unique_users)."""
    groups: dict[str, Totals] = defaultdict(Totals)
    for e in events:
        groups[e.user_id if dimension == pb.DIMENSION_USER else e.country].add(e)
    return {
        key: (t.events, t.word_count, t.study_seconds, t.unique_users) for key, t in groups.items()
    }


def top_rows(rows: dict[str, tuple[int, ...]], metric: int, limit: int) -> list[tuple[object, ...]]:
    """The first `limit` rows by the metric descending, then by key ascending."""
    column = ["events", "word_count", "study_seconds", "unique_users"].index(
        BREAKDOWN_METRICS[metric]
    )
    ranked = sorted(rows.items(), key=lambda kv: (-kv[1][column], kv[0]))
    return [(key, *values) for key, values in ranked[: limit or 10]]


# --- The raw events table ----------------------------------------------------------

_RAW_FILTER = """
    ($3::uuid IS NULL OR e.user_id = $3)
    AND (cardinality($4::text[]) = 0 OR e.country = ANY ($4))
    AND e.country <> ALL ($5)
"""
RAW_BUCKETS = f"""
    SELECT count(e.user_id) AS events,
           coalesce(sum(e.word_count), 0) AS word_count,
           coalesce(sum(e.study_seconds), 0) AS study_seconds,
           count(DISTINCT e.user_id) AS unique_users
    FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS b (lo, hi, n)
    LEFT JOIN events AS e ON e.occurred_at >= b.lo AND e.occurred_at < b.hi AND {_RAW_FILTER}
    GROUP BY b.n
    ORDER BY b.n
"""
RAW_TOTALS = f"""
    SELECT count(*) AS events,
           coalesce(sum(e.word_count), 0) AS word_count,
           coalesce(sum(e.study_seconds), 0) AS study_seconds,
           count(DISTINCT e.user_id) AS unique_users
    FROM events AS e
    WHERE e.occurred_at >= $1 AND e.occurred_at < $2 AND {_RAW_FILTER}
"""
RAW_BREAKDOWN = """
    SELECT CASE WHEN $3 THEN e.user_id::text ELSE e.country END AS key,
           count(*) AS events,
           sum(e.word_count) AS word_count,
           sum(e.study_seconds) AS study_seconds,
           count(DISTINCT e.user_id) AS unique_users
    FROM events AS e
    WHERE e.occurred_at >= $1 AND e.occurred_at < $2
      AND (cardinality($4::text[]) = 0 OR e.country = ANY ($4))
      AND e.country <> ALL ($5)
    GROUP BY 1
"""


# --- Random data -------------------------------------------------------------------


def hotspots_of(seed: int) -> list[tuple[str, date]]:
    """The hotspots this seed studies; the seeds share all of them out."""
    return HOTSPOTS[seed % len(SEEDS) :: len(SEEDS)]


def window_of(spot: date) -> tuple[int, int]:
    """The microsecond range around a hotspot date where its events fall."""
    middle = datetime(spot.year, spot.month, spot.day, tzinfo=UTC)
    return micros(middle - WINDOW), micros(middle + WINDOW)


def landmarks(zone: str, lo_us: int, hi_us: int) -> list[int]:
    """Instants (microseconds) where buckets of `zone` may start in [lo_us, hi_us):
    its transitions and its local midnights next to them."""
    lo_s, hi_s = lo_us // SECOND_US, hi_us // SECOND_US
    found = set()
    for t in transitions(zone, lo_s, hi_s):
        found.add(t)
        day = datetime.fromtimestamp(t, reference_zone(zone)).date()
        for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
            found.add(first_reach(zone, _wall_s(d)))
    if not found:  # no transitions: a few local midnights instead
        middle = (lo_s + hi_s) // 2
        day = datetime.fromtimestamp(middle, reference_zone(zone)).date()
        found.update(first_reach(zone, _wall_s(day + timedelta(days=k))) for k in (-1, 0, 1))
    return sorted(s * SECOND_US for s in found if lo_s <= s < hi_s)


def random_instant(rng: random.Random, lo_us: int, hi_us: int, marks: Sequence[int]) -> int:
    """An instant in [lo_us, hi_us): uniform, near a landmark, or right at one."""
    roll = rng.random()
    if marks and roll < 0.1:
        return rng.choice(marks) + rng.choice([-1, 0, 0, 1])  # at a bucket edge, or 1 µs off
    if marks and roll < 0.45:
        # Within the hour after a landmark (where a repeated hour lies), or a few hours off.
        seconds = rng.randrange(HOUR) if roll < 0.25 else rng.randrange(-3 * HOUR, 3 * HOUR)
        near = rng.choice(marks) + seconds * SECOND_US + rng.randrange(SECOND_US)
        return max(lo_us, min(hi_us - 1, near))
    at = rng.randrange(lo_us, hi_us)
    if roll < 0.55:
        return at - at % (15 * MINUTE * SECOND_US)  # on a 15-minute slot boundary
    return at


def random_events(rng: random.Random, seed: int) -> list[Sent]:
    """The events of one seed, clustered around its hotspots."""
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(USERS_PER_SEED)]
    events = []
    for _ in range(EVENTS_PER_SEED):
        zone, spot = rng.choice(hotspots_of(seed))
        lo_us, hi_us = window_of(spot)
        events.append(
            Sent(
                user_id=rng.choice(users),
                key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                at_us=random_instant(rng, lo_us, hi_us, landmarks(zone, lo_us, hi_us)),
                words=rng.choice([0, rng.randrange(1, 50), rng.randrange(1_000_000)]),
                seconds=rng.choice([0, rng.randrange(1, 600), rng.randrange(86_401)]),
                country=rng.choice(COUNTRIES),
            )
        )
    return events


def random_question(rng: random.Random, seed: int, events: Sequence[Sent]) -> Question:
    """A random range, zone, granularity and filters near one of the seed's hotspots."""
    spot_zone, spot = rng.choice(hotspots_of(seed))
    zone = spot_zone if rng.random() < 0.55 else rng.choice(ZONES)
    lo_us, hi_us = window_of(spot)
    marks = landmarks(zone, lo_us - 7 * DAY * SECOND_US, hi_us)
    length_us = int(math.exp(rng.uniform(math.log(5 * MINUTE), math.log(62 * DAY)))) * SECOND_US
    length_us += rng.randrange(SECOND_US)
    granularities = [pb.GRANULARITY_DAY, pb.GRANULARITY_WEEK, pb.GRANULARITY_MONTH]
    if length_us <= 5 * DAY * SECOND_US:
        granularities += [pb.GRANULARITY_HOUR] * 3

    roll = rng.random()
    if roll < 0.15:
        start_us = rng.choice(events).at_us  # exactly an event: it is in the range
    else:
        start_us = random_instant(rng, lo_us - length_us // 2, hi_us, marks)
    roll = rng.random()
    later = [e.at_us for e in events if start_us < e.at_us <= start_us + length_us]
    edges = [m for m in marks if start_us < m <= start_us + length_us]
    if roll < 0.15 and later:
        end_us = rng.choice(later)  # exactly an event: it is not in the range
    elif roll < 0.3 and edges:
        end_us = rng.choice(edges) + rng.choice([-1, 0, 1])
    else:
        end_us = start_us + length_us
    end_us = max(end_us, start_us + 1)

    countries: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    roll = rng.random()
    if roll < 0.2:
        countries = tuple(rng.sample(["JP", "US", "DE", "FR"], rng.randrange(1, 4)))
    elif roll < 0.35:
        exclude = tuple(rng.sample(["JP", "US", "DE", "FR"], rng.randrange(1, 3)))
    return Question(zone, rng.choice(granularities), start_us, end_us, countries, exclude)


# --- Comparison ----------------------------------------------------------------------


class Differences:
    """The differences found for one seed, by answer, reported together at the end."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.found: dict[str, list[str]] = defaultdict(list)
        self.compared = 0

    async def ask(self, context: str, call: Awaitable[T]) -> T | None:
        """The answer to one RPC, or None, recorded as a difference, when it fails."""
        self.compared += 1
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            self.found[context].append(f"failed: {exc.code().name}: {exc.details()}")
            return None

    def check(
        self, context: str, what: str, actual: object, expected: object, *, floats: bool = False
    ) -> None:
        """Record a difference unless `actual` equals `expected`; `floats` compares a list
        of floats approximately."""
        if actual != (pytest.approx(expected) if floats else expected):
            self.found[context].append(
                f"{what}\n      actual:   {actual}\n      expected: {expected}"
            )

    def report(self, shown: int = 6) -> str:
        """The first few answers that differ, each with all its differences."""
        lines = [f"seed={self.seed}: {len(self.found)} of {self.compared} answers differ"]
        for context, differences in list(self.found.items())[:shown]:
            lines.append(f"  {context}")
            lines.extend(f"    {d}" for d in differences)
        return "\n".join(lines)


def _columns(rows: Sequence[object], *fields: str) -> dict[str, list[object]]:
    return {f: [getattr(r, f) for r in rows] for f in fields}


def _edges(q: Question, starts_s: Sequence[int]) -> tuple[list[datetime], list[datetime]]:
    """Each bucket's part of the range, as [lo, hi) instants."""
    edges_us = [max(s * SECOND_US, q.start_us) for s in starts_s] + [q.end_us]
    return [instant(u) for u in edges_us[:-1]], [instant(u) for u in edges_us[1:]]


async def check_summary(
    stub: Stub,
    pool: asyncpg.Pool,
    diffs: Differences,
    q: Question,
    events: Sequence[Sent],
    user_id: str,
    window: int,
) -> None:
    """Summary for one user (or everyone when `user_id` is empty) against the reference."""
    context = q.describe(diffs.seed, f"Summary(user={user_id or 'all'}, window={window})")
    response = await diffs.ask(
        context,
        stub.Summary(
            pb.SummaryRequest(
                user_id=user_id,
                start_time=timestamp(instant(q.start_us)),
                end_time=timestamp(instant(q.end_us)),
                granularity=q.granularity,
                time_zone=q.zone,
                moving_average_window=window,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
            )
        ),
    )
    if response is None:
        return
    kept = [e for e in events if q.keeps(e) and (not user_id or e.user_id == user_id)]
    starts_s = reference_bucket_starts(q.zone, q.unit, q.start_us, q.end_us)
    buckets = bucketed(starts_s, kept)
    words = [b.word_count for b in buckets]
    seconds = [b.study_seconds for b in buckets]
    expected = {
        "start_time": [instant(s * SECOND_US) for s in starts_s],
        "local_start": [local_start(q.zone, s) for s in starts_s],
        "events": [b.events for b in buckets],
        "word_count": words,
        "study_seconds": seconds,
        "average_word_count": [b.word_count / b.events if b.events else 0.0 for b in buckets],
        "average_study_seconds": [b.study_seconds / b.events if b.events else 0.0 for b in buckets],
        "word_count_sma": moving_average(words, window),
        "study_seconds_sma": moving_average(seconds, window),
    }
    actual = _columns(response.buckets, *(f for f in expected if f != "start_time"))
    actual["start_time"] = [b.start_time.ToDatetime(tzinfo=UTC) for b in response.buckets]
    diffs.check(context, "time_zone", response.time_zone, q.zone)
    for field, values in expected.items():
        floats = field.startswith("average") or field.endswith("sma")
        diffs.check(context, f"buckets.{field}", actual[field], values, floats=floats)
    everything = Totals()
    for e in kept:
        everything.add(e)
    expected_totals = [
        everything.events,
        everything.word_count,
        everything.study_seconds,
        everything.unique_users,
    ]
    t = response.totals
    actual_totals = [t.events, t.word_count, t.study_seconds, t.active_users]
    diffs.check(context, "totals", actual_totals, expected_totals)

    # The raw events table, over the reference buckets and over the whole range.
    filters = (uuid.UUID(user_id) if user_id else None, list(q.countries), q.exclude_countries)
    raw = await pool.fetch(RAW_BUCKETS, *_edges(q, starts_s), *filters)
    raw_columns = {f: [r[f] for r in raw] for f in ("events", "word_count", "study_seconds")}
    diffs.check(
        context,
        "raw events per reference bucket",
        raw_columns,
        {f: expected[f] for f in raw_columns},
    )
    row = await pool.fetchrow(RAW_TOTALS, instant(q.start_us), instant(q.end_us), *filters)
    diffs.check(context, "raw events totals", list(row.values()), expected_totals)


async def check_uniques(
    stub: Stub, pool: asyncpg.Pool, diffs: Differences, q: Question, events: Sequence[Sent]
) -> None:
    """Uniques against the reference."""
    context = q.describe(diffs.seed, "Uniques")
    response = await diffs.ask(
        context,
        stub.Uniques(
            pb.UniquesRequest(
                start_time=timestamp(instant(q.start_us)),
                end_time=timestamp(instant(q.end_us)),
                granularity=q.granularity,
                time_zone=q.zone,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
            )
        ),
    )
    if response is None:
        return
    kept = [e for e in events if q.keeps(e)]
    starts_s = reference_bucket_starts(q.zone, q.unit, q.start_us, q.end_us)
    expected = {
        "start_time": [instant(s * SECOND_US) for s in starts_s],
        "local_start": [local_start(q.zone, s) for s in starts_s],
        "unique_users": [b.unique_users for b in bucketed(starts_s, kept)],
    }
    actual = _columns(response.buckets, "local_start", "unique_users")
    actual["start_time"] = [b.start_time.ToDatetime(tzinfo=UTC) for b in response.buckets]
    diffs.check(context, "time_zone", response.time_zone, q.zone)
    for field, values in expected.items():
        diffs.check(context, f"buckets.{field}", actual[field], values)
    unique_users = len({e.user_id for e in kept})
    diffs.check(context, "unique_users", response.unique_users, unique_users)

    raw = await pool.fetch(
        RAW_BUCKETS, *_edges(q, starts_s), None, list(q.countries), q.exclude_countries
    )
    diffs.check(
        context,
        "raw unique users per reference bucket",
        [r["unique_users"] for r in raw],
        expected["unique_users"],
    )


async def check_breakdown(
    stub: Stub,
    pool: asyncpg.Pool,
    diffs: Differences,
    q: Question,
    events: Sequence[Sent],
    rng: random.Random,
) -> None:
    """Breakdown, with a random dimension, metric and limit, against the reference."""
    dimension = rng.choice([pb.DIMENSION_USER, pb.DIMENSION_COUNTRY])
    metric = rng.choice(list(BREAKDOWN_METRICS))
    limit = rng.choice([0, 1, 2, 3, 5, rng.randrange(1, 20)])
    context = q.describe(
        diffs.seed,
        f"Breakdown(dimension={pb.Dimension.Name(dimension)}, "
        f"metric={pb.Metric.Name(metric)}, limit={limit})",
    )
    response = await diffs.ask(
        context,
        stub.Breakdown(
            pb.BreakdownRequest(
                start_time=timestamp(instant(q.start_us)),
                end_time=timestamp(instant(q.end_us)),
                dimension=dimension,
                metric=metric,
                limit=limit,
                countries=q.countries,
                exclude_countries=q.exclude_countries,
            )
        ),
    )
    if response is None:
        return
    rows = breakdown_rows(dimension, [e for e in events if q.keeps(e)])
    actual = [
        (r.key, r.events, r.word_count, r.study_seconds, r.unique_users) for r in response.rows
    ]
    diffs.check(context, "rows", actual, top_rows(rows, metric, limit))

    raw = await pool.fetch(
        RAW_BREAKDOWN,
        instant(q.start_us),
        instant(q.end_us),
        dimension == pb.DIMENSION_USER,
        list(q.countries),
        q.exclude_countries,
    )
    diffs.check(context, "raw events rows", {r["key"]: tuple(r.values())[1:] for r in raw}, rows)


# --- The tests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "unit", "start", "end", "local_starts"),
    [
        # Midnight does not exist: the day starts at the transition.
        (
            "America/Havana",
            "day",
            datetime(2025, 3, 8, 12, tzinfo=UTC),
            datetime(2025, 3, 10, 12, tzinfo=UTC),
            ["2025-03-08T00:00:00-05:00", "2025-03-09T01:00:00-04:00", "2025-03-10T00:00:00-04:00"],
        ),
        # A date that never happened has no bucket.
        (
            "Pacific/Apia",
            "day",
            datetime(2011, 12, 29, 0, tzinfo=UTC),
            datetime(2011, 12, 31, 12, tzinfo=UTC),
            [
                "2011-12-28T00:00:00-10:00",
                "2011-12-29T00:00:00-10:00",
                "2011-12-31T00:00:00+14:00",
                "2012-01-01T00:00:00+14:00",
            ],
        ),
        # Falling back at midnight to 23:00: the 23:00 hour is repeated in the old day.
        (
            "America/Sao_Paulo",
            "day",
            datetime(2018, 2, 17, 12, tzinfo=UTC),
            datetime(2018, 2, 19, 12, tzinfo=UTC),
            ["2018-02-17T00:00:00-02:00", "2018-02-18T00:00:00-03:00", "2018-02-19T00:00:00-03:00"],
        ),
        # Falling back at 00:01: a start in the repeated 23:01-24:00 is already in the
        # new day, whose midnight the clock reached first.
        (
            "America/St_Johns",
            "day",
            datetime(2009, 11, 1, 2, 45, tzinfo=UTC),
            datetime(2009, 11, 2, 12, tzinfo=UTC),
            ["2009-11-01T00:00:00-02:30", "2009-11-02T00:00:00-03:30"],
        ),
        # The repeated hour is two buckets.
        (
            "America/New_York",
            "hour",
            datetime(2018, 11, 4, 4, 30, tzinfo=UTC),
            datetime(2018, 11, 4, 7, 30, tzinfo=UTC),
            [
                "2018-11-04T00:00:00-04:00",
                "2018-11-04T01:00:00-04:00",
                "2018-11-04T01:00:00-05:00",
                "2018-11-04T02:00:00-05:00",
            ],
        ),
        # A 30-minute shift back starts a bucket at the transition.
        (
            "Australia/Lord_Howe",
            "hour",
            datetime(2019, 4, 6, 14, 10, tzinfo=UTC),
            datetime(2019, 4, 6, 16, 10, tzinfo=UTC),
            ["2019-04-07T01:00:00+11:00", "2019-04-07T01:30:00+10:30", "2019-04-07T02:00:00+10:30"],
        ),
        # +05:45: hours start at :15 UTC.
        (
            "Asia/Kathmandu",
            "hour",
            datetime(2023, 1, 1, 0, 20, tzinfo=UTC),
            datetime(2023, 1, 1, 2, 20, tzinfo=UTC),
            ["2023-01-01T06:00:00+05:45", "2023-01-01T07:00:00+05:45", "2023-01-01T08:00:00+05:45"],
        ),
        (
            "+05:17",
            "week",
            datetime(2024, 1, 1, 12, tzinfo=UTC),
            datetime(2024, 1, 10, 12, tzinfo=UTC),
            ["2024-01-01T00:00:00+05:17", "2024-01-08T00:00:00+05:17"],
        ),
    ],
)
def test_the_reference_follows_the_bucket_rules(
    zone: str, unit: str, start: datetime, end: datetime, local_starts: list[str]
) -> None:
    starts = reference_bucket_starts(zone, unit, micros(start), micros(end))
    assert [local_start(zone, s) for s in starts] == local_starts


@pytest.mark.parametrize(
    "granularity", [pb.GRANULARITY_DAY, pb.GRANULARITY_MONTH], ids=["day", "month"]
)
async def test_a_start_in_st_johns_repeated_hour_begins_with_the_bucket_holding_it(
    stub: Stub, granularity: int
) -> None:
    # St_Johns fell back at 00:01 on 2009-11-01 (02:31Z): the clock read 2009-11-01
    # 00:00 at 02:30Z, then 2009-10-31 23:01 again. 02:45Z is in the bucket of the
    # 1st (day and month); the bucket of the 31st (October) ended at 02:30Z.
    response = await stub.Uniques(
        pb.UniquesRequest(
            start_time=timestamp(datetime(2009, 11, 1, 2, 45, tzinfo=UTC)),
            end_time=timestamp(datetime(2009, 11, 1, 12, tzinfo=UTC)),
            granularity=granularity,
            time_zone="America/St_Johns",
        )
    )
    assert [b.local_start for b in response.buckets] == ["2009-11-01T00:00:00-02:30"]


@pytest.mark.parametrize("seed", SEEDS)
async def test_answers_match_the_reference(stub: Stub, pool: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    sent = random_events(rng, seed)
    # Some events are sent again, byte for byte, in a later batch of the same stream.
    resent = rng.sample(sent, len(sent) // 10)
    stream = sent + resent
    batches = []
    while stream:
        size = rng.randrange(1, 60)
        batches.append([e.message() for e in stream[:size]])
        stream = stream[size:]
    response = await record(stub, batches)
    assert (response.inserted, response.duplicates, response.rejected) == (
        len(sent),
        len(resent),
        0,
    ), f"seed={seed}"

    # Conflicting resends (same key, other payload) keep the stored event.
    changed = [replace(e, words=e.words + 1, country="JP") for e in rng.sample(sent, 10)]
    response = await record(stub, [[e.message() for e in changed]])
    assert (response.inserted, response.conflicts) == (0, len(changed)), f"seed={seed}"

    # What the service stored is exactly what was sent, once.
    stored = await pool.fetch(
        "SELECT user_id::text, idempotency_key::text, occurred_at, word_count, study_seconds,"
        " country FROM events"
    )
    assert sorted((r[0], r[1], micros(r[2]), *r[3:]) for r in stored) == sorted(
        (e.user_id, e.key, e.at_us, e.words, e.seconds, e.country) for e in sent
    ), f"seed={seed}"

    # One user at a time: each of the pool, or one who never studied (zeros, not an error).
    users = [
        *sorted({e.user_id for e in sent}),
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    ]
    diffs = Differences(seed)
    for _ in range(COMBOS_PER_SEED):
        q = random_question(rng, seed, sent)
        await check_summary(stub, pool, diffs, q, sent, "", rng.randrange(1, 8))
        await check_summary(stub, pool, diffs, q, sent, rng.choice(users), rng.randrange(1, 8))
        await check_uniques(stub, pool, diffs, q, sent)
        await check_breakdown(stub, pool, diffs, q, sent, rng)
    assert not diffs.found, diffs.report()
