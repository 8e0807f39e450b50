"""Rolling actives: for each day bucket, the distinct learners of the local days ending with it.

The window of a bucket whose local date is D covers [the start of the local day
D - (N - 1), min(the bucket's end, the range's end)): N local dates, fewer
buckets where the zone skipped a date (Pacific/Apia 2011-12-30). It starts at a
day's start even when the range starts later in the day, and it reaches back
before the range. So the windows need the learner sets of whole local days from
the first window's start on, the last one cut at the range's end; each window's
count is the size of the union of its days' sets.

Windows only move forward, so their unions are kept as a queue of two stacks:
each day's set is added to one running union as it enters, and when the oldest
day leaves, the days still in the window are unioned from the newest back once,
so that every later departure is a pop. That is a few unions per day whatever N
is, instead of N per bucket.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from daily_aggregator.server import calendar, learner_sets
from daily_aggregator.server.activity import Span

__all__ = ["Windows", "counts", "windows"]


@dataclass(frozen=True)
class Windows:
    """The local days the rolling windows of some day buckets cover.

    `days[i]` is the i-th day from the first window's start, cut at the range's end;
    the window of bucket j holds `days[firsts[j] : lasts[j] + 1]`.
    """

    days: list[Span]
    firsts: list[int]
    lasts: list[int]


def windows(
    rules: calendar.ZoneRules, buckets: Sequence[calendar.Bucket], length: int, end: datetime
) -> Windows:
    """The windows of `length` local days ending with each of `buckets` (day buckets of a
    range ending at `end`, in order); `rules` must cover the first window."""

    def window_start(bucket: calendar.Bucket) -> datetime:
        first = bucket.local_start.date() - timedelta(days=length - 1)
        return rules.first_reach(datetime.combine(first, time()))

    starts = [window_start(b) for b in buckets]
    days = calendar.buckets(rules, "day", starts[0], end, len(buckets) + length)
    day_starts = [day.start for day in days]
    return Windows(
        days=[(day.start, min(day.end, end)) for day in days],
        firsts=[bisect.bisect_left(day_starts, start) for start in starts],
        lasts=[bisect.bisect_left(day_starts, b.start) for b in buckets],
    )


def counts(
    sets: Sequence[learner_sets.LearnerSet], firsts: Sequence[int], lasts: Sequence[int]
) -> list[int]:
    """For each j, the size of the union of `sets[firsts[j] : lasts[j] + 1]`; both
    sequences must be non-decreasing. The sets are not changed."""
    # The window holds sets[lo:entered]. `older` holds its oldest part, the oldest on
    # top, each entry the union of its set and every newer one of that part; `newer`
    # holds the rest, with their union.
    older: list[learner_sets.LearnerSet] = []
    newer: list[learner_sets.LearnerSet] = []
    newer_union = learner_sets.LearnerSet()
    lo = entered = 0
    found = []
    for first, last in zip(firsts, lasts, strict=True):
        while entered <= last:
            newer.append(sets[entered])
            newer_union |= sets[entered]
            entered += 1
        while lo < first:
            if not older:
                running = learner_sets.LearnerSet()
                for members in reversed(newer):
                    running = running | members
                    older.append(running)
                newer, newer_union = [], learner_sets.LearnerSet()
            older.pop()
            lo += 1
        found.append(older[-1].union_cardinality(newer_union) if older else len(newer_union))
    return found
