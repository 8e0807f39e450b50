"""The `daily-aggregator` command line: serve, ingest, summary, uniques, breakdown, demo.

The library (`daily_aggregator.client`) never imports this module; only this module
imports `rich`. Exit codes:

    0  everything done (ingest: every event was stored or was already stored)
    1  partly done (ingest: some lines were bad, rejected or conflicting) or a service failure
    2  usage error: a bad flag, a missing file, or a request the service refused
    3  the service cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import csv
import io
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from daily_aggregator.client import (
    AsyncClient,
    BreakdownRow,
    Client,
    DailyAggregatorError,
    DeadlineExceededError,
    Dimension,
    Event,
    Granularity,
    InvalidArgumentError,
    Metric,
    RecordResult,
    SummaryResult,
    UnavailableError,
    UniquesResult,
)

DEFAULT_TARGET = "127.0.0.1:50051"

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

INGEST_NAMESPACE = uuid.UUID("5b0f6a52-3c1e-5d8a-9a47-6f2d1e0c7b91")
"""uuid5 namespace of the idempotency keys derived for lines that carry none."""

_METRICS = {
    "events": Metric.EVENTS,
    "words": Metric.WORD_COUNT,
    "seconds": Metric.STUDY_SECONDS,
    "users": Metric.UNIQUE_USERS,
}
_DIMENSIONS = {"user": Dimension.USER, "country": Dimension.COUNTRY}
_SHOWN_PROBLEMS = 20
_UINT32 = 2**32


class UsageError(Exception):
    """A mistake in what the user asked for; reported in one line, exit code 2."""


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `daily-aggregator` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        return serve_command(args[1:])
    parser = _parser()
    parsed = parser.parse_args(args)
    command: Callable[[argparse.Namespace], int] = parsed.run
    target: str = getattr(parsed, "target", DEFAULT_TARGET)
    try:
        return command(parsed)
    except UsageError as exc:
        _fail(f"daily-aggregator {parsed.command}: error: {exc}")
        return EXIT_USAGE
    except InvalidArgumentError as exc:
        reasons = [f"{v.field}: {v.description}" for v in exc.field_violations] or [exc.message]
        _fail(f"daily-aggregator {parsed.command}: refused: {'; '.join(reasons)}")
        return EXIT_USAGE
    except (UnavailableError, DeadlineExceededError) as exc:
        _fail(f"cannot reach Daily Aggregator at {target}: {_first_line(exc.message)}")
        return EXIT_UNREACHABLE
    except DailyAggregatorError as exc:
        _fail(f"daily-aggregator {parsed.command}: {exc.code.name}: {_first_line(exc.message)}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_PARTIAL


def serve_command(argv: Sequence[str]) -> int:
    """`daily-aggregator serve FLAGS`: run the service until SIGTERM or SIGINT."""
    import asyncio
    import logging

    from daily_aggregator.server.app import serve
    from daily_aggregator.server.config import Settings

    settings = Settings.from_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daily-aggregator",
        description="Learning-activity aggregation over gRPC: run the service, feed it, ask it.",
        epilog="Run `daily-aggregator COMMAND --help` for a command's options. Exit codes: "
        "0 ok, 1 partly done, 2 usage error, 3 service unreachable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="run the gRPC service (see `daily-aggregator serve --help`)",
        add_help=False,
    )

    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--target",
        default=os.environ.get("DAILY_AGGREGATOR_TARGET") or DEFAULT_TARGET,
        help=f"HOST:PORT of the service (env DAILY_AGGREGATOR_TARGET; default {DEFAULT_TARGET})",
    )
    connection.add_argument(
        "--token",
        default=os.environ.get("DAILY_AGGREGATOR_TOKEN") or None,
        help="bearer token sent with every call (env DAILY_AGGREGATOR_TOKEN)",
    )

    ingest = commands.add_parser(
        "ingest",
        parents=[connection],
        help="stream events from JSON Lines or CSV files",
        description="Stream events from JSON Lines or CSV files (`-` is stdin). A line without "
        "idempotency_key gets one derived from its content, so ingesting a file again "
        "stores nothing twice.",
    )
    ingest.add_argument("files", nargs="+", metavar="FILE", help="a .jsonl/.ndjson/.csv file or -")
    ingest.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        help="format of every FILE (default: by extension; stdin is jsonl)",
    )
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(run=_ingest)

    questions = argparse.ArgumentParser(add_help=False, parents=[connection])
    questions.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="start of the range, ISO 8601, inclusive (default: 14 days before --to)",
    )
    questions.add_argument(
        "--to",
        dest="end",
        metavar="TIME",
        help="end of the range, ISO 8601, exclusive (default: now)",
    )
    questions.add_argument(
        "--tz",
        help="time zone of the buckets: IANA name or +HH:MM (default: --from's UTC offset, "
        "else UTC); times without an offset are read in it",
    )
    questions.add_argument(
        "--country", action="append", default=[], help="keep only this country (repeatable)"
    )
    questions.add_argument(
        "--exclude-country", action="append", default=[], help="drop this country (repeatable)"
    )
    questions.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bucketed = argparse.ArgumentParser(add_help=False)
    bucketed.add_argument(
        "--granularity", choices=[g.value for g in Granularity], default="day", help="bucket size"
    )

    summary = commands.add_parser(
        "summary",
        parents=[questions, bucketed],
        help="events, words and study time per bucket",
        description="Events, words and study time per calendar bucket, with moving averages.",
    )
    summary.add_argument("--user", help="one learner's user_id (default: everyone)")
    summary.add_argument(
        "--window", type=int, default=3, help="buckets in each moving average (default 3)"
    )
    summary.set_defaults(run=_summary)

    uniques = commands.add_parser(
        "uniques",
        parents=[questions, bucketed],
        help="distinct learners per bucket",
        description="Distinct active learners per calendar bucket and over the range.",
    )
    uniques.set_defaults(run=_uniques)

    breakdown = commands.add_parser(
        "breakdown",
        parents=[questions],
        help="top users or countries by a metric",
        description="Users or countries ranked by a metric over the range.",
    )
    breakdown.add_argument("--by", choices=sorted(_DIMENSIONS), default="user", help="group by")
    breakdown.add_argument("--metric", choices=list(_METRICS), default="events", help="rank by")
    breakdown.add_argument("--limit", type=int, default=10, help="rows to show (default 10)")
    breakdown.set_defaults(run=_breakdown)

    demo = commands.add_parser(
        "demo",
        parents=[connection],
        help="generate a data set, stream it in and ask about it",
        description="Stream a generated data set into the service at --target (starting one "
        "on the embedded database when none answers there), then print a summary, daily "
        "uniques and the top learners.",
    )
    demo.add_argument("--events", type=int, default=20_000, help="events to generate")
    demo.add_argument("--users", type=int, help="learners (default: events / 40, at least 5)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        help="data directory of a service the demo starts (default: a temporary directory)",
    )
    demo.add_argument("--seed", type=int, help="random seed of the generated data")
    demo.set_defaults(run=_demo)
    return parser


def _client(args: argparse.Namespace) -> Client:
    return Client(args.target, token=args.token)


def _fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


# --------------------------------------------------------------------------- ingest


@dataclass
class _Problem:
    """A line that was not stored: bad in the file, rejected or conflicting."""

    source: int
    line: int
    reason: str


@dataclass
class _Source:
    """One input: a path or stdin, read line by line while counting bytes."""

    name: str
    stream: io.BufferedIOBase | Any
    format: str
    size: int | None
    bytes_read: int = 0

    def lines(self) -> Iterator[bytes]:
        for raw in self.stream:
            self.bytes_read += len(raw)
            yield raw


def _open_sources(files: Sequence[str], forced: str | None) -> list[_Source]:
    sources: list[_Source] = []
    try:
        for name in files:
            if name == "-":
                sources.append(_Source("<stdin>", sys.stdin.buffer, forced or "jsonl", None))
                continue
            path = Path(name)
            fmt = forced or _format_of(path)
            try:
                stream = path.open("rb")
            except OSError as exc:
                raise UsageError(f"{name}: {exc.strerror or exc}") from None
            size = path.stat().st_size if path.is_file() else None
            sources.append(_Source(name, stream, fmt, size))
    except BaseException:
        for source in sources:
            if source.stream is not sys.stdin.buffer:
                source.stream.close()
        raise
    return sources


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise UsageError(f"{path}: cannot tell the format from the extension; pass --format jsonl|csv")


def _records(source: _Source) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, fields or the reason the line is bad) for each record of `source`."""
    if source.format == "jsonl":
        for number, raw in enumerate(source.lines(), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except UnicodeDecodeError:
                yield number, "not UTF-8"
                continue
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON: {exc.msg} (column {exc.colno})"
                continue
            if not isinstance(value, dict):
                yield number, "not a JSON object"
                continue
            yield number, value
        return
    text = (raw.decode("utf-8", errors="replace") for raw in source.lines())
    reader = csv.reader(text)
    header: list[str] | None = None
    consumed = 0
    for row in reader:
        number, consumed = consumed + 1, reader.line_num
        if header is None:
            header = [name.strip().lstrip("\ufeff") for name in row]
            missing = [
                n
                for n in ("user_id", "occurred_at", "word_count", "study_seconds")
                if n not in header
            ]
            if missing:
                yield number, f"header lacks column(s) {', '.join(missing)}"
                return
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, f"has {len(row)} fields, the header has {len(header)}"
            continue
        yield number, {name: cell for name, cell in zip(header, row, strict=True) if cell != ""}


def _event_of(fields: dict[str, Any]) -> Event | str:
    """The event a record describes, or why it cannot be one."""
    user_id = fields.get("user_id")
    if not isinstance(user_id, str) or not user_id.strip():
        return "user_id: missing" if user_id in (None, "") else "user_id: not a string"
    user_id = user_id.strip()
    occurred = fields.get("occurred_at")
    if not isinstance(occurred, str) or not occurred.strip():
        return "occurred_at: missing"
    try:
        occurred_at = datetime.fromisoformat(occurred.strip())
    except ValueError:
        return f"occurred_at: not an ISO 8601 time: {occurred!r}"
    if occurred_at.utcoffset() is None:
        return f"occurred_at: {occurred!r} has no UTC offset (add Z or +HH:MM)"
    counts: dict[str, int] = {}
    for name in ("word_count", "study_seconds"):
        value = fields.get(name)
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if value is None:
            return f"{name}: missing"
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _UINT32:
            return f"{name}: not a whole number from 0 to {_UINT32 - 1}: {value!r}"
        counts[name] = value
    country = fields.get("country") or ""
    if not isinstance(country, str):
        return "country: not a string"
    key = fields.get("idempotency_key") or None
    if key is not None and not isinstance(key, str):
        return "idempotency_key: not a string"
    if key is None:
        canonical = {
            "user_id": user_id.lower(),
            "occurred_at": occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "word_count": counts["word_count"],
            "study_seconds": counts["study_seconds"],
            "country": country,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        key = str(uuid.uuid5(INGEST_NAMESPACE, text))
    try:
        return Event(
            user_id=user_id,
            word_count=counts["word_count"],
            study_seconds=counts["study_seconds"],
            occurred_at=occurred_at,
            country=country,
            idempotency_key=key.strip(),
        )
    except (TypeError, ValueError) as exc:
        return str(exc)


def _ingest(args: argparse.Namespace) -> int:
    if sum(name == "-" for name in args.files) > 1:
        raise UsageError("stdin (-) can be read only once")
    sources = _open_sources(args.files, args.format)
    sizes = [s.size for s in sources]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    problems: list[_Problem] = []
    origin_source = array("I")
    origin_line = array("Q")
    try:
        with _progress(total=total) as progress:
            result = asyncio.run(
                _stream_sources(args, sources, progress, problems, origin_source, origin_line)
            )
    finally:
        for source in sources:
            if source.stream is not sys.stdin.buffer:
                source.stream.close()
    for error in result.errors:
        if 0 <= error.index < len(origin_line):
            where = (origin_source[error.index], origin_line[error.index])
        else:
            where = (len(sources), error.index)
        problems.append(_Problem(*where, f"{error.field}: {error.reason}"))
    problems.sort(key=lambda p: (p.source, p.line))
    names = [s.name for s in sources] + ["<event>"]
    bad_lines = len(problems) - len(result.errors)
    if args.json:
        print(json.dumps(_ingest_json(result, bad_lines, problems, names), indent=2))
    else:
        _print_ingest_report(result, bad_lines, problems, names)
    if bad_lines or result.rejected or result.conflicts:
        return EXIT_PARTIAL
    return EXIT_OK


_Chunk = list[tuple[int, int, Event | str]]


class _Stopped(Exception):
    """The streaming side gave up; the reader thread ends."""


def _read_sources(
    sources: Sequence[_Source], progress: _Progress, emit: Callable[[_Chunk | None], None]
) -> None:
    """Parse every source in this (reader) thread, emitting chunks of (source, line, event)."""
    for index, source in enumerate(sources):
        progress.describe(source.name)
        # A pipe may pause for long: hand over every line so nothing waits for the next.
        size = 512 if source.size is not None else 1
        chunk: _Chunk = []
        for number, record in _records(source):
            chunk.append((index, number, record if isinstance(record, str) else _event_of(record)))
            if len(chunk) >= size:
                emit(chunk)
                chunk = []
        if chunk:
            emit(chunk)
    emit(None)


async def _stream_sources(
    args: argparse.Namespace,
    sources: Sequence[_Source],
    progress: _Progress,
    problems: list[_Problem],
    origin_source: array[int],
    origin_line: array[int],
) -> RecordResult:
    """Stream what a reader thread parses through the client's writer; the final totals.

    Parsing runs in a daemon thread, so that a slow pipe never holds back batches already
    queued and a failure never waits for the pipe's end.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[_Chunk | BaseException | None] = asyncio.Queue(maxsize=64)
    stopped = threading.Event()

    def put(item: _Chunk | BaseException | None) -> None:
        if stopped.is_set():
            raise _Stopped
        try:
            asyncio.run_coroutine_threadsafe(chunks.put(item), loop).result()
        except (concurrent.futures.CancelledError, RuntimeError):
            raise _Stopped from None

    def read() -> None:
        try:
            _read_sources(sources, progress, put)
        except _Stopped:
            pass
        except BaseException as exc:
            with contextlib.suppress(_Stopped):
                put(exc)

    threading.Thread(target=read, name="daily-aggregator-ingest", daemon=True).start()
    try:
        async with AsyncClient(args.target, token=args.token) as client:
            async with client.writer() as writer:
                while (chunk := await chunks.get()) is not None:
                    if isinstance(chunk, BaseException):
                        raise chunk
                    for index, number, event in chunk:
                        if isinstance(event, str):
                            problems.append(_Problem(index, number, event))
                            continue
                        await writer.write(event)
                        origin_source.append(index)
                        origin_line.append(number)
                    progress.advance(len(origin_line), sum(s.bytes_read for s in sources))
            progress.advance(len(origin_line), sum(s.bytes_read for s in sources), force=True)
            return writer.totals
    finally:
        stopped.set()
        while not chunks.empty():
            chunks.get_nowait()


def _ingest_json(
    result: RecordResult, bad_lines: int, problems: list[_Problem], names: list[str]
) -> dict[str, Any]:
    return {
        "sent": result.received,
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "conflicts": result.conflicts,
        "rejected": result.rejected,
        "bad_lines": bad_lines,
        "problems": [
            {"file": names[p.source], "line": p.line, "reason": p.reason} for p in problems
        ],
        "problems_truncated": result.errors_truncated,
    }


def _print_ingest_report(
    result: RecordResult, bad_lines: int, problems: list[_Problem], names: list[str]
) -> None:
    print(
        f"sent {result.received:,} events: inserted {result.inserted:,}, "
        f"duplicates {result.duplicates:,}, conflicts {result.conflicts:,}, "
        f"rejected {result.rejected:,}; bad lines {bad_lines:,}"
    )
    for problem in problems[:_SHOWN_PROBLEMS]:
        _fail(f"{names[problem.source]}:{problem.line}: {problem.reason}")
    if len(problems) > _SHOWN_PROBLEMS:
        _fail(f"... and {len(problems) - _SHOWN_PROBLEMS:,} more")
    if result.errors_truncated:
        _fail(f"(the service described only the first {len(result.errors)} rejected events)")
    if result.conflicts:
        _fail(
            f"{result.conflicts:,} event(s) reused a stored idempotency key with other values; "
            "the stored events were kept"
        )


# --------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr with events/s, and an ETA when the size is known."""

    def __init__(self, total: float | None, unit: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        columns: list[Any] = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[events]:>10,} events"),
            TextColumn("{task.fields[rate]:>8,.0f} events/s"),
            TimeElapsedColumn(),
        ]
        if total is not None:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=console, disable=not console.is_terminal)
        self._task = self._progress.add_task(unit, total=total, events=0, rate=0.0)
        self._started = time.monotonic()
        self._shown = 0.0

    def __enter__(self) -> _Progress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def describe(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def advance(self, events: int, completed: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.1 and not force:
            return
        self._shown = now
        rate = events / max(now - self._started, 1e-6)
        self._progress.update(self._task, completed=completed, events=events, rate=rate)


def _progress(total: float | None, unit: str = "events") -> _Progress:
    return _Progress(total, unit)


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


def _summary(args: argparse.Namespace) -> int:
    when = _range(args)
    with _client(args) as client:
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
        _print_summary(result, f"Summary of {who}, per {args.granularity}, {_span(when)}")
    return EXIT_OK


def _uniques(args: argparse.Namespace) -> int:
    when = _range(args)
    with _client(args) as client:
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
        _print_uniques(result, f"Unique learners per {args.granularity}, {_span(when)}")
    return EXIT_OK


def _breakdown(args: argparse.Namespace) -> int:
    when = _range(args)
    with _client(args) as client:
        rows = client.breakdown(
            when.start,
            when.end,
            dimension=_DIMENSIONS[args.by],
            metric=_METRICS[args.metric],
            limit=args.limit,
            countries=tuple(args.country),
            exclude_countries=tuple(args.exclude_country),
        )
    if args.json:
        _print_json(_breakdown_json(rows))
    else:
        title = f"Top {'learners' if args.by == 'user' else 'countries'} by {args.metric}"
        _print_breakdown(rows, args.by, args.metric, f"{title}, {_span(when)}")
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


def _print_summary(result: SummaryResult, title: str) -> None:
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


def _print_uniques(result: UniquesResult, title: str) -> None:
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


def _print_breakdown(rows: list[BreakdownRow], by: str, metric: str, title: str) -> None:
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


# --------------------------------------------------------------------------- demo


_COUNTRIES = [("JP", 30), ("US", 25), ("DE", 12), ("BR", 10), ("IN", 10), ("FR", 8), ("", 5)]


@dataclass
class _Learner:
    user_id: str
    country: str
    weight: float
    hour: float


@dataclass
class _DemoData:
    """A generated data set: learners of skewed activity, sessions minutes apart."""

    events: list[Event]
    first: datetime
    learners: list[_Learner] = field(default_factory=list)


def _generate(count: int, users: int, rng: random.Random, now: datetime) -> _DemoData:
    countries, weights = zip(*_COUNTRIES, strict=True)
    learners = [
        _Learner(
            user_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            country=rng.choices(countries, weights)[0],
            weight=rng.paretovariate(1.2),
            hour=rng.gauss(19, 3) % 24,
        )
        for _ in range(users)
    ]
    days = 21
    first = now - timedelta(days=days)
    activity = [learner.weight for learner in learners]
    events: list[Event] = []
    while len(events) < count:
        learner = rng.choices(learners, activity)[0]
        day = now.date() - timedelta(days=min(days - 1, int(rng.expovariate(1 / 7))))
        at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            hours=(learner.hour + rng.gauss(0, 1.5)) % 24
        )
        for _ in range(min(rng.randint(3, 7), count - len(events))):
            if first <= at <= now:
                words = max(1, int(rng.lognormvariate(3, 0.6)))
                events.append(
                    Event(
                        user_id=learner.user_id,
                        word_count=words,
                        study_seconds=min(86_400, int(words * rng.uniform(6, 20))),
                        occurred_at=at,
                        country=learner.country,
                        idempotency_key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    )
                )
            at += timedelta(minutes=rng.uniform(2, 6))
    events.sort(key=lambda e: e.occurred_at or now)
    return _DemoData(events, first, learners)


def _health(target: str, timeout: float) -> str | None:
    """The health status name of the service at `target`, or None when nothing answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.RpcError:
        return None
    finally:
        channel.close()
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class _Service:
    """A `daily-aggregator serve` child process on the embedded database."""

    def __init__(self, target: str, data_dir: Path | None) -> None:
        self._temporary = None if data_dir else tempfile.TemporaryDirectory(prefix="da-demo-")
        self.data_dir = data_dir or Path(self._temporary.name)  # type: ignore[union-attr]
        self.target = target
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daily_aggregator.server",
                "serve",
                "--listen",
                target,
                "--data-dir",
                str(self.data_dir),
                "--grace-seconds",
                "5",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        )

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._die(f"the service exited with code {self.process.returncode}")
            if _health(self.target, 1.0) == "SERVING":
                return
            time.sleep(0.2)
        self._die(f"the service did not become SERVING within {timeout:.0f} s")

    def _die(self, reason: str) -> NoReturn:
        self.stop()
        raise _DemoError(f"{reason}; its log ends:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                self._temporary.cleanup()
            self._temporary = None


class _DemoError(Exception):
    pass


def _demo(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise UsageError("--events must be at least 1")
    users = args.users if args.users is not None else max(5, args.events // 40)
    if users < 1:
        raise UsageError("--users must be at least 1")
    service: _Service | None = None
    if _health(args.target, 2.0) is None:
        service = _Service(args.target, args.data_dir)
        _fail(
            f"nothing answers at {args.target}: starting `daily-aggregator serve` there "
            f"(pid {service.process.pid}, data in {service.data_dir})"
        )
    try:
        if service is not None:
            try:
                service.wait_serving(180)
            except _DemoError as exc:
                _fail(f"daily-aggregator demo: could not start the service: {exc}")
                return EXIT_PARTIAL
        _fail(f"using the service at {args.target}")
        return _run_demo(args, users)
    finally:
        if service is not None:
            service.stop()
            _fail(f"stopped the service it started (pid {service.process.pid})")


def _run_demo(args: argparse.Namespace, users: int) -> int:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    data = _generate(args.events, users, random.Random(args.seed), now)
    with _client(args) as client:
        with _progress(total=len(data.events)) as progress, client.writer() as writer:
            progress.describe("demo")
            for written, event in enumerate(data.events, start=1):
                writer.write(event)
                progress.advance(written, written)
        result = writer.totals
        print(
            f"generated {len(data.events):,} events for {users:,} learners over 3 weeks; "
            f"inserted {result.inserted:,}, duplicates {result.duplicates:,}, "
            f"rejected {result.rejected:,}"
        )
        print()
        today = datetime(now.year, now.month, now.day, tzinfo=UTC)
        start, end = today - timedelta(days=13), today + timedelta(days=1)
        summary = client.summary(start, end, granularity=Granularity.DAY, time_zone="UTC")
        _print_summary(summary, "Summary, daily, last 14 days (UTC)")
        uniques = client.uniques(start, end, granularity=Granularity.DAY, time_zone="UTC")
        _print_uniques(uniques, "Unique learners, daily, last 14 days (UTC)")
        rows = client.breakdown(
            data.first,
            now + timedelta(seconds=1),
            dimension=Dimension.USER,
            metric=Metric.WORD_COUNT,
            limit=10,
        )
        _print_breakdown(rows, "user", "words", "Top 10 learners by words, last 3 weeks")
    return EXIT_OK if not result.rejected else EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
