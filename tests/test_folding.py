"""The folder and the answers around it: exact while they race, fresh, crash-safe, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from daily_aggregator.server import activity
from daily_aggregator.server.app import RunningServer, start_server
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import create_pool, snapshot
from daily_aggregator.server.folding import LEADERS_LENGTH, Folder
from daily_aggregator.server.queries import query
from daily_aggregator.server.requests import Countries
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests import test_queries_reference as reference
from tests.support import event, fold_everything, folder_held_off, record, timestamp
from tests.test_serve_command import start_serve

Stub = aggregator_pb2_grpc.AggregatorServiceStub
EVERY_COUNTRY = Countries([], [])

# A backfill written straight into the log, as ingest writes it: $1 events of $2
# learners from $3 on, one every $4 seconds, keys made unique by $5.
BACKFILL = """
WITH stored AS (
    INSERT INTO events (user_id, idempotency_key, occurred_at, word_count, study_seconds, country)
    SELECT md5('learner-' || (i % $2))::uuid,
           md5($5 || '-' || i)::uuid,
           $3::timestamptz + i * $4 * interval '1 second',
           i % 50,
           i % 600,
           (ARRAY['JP', 'US', 'DE', ''])[1 + i % 4]
    FROM generate_series(1, $1) AS i
    RETURNING user_id, occurred_at, word_count, study_seconds, country
)
INSERT INTO pending_events (half, user_id, occurred_at, word_count, study_seconds, country)
SELECT (SELECT half FROM pending_half), * FROM stored
"""
TOTALS = """
SELECT (SELECT count(*) FROM events) AS stored,
       (SELECT count(*) FROM pending_events) AS pending,
       (SELECT coalesce(sum(events), 0) FROM rollups WHERE unit = 'slot' AND country = '*')
           AS slots,
       (SELECT coalesce(sum(events), 0) FROM rollups WHERE unit = 'month' AND country <> '*')
           AS months_by_country,
       (SELECT coalesce(sum(events), 0) FROM learner_hours) AS learner_hours,
       (SELECT coalesce(sum(events), 0) FROM learner_months) AS learner_months,
       (SELECT count(*) FROM learners) AS learners,
       (SELECT count(DISTINCT user_id) FROM events) AS distinct_learners
"""
FOLD_STATEMENT = r"^-- (Reads the sealed half|Gives every learner|Adds the batch)"


async def folded(conn: asyncpg.Connection, *, within: float = 60) -> None:
    """Wait until the log is empty: every stored event is in the rollups."""
    async with asyncio.timeout(within):
        while await conn.fetchval("SELECT count(*) FROM pending_events"):
            await asyncio.sleep(0.05)


def assert_folded_exactly(totals: asyncpg.Record, events: int) -> None:
    """Every stored event is counted once in every rollup, and none is left pending."""
    assert totals["stored"] == events
    assert totals["pending"] == 0
    for rollup in ("slots", "months_by_country", "learner_hours", "learner_months"):
        assert totals[rollup] == events, rollup
    assert totals["learners"] == totals["distinct_learners"]


@pytest.mark.parametrize("seed", [3, 5])
async def test_answers_stay_exact_while_ingest_and_the_folder_race_them(
    stub: Stub, pool: asyncpg.Pool, server: RunningServer, seed: int
) -> None:
    rng = random.Random(seed)
    sent = reference.random_events(rng, seed)
    rng.shuffle(sent)
    acknowledged: list[reference.Sent] = []
    diffs = reference.Differences(seed)
    pending_seen = Counter[bool]()
    for round_events in (sent[i::4] for i in range(4)):
        # Three streams at once; then questions at once, while the folder folds them.
        streams = [round_events[i::3] for i in range(3)]
        responses = await asyncio.gather(
            *(
                record(stub, [[e.message() for e in part[j::5]] for j in range(5)])
                for part in streams
            )
        )
        assert sum(r.inserted for r in responses) == len(round_events)
        acknowledged += round_events
        pending_seen[bool(await pool.fetchval("SELECT count(*) FROM pending_events"))] += 1
        for _ in range(20):
            q = reference.random_question(rng, seed, acknowledged)
            await asyncio.gather(
                reference.check_summary(stub, pool, diffs, q, acknowledged, "", 3),
                reference.check_summary(
                    stub, pool, diffs, q, acknowledged, rng.choice(acknowledged).user_id, 2
                ),
                reference.check_uniques(stub, pool, diffs, q, acknowledged),
                reference.check_breakdown(stub, pool, diffs, q, acknowledged, rng),
            )
    assert not diffs.found, diffs.report()
    # The questions did race the folder: some found events still pending, and it folded.
    assert pending_seen[True] > 0
    assert server.folder.folded > 0


async def test_every_answer_counts_what_was_acknowledged_while_others_write(
    stub: Stub, server: RunningServer
) -> None:
    async def writer(k: int) -> None:
        # Each writer owns a day, its learners and a country, so what it acknowledged
        # is exactly what every answer about that day must count.
        day = datetime(2024, 3, 4 + 2 * k, tzinfo=UTC)
        span = {"start_time": timestamp(day), "end_time": timestamp(day + timedelta(days=1))}
        country = ["JP", "US", "DE", "FR"][k]
        learners = [str(uuid.uuid4()) for _ in range(6)]
        rng = random.Random(k)
        mine: list[pb.Event] = []
        for _ in range(6):
            batches = [
                [
                    event(
                        user_id=rng.choice(learners),
                        at=day + timedelta(seconds=rng.randrange(86_400)),
                        words=rng.randrange(100),
                        seconds=rng.randrange(600),
                        country=country,
                    )
                    for _ in range(rng.randrange(1, 300))
                ]
                for _ in range(3)
            ]
            response = await record(stub, batches)
            mine += [e for batch in batches for e in batch]
            assert response.inserted == sum(len(b) for b in batches)

            words = sum(e.word_count for e in mine)
            users = {e.user_id for e in mine}
            summary = await stub.Summary(pb.SummaryRequest(**span, time_zone="+05:45"))
            assert (summary.totals.events, summary.totals.word_count) == (len(mine), words)
            assert summary.totals.active_users == len(users)
            assert sum(b.events for b in summary.buckets) == len(mine)
            uniques = await stub.Uniques(
                pb.UniquesRequest(**span, granularity=pb.GRANULARITY_HOUR, countries=[country])
            )
            assert uniques.unique_users == len(users)
            countries = await stub.Breakdown(
                pb.BreakdownRequest(**span, dimension=pb.DIMENSION_COUNTRY)
            )
            assert [(r.key, r.events, r.word_count) for r in countries.rows] == [
                (country, len(mine), words)
            ]
            top = await stub.Breakdown(
                pb.BreakdownRequest(
                    **span, dimension=pb.DIMENSION_USER, metric=pb.METRIC_WORD_COUNT, limit=3
                )
            )
            by_learner = Counter[str]()
            for e in mine:
                by_learner[e.user_id] += e.word_count
            expected = sorted(by_learner.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            assert [(r.key, r.word_count) for r in top.rows] == expected
            learner = rng.choice(sorted(users))
            one = await stub.Summary(pb.SummaryRequest(**span, user_id=learner))
            assert one.totals.events == sum(1 for e in mine if e.user_id == learner)

    await asyncio.gather(*(writer(k) for k in range(4)))
    assert server.folder.folded > 0


async def test_an_answer_holding_the_log_neither_stops_the_folder_nor_sees_it_move(
    stub: Stub, pool: asyncpg.Pool, server: RunningServer
) -> None:
    day = (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
    await record(stub, [[event(at=day[0] + timedelta(hours=1)) for _ in range(100)]])
    async with snapshot(pool) as held:
        (before,) = await activity.sums(held, [day], EVERY_COUNTRY)
        # The folder empties the half it folds with TRUNCATE, which must wait for this
        # answer; it gives up waiting and deletes the rows instead.
        await record(stub, [[event(at=day[0] + timedelta(hours=2)) for _ in range(50)]])
        async with pool.acquire() as conn:
            await folded(conn, within=30)
        (during,) = await activity.sums(held, [day], EVERY_COUNTRY)
    summary = await stub.Summary(
        pb.SummaryRequest(start_time=timestamp(day[0]), end_time=timestamp(day[1]))
    )
    assert before.events == during.events == 100
    assert summary.totals.events == 150


@contextlib.asynccontextmanager
async def two_servers(database_url: str) -> AsyncIterator[list[RunningServer]]:
    """Two servers, each with its own pool (and folder), on one database."""
    pools = [await create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
    servers = [await start_server(p, Settings(listen="127.0.0.1:0")) for p in pools]
    try:
        yield servers
    finally:
        for running, p in zip(servers, pools, strict=True):
            await running.stop(None)
            await p.close()


async def test_whole_local_hours_off_the_utc_hour_grid_keep_folded_events_apart(
    stub: Stub, pool: asyncpg.Pool, server: RunningServer
) -> None:
    # Asia/Kolkata's hours start at half past the UTC hours the rollups are kept in: each
    # local hour is one hour long, yet holds the halves of two folded UTC hours.
    learner, other = str(uuid.uuid4()), str(uuid.uuid4())
    times = ["10:00:00", "10:29:59", "10:30:00", "11:10:00"]
    sent = [event(user_id=learner, at=datetime.fromisoformat(f"2025-06-01T{t}Z")) for t in times]
    sent.append(event(user_id=other, at=datetime(2025, 6, 1, 10, 45, tzinfo=UTC)))
    assert (await record(stub, [sent])).inserted == len(sent)
    async with pool.acquire() as conn:
        await server.folder.drain(conn)
    hours = {
        "start_time": timestamp(datetime(2025, 6, 1, 9, 30, tzinfo=UTC)),
        "end_time": timestamp(datetime(2025, 6, 1, 11, 30, tzinfo=UTC)),
        "granularity": pb.GRANULARITY_HOUR,
        "time_zone": "Asia/Kolkata",
    }
    everyone = await stub.Summary(pb.SummaryRequest(**hours))
    assert [b.local_start for b in everyone.buckets] == [
        "2025-06-01T15:00:00+05:30",
        "2025-06-01T16:00:00+05:30",
    ]
    assert [b.events for b in everyone.buckets] == [2, 3]
    alone = await stub.Summary(pb.SummaryRequest(**hours, user_id=learner))
    assert [b.events for b in alone.buckets] == [2, 2]
    uniques = await stub.Uniques(pb.UniquesRequest(**hours))
    assert [b.unique_users for b in uniques.buckets] == [1, 2]
    # The same folded events in hours on the UTC grid, where each is one whole stored hour.
    utc_hours = {**hours, "time_zone": "UTC"}
    utc_hours["start_time"] = timestamp(datetime(2025, 6, 1, 10, tzinfo=UTC))
    utc_hours["end_time"] = timestamp(datetime(2025, 6, 1, 12, tzinfo=UTC))
    everyone = await stub.Summary(pb.SummaryRequest(**utc_hours))
    assert [b.events for b in everyone.buckets] == [4, 1]


METRICS = ("events", "word_count", "study_seconds")


async def assert_month_leaders_hold(pool: asyncpg.Pool) -> int:
    """Each month's lists against learner_months; returns how many lists were full.

    A list names its month's best learners by the metric, best first (ties by user id),
    with their exact totals, as many as LEADERS_LENGTH or every learner; no learner left
    out has more than its bound, and the bound is at most the list's last total.
    """
    totals: dict[datetime, dict[str, dict[str, int]]] = {}
    for row in await pool.fetch("SELECT * FROM learner_months"):
        totals.setdefault(row["month"], {})[str(row["user_id"])] = {m: row[m] for m in METRICS}
    full = 0
    lists = await pool.fetch("SELECT * FROM month_leaders")
    assert {(r["month"], r["metric"]) for r in lists} == {
        (month, metric) for month in totals for metric in METRICS
    }
    for row in lists:
        month, metric = row["month"], row["metric"]
        actual = {user: t[metric] for user, t in totals[month].items()}
        listed = [str(u) for u in row["user_ids"]]
        where = f"{month:%Y-%m} {metric}"
        assert row["totals"] == [actual[u] for u in listed], where
        assert [(-t, u) for t, u in zip(row["totals"], listed, strict=True)] == sorted(
            (-t, u) for t, u in zip(row["totals"], listed, strict=True)
        ), where
        assert len(listed) == min(LEADERS_LENGTH, len(actual)), where
        named = set(listed)
        left_out = [total for user, total in actual.items() if user not in named]
        assert max(left_out, default=0) <= row["bound"] <= min(row["totals"]), where
        full += len(listed) == LEADERS_LENGTH
    return full


async def test_month_leaders_stay_the_best_learners_as_folds_raise_others_past_them(
    stub: Stub, pool: asyncpg.Pool, server: RunningServer
) -> None:
    # More learners than a list holds, in two months, fold after fold: first everyone,
    # then rounds that raise some learners from below a list past its last entry, add
    # to listed learners and leave some totals unchanged (events of no words or time).
    rng = random.Random(11)
    learners = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(700)]
    months = [datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)]
    sent: list[pb.Event] = []
    for round_ in range(4):
        chosen = learners if round_ == 0 else rng.sample(learners, 150)
        batch = [
            event(
                user_id=user,
                at=rng.choice(months) + timedelta(days=rng.randrange(28), hours=rng.randrange(24)),
                words=rng.choice([0, rng.randrange(1, 40), rng.randrange(200, 400)]),
                seconds=rng.choice([0, rng.randrange(30, 900)]),
            )
            for user in chosen
            for _ in range(rng.randint(1, 3))
        ]
        response = await record(stub, [batch[i : i + 500] for i in range(0, len(batch), 500)])
        assert response.inserted == len(batch)
        sent += batch
        async with pool.acquire() as conn:
            await server.folder.drain(conn)
        assert await assert_month_leaders_hold(pool) == 2 * len(METRICS)
        # And the top learners of each month, by words, are those of what was sent.
        for month in months:
            end = month.replace(month=month.month + 1)
            words: Counter[str] = Counter()
            for e in sent:
                if month <= e.occurred_at.ToDatetime(tzinfo=UTC) < end:
                    words[e.user_id] += e.word_count
            answer = await stub.Breakdown(
                pb.BreakdownRequest(
                    start_time=timestamp(month),
                    end_time=timestamp(end),
                    dimension=pb.DIMENSION_USER,
                    metric=pb.METRIC_WORD_COUNT,
                    limit=10,
                )
            )
            best = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
            assert [(r.key, r.word_count) for r in answer.rows] == best


async def test_month_leaders_hold_when_one_fold_raises_far_more_learners_than_a_list(
    stub: Stub, pool: asyncpg.Pool, server: RunningServer
) -> None:
    # A backfill raises most of its learners past the old lists: first into a month
    # with no list yet, then past full lists. Only the best of them may be ranked, and
    # every one passed over still bounds what the list leaves out.
    rng = random.Random(12)
    learners = [
        str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2 * LEADERS_LENGTH + 300)
    ]
    month = datetime(2025, 5, 1, tzinfo=UTC)
    sent: list[pb.Event] = []
    for chosen, most_words in (
        (learners, 5000),
        (rng.sample(learners, 3 * LEADERS_LENGTH // 2), 10000),
    ):
        batch = [
            event(
                user_id=user,
                at=month + timedelta(days=rng.randrange(31), minutes=rng.randrange(1440)),
                words=rng.randrange(most_words),
                seconds=rng.randrange(1, 900),
            )
            for user in chosen
            for _ in range(rng.randint(1, 3))
        ]
        async with folder_held_off(pool):  # so that one fold takes the whole batch
            response = await record(stub, [batch[i : i + 500] for i in range(0, len(batch), 500)])
            assert await pool.fetchval("SELECT count(*) FROM pending_events") == len(batch)
        assert response.inserted == len(batch)
        sent += batch
        async with pool.acquire() as conn:
            await server.folder.drain(conn)
        assert await assert_month_leaders_hold(pool) == len(METRICS)
        words: Counter[str] = Counter()
        for e in sent:
            words[e.user_id] += e.word_count
        answer = await stub.Breakdown(
            pb.BreakdownRequest(
                start_time=timestamp(month),
                end_time=timestamp(month.replace(month=6)),
                dimension=pb.DIMENSION_USER,
                metric=pb.METRIC_WORD_COUNT,
                limit=10,
            )
        )
        best = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        assert [(r.key, r.word_count) for r in answer.rows] == best


async def test_the_folder_refuses_a_pool_too_small_to_fold_with(database_url: str) -> None:
    # A fold reads everyone's rollups on a second connection; with one it would wait forever.
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(ValueError, match="at least two connections"):
            Folder(pool, idle_seconds=0.1)
    finally:
        await pool.close()


async def test_a_sealed_half_is_sampled_for_its_size_and_learners_only(database_url: str) -> None:
    # The fold's plans follow the half's size and its number of learners; a sample of the
    # columns that are only added up would cost the fold time and tell the planner nothing.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(BACKFILL, 40_000, 700, datetime(2024, 5, 1, tzinfo=UTC), 20, "sampled")
        sealed = await conn.fetchval(query("fold_seal"))
        await conn.execute(query("fold_analyze"), sealed)
        half = f"pending_events_{sealed}"
        assert (
            await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass", half)
            == 40_000
        )
        sampled = {
            r["attname"]: r["n_distinct"]
            for r in await conn.fetch(
                "SELECT attname, n_distinct FROM pg_stats WHERE tablename = $1", half
            )
        }
        assert sorted(sampled) == ["country", "occurred_at", "user_id"]
        # 3,000 rows of 40,000 tell the number of learners closely, not exactly.
        assert 630 <= sampled["user_id"] <= 770
        assert sampled["country"] == 4
        pool = await create_pool(database_url, min_size=1, max_size=2)
        try:
            assert await fold_everything(pool) == 40_000
        finally:
            await pool.close()
        assert_folded_exactly(await conn.fetchrow(TOTALS), 40_000)
    finally:
        await conn.close()


async def test_two_servers_on_one_database_fold_every_event_once(database_url: str) -> None:
    async with two_servers(database_url) as servers:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
        stubs = [aggregator_pb2_grpc.AggregatorServiceStub(c) for c in channels]
        learners = [str(uuid.uuid4()) for _ in range(40)]
        start = datetime(2024, 1, 1, tzinfo=UTC)
        rng = random.Random(7)

        async def stream(i: int) -> int:
            batches = [
                [
                    event(
                        user_id=rng.choice(learners),
                        at=start + timedelta(minutes=rng.randrange(60 * 24 * 90)),
                        country=rng.choice(["JP", "US", ""]),
                    )
                    for _ in range(200)
                ]
                for _ in range(5)
            ]
            response = await record(stubs[i % 2], batches)
            return int(response.inserted)

        inserted = sum(await asyncio.gather(*(stream(i) for i in range(24))))
        conn = await asyncpg.connect(database_url)
        try:
            await folded(conn)
            totals = await conn.fetchrow(TOTALS)
        finally:
            await conn.close()
        summaries = [
            await stub.Summary(
                pb.SummaryRequest(
                    start_time=timestamp(start), end_time=timestamp(start + timedelta(days=90))
                )
            )
            for stub in stubs
        ]
        for channel in channels:
            await channel.close()
    assert inserted == 24 * 5 * 200
    assert_folded_exactly(totals, inserted)
    # Each event was folded by exactly one of the two folders. A folder counts a fold a
    # moment after its commit, which emptied the log; give the last count that moment.
    async with asyncio.timeout(10):
        while sum(s.folder.folded for s in servers) < inserted:
            await asyncio.sleep(0.01)
    assert sum(s.folder.folded for s in servers) == inserted
    assert [s.totals.events for s in summaries] == [inserted, inserted]
    assert [s.totals.active_users for s in summaries] == [len(learners)] * 2


async def test_a_service_killed_in_the_middle_of_a_fold_loses_nothing_and_counts_nothing_twice(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(BACKFILL, 50_000, 500, datetime(2023, 1, 1, tzinfo=UTC), 30, "first")
        process = await start_serve("--database-url", database_url)
        try:
            await folded(conn)
            await conn.execute(
                BACKFILL, 300_000, 2000, datetime(2023, 3, 1, tzinfo=UTC), 50, "second"
            )
            # Kill it once its folder is inside the fold of the second backfill.
            async with asyncio.timeout(60):
                while not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query ~ $1",
                    FOLD_STATEMENT,
                ):
                    await asyncio.sleep(0.002)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        # The fold never committed: the second backfill is still all pending, the first
        # all folded.
        half_done = await conn.fetchrow(TOTALS)
        assert half_done["pending"] == 300_000
        assert half_done["slots"] == half_done["learner_hours"] == 50_000

        process = await start_serve("--database-url", database_url)
        try:
            await folded(conn)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0
        assert_folded_exactly(await conn.fetchrow(TOTALS), 350_000)
    finally:
        await conn.close()


async def test_the_folders_memory_stays_bounded_on_a_large_backlog(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # Two million events of a backfill, spread over a year.
        await conn.execute(
            BACKFILL, 2_000_000, 20_000, datetime(2023, 1, 1, tzinfo=UTC), 15, "bulk"
        )
        process = await start_serve("--database-url", database_url)
        try:
            peak = 0
            async with asyncio.timeout(300):
                while await conn.fetchval("SELECT count(*) FROM pending_events"):
                    peak = max(peak, resident_megabytes(process.pid))
                    await asyncio.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)
        assert_folded_exactly(await conn.fetchrow(TOTALS), 2_000_000)
    finally:
        await conn.close()
    # A service at rest holds about 50 MB; folding two million events in one batch must
    # add no more than a chunk of rollup units, a few hundred learner lists and the
    # batch's month sets to that (about 40 MB), nowhere near the batch's size.
    assert 0 < peak < 150, f"the service grew to {peak} MB folding the backlog"


def resident_megabytes(pid: int) -> int:
    """The resident memory of process `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0
