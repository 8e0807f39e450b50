"""Time zones as callers name them, as PostgreSQL must be told them, and their rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from daily_aggregator.server.calendar import ZoneRules
from daily_aggregator.server.errors import InvalidArgument, echo
from daily_aggregator.server.queries import query

_MARGIN = timedelta(days=40)
"""Buckets reach past a range by up to a month: rules are loaded this much further."""

_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")
MAX_OFFSET_HOURS = 14


@dataclass(frozen=True)
class TimeZone:
    """A validated time zone: `name` as the caller gave it, `postgres` as PostgreSQL reads it."""

    name: str
    postgres: str


class TimeZones:
    """The zones PostgreSQL knows, read once, and the parser of caller-supplied names."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        # (zone, year) -> offset at the year's start, then (change, offset) within it.
        self._years: dict[tuple[str, int], list[tuple[datetime, timedelta]]] = {}

    @classmethod
    async def load(cls, pool: asyncpg.Pool) -> TimeZones:
        """Read the zone names of the database behind `pool`."""
        rows = await pool.fetch(query("time_zone_names"))
        return cls(frozenset(row["name"] for row in rows))

    def parse(self, name: str, field: str = "time_zone") -> TimeZone:
        """Validate an IANA name or ISO 8601 offset; empty means UTC.

        Offsets keep the ISO sign ("+09:00" is east of UTC); PostgreSQL reads
        offset strings with the POSIX sign, so the sign is flipped for it.
        """
        if not name:
            return TimeZone("UTC", "UTC")
        match = _OFFSET.fullmatch(name)
        if match:
            sign, hours, minutes = match[1], int(match[2]), int(match[3])
            if minutes > 59 or hours * 60 + minutes > MAX_OFFSET_HOURS * 60:
                raise InvalidArgument(
                    field, f"offset {echo(name)} is out of range -14:00 to +14:00"
                )
            flipped = "-" if sign == "+" else "+"
            return TimeZone(name, f"{flipped}{hours:02d}:{minutes:02d}")
        if name in self._names:
            return TimeZone(name, name)
        raise InvalidArgument(
            field,
            f"unknown time zone {echo(name)}: use an IANA name such as 'Asia/Tokyo' "
            "or an offset such as '+09:00'",
        )

    async def rules(
        self, conn: asyncpg.Connection, zone: TimeZone, lo: datetime, hi: datetime
    ) -> ZoneRules:
        """PostgreSQL's offsets of `zone` from well before `lo` to well after `hi`.

        Read a UTC year at a time and kept: zone rules do not change while a server runs.
        """
        first, last = (lo - _MARGIN).year, (hi + _MARGIN).year
        missing = [y for y in range(first, last + 1) if (zone.postgres, y) not in self._years]
        if missing:
            await self._load(conn, zone.postgres, missing[0], missing[-1])
        changes: list[datetime] = []
        offsets: list[timedelta] = []
        for year in range(first, last + 1):
            for at, offset in self._years[zone.postgres, year]:
                if not offsets or offset != offsets[-1]:
                    changes.append(at)
                    offsets.append(offset)
        return ZoneRules(changes, offsets, until=_year_start(last + 1))

    async def _load(self, conn: asyncpg.Connection, zone: str, first: int, last: int) -> None:
        rows = await conn.fetch(
            query("zone_changes"), _year_start(first), _year_start(last + 1), zone
        )
        i, current = 0, rows[0]["utc_offset"]
        for year in range(first, last + 1):
            start, end = _year_start(year), _year_start(year + 1)
            while i < len(rows) and rows[i]["at"] <= start:
                current = rows[i]["utc_offset"]
                i += 1
            entries = [(start, current)]
            while i < len(rows) and rows[i]["at"] < end:
                current = rows[i]["utc_offset"]
                entries.append((rows[i]["at"], current))
                i += 1
            self._years[zone, year] = entries


def _year_start(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=UTC)
