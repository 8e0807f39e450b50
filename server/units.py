"""The UTC units rollups are kept in, and the tiling of a time range with them.

A range [lo, hi) is covered by whole months, days, hours and 15-minute slots,
coarsest first, and by at most two edges shorter than a slot, which only the
events themselves can answer::

    lo | edge | slots | hours | days | months | days | hours | slots | edge | hi

Every UTC offset in use is a multiple of 15 minutes, so the buckets of any zone
are tiled without edges unless a range or a bucket starts off the grid (a fixed
offset such as +05:17, or a transition at 00:01).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["UNITS", "Runs", "Tiles", "Tiling", "floor", "following", "tile"]

UNITS = ("month", "day", "hour", "slot")
"""Every unit, coarsest first."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LENGTHS = {"day": timedelta(days=1), "hour": timedelta(hours=1), "slot": timedelta(minutes=15)}


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


@dataclass
class Tiling:
    """A range tiled with whole units (unit, start) and the edges left between them."""

    units: list[tuple[str, datetime]] = field(default_factory=list)
    edges: list[tuple[datetime, datetime]] = field(default_factory=list)


def tile(lo: datetime, hi: datetime, units: Sequence[str] = UNITS) -> Tiling:
    """Tile [lo, hi) with the whole units in `units` (coarsest first), then edges."""
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
    first, end = _ceil(unit, lo), floor(unit, hi)
    if first >= end:
        _tile(lo, hi, finer, into)
        return
    _tile(lo, first, finer, into)
    start = first
    while start < end:
        into.units.append((unit, start))
        start = following(unit, start)
    _tile(end, hi, finer, into)


@dataclass
class Runs:
    """Units grouped into runs of consecutive starts of one unit, for range scans.

    `units[i]` covers the starts in [`froms[i]`, `tos[i]`).
    """

    units: list[str] = field(default_factory=list)
    froms: list[datetime] = field(default_factory=list)
    tos: list[datetime] = field(default_factory=list)

    @classmethod
    def of(cls, pieces: Iterable[tuple[str, datetime]]) -> Runs:
        """The runs of a set of (unit, start) pieces."""
        runs = cls()
        for unit, start in sorted(set(pieces), key=lambda p: (p[0], p[1])):
            if runs.units and runs.units[-1] == unit and runs.tos[-1] == start:
                runs.tos[-1] = following(unit, start)
            else:
                runs.units.append(unit)
                runs.froms.append(start)
                runs.tos.append(following(unit, start))
        return runs


@dataclass
class Tiles:
    """Consecutive spans tiled together: their whole units as runs, and their edges."""

    runs: Runs
    edge_starts: list[datetime]
    edge_ends: list[datetime]

    @classmethod
    def of(cls, spans: Iterable[tuple[datetime, datetime]], units: Sequence[str] = UNITS) -> Tiles:
        """Tile every span with `units` (coarsest first)."""
        tilings = [tile(lo, hi, units) for lo, hi in spans]
        edges = [edge for tiling in tilings for edge in tiling.edges]
        return cls(
            Runs.of(piece for tiling in tilings for piece in tiling.units),
            [lo for lo, _ in edges],
            [hi for _, hi in edges],
        )
