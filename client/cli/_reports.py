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
    SummaryBucket,
    SummaryResult,
    SummaryTotals,
    UniquesBucket,
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
            compare_previous=args.compare,
        )
    if args.json:
        _print_json(_summary_json(result))
    else:
        who = f"learner {args.user}" if args.user else "all learners"
        title = f"Summary of {who}, per {args.granularity}, {_span(when)}"
        print_summary(result, title + _compared(result, when))
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
            rolling_days=args.rolling,
            compare_previous=args.compare,
        )
    if args.json:
        _print_json(_uniques_json(result))
    else:
        title = f"Unique learners per {args.granularity}, {_span(when)}"
        print_uniques(result, title + _compared(result, when), args.rolling)
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
            compare_previous=args.compare,
        )
    if args.json:
        _print_json(_breakdown_json(rows, when if args.compare else None))
    else:
        title = f"Top {'learners' if args.by == 'user' else 'countries'} by {args.metric}"
        title = f"{title}, {_span(when)}"
        if args.compare:
            before = _Range(when.start - (when.end - when.start), when.start, when.time_zone)
            title += f", compared with {_span(before, zone=False)}"
        print_breakdown(rows, args.by, args.metric, title, compare=args.compare)
    return EXIT_OK


def _span(when: _Range, *, zone: bool = True) -> str:
    span = f"{when.start.isoformat()} to {when.end.isoformat()}"
    return f"{span} ({when.time_zone})" if zone else span


def _compared(result: SummaryResult | UniquesResult, when: _Range) -> str:
    """The title's mention of the previous period, when there is one."""
    if result.previous_start_time is None or result.previous_end_time is None:
        return ""
    offset = when.start.tzinfo
    before = _Range(
        result.previous_start_time.astimezone(offset),
        result.previous_end_time.astimezone(offset),
        when.time_zone,
    )
    return f", compared with {_span(before, zone=False)}"


def change(current: int, previous: int) -> str:
    """The change from `previous` to `current` as the tables show it: "+12.5%", "-3.0%",
    "new" when there was nothing before, "0.0%" when there is nothing either time."""
    percent = change_percent(current, previous)
    if percent is None:
        return "new"
    return f"{percent:+.1f}%" if percent else "0.0%"


def change_percent(current: int, previous: int) -> float | None:
    """The change from `previous` to `current` in percent, as JSON gives it: None when there
    was nothing before and is something now, 0.0 when there is nothing either time."""
    if previous == 0:
        return None if current else 0.0
    return (current - previous) / previous * 100


# --------------------------------------------------------------------------- output


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


_SUMMED = ("events", "word_count", "study_seconds")
_COUNTED = ("events", "word_count", "study_seconds", "unique_users")


def _changes(current: object, previous: object | None, fields: Sequence[str]) -> Any:
    """Each field's change in percent from `previous` to `current`; None without `previous`."""
    if previous is None:
        return None
    return {f: change_percent(getattr(current, f), getattr(previous, f)) for f in fields}


def _partner(previous: Sequence[Any], i: int) -> Any:
    """The previous period's bucket at the position of the current one, if it has one."""
    return previous[i] if i < len(previous) else None


def _summary_json(result: SummaryResult) -> dict[str, Any]:
    def bucket(b: SummaryBucket) -> dict[str, Any]:
        return {
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

    def totals(t: SummaryTotals) -> dict[str, Any]:
        return {
            "events": t.events,
            "word_count": t.word_count,
            "study_seconds": t.study_seconds,
            "active_users": t.active_users,
        }

    found: dict[str, Any] = {
        "time_zone": result.time_zone,
        "buckets": [bucket(b) for b in result.buckets],
        "totals": totals(result.totals),
    }
    if result.previous_start_time is None or result.previous_totals is None:
        return found
    for i, b in enumerate(result.buckets):
        found["buckets"][i]["change"] = _changes(b, _partner(result.previous_buckets, i), _SUMMED)
    return found | {
        "previous_start_time": _iso(result.previous_start_time),
        "previous_end_time": _iso(result.previous_end_time or result.previous_start_time),
        "previous_buckets": [bucket(b) for b in result.previous_buckets],
        "previous_totals": totals(result.previous_totals),
        "totals_change": _changes(
            result.totals, result.previous_totals, (*_SUMMED, "active_users")
        ),
    }


def _uniques_json(result: UniquesResult) -> dict[str, Any]:
    rolling = any(b.rolling_unique_users is not None for b in result.buckets)
    counted = ("unique_users", "rolling_unique_users") if rolling else ("unique_users",)

    def bucket(b: UniquesBucket) -> dict[str, Any]:
        found: dict[str, Any] = {
            "start_time": _iso(b.start_time),
            "local_start": b.local_start_text,
            "unique_users": b.unique_users,
        }
        if b.rolling_unique_users is not None:
            found["rolling_unique_users"] = b.rolling_unique_users
        return found

    found: dict[str, Any] = {
        "time_zone": result.time_zone,
        "buckets": [bucket(b) for b in result.buckets],
        "unique_users": result.unique_users,
    }
    if result.previous_start_time is None or result.previous_unique_users is None:
        return found
    for i, b in enumerate(result.buckets):
        found["buckets"][i]["change"] = _changes(b, _partner(result.previous_buckets, i), counted)
    return found | {
        "previous_start_time": _iso(result.previous_start_time),
        "previous_end_time": _iso(result.previous_end_time or result.previous_start_time),
        "previous_buckets": [bucket(b) for b in result.previous_buckets],
        "previous_unique_users": result.previous_unique_users,
        "unique_users_change": change_percent(result.unique_users, result.previous_unique_users),
    }


def _breakdown_json(rows: list[BreakdownRow], when: _Range | None) -> dict[str, Any]:
    def row(r: BreakdownRow) -> dict[str, Any]:
        return {
            "key": r.key,
            "events": r.events,
            "word_count": r.word_count,
            "study_seconds": r.study_seconds,
            "unique_users": r.unique_users,
        }

    found: dict[str, Any] = {"rows": [row(r) for r in rows]}
    if when is None:
        return found
    for shown, r in zip(found["rows"], rows, strict=True):
        shown["change"] = _changes(r, r.previous, _COUNTED)
    return found | {
        "previous_start_time": _iso(when.start - (when.end - when.start)),
        "previous_end_time": _iso(when.start),
        "previous_rows": [row(r.previous) for r in rows if r.previous is not None],
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


def _compare_cells(current: int, previous: int | None) -> list[str]:
    """The "previous" and "change" cells of a row; dashes when the row has no partner."""
    if previous is None:
        return ["-", "-"]
    return [f"{previous:,}", change(current, previous)]


def print_summary(result: SummaryResult, title: str) -> None:
    largest = max((b.word_count for b in result.buckets), default=0)
    totals = result.totals
    compared = result.previous_totals is not None
    headers = ["bucket", "events", "words", "seconds", "avg words", "avg s", "words sma", "s sma"]
    if compared:
        headers += ["prev words", "change"]
    rows = []
    for i, b in enumerate(result.buckets):
        row = [
            b.local_start_text,
            f"{b.events:,}",
            f"{b.word_count:,}",
            f"{b.study_seconds:,}",
            f"{b.average_word_count:,.1f}",
            f"{b.average_study_seconds:,.1f}",
            f"{b.word_count_sma:,.1f}",
            f"{b.study_seconds_sma:,.1f}",
        ]
        if compared:
            partner = _partner(result.previous_buckets, i)
            row += _compare_cells(b.word_count, partner.word_count if partner else None)
        rows.append([*row, _bar(b.word_count, largest)])
    footer = (
        f"total: {totals.events:,} events, {totals.word_count:,} words, "
        f"{totals.study_seconds:,} seconds, {totals.active_users:,} active learners; "
        f"words {_sparkline([b.word_count for b in result.buckets])}"
    )
    if result.previous_totals is not None:
        p = result.previous_totals
        footer += (
            f"\nprevious period: {p.events:,} events ({change(totals.events, p.events)}), "
            f"{p.word_count:,} words ({change(totals.word_count, p.word_count)}), "
            f"{p.study_seconds:,} seconds ({change(totals.study_seconds, p.study_seconds)}), "
            f"{p.active_users:,} active learners ({change(totals.active_users, p.active_users)})"
        )
    _table(title, [*headers, ""], rows, footer)


def print_uniques(result: UniquesResult, title: str, rolling_days: int = 0) -> None:
    # With a rolling window, the bars and the sparkline show the rolling counts.
    plotted = [
        b.unique_users if b.rolling_unique_users is None else b.rolling_unique_users
        for b in result.buckets
    ]
    largest = max(plotted, default=0)
    compared = result.previous_unique_users is not None
    headers = ["bucket", "learners"]
    if compared:
        headers += ["previous", "change"]
    if rolling_days:
        headers.append(f"{rolling_days}-day")
        if compared:
            headers += [f"prev {rolling_days}-day", "change"]
    rows = []
    for i, b in enumerate(result.buckets):
        partner = _partner(result.previous_buckets, i)
        row = [b.local_start_text, f"{b.unique_users:,}"]
        if compared:
            row += _compare_cells(b.unique_users, partner.unique_users if partner else None)
        if b.rolling_unique_users is not None:
            row.append(f"{b.rolling_unique_users:,}")
            if compared:
                before = partner.rolling_unique_users if partner else None
                row += _compare_cells(b.rolling_unique_users, before)
        rows.append([*row, _bar(plotted[i], largest)])
    footer = f"unique learners over the range: {result.unique_users:,}; {_sparkline(plotted)}"
    if result.previous_unique_users is not None:
        footer += (
            f"\nprevious period: {result.previous_unique_users:,} "
            f"({change(result.unique_users, result.previous_unique_users)})"
        )
    _table(title, [*headers, ""], rows, footer)


def print_breakdown(
    rows: list[BreakdownRow], by: str, metric: str, title: str, *, compare: bool = False
) -> None:
    attribute = {
        "events": "events",
        "words": "word_count",
        "seconds": "study_seconds",
        "users": "unique_users",
    }[metric]
    largest = max((getattr(r, attribute) for r in rows), default=0)
    headers = ["#", by, "events", "words", "seconds", "learners"]
    if compare:
        headers += [f"prev {metric}", "change"]
    table = []
    for rank, r in enumerate(rows, start=1):
        row = [
            str(rank),
            r.key or "(none)",
            f"{r.events:,}",
            f"{r.word_count:,}",
            f"{r.study_seconds:,}",
            f"{r.unique_users:,}",
        ]
        if compare:
            before = getattr(r.previous, attribute) if r.previous is not None else None
            row += _compare_cells(getattr(r, attribute), before)
        table.append([*row, _bar(getattr(r, attribute), largest)])
    _table(title, [*headers, ""], table, "" if rows else "no events in the range", left=(1,))
