"""The UTC units rollups are kept in, and the tiling of a time range with them.

A range [lo, hi) is covered by whole months, days, hours and 15-minute slots,
coarsest first, and by at most two edges shorter than a slot, which only the
events themselves can answer::

    lo | edge | slots | hours | days | months | days | hours | slots | edge | hi

Every UTC offset in use is a multiple of 15 minutes, so the buckets of any zone
are tiled without edges unless a range or a bucket starts off the grid (a fixed
offset such as +05:17, or a transition at 00:01). Whole units come in runs:
consecutive units of one kind, [first, end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

__all__ = ["COUNTRY_UNITS", "UNITS", "Run", "Runs", "Tiles", "Tiling", "floor", "following", "tile"]

UNITS = ("month", "day", "hour", "slot")
"""Every unit, coarsest first."""

COUNTRY_UNITS = ("month", "day", "hour")
"""The units rollups keep per country: slots are kept for every country together only."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LENGTHS = {"day": timedelta(days=1), "hour": timedelta(hours=1), "slot": timedelta(minutes=15)}
_SHORTEST = {**_LENGTHS, "month": timedelta(days=28)}
_ZERO = timedelta(0)
_UNIT_OF_LENGTH = {length: unit for unit, length in _LENGTHS.items()}


def floor(unit: str, instant: datetime) -> datetime:
    """The start of the `unit` holding `instant` (an aware datetime), in UTC."""
    if unit == "month":
        instant = instant.astimezone(UTC)
        return datetime(instant.year, instant.month, 1, tzinfo=UTC)
    length = _LENGTHS[unit]
    return _EPOCH + (instant - _EPOCH) // length * length


def following(unit: str, start: datetime) -> datetime:
    """The start of the `unit` after the one starting at `start`."""
    if unit == "month":
        years, month = divmod(start.month, 12)
        return start.replace(year=start.year + years, month=month + 1)
    return start + _LENGTHS[unit]


def _ceil(unit: str, instant: datetime) -> datetime:
    start = floor(unit, instant)
    return start if start == instant else following(unit, start)


class Run(NamedTuple):
    """The whole `unit`s that start in [first, end).

    A tuple, not a dataclass: a year of hours tiles into 8,760 of them per question,
    and a tuple is built in a fraction of a frozen dataclass's time.
    """

    unit: str
    first: datetime
    end: datetime

    def is_one_unit(self) -> bool:
        """Whether the run is a single unit."""
        return following(self.unit, self.first) == self.end


@dataclass
class Tiling:
    """A range tiled with runs of whole units and the edges left between them."""

    runs: list[Run] = field(default_factory=list)
    edges: list[tuple[datetime, datetime]] = field(default_factory=list)


def tile(lo: datetime, hi: datetime, units: Sequence[str] = UNITS) -> Tiling:
    """Tile [lo, hi) with runs of the whole units in `units` (coarsest first), then edges."""
    # The common case first: a bucket that is one whole unit (an hour of most zones).
    unit = _UNIT_OF_LENGTH.get(hi - lo)
    if unit is not None and unit in units and (lo - _EPOCH) % (hi - lo) == _ZERO:
        return Tiling([Run(unit, lo, hi)])
    tiling = Tiling()
    _tile(lo, hi, units, tiling)
    return tiling


def _tile(lo: datetime, hi: datetime, units: Sequence[str], into: Tiling) -> None:
    if lo >= hi:
        return
    if not units:
        into.edges.append((lo, hi))
        return
    unit, finer = units[0], units[1:]
    if hi - lo < _SHORTEST[unit]:
        _tile(lo, hi, finer, into)
        return
    first, end = _ceil(unit, lo), floor(unit, hi)
    if first >= end:
        _tile(lo, hi, finer, into)
        return
    _tile(lo, first, finer, into)
    into.runs.append(Run(unit, first, end))
    _tile(end, hi, finer, into)


@dataclass
class Runs:
    """Runs as the columns a statement takes, consecutive runs of one unit joined.

    `units[i]` covers the starts in [`froms[i]`, `tos[i]`).
    """

    units: list[str] = field(default_factory=list)
    froms: list[datetime] = field(default_factory=list)
    tos: list[datetime] = field(default_factory=list)

    @classmethod
    def of(cls, runs: Iterable[Run]) -> Runs:
        """The columns of `runs`; overlapping runs are joined too."""
        columns = cls()
        # Runs sort as tuples: by unit, then first (then end, which joining ignores).
        for run in sorted(runs):
            if columns.units and columns.units[-1] == run.unit and columns.tos[-1] >= run.first:
                columns.tos[-1] = max(columns.tos[-1], run.end)
            else:
                columns.units.append(run.unit)
                columns.froms.append(run.first)
                columns.tos.append(run.end)
        return columns


@dataclass
class Tiles:
    """Spans tiled together: their runs as columns, and their edges.

    The edges of consecutive spans are ascending and apart (one may end where the next
    starts), so a statement can find the one edge that may hold an instant by bisection.
    """

    runs: Runs
    edge_starts: list[datetime]
    edge_ends: list[datetime]

    @classmethod
    def of(cls, spans: Iterable[tuple[datetime, datetime]], units: Sequence[str] = UNITS) -> Tiles:
        """Tile every span with `units` (coarsest first)."""
        spans = list(spans)
        unit = _one_run(spans, units)
        if unit is not None:
            return cls(Runs([unit], [spans[0][0]], [spans[-1][1]]), [], [])
        tilings = [tile(lo, hi, units) for lo, hi in spans]
        edges = [edge for tiling in tilings for edge in tiling.edges]
        return cls(
            Runs.of(run for tiling in tilings for run in tiling.runs),
            [lo for lo, _ in edges],
            [hi for _, hi in edges],
        )


def _one_run(spans: Sequence[tuple[datetime, datetime]], units: Sequence[str]) -> str | None:
    """The unit of which `spans` together are one run, when tiling them one by one would
    only join them again: they follow each other end to end on the unit's grid, which has
    a fixed length, and no coarser unit of `units` fits inside one of them.

    Either the unit is the coarsest of `units` (a learner's local days are runs of hours
    in most zones), or every span is exactly one of it (everyone's hours of most zones).
    """
    if not spans or not units:
        return None
    unit: str | None = units[0]
    length = _LENGTHS.get(units[0])
    whole = length is None
    if length is None:
        length = spans[0][1] - spans[0][0]
        unit = _UNIT_OF_LENGTH.get(length)
        if unit not in units:
            return None
    previous_end = spans[0][0]
    for lo, hi in spans:
        # Spans of one unit each need only the first start on the grid, checked below.
        if lo != previous_end or (
            hi - lo != length if whole else hi <= lo or (hi - _EPOCH) % length
        ):
            return None
        previous_end = hi
    return None if (spans[0][0] - _EPOCH) % length else unit
