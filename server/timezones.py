"""Time zones as callers name them, and as PostgreSQL must be told them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from daily_aggregator.server.errors import InvalidArgument
from daily_aggregator.server.queries import query

_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
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
                raise InvalidArgument(field, f"offset {name!r} is out of range -14:00 to +14:00")
            flipped = "-" if sign == "+" else "+"
            return TimeZone(name, f"{flipped}{hours:02d}:{minutes:02d}")
        if name in self._names:
            return TimeZone(name, name)
        raise InvalidArgument(
            field,
            f"unknown time zone {name!r}: use an IANA name such as 'Asia/Tokyo' "
            "or an offset such as '+09:00'",
        )
