"""One learner's activity over spans of time, from that learner's rollups, events and pending log.

Like `activity`, readers run inside `database.snapshot`. A learner's spans are tiled
with whole UTC hours of `learner_hours`; edges shorter than an hour are read from
the learner's own events.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from daily_aggregator.server import units
from daily_aggregator.server.activity import Span, Sums
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import Countries

__all__ = ["sums"]

_UNITS = ("hour",)


async def sums(
    conn: asyncpg.Connection, user_id: uuid.UUID, spans: Sequence[Span], countries: Countries
) -> list[Sums]:
    """The learner's sums in each span; `spans` are consecutive."""
    tiles = units.Tiles.of(spans, _UNITS)
    found = [Sums() for _ in spans]
    for row in await conn.fetch(
        query("learner_bucket_sums"),
        user_id,
        tiles.runs.froms,
        tiles.runs.tos,
        tiles.edge_starts,
        tiles.edge_ends,
        spans[0][0],
        spans[-1][1],
        [lo for lo, _ in spans],
        countries.only,
        countries.excluded,
    ):
        found[row["bucket"] - 1].add(row)
    return found
