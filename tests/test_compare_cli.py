"""Rolling actives and the previous period through the Python client and the command line."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from daily_aggregator.client import (
    AsyncClient,
    BreakdownRow,
    Client,
    Dimension,
    Event,
    Metric,
)
from daily_aggregator.server.app import RunningServer
from tests.support import cli
from tests.test_cli import U1, U2, U3, jsonl

FROM = datetime(2025, 6, 3, tzinfo=UTC)
TO = datetime(2025, 6, 5, tzinfo=UTC)
SPAN = ["--from", "2025-06-03T00:00:00Z", "--to", "2025-06-05T00:00:00Z"]

# Two days, June 3 and 4, and the two days before them.
EVENTS = [
    {"user_id": U1, "occurred_at": "2025-06-01T08:00:00Z", "word_count": 10, "study_seconds": 60,
     "country": "JP"},
    {"user_id": U1, "occurred_at": "2025-06-01T11:00:00Z", "word_count": 20, "study_seconds": 60,
     "country": "JP"},
    {"user_id": U2, "occurred_at": "2025-06-02T10:00:00Z", "word_count": 30, "study_seconds": 60,
     "country": "US"},
    {"user_id": U1, "occurred_at": "2025-06-03T10:00:00Z", "word_count": 40, "study_seconds": 60,
     "country": "JP"},
    {"user_id": U3, "occurred_at": "2025-06-04T10:00:00Z", "word_count": 80, "study_seconds": 60},
]  # fmt: skip


def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


async def ingested(server: RunningServer, tmp_path: Path) -> str:
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(*EVENTS))
    run = await cli("ingest", "--target", target(server), str(path))
    assert run.code == 0, run.err
    return target(server)


def table_rows(out: str) -> dict[str, list[str]]:
    """The rows of a plain-text table by their first cell."""
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


async def test_the_clients_give_rolling_counts_and_the_previous_period(
    server: RunningServer, tmp_path: Path
) -> None:
    await ingested(server, tmp_path)
    async with AsyncClient(target(server)) as client:
        plain = await client.uniques(FROM, TO)
        assert [b.rolling_unique_users for b in plain.buckets] == [None, None]
        assert (plain.previous_start_time, plain.previous_unique_users) == (None, None)

        rolled = await client.uniques(FROM, TO, rolling_days=2, compare_previous=True)
        assert [(b.unique_users, b.rolling_unique_users) for b in rolled.buckets] == [
            (1, 2),
            (1, 2),
        ]
        assert (rolled.previous_start_time, rolled.previous_end_time) == (
            FROM - timedelta(days=2),
            FROM,
        )
        assert [b.rolling_unique_users for b in rolled.previous_buckets] == [1, 2]
        assert rolled.previous_unique_users == 2

        summary = await client.summary(FROM, TO, compare_previous=True)
        assert [b.word_count for b in summary.previous_buckets] == [30, 30]
        assert summary.previous_totals is not None
        assert (summary.previous_totals.events, summary.previous_totals.word_count) == (3, 60)
        assert (await client.summary(FROM, TO)).previous_totals is None

        rows = await client.breakdown(
            FROM, TO, dimension=Dimension.USER, metric=Metric.WORD_COUNT, compare_previous=True
        )
        assert [(r.key, r.word_count) for r in rows] == [(U3, 80), (U1, 40)]
        assert [r.previous for r in rows] == [
            BreakdownRow(U3, 0, 0, 0, 0),
            BreakdownRow(U1, 2, 30, 120, 1),
        ]
        plain_rows = await client.breakdown(FROM, TO, dimension=Dimension.USER)
        assert all(r.previous is None for r in plain_rows)

    def sync_calls() -> tuple[list[int | None], int | None]:
        with Client(target(server)) as client:
            client.record([Event(U2, 1, 1, occurred_at=FROM + timedelta(hours=1))])
            answer = client.uniques(FROM, TO, rolling_days=1, compare_previous=True)
            return [b.rolling_unique_users for b in answer.buckets], answer.previous_unique_users

    assert await asyncio.to_thread(sync_calls) == ([2, 1], 2)


async def test_uniques_rolling_and_compare_as_a_table_and_as_json(
    server: RunningServer, tmp_path: Path
) -> None:
    address = await ingested(server, tmp_path)
    table = await cli("uniques", "--target", address, *SPAN, "--rolling", "2", "--compare")
    assert table.code == 0, table.err
    assert "compared with 2025-06-01T00:00:00+00:00 to 2025-06-03T00:00:00+00:00" in table.out
    header = next(line for line in table.out.splitlines() if line.startswith("bucket"))
    assert header.split() == ["bucket", "learners", "previous", "change", "2-day", "prev",
                              "2-day", "change"]  # fmt: skip
    rows = table_rows(table.out)
    # learners, previous, change; 2-day, previous 2-day, change
    assert rows["2025-06-03T00:00:00+00:00"][:6] == ["1", "1", "0.0%", "2", "1", "+100.0%"]
    assert rows["2025-06-04T00:00:00+00:00"][:6] == ["1", "1", "0.0%", "2", "2", "0.0%"]
    assert "previous period: 2 (0.0%)" in table.out

    run = await cli("uniques", "--target", address, *SPAN, "--rolling", "2", "--compare", "--json")
    result = json.loads(run.out)
    assert [
        (b["unique_users"], b["rolling_unique_users"], b["change"]) for b in result["buckets"]
    ] == [
        (1, 2, {"unique_users": 0.0, "rolling_unique_users": 100.0}),
        (1, 2, {"unique_users": 0.0, "rolling_unique_users": 0.0}),
    ]
    assert result["previous_start_time"] == "2025-06-01T00:00:00Z"
    assert result["previous_end_time"] == "2025-06-03T00:00:00Z"
    assert [b["rolling_unique_users"] for b in result["previous_buckets"]] == [1, 2]
    assert (result["previous_unique_users"], result["unique_users_change"]) == (2, 0.0)


async def test_summary_and_breakdown_compare_as_tables_and_as_json(
    server: RunningServer, tmp_path: Path
) -> None:
    address = await ingested(server, tmp_path)
    table = await cli("summary", "--target", address, *SPAN, "--compare")
    assert table.code == 0, table.err
    rows = table_rows(table.out)
    # events, words, seconds, 4 averages, then the previous words and the change
    assert rows["2025-06-03T00:00:00+00:00"][7:9] == ["30", "+33.3%"]
    assert rows["2025-06-04T00:00:00+00:00"][7:9] == ["30", "+166.7%"]
    assert (
        "previous period: 3 events (-33.3%), 60 words (+100.0%), 180 seconds (-33.3%), "
        "2 active learners (0.0%)"
    ) in table.out

    result = json.loads(
        (await cli("summary", "--target", address, *SPAN, "--compare", "--json")).out
    )
    assert [b["change"] for b in result["buckets"]] == [
        {"events": -50.0, "word_count": (40 - 30) / 30 * 100, "study_seconds": -50.0},
        {"events": 0.0, "word_count": (80 - 30) / 30 * 100, "study_seconds": 0.0},
    ]
    assert result["previous_totals"] == {
        "events": 3,
        "word_count": 60,
        "study_seconds": 180,
        "active_users": 2,
    }
    assert result["totals_change"]["word_count"] == 100.0

    ranked = await cli(
        "breakdown", "--target", address, *SPAN, "--by", "country", "--metric", "words",
        "--compare",
    )  # fmt: skip
    assert ranked.code == 0, ranked.err
    lines = [line.split() for line in ranked.out.splitlines() if re.match(r"\s*\d+ ", line)]
    # rank, key, events, words, seconds, learners, previous words, change
    assert [line[:8] for line in lines] == [
        ["1", "(none)", "1", "80", "60", "1", "0", "new"],
        ["2", "JP", "1", "40", "60", "1", "30", "+33.3%"],
    ]
    run = await cli(
        "breakdown", "--target", address, *SPAN, "--by", "country", "--compare", "--json"
    )
    result = json.loads(run.out)
    assert [(r["key"], r["change"]["word_count"]) for r in result["rows"]] == [
        ("", None),
        ("JP", (40 - 30) / 30 * 100),
    ]
    assert [(r["key"], r["word_count"]) for r in result["previous_rows"]] == [("", 0), ("JP", 30)]
    assert result["previous_start_time"] == "2025-06-01T00:00:00Z"
    assert result["previous_end_time"] == "2025-06-03T00:00:00Z"


async def test_rolling_and_compare_refusals_are_one_line_with_exit_code_2(
    server: RunningServer,
) -> None:
    run = await cli("uniques", "--target", target(server), *SPAN, "--rolling", "400")
    assert run.code == 2
    assert run.err.startswith("daily-aggregator uniques: refused: rolling_days: ")
    run = await cli(
        "uniques", "--target", target(server), *SPAN, "--rolling", "7", "--granularity", "week"
    )
    assert run.code == 2
    assert "refused: rolling_days: needs daily buckets" in run.err
    run = await cli("uniques", "--target", target(server), *SPAN, "--rolling", "-1")
    assert run.code == 2
    assert "not a number of days: '-1'" in run.err
    early = ["--from", "1900-01-01T00:00:00Z", "--to", "1900-01-02T00:00:00Z", "--compare"]
    run = await cli("summary", "--target", target(server), *early)
    assert run.code == 2
    assert run.err.startswith("daily-aggregator summary: refused: compare_previous: ")
