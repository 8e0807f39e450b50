"""`summary`, `uniques` and `breakdown`: the questions, as tables or JSON."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from daily_aggregator.client import (
    BreakdownRow,
    Granularity,
    SummaryResult,
    UniquesResult,
)
from daily_aggregator.client.cli._common import (
    DIMENSIONS,
    EXIT_OK,
    METRICS,
    UsageError,
    client_for,
)

DEFAULT_TARGET = "127.0.0.1:50051"
# --------------------------------------------------------------------------- questions


@dataclass
class _Range:
    start: datetime
    end: datetime
    time_zone: str


def _parse_time(text: str, flag: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag}: not an ISO 8601 time: {text!r}") from None


def _offset_name(offset: timedelta, flag: str) -> str:
    if offset % timedelta(minutes=1):
        raise UsageError(f"{flag}: a UTC offset with seconds is no time zone; pass --tz")
    if not offset:
        return "UTC"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _zone(name: str) -> tzinfo | None:
    """The tzinfo of a time zone as the service spells it; None when unknown here."""
    if name in ("", "UTC"):
        return UTC
    match = re.fullmatch(r"([+-])(\d\d):(\d\d)", name)
    if match:
        offset = timedelta(hours=int(match[2]), minutes=int(match[3]))
        return timezone(-offset if match[1] == "-" else offset)
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):
        return None


def _range(args: argparse.Namespace) -> _Range:
    start = _parse_time(args.start, "--from") if args.start else None
    end = _parse_time(args.end, "--to") if args.end else None
    time_zone: str = args.tz
    if time_zone is None:
        offset = start.utcoffset() if start is not None else None
        time_zone = _offset_name(offset, "--from") if offset is not None else "UTC"
    zone = _zone(time_zone)

    def aware(when: datetime, flag: str) -> datetime:
        if when.utcoffset() is not None:
            return when
        if zone is None:
            raise UsageError(f"{flag}: give a UTC offset; time zone {time_zone!r} is unknown here")
        return when.replace(tzinfo=zone)

    end = aware(end, "--to") if end is not None else datetime.now(UTC)
    start = aware(start, "--from") if start is not None else end - timedelta(days=14)
    return _Range(start, end, time_zone)


def summary_command(args: argparse.Namespace) -> int:
    when = _range(args)
    with client_for(args) as client:
        result = client.summary(
            when.start,
            when.end,
            user_id=args.user,
            granularity=Granularity(args.granularity),
            time_zone=when.time_zone,
            moving_average_window=args.window,
            countries=tuple(args.country),
            exclude_countries=tuple(args.exclude_country),
        )
    if args.json:
        _print_json(_summary_json(result))
    else:
        who = f"learner {args.user}" if args.user else "all learners"
        print_summary(result, f"Summary of {who}, per {args.granularity}, {_span(when)}")
    return EXIT_OK


def uniques_command(args: argparse.Namespace) -> int:
    when = _range(args)
    with client_for(args) as client:
        result = client.uniques(
            when.start,
            when.end,
            granularity=Granularity(args.granularity),
            time_zone=when.time_zone,
            countries=tuple(args.country),
            exclude_countries=tuple(args.exclude_country),
        )
    if args.json:
        _print_json(_uniques_json(result))
    else:
        print_uniques(result, f"Unique learners per {args.granularity}, {_span(when)}")
    return EXIT_OK


def breakdown_command(args: argparse.Namespace) -> int:
    when = _range(args)
    with client_for(args) as client:
        rows = client.breakdown(
            when.start,
            when.end,
            dimension=DIMENSIONS[args.by],
            metric=METRICS[args.metric],
            limit=args.limit,
            countries=tuple(args.country),
            exclude_countries=tuple(args.exclude_country),
        )
    if args.json:
        _print_json(_breakdown_json(rows))
    else:
        title = f"Top {'learners' if args.by == 'user' else 'countries'} by {args.metric}"
        print_breakdown(rows, args.by, args.metric, f"{title}, {_span(when)}")
    return EXIT_OK


def _span(when: _Range) -> str:
    return f"{when.start.isoformat()} to {when.end.isoformat()} ({when.time_zone})"


# --------------------------------------------------------------------------- output


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _summary_json(result: SummaryResult) -> dict[str, Any]:
    return {
        "time_zone": result.time_zone,
        "buckets": [
            {
                "start_time": _iso(b.start_time),
                "local_start": b.local_start_text,
                "events": b.events,
                "word_count": b.word_count,
                "study_seconds": b.study_seconds,
                "average_word_count": b.average_word_count,
                "average_study_seconds": b.average_study_seconds,
                "word_count_sma": b.word_count_sma,
                "study_seconds_sma": b.study_seconds_sma,
            }
            for b in result.buckets
        ],
        "totals": {
            "events": result.totals.events,
            "word_count": result.totals.word_count,
            "study_seconds": result.totals.study_seconds,
            "active_users": result.totals.active_users,
        },
    }


def _uniques_json(result: UniquesResult) -> dict[str, Any]:
    return {
        "time_zone": result.time_zone,
        "buckets": [
            {
                "start_time": _iso(b.start_time),
                "local_start": b.local_start_text,
                "unique_users": b.unique_users,
            }
            for b in result.buckets
        ],
        "unique_users": result.unique_users,
    }


def _breakdown_json(rows: list[BreakdownRow]) -> dict[str, Any]:
    return {
        "rows": [
            {
                "key": r.key,
                "events": r.events,
                "word_count": r.word_count,
                "study_seconds": r.study_seconds,
                "unique_users": r.unique_users,
            }
            for r in rows
        ]
    }


def _print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=2))


_BLOCKS = " ▏▎▍▌▋▊▉█"
_SPARKS = "▁▂▃▄▅▆▇█"


def _bar(value: float, largest: float, width: int = 20) -> str:
    """A horizontal bar of `value` against `largest`, in eighths of a character."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    return "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")


def _sparkline(values: Sequence[float]) -> str:
    largest = max(values, default=0)
    if largest <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(7, math.floor(v / largest * 7.999))] for v in values)


def _table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    footer: str = "",
    *,
    left: Iterable[int] = (0,),
) -> None:
    """Print an aligned table: a rich Table on a terminal, plain text otherwise.

    Columns in `left` and the last one (a bar) are left-aligned, the others right-aligned.
    """
    rows = [list(row) for row in rows]
    left = {*left, len(headers) - 1}
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(caption=footer or None, caption_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i in left else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console = Console()
        console.print(Text(title, style="bold"))
        console.print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    print(title)
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    if footer:
        print(footer)
    print()


def print_summary(result: SummaryResult, title: str) -> None:
    largest = max((b.word_count for b in result.buckets), default=0)
    totals = result.totals
    _table(
        title,
        ["bucket", "events", "words", "seconds", "avg words", "avg s", "words sma", "s sma", ""],
        (
            [
                b.local_start_text,
                f"{b.events:,}",
                f"{b.word_count:,}",
                f"{b.study_seconds:,}",
                f"{b.average_word_count:,.1f}",
                f"{b.average_study_seconds:,.1f}",
                f"{b.word_count_sma:,.1f}",
                f"{b.study_seconds_sma:,.1f}",
                _bar(b.word_count, largest),
            ]
            for b in result.buckets
        ),
        f"total: {totals.events:,} events, {totals.word_count:,} words, "
        f"{totals.study_seconds:,} seconds, {totals.active_users:,} active learners; "
        f"words {_sparkline([b.word_count for b in result.buckets])}",
    )


def print_uniques(result: UniquesResult, title: str) -> None:
    largest = max((b.unique_users for b in result.buckets), default=0)
    _table(
        title,
        ["bucket", "learners", ""],
        (
            [b.local_start_text, f"{b.unique_users:,}", _bar(b.unique_users, largest)]
            for b in result.buckets
        ),
        f"unique learners over the range: {result.unique_users:,}; "
        f"{_sparkline([b.unique_users for b in result.buckets])}",
    )


def print_breakdown(rows: list[BreakdownRow], by: str, metric: str, title: str) -> None:
    attribute = {
        "events": "events",
        "words": "word_count",
        "seconds": "study_seconds",
        "users": "unique_users",
    }[metric]
    largest = max((getattr(r, attribute) for r in rows), default=0)
    _table(
        title,
        ["#", by, "events", "words", "seconds", "learners", ""],
        (
            [
                str(rank),
                r.key or "(none)",
                f"{r.events:,}",
                f"{r.word_count:,}",
                f"{r.study_seconds:,}",
                f"{r.unique_users:,}",
                _bar(getattr(r, attribute), largest),
            ]
            for rank, r in enumerate(rows, start=1)
        ),
        "" if rows else "no events in the range",
        left=(1,),
    )
