"""The `daily-aggregator` command line as a user runs it: the console script, a real process."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from daily_aggregator.server.app import RunningServer
from tests.support import Run, cli

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
KEY = "0b9e8c1d-2a3f-4e5d-8c7b-6a5f4e3d2c1b"


@pytest.fixture
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jsonl(*records: dict[str, object] | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


# Four valid events over three users, the data set the question tests ask about.
EVENTS = [
    {"user_id": U1, "occurred_at": "2025-06-01T08:00:00Z", "word_count": 10, "study_seconds": 60,
     "country": "JP"},
    {"user_id": U1, "occurred_at": "2025-06-01T20:00:00+09:00", "word_count": 20,
     "study_seconds": 120, "country": "JP"},
    {"user_id": U2, "idempotency_key": KEY, "occurred_at": "2025-06-02T10:00:00Z",
     "word_count": 30, "study_seconds": 300, "country": "US"},
    {"user_id": U3, "occurred_at": "2025-06-02T20:00:00Z", "word_count": 40, "study_seconds": 400},
]  # fmt: skip


async def ingested(target: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(*EVENTS))
    run = await cli("ingest", "--target", target, str(path))
    assert run.code == 0, run.err


async def test_ingest_jsonl_reports_counts_and_bad_lines_by_file_and_line(
    target: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        jsonl(
            *EVENTS[:3],
            "",
            {**EVENTS[3], "occurred_at": "2025-06-02T20:00:00"},
            {**EVENTS[3], "word_count": 2_000_000},
            "{not json",
        )
    )
    first = await cli("ingest", "--target", target, str(path))
    assert first.code == 1
    assert first.out.strip() == (
        "sent 4 events: inserted 3, duplicates 0, conflicts 0, rejected 1; bad lines 2"
    )
    problems = first.err.strip().splitlines()
    assert problems[0].startswith(f"{path}:5: occurred_at: '2025-06-02T20:00:00' has no UTC")
    assert problems[1] == f"{path}:6: word_count: must be at most 1000000"
    assert problems[2].startswith(f"{path}:7: not valid JSON")
    assert len(problems) == 3

    again = await cli("ingest", "--target", target, str(path), "--json")
    assert again.code == 1
    report = json.loads(again.out)
    assert {k: v for k, v in report.items() if k != "problems"} == {
        "sent": 4,
        "inserted": 0,
        "duplicates": 3,
        "conflicts": 0,
        "rejected": 1,
        "bad_lines": 2,
        "problems_truncated": False,
    }
    assert [(p["file"], p["line"]) for p in report["problems"]] == [
        (str(path), 5),
        (str(path), 6),
        (str(path), 7),
    ]


async def test_ingest_csv_twice_stores_nothing_twice_and_matches_jsonl_keys(
    target: str, tmp_path: Path
) -> None:
    await ingested(target, tmp_path)
    path = tmp_path / "more.csv"
    path.write_text(
        "user_id,occurred_at,word_count,study_seconds,country\n"
        f"{U1},2025-06-01T08:00:00Z,10,60,JP\n"  # the first JSONL event: same derived key
        f"{U3},2025-06-03T00:30:00+09:00,5,30,DE\n"
        f'{U2},"2025-06-03T01:00:00+00:00",7,70,\n'
    )
    first = await cli("ingest", "--target", target, str(path))
    assert (first.code, first.err) == (0, "")
    assert "inserted 2, duplicates 1, conflicts 0, rejected 0; bad lines 0" in first.out

    again = await cli("ingest", "--target", target, str(path))
    assert again.code == 0
    assert "sent 3 events: inserted 0, duplicates 3," in again.out

    bad = tmp_path / "bad.csv"
    bad.write_text(
        f"user_id,occurred_at,word_count,study_seconds\n{U1},2025-06-05T00:00:00Z,-1,5\n"
    )
    run = await cli("ingest", "--target", target, str(bad))
    assert run.code == 1
    assert run.err.startswith(f"{bad}:2: word_count: not a whole number")


async def test_ingest_reads_stdin(target: str) -> None:
    run = await cli("ingest", "--target", target, "-", stdin=jsonl(*EVENTS).encode())
    assert run.code == 0
    assert "sent 4 events: inserted 4," in run.out

    csv_text = f"user_id,occurred_at,word_count,study_seconds\n{U1},2025-06-09T00:00:00Z,1,2\n"
    run = await cli("ingest", "--target", target, "--format", "csv", "-", stdin=csv_text.encode())
    assert "sent 1 events: inserted 1," in run.out

    run = await cli("ingest", "--target", target, "-", stdin=b'{"user_id": 5}\n')
    assert (run.code, run.err.strip()) == (1, "<stdin>:1: user_id: not a string")


async def test_summary_table_and_json(target: str, tmp_path: Path) -> None:
    await ingested(target, tmp_path)
    span = ["--from", "2025-06-01T00:00:00Z", "--to", "2025-06-04T00:00:00Z"]
    table = await cli("summary", "--target", target, *span)
    assert table.code == 0, table.err
    rows = {line.split()[0]: line.split()[1:] for line in table.out.splitlines() if line}
    assert rows["2025-06-01T00:00:00+00:00"][:3] == ["2", "30", "180"]
    assert rows["2025-06-02T00:00:00+00:00"][:3] == ["2", "70", "700"]
    assert rows["2025-06-03T00:00:00+00:00"][:3] == ["0", "0", "0"]
    assert "total: 4 events, 100 words, 880 seconds, 3 active learners" in table.out

    run = await cli("summary", "--target", target, *span, "--json", "--window", "2")
    result = json.loads(run.out)
    assert result["time_zone"] == "UTC"
    assert [b["start_time"] for b in result["buckets"]] == [
        "2025-06-01T00:00:00Z",
        "2025-06-02T00:00:00Z",
        "2025-06-03T00:00:00Z",
    ]
    assert [(b["events"], b["word_count"], b["word_count_sma"]) for b in result["buckets"]] == [
        (2, 30, 30.0),
        (2, 70, 50.0),
        (0, 0, 35.0),
    ]
    assert result["totals"] == {
        "events": 4,
        "word_count": 100,
        "study_seconds": 880,
        "active_users": 3,
    }

    one = json.loads((await cli("summary", "--target", target, *span, "--json", "--user", U1)).out)
    assert one["totals"] == {"events": 2, "word_count": 30, "study_seconds": 180, "active_users": 1}


async def test_time_zone_defaults_to_the_offset_of_from(target: str, tmp_path: Path) -> None:
    await ingested(target, tmp_path)
    # --to has no offset: it is read in the zone taken from --from.
    span = ["--from", "2025-06-01T00:00:00+09:00", "--to", "2025-06-04T00:00:00"]
    result = json.loads((await cli("summary", "--target", target, *span, "--json")).out)
    assert result["time_zone"] == "+09:00"
    assert [(b["local_start"], b["word_count"]) for b in result["buckets"]] == [
        ("2025-06-01T00:00:00+09:00", 30),
        ("2025-06-02T00:00:00+09:00", 30),
        ("2025-06-03T00:00:00+09:00", 40),
    ]
    assert result["buckets"][0]["start_time"] == "2025-05-31T15:00:00Z"

    explicit = ["--tz", "Asia/Tokyo", "--from", "2025-06-01", "--to", "2025-06-04", "--json"]
    tokyo = json.loads((await cli("summary", "--target", target, *explicit)).out)
    assert tokyo["time_zone"] == "Asia/Tokyo"
    assert [b["word_count"] for b in tokyo["buckets"]] == [30, 30, 40]


async def test_uniques_table_and_json(target: str, tmp_path: Path) -> None:
    await ingested(target, tmp_path)
    span = ["--from", "2025-06-01T00:00:00Z", "--to", "2025-06-04T00:00:00Z"]
    table = await cli("uniques", "--target", target, *span)
    rows = {line.split()[0]: line.split()[1:] for line in table.out.splitlines() if line}
    assert rows["2025-06-01T00:00:00+00:00"][0] == "1"
    assert rows["2025-06-02T00:00:00+00:00"][0] == "2"
    assert "unique learners over the range: 3" in table.out

    run = await cli("uniques", "--target", target, *span, "--json", "--exclude-country", "US")
    assert json.loads(run.out) == {
        "time_zone": "UTC",
        "buckets": [
            {"start_time": f"2025-06-0{d}T00:00:00Z", "local_start": f"2025-06-0{d}T00:00:00+00:00",
             "unique_users": n}
            for d, n in ((1, 1), (2, 1), (3, 0))
        ],
        "unique_users": 2,
    }  # fmt: skip


async def test_breakdown_table_and_json(target: str, tmp_path: Path) -> None:
    await ingested(target, tmp_path)
    span = ["--from", "2025-06-01T00:00:00Z", "--to", "2025-06-04T00:00:00Z"]
    table = await cli(
        "breakdown", "--target", target, *span, "--by", "user", "--metric", "words", "--limit", "2"
    )
    ranked = [line.split()[:4] for line in table.out.splitlines() if re.match(r"\s*\d+ ", line)]
    assert ranked == [["1", U3, "1", "40"], ["2", U1, "2", "30"]]

    run = await cli("breakdown", "--target", target, *span, "--by", "country", "--json")
    assert json.loads(run.out)["rows"] == [
        {"key": "JP", "events": 2, "word_count": 30, "study_seconds": 180, "unique_users": 1},
        {"key": "", "events": 1, "word_count": 40, "study_seconds": 400, "unique_users": 1},
        {"key": "US", "events": 1, "word_count": 30, "study_seconds": 300, "unique_users": 1},
    ]
    run = await cli("breakdown", "--target", target, *span, "--country", "US", "--json")
    assert [r["key"] for r in json.loads(run.out)["rows"]] == [U2]


async def test_bad_arguments_are_one_line_with_exit_code_2(target: str) -> None:
    run = await cli(
        "summary", "--target", target, "--from", "2025-06-01T00:00:00Z", "--tz", "UTC+3"
    )
    assert run.code == 2
    assert run.err.startswith("daily-aggregator summary: refused: time_zone: ")
    assert len(run.err.strip().splitlines()) == 1

    run = await cli("summary", "--target", target, "--from", "yesterday")
    assert (run.code, run.err.strip()) == (
        2,
        "daily-aggregator summary: error: --from: not an ISO 8601 time: 'yesterday'",
    )
    run = await cli("uniques", "--granularity", "year")
    assert run.code == 2
    assert "invalid choice: 'year'" in run.err
    run = await cli("ingest", "--target", target, "/nonexistent/events.jsonl")
    assert run.code == 2
    assert "/nonexistent/events.jsonl: No such file or directory" in run.err


async def test_unreachable_service_is_one_line_with_exit_code_3(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(*EVENTS))
    for args in (["summary"], ["breakdown"], ["ingest", str(path)]):
        run = await cli(*args, "--target", target)
        assert run.code == 3, run
        assert run.err.startswith(f"cannot reach Daily Aggregator at {target}: ")
        assert len(run.err.strip().splitlines()) == 1
        assert run.out == ""


async def test_serve_help_goes_to_the_server() -> None:
    run = await cli("serve", "--help")
    assert run.code == 0
    assert "--listen" in run.out
    assert "--data-dir" in run.out


def assert_demo_reports(run: Run) -> None:
    assert run.code == 0, run.err
    assert "generated 2,000 events for 50 learners over 3 weeks; inserted 2,000," in run.out
    assert "Summary, daily, last 14 days (UTC)" in run.out
    assert "Unique learners, daily, last 14 days (UTC)" in run.out
    assert "Top 10 learners by words, last 3 weeks" in run.out
    top = run.out.split("Top 10 learners by words")[1]
    assert len([line for line in top.splitlines() if re.match(r"\s*\d+ ", line)]) == 10


async def test_demo_uses_a_running_service(target: str) -> None:
    run = await cli("demo", "--target", target, "--events", "2000")
    assert_demo_reports(run)
    assert f"using the service at {target}" in run.err
    assert "starting" not in run.err


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text().lower()


async def test_demo_starts_and_stops_its_own_service(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path / "demo"
    run = await cli("demo", "--target", target, "--events", "2000", "--data-dir", str(data_dir))
    assert_demo_reports(run)
    started = re.search(r"starting `daily-aggregator serve` there \(pid (\d+)", run.err)
    assert started, run.err
    assert f"stopped the service it started (pid {started[1]})" in run.err
    assert not alive(int(started[1]))
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    after = await cli("summary", "--target", target)
    assert after.code == 3
