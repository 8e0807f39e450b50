"""Everyone's activity over spans of time: sums and distinct learners.

Every reader here runs on a connection inside `database.snapshot`, so the
rollups, the events and the pending log it reads are one consistent state. A
span [lo, hi) is tiled with whole rollup units (see `units`); what the units do
not cover, edges shorter than a slot, is read from the events, and pending
events are added where no edge already counted them.

Sums are added up in PostgreSQL. Distinct learners are unions of the units'
learner sets, computed here, with the learners of the pending and edge events
added by number.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

import asyncpg

from daily_aggregator.server import learner_sets, units
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import Countries

__all__ = [
    "Span",
    "Sums",
    "learner_counts",
    "learner_counts_by_country",
    "learners",
    "learners_per_span",
    "sums",
    "sums_by_country",
]

Span = tuple[datetime, datetime]
"""A half-open stretch of time [lo, hi)."""

_START = itemgetter(0)


@dataclass
class Sums:
    """Events, words and study time."""

    events: int = 0
    word_count: int = 0
    study_seconds: int = 0

    def add(self, row: asyncpg.Record) -> None:
        """Add the sums of a row with the same columns."""
        self.events += row["events"]
        self.word_count += row["word_count"]
        self.study_seconds += row["study_seconds"]


async def sums(conn: asyncpg.Connection, spans: Sequence[Span], countries: Countries) -> list[Sums]:
    """The sums of each span; `spans` are consecutive (each ends where the next begins)."""
    found = [Sums() for _ in spans]
    for row in await _sums(conn, spans, countries, per_country=False):
        found[row["bucket"] - 1].add(row)
    return found


async def sums_by_country(
    conn: asyncpg.Connection, span: Span, countries: Countries
) -> dict[str, Sums]:
    """The sums of one span per country ("" for events without one)."""
    found: dict[str, Sums] = defaultdict(Sums)
    for row in await _sums(conn, [span], countries, per_country=True):
        found[row["country"]].add(row)
    return dict(found)


async def _sums(
    conn: asyncpg.Connection, spans: Sequence[Span], countries: Countries, *, per_country: bool
) -> list[asyncpg.Record]:
    tiles = units.Tiles.of(spans, _units(countries, per_country=per_country))
    rows: list[asyncpg.Record] = await conn.fetch(
        query("bucket_sums"),
        tiles.runs.units,
        tiles.runs.froms,
        tiles.runs.tos,
        tiles.edge_starts,
        tiles.edge_ends,
        spans[0][0],
        spans[-1][1],
        [lo for lo, _ in spans],
        countries.only,
        countries.excluded,
        per_country,
    )
    return rows


async def learner_counts(
    conn: asyncpg.Connection, spans: Sequence[Span], countries: Countries
) -> list[int]:
    """The distinct learners of each span; spans may overlap (buckets and their whole range)."""
    per_span, _ = await _learners(conn, spans, countries, per_country=False)
    return [len(found.get("", ())) if isinstance(found, dict) else found for found in per_span]


async def learner_counts_by_country(
    conn: asyncpg.Connection, span: Span, countries: Countries
) -> dict[str, int]:
    """The distinct learners of one span per country."""
    (found,), _ = await _learners(conn, [span], countries, per_country=True)
    assert isinstance(found, dict)
    return {country: len(members) for country, members in found.items()}


async def learners(
    conn: asyncpg.Connection, span: Span, countries: Countries
) -> tuple[learner_sets.LearnerSet, learner_sets.Numbering]:
    """The learners of one span, and the numbering that names the ones not stored yet."""
    (found,), numbering = await _learners(conn, [span], countries, per_country=False, sets=True)
    assert isinstance(found, dict)
    return found.get("", learner_sets.LearnerSet()), numbering


async def learners_per_span(
    conn: asyncpg.Connection, spans: Sequence[Span], countries: Countries
) -> tuple[list[learner_sets.LearnerSet], learner_sets.Numbering]:
    """The learners of each span (spans may overlap), and the numbering that names the
    ones not stored yet; no spans, no sets."""
    if not spans:
        return [], learner_sets.Numbering()
    per_span, numbering = await _learners(conn, spans, countries, per_country=False, sets=True)
    found = []
    for learners_by_country in per_span:
        assert isinstance(learners_by_country, dict)
        found.append(learners_by_country.get("", learner_sets.LearnerSet()))
    return found, numbering


async def _learners(
    conn: asyncpg.Connection,
    spans: Sequence[Span],
    countries: Countries,
    *,
    per_country: bool,
    sets: bool = False,
) -> tuple[list[dict[str, learner_sets.LearnerSet] | int], learner_sets.Numbering]:
    """Per span, the learners per country ("" for all when not `per_country`), or their
    count where one stored row holds it (never when `sets`)."""
    kept = _units(countries, per_country=per_country)
    tilings = [units.tile(lo, hi, kept) for lo, hi in spans]
    edges = sorted({edge for tiling in tilings for edge in tiling.edges})
    loose = await conn.fetch(
        query("loose_learners"),
        min(lo for lo, _ in spans),
        max(hi for _, hi in spans),
        [lo for lo, _ in edges],
        [hi for _, hi in edges],
        countries.only,
        countries.excluded,
    )
    numbering = learner_sets.Numbering()
    loose_times = sorted((row["occurred_at"], i) for i, row in enumerate(loose))
    times = [at for at, _ in loose_times]
    loose_numbers = [numbering.number(row["learner"], row["user_id"]) for row in loose]

    def loose_in(lo: datetime, hi: datetime) -> list[int]:
        return [
            i for _, i in loose_times[bisect.bisect_left(times, lo) : bisect.bisect_left(times, hi)]
        ]

    in_span = [loose_in(lo, hi) for lo, hi in spans]
    # A span of one whole unit with nothing loose is that unit's stored count, when one
    # row holds it; every other span needs the sets of its units.
    one_row = not sets and not per_country and not countries.only and not countries.excluded
    counted = [
        one_row and len(t.runs) == 1 and t.runs[0].is_one_unit() and not t.edges and not extra
        for t, extra in zip(tilings, in_span, strict=True)
    ]
    with_sets = units.Runs.of(
        run for t, count in zip(tilings, counted, strict=True) if not count for run in t.runs
    )
    count_only = units.Runs.of(
        t.runs[0] for t, count in zip(tilings, counted, strict=True) if count
    )
    rows = await conn.fetch(
        query("unit_learners"),
        with_sets.units + count_only.units,
        with_sets.froms + count_only.froms,
        with_sets.tos + count_only.tos,
        [True] * len(with_sets.units) + [False] * len(count_only.units),
        countries.only,
        countries.excluded,
        per_country,
    )
    counts: dict[tuple[str, datetime], int] = {}
    # Per unit and country, its stored sets by start. A year of hours is thousands of
    # rows, so each is unpacked by position and the sets are read afterwards in one pass.
    columns: dict[str, dict[str, list[tuple[datetime, bytes]]]]
    columns = defaultdict(lambda: defaultdict(list))
    for unit, start, country, learner_count, data in rows:
        if data is None:
            counts[unit, start] = learner_count
        else:
            columns[unit][country].append((start, data))
    stored: dict[str, dict[str, tuple[list[datetime], list[learner_sets.LearnerSet]]]]
    stored = defaultdict(dict)
    for unit, by_country in columns.items():
        for country, column in by_country.items():
            column.sort(key=_START)  # a single pass: the runs' scans return them in order
            stored[unit][country] = (
                [start for start, _ in column],
                learner_sets.load_all([data for _, data in column]),
            )

    answers: list[dict[str, learner_sets.LearnerSet] | int] = []
    for tiling, extra, count in zip(tilings, in_span, counted, strict=True):
        if count:
            run = tiling.runs[0]
            answers.append(counts.get((run.unit, run.first), 0))
            continue
        parts: dict[str, list[learner_sets.LearnerSet]] = defaultdict(list)
        for run in tiling.runs:
            for country, (starts, found) in stored[run.unit].items():
                first = bisect.bisect_left(starts, run.first)
                last = bisect.bisect_left(starts, run.end, first)
                parts[country if per_country else ""].extend(found[first:last])
        numbers: dict[str, list[int]] = defaultdict(list)
        for i in extra:
            numbers[loose[i]["country"] if per_country else ""].append(loose_numbers[i])
        for country, numbered in numbers.items():
            parts[country].append(learner_sets.LearnerSet(numbered))
        answers.append({country: learner_sets.union(sets) for country, sets in parts.items()})
    return answers, numbering


def _units(countries: Countries, *, per_country: bool) -> tuple[str, ...]:
    """The rollup units a question can read: slots only when it needs every country together."""
    if per_country or countries.only or countries.excluded:
        return units.COUNTRY_UNITS
    return units.UNITS
