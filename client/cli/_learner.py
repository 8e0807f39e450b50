"""`learner USER_ID`: one learner's totals, activity and streaks."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from daily_aggregator.client import LearnerStats
from daily_aggregator.client.cli._common import EXIT_OK, UsageError, client_for
from daily_aggregator.client.cli._reports import _iso, _parse_time, _print_json, _table, _zone


def learner_command(args: argparse.Namespace) -> int:
    time_zone: str = args.tz or "UTC"
    as_of = _parse_time(args.as_of, "--as-of") if args.as_of else None
    if as_of is not None and as_of.utcoffset() is None:
        zone = _zone(time_zone)
        if zone is None:
            raise UsageError(f"--as-of: give a UTC offset; time zone {time_zone!r} is unknown here")
        as_of = as_of.replace(tzinfo=zone)
    with client_for(args) as client:
        stats = client.learner_stats(args.user_id, time_zone=time_zone, as_of=as_of)
    if args.json:
        _print_json(_json(stats))
        return EXIT_OK
    when = as_of.isoformat() if as_of is not None else "now"
    _table(
        f"Learner {stats.user_id}, local dates in {stats.time_zone}, as of {when}",
        ["", "value"],
        [
            ["events", f"{stats.events:,}"],
            ["words", f"{stats.word_count:,}"],
            ["seconds studied", f"{stats.study_seconds:,}"],
            ["first active", _when(stats.first_active)],
            ["last active", _when(stats.last_active)],
            ["active days", f"{stats.active_days:,}"],
            ["current streak", _days(stats.current_streak_days)],
            ["longest streak", _longest(stats)],
        ],
        "" if stats.events else "no events before as-of: an unknown learner gets zeros",
        left=(0, 1),
    )
    return EXIT_OK


def _when(value: datetime | None) -> str:
    return _iso(value) if value is not None else "-"


def _days(days: int) -> str:
    return f"{days:,} day" + ("" if days == 1 else "s")


def _longest(stats: LearnerStats) -> str:
    if stats.longest_streak_start is None or stats.longest_streak_end is None:
        return "-"
    return (
        f"{_days(stats.longest_streak_days)}, {stats.longest_streak_start.isoformat()}"
        f" to {stats.longest_streak_end.isoformat()}"
    )


def _json(stats: LearnerStats) -> dict[str, Any]:
    return {
        "user_id": stats.user_id,
        "time_zone": stats.time_zone,
        "first_active": _when(stats.first_active) if stats.first_active else None,
        "last_active": _when(stats.last_active) if stats.last_active else None,
        "events": stats.events,
        "word_count": stats.word_count,
        "study_seconds": stats.study_seconds,
        "active_days": stats.active_days,
        "current_streak_days": stats.current_streak_days,
        "longest_streak_days": stats.longest_streak_days,
        "longest_streak_start": _date(stats.longest_streak_start),
        "longest_streak_end": _date(stats.longest_streak_end),
    }


def _date(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
