"""`daily-aggregator learner`: one learner's stats as a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import cli
from tests.test_cli import U1, ingested, target

__all__ = ["target"]  # the fixture, shared with the other command-line tests


async def test_learner_table_and_json(target: str, tmp_path: Path) -> None:
    await ingested(target, tmp_path)
    # U1 studied at 08:00Z and 11:00Z on 1 June: both on 1 June in Tokyo.
    run = await cli(
        "learner", U1, "--target", target, "--tz", "Asia/Tokyo", "--as-of", "2025-06-02T09:00",
        "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert json.loads(run.out) == {
        "user_id": U1,
        "time_zone": "Asia/Tokyo",
        "first_active": "2025-06-01T08:00:00Z",
        "last_active": "2025-06-01T11:00:00Z",
        "events": 2,
        "word_count": 30,
        "study_seconds": 180,
        "active_days": 1,
        "current_streak_days": 1,
        "longest_streak_days": 1,
        "longest_streak_start": "2025-06-01",
        "longest_streak_end": "2025-06-01",
    }

    table = await cli("learner", U1, "--target", target, "--as-of", "2025-06-09T00:00:00Z")
    assert table.code == 0, table.err
    lines = [" ".join(line.split()) for line in table.out.splitlines()]
    assert "events 2" in lines
    assert "first active 2025-06-01T08:00:00Z" in lines
    assert "active days 1" in lines
    assert "current streak 0 days" in lines  # nothing on 7 or 8 June
    assert "longest streak 1 day, 2025-06-01 to 2025-06-01" in lines


async def test_learner_refuses_a_bad_user_id_in_one_line(target: str) -> None:
    run = await cli("learner", "nobody", "--target", target)
    assert run.code == 2
    assert run.err.startswith("daily-aggregator learner: refused: user_id: ")
    assert len(run.err.strip().splitlines()) == 1
