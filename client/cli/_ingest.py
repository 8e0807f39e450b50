"""`daily-aggregator ingest`: JSON Lines and CSV files streamed through the event writer."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import csv
import io
import json
import re
import sys
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daily_aggregator.client import (
    AsyncClient,
    Event,
    RecordResult,
)
from daily_aggregator.client.cli._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    credentials_for,
    fail,
)

DEFAULT_TARGET = "127.0.0.1:50051"
INGEST_NAMESPACE = uuid.UUID("5b0f6a52-3c1e-5d8a-9a47-6f2d1e0c7b91")
"""uuid5 namespace of the idempotency keys derived for lines that carry none."""

_SHOWN_PROBLEMS = 20
_UINT32 = 2**32


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


def ingest_command(args: argparse.Namespace) -> int:
    if sum(name == "-" for name in args.files) > 1:
        raise UsageError("stdin (-) can be read only once")
    sources = _open_sources(args.files, args.format)
    sizes = [s.size for s in sources]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    problems: list[_Problem] = []
    origin_source = array("I")
    origin_line = array("Q")
    try:
        with progress_bar(total=total) as progress:
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
        credentials = credentials_for(args)
        async with AsyncClient(args.target, token=args.token, credentials=credentials) as client:
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
        fail(f"{names[problem.source]}:{problem.line}: {problem.reason}")
    if len(problems) > _SHOWN_PROBLEMS:
        fail(f"... and {len(problems) - _SHOWN_PROBLEMS:,} more")
    if result.errors_truncated:
        fail(f"(the service described only the first {len(result.errors)} rejected events)")
    if result.conflicts:
        fail(
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


def progress_bar(total: float | None, unit: str = "events") -> _Progress:
    return _Progress(total, unit)
