"""`retention`: cohorts of new learners and their return, as a shaded triangle or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from daily_aggregator.client import Granularity, RetentionCohort, RetentionResult
from daily_aggregator.client.cli._common import EXIT_OK, UsageError, client_for
from daily_aggregator.client.cli._reports import _iso, _print_json, _range, _span, _table, _zone

GRANULARITIES = ("day", "week", "month")
"""The cohort sizes the service offers."""

_SHADES = " ░▒▓█"
"""Plain-text shades of a rate: none, under 25%, under 50%, under 75%, 75% and more."""


def retention_command(args: argparse.Namespace) -> int:
    if args.periods < 1:
        raise UsageError("--periods: must be at least 1")
    when = _range(args)
    with client_for(args) as client:
        result = client.retention(
            when.start,
            when.end,
            granularity=Granularity(args.granularity),
            periods=args.periods,
            time_zone=when.time_zone,
            countries=tuple(args.country),
            exclude_countries=tuple(args.exclude_country),
        )
    if args.json:
        _print_json(_retention_json(result))
    else:
        print_retention(
            result,
            args.granularity,
            f"New learners per {args.granularity} and how many came back, {_span(when)}",
        )
    return EXIT_OK


def _retention_json(result: RetentionResult) -> dict[str, Any]:
    return {
        "time_zone": result.time_zone,
        "cohorts": [
            {
                "start_time": _iso(c.start_time),
                "local_start": c.local_start_text,
                "users": c.users,
                "retained": c.retained,
            }
            for c in result.cohorts
        ],
    }


def _begun(result: RetentionResult, unit: str, now: datetime) -> list[list[bool]]:
    """Per cohort and period, whether that bucket had begun by `now`.

    Buckets of later cohorts have their exact start; past the last cohort the start is
    its local wall time stepped by whole units, which is all a display needs.
    """
    cohorts = result.cohorts
    zone = _zone(result.time_zone)
    periods = len(cohorts[0].retained) if cohorts else 0
    begun = []
    for i, cohort in enumerate(cohorts):
        row = []
        for k in range(periods):
            if i + k < len(cohorts):
                start = cohorts[i + k].start_time
            else:
                wall = _step(unit, cohort.local_start.replace(tzinfo=None), k)
                start = wall.replace(tzinfo=zone or cohort.local_start.tzinfo)
            row.append(start <= now)
        begun.append(row)
    return begun


def _step(unit: str, wall: datetime, count: int) -> datetime:
    if unit == "day":
        return wall + timedelta(days=count)
    if unit == "week":
        return wall + timedelta(weeks=count)
    years, month = divmod(wall.month - 1 + count, 12)
    return wall.replace(year=wall.year + years, month=month + 1)


def _overall(cohorts: Sequence[RetentionCohort], begun: list[list[bool]]) -> list[float | None]:
    """Per period, the share of every cohort's learners back then, over the cohorts whose
    bucket of that period has begun; None where none has."""
    periods = len(cohorts[0].retained) if cohorts else 0
    shares: list[float | None] = []
    for k in range(periods):
        counted = [c for c, row in zip(cohorts, begun, strict=True) if row[k]]
        users = sum(c.users for c in counted)
        shares.append(sum(c.retained[k] for c in counted) / users if users else None)
    return shares


def print_retention(result: RetentionResult, unit: str, title: str) -> None:
    """The cohort triangle: per cohort its new learners, then per period how many of them
    came back and what share, shaded by that share; blank where the bucket has not begun."""
    cohorts = result.cohorts
    begun = _begun(result, unit, datetime.now(UTC))
    periods = len(cohorts[0].retained) - 1 if cohorts else 0
    headers = ["cohort", "new", *(f"+{k}" for k in range(1, periods + 1))]
    overall = ", ".join(
        f"+{k} {share:.0%}"
        for k, share in enumerate(_overall(cohorts, begun))
        if k and share is not None
    )
    footer = (
        f"{sum(c.users for c in cohorts):,} new learners in {len(cohorts)} cohorts; +k is the "
        f"k-th {unit} after the cohort's, blank until it begins; all cohorts: {overall or '-'}"
    )
    if sys.stdout.isatty():
        _print_rich(title, headers, cohorts, begun, footer)
        return
    rows = []
    for cohort, row in zip(cohorts, begun, strict=True):
        cells = [cohort.local_start_text, f"{cohort.users:,}"]
        for k in range(1, periods + 1):
            if not row[k]:
                cells.append("")
            elif not cohort.users:
                cells.append("-")
            else:
                cells.append(_cell(cohort, k))
        rows.append(cells)
    _table(title, [*headers, ""], [[*r, ""] for r in rows], footer)


def _cell(cohort: RetentionCohort, k: int) -> str:
    """Learners back in period k, their share of the cohort, and its shade."""
    rate = cohort.rates[k]
    return f"{cohort.retained[k]:,} {rate:4.0%} {_shade(rate)}"


def _shade(rate: float) -> str:
    if rate <= 0:
        return _SHADES[0]
    return _SHADES[min(4, 1 + int(rate * 4))]


def _print_rich(
    title: str,
    headers: list[str],
    cohorts: Sequence[RetentionCohort],
    begun: list[list[bool]],
    footer: str,
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(caption=footer, caption_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for cohort, row in zip(cohorts, begun, strict=True):
        cells: list[Text | str] = [cohort.local_start_text, f"{cohort.users:,}"]
        for k in range(1, len(headers) - 1):
            if not row[k]:
                cells.append("")
            elif not cohort.users:
                cells.append("-")
            else:
                cells.append(Text(_cell(cohort, k), style=_style(cohort.rates[k])))
        table.add_row(*cells)
    console = Console()
    console.print(Text(title, style="bold"))
    console.print(table)


def _style(rate: float) -> str:
    """Black on a background from pale to strong green as the share grows; black stays
    readable on every step, also where a terminal has only 16 colours."""
    pale, strong = (232, 245, 233), (76, 175, 80)
    r, g, b = (round(p + (s - p) * min(rate, 1.0)) for p, s in zip(pale, strong, strict=True))
    return f"black on rgb({r},{g},{b})"
