"""DeleteUser: the learner leaves every answer exactly, the erasure is remembered, races close.

The server's own folder stays idle here (see `settings`): each test folds when it means to,
with `fold_everything`, so that it knows which events are pending and which are folded.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import random
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from daily_aggregator.client import AsyncClient, Client, DeleteUserResult, InvalidArgumentError
from daily_aggregator.server import learner_sets
from daily_aggregator.server.app import RunningServer
from daily_aggregator.server.config import Settings
from daily_aggregator.server.folding import LEADERS_LENGTH, Folder
from daily_aggregator.server.queries import query
from daily_aggregator.server.validation import validate
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests import test_queries_reference as reference
from tests.support import COMMAND, Run, cli, event, fold_everything, record, timestamp

Stub = aggregator_pb2_grpc.AggregatorServiceStub

EVERYTHING = {
    "start_time": timestamp(datetime(2000, 1, 1, tzinfo=UTC)),
    "end_time": timestamp(datetime(2100, 1, 1, tzinfo=UTC)),
}
"""A range holding every event of these tests (in months, for Summary)."""

LEFTOVERS = """
SELECT (SELECT count(*) FROM events WHERE user_id = $1) AS events,
       (SELECT count(*) FROM pending_events WHERE user_id = $1) AS pending,
       (SELECT count(*) FROM learner_hours WHERE user_id = $1) AS learner_hours,
       (SELECT count(*) FROM learner_months WHERE user_id = $1) AS learner_months,
       (SELECT count(*) FROM learners WHERE user_id = $1) AS learners,
       (SELECT count(*) FROM month_leaders WHERE $1 = ANY (user_ids)) AS month_leaders
"""

# Everyone's rollups as a fold of the stored events would make them, learner sets included,
# beside the rollups that are stored. Only for a fully folded state.
EXPECTED_ROLLUPS = """
SELECT u.unit, u.start, u.country, count(*) AS events, sum(e.word_count) AS word_count,
       sum(e.study_seconds) AS study_seconds, array_agg(DISTINCT l.learner) AS learners
FROM events AS e
JOIN learners AS l USING (user_id)
CROSS JOIN LATERAL (
    VALUES ('slot', date_bin('15 minutes', e.occurred_at, timestamptz 'epoch'), '*'),
           ('hour', date_bin('1 hour', e.occurred_at, timestamptz 'epoch'), e.country),
           ('hour', date_bin('1 hour', e.occurred_at, timestamptz 'epoch'), '*'),
           ('day', date_bin('1 day', e.occurred_at, timestamptz 'epoch'), e.country),
           ('day', date_bin('1 day', e.occurred_at, timestamptz 'epoch'), '*'),
           ('month', date_trunc('month', e.occurred_at, 'UTC'), e.country),
           ('month', date_trunc('month', e.occurred_at, 'UTC'), '*')
) AS u (unit, start, country)
GROUP BY 1, 2, 3
"""
STORED_ROLLUPS = """
SELECT unit, start, country, events, word_count, study_seconds, learner_count, learners
FROM rollups
"""
EXPECTED_LEARNER_MONTHS = """
SELECT user_id, date_trunc('month', occurred_at, 'UTC') AS month, count(*) AS events,
       sum(word_count) AS word_count, sum(study_seconds) AS study_seconds
FROM events
GROUP BY 1, 2
"""
# Per month and metric: the smallest total a leaders list names and the largest total of a
# learner it does not name, which must not be larger (the rankings rely on it).
LEADERS_AND_THE_REST = """
SELECT l.month, t.metric,
       (SELECT min(x) FROM unnest(l.totals) AS x) AS least_listed,
       (SELECT max(t.total)
        FROM learner_months AS m
        CROSS JOIN LATERAL (
            VALUES (CASE t.metric WHEN 'events' THEN m.events
                                  WHEN 'word_count' THEN m.word_count
                                  ELSE m.study_seconds END)
        ) AS t (total)
        WHERE m.month = l.month AND m.user_id <> ALL (l.user_ids)) AS best_unlisted,
       l.bound
FROM month_leaders AS l
CROSS JOIN LATERAL (VALUES (l.metric)) AS t (metric)
"""


@pytest.fixture
def settings() -> Settings:
    """The server's folder looks at the log once at start-up and then sleeps."""
    return Settings(listen="127.0.0.1:0", grace_seconds=5, fold_idle_seconds=3600)


async def delete_user(stub: Stub, user_id: str) -> pb.DeleteUserResponse:
    response: pb.DeleteUserResponse = await stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id))
    return response


def erased_at(response: pb.DeleteUserResponse) -> datetime:
    return response.erased_at.ToDatetime(tzinfo=UTC)


def refusal(when: datetime) -> str:
    """The reason a refused event carries, as the service words it."""
    return f"learner was erased at {when.isoformat().replace('+00:00', 'Z')}; " + (
        "events before then are refused"
    )


async def assert_nothing_left_of(pool: asyncpg.Pool, user_id: str) -> None:
    leftovers = await pool.fetchrow(LEFTOVERS, uuid.UUID(user_id))
    assert dict(leftovers) == dict.fromkeys(leftovers.keys(), 0)


async def assert_rollups_are_a_fold_of_the_stored_events(pool: asyncpg.Pool) -> None:
    """Every rollup holds exactly what folding the stored events from scratch would put there."""
    expected = {
        (r["unit"], r["start"], r["country"]): (
            r["events"],
            r["word_count"],
            r["study_seconds"],
            len(r["learners"]),
            sorted(r["learners"]),
        )
        for r in await pool.fetch(EXPECTED_ROLLUPS)
    }
    stored = {
        (r["unit"], r["start"], r["country"]): (
            r["events"],
            r["word_count"],
            r["study_seconds"],
            r["learner_count"],
            list(learner_sets.load(r["learners"])),
        )
        for r in await pool.fetch(STORED_ROLLUPS)
    }
    assert stored == expected
    months = {tuple(r) for r in await pool.fetch(EXPECTED_LEARNER_MONTHS)}
    assert {tuple(r) for r in await pool.fetch("SELECT * FROM learner_months")} == months


async def ask_everything(
    stub: Stub,
    pool: asyncpg.Pool,
    seed: int,
    rng: random.Random,
    events: Sequence[reference.Sent],
    erased: str,
    *,
    rounds: int,
) -> None:
    """Random questions of every RPC, answered as if only `events` had ever been stored."""
    diffs = reference.Differences(seed)
    users = sorted({e.user_id for e in events})
    for _ in range(rounds):
        q = reference.random_question(rng, seed, events)
        await reference.check_summary(stub, pool, diffs, q, events, "", rng.randrange(1, 8))
        await reference.check_summary(stub, pool, diffs, q, events, erased, 3)
        await reference.check_summary(stub, pool, diffs, q, events, rng.choice(users), 2)
        await reference.check_uniques(stub, pool, diffs, q, events)
        await reference.check_breakdown(stub, pool, diffs, q, events, rng)
    assert not diffs.found, diffs.report()
    for metric in (pb.METRIC_EVENTS, pb.METRIC_WORD_COUNT, pb.METRIC_STUDY_SECONDS):
        await assert_top_learners(stub, events, metric)


async def assert_top_learners(
    stub: Stub, events: Sequence[reference.Sent], metric: int, limit: int = 5
) -> None:
    """The top learners over all time are the oracle's."""
    response = await stub.Breakdown(
        pb.BreakdownRequest(**EVERYTHING, dimension=pb.DIMENSION_USER, metric=metric, limit=limit)
    )
    rows = reference.breakdown_rows(pb.DIMENSION_USER, events)
    assert [
        (r.key, r.events, r.word_count, r.study_seconds, r.unique_users) for r in response.rows
    ] == reference.top_rows(rows, metric, limit)


def batches(events: Sequence[reference.Sent], size: int = 40) -> list[list[pb.Event]]:
    return [[e.message() for e in events[i : i + size]] for i in range(0, len(events), size)]


@pytest.mark.parametrize("state", ["pending", "folded", "both"])
async def test_an_erased_learner_leaves_every_answer_exactly(
    stub: Stub, pool: asyncpg.Pool, state: str
) -> None:
    seed = {"pending": 1, "folded": 2, "both": 5}[state]
    rng = random.Random(seed)
    sent = reference.random_events(rng, seed)
    erased, erased_events = Counter(e.user_id for e in sent).most_common(1)[0]
    folded, pending = {
        "pending": ([], sent),
        "folded": (sent, []),
        "both": (sent[::2], sent[1::2]),
    }[state]
    await record(stub, batches(folded))
    await fold_everything(pool)
    await record(stub, batches(pending))
    # The heaviest learner leads by events, and is on the leaders lists of what was folded.
    await assert_top_learners(stub, sent, pb.METRIC_EVENTS, limit=1)
    listed = await pool.fetchval(
        "SELECT count(*) FROM month_leaders WHERE $1 = ANY (user_ids)", uuid.UUID(erased)
    )
    assert (listed > 0) == (state != "pending")

    response = await delete_user(stub, erased)

    assert response.deleted_events == erased_events
    await assert_nothing_left_of(pool, erased)
    remaining = [e for e in sent if e.user_id != erased]
    await ask_everything(stub, pool, seed, rng, remaining, erased, rounds=12)
    # Folding what was pending changes nothing: the learner's pending events went too.
    await fold_everything(pool)
    await ask_everything(stub, pool, seed, rng, remaining, erased, rounds=6)
    await assert_rollups_are_a_fold_of_the_stored_events(pool)


async def test_a_leaders_list_an_erasure_shortened_takes_only_learners_who_reach_its_bound(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    month = datetime(2024, 2, 1, tzinfo=UTC)
    # More learners than a list holds, each with totals of their own: the list names the
    # best LEADERS_LENGTH, and its bound is the best of the others (words: 1000 + 19).
    learners = [str(uuid.uuid4()) for _ in range(LEADERS_LENGTH + 20)]
    sent = [
        reference.Sent(u, str(uuid.uuid4()), reference.micros(month) + i, 1000 + i, 100 + i, "JP")
        for i, u in enumerate(learners)
    ]
    await record(stub, batches(sent, 200))
    await fold_everything(pool)
    for best in learners[-3:]:
        assert (await delete_user(stub, best)).deleted_events == 1
    # Newcomers below the bound, and one above it, folded after the erasures.
    later = reference.micros(month + timedelta(days=3))
    newcomers = [
        reference.Sent(str(uuid.uuid4()), str(uuid.uuid4()), later + i, words, words, "US")
        for i, words in enumerate([5, 10, 1018, 5000])
    ]
    await record(stub, batches(newcomers))
    await fold_everything(pool)

    for row in await pool.fetch(LEADERS_AND_THE_REST):
        assert row["best_unlisted"] is None or row["least_listed"] >= row["best_unlisted"], row
        assert row["best_unlisted"] is None or row["bound"] >= row["best_unlisted"], row
    remaining = [e for e in sent if e.user_id not in learners[-3:]] + newcomers
    for metric in (pb.METRIC_WORD_COUNT, pb.METRIC_STUDY_SECONDS, pb.METRIC_EVENTS):
        for limit in (1, 10, 130, 1000):
            await assert_top_learners(stub, remaining, metric, limit)


async def test_an_ingest_under_way_when_the_erasure_starts_cannot_bring_old_events_back(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    learner = str(uuid.uuid4())
    start = datetime(2025, 3, 1, tzinfo=UTC)
    stored = [event(user_id=learner, at=start + timedelta(hours=h)) for h in range(3)]
    await record(stub, [stored])
    await fold_everything(pool)
    in_flight = event(user_id=learner, at=start + timedelta(hours=5), words=77)
    valid, _ = validate([in_flight], 0, reference.micros(datetime.now(UTC)))

    async with pool.acquire() as writer:
        # An ingest statement that has read the erasures before the erasure was recorded,
        # and commits only after the erasure has started: the service's own insert, in a
        # transaction kept open.
        transaction = writer.transaction()
        await transaction.start()
        assert await writer.fetch(query("insert_events"), *valid.columns()) == []
        erasing = asyncio.create_task(delete_user(stub, learner))
        async with asyncio.timeout(60):
            while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%LOCK TABLE pending_events IN SHARE MODE%'"
            ):
                assert not erasing.done(), "the erasure did not wait for the ingest under way"
                await asyncio.sleep(0.01)
        await transaction.commit()
        response = await erasing

    assert response.deleted_events == len(stored) + 1
    await assert_nothing_left_of(pool, learner)
    summary = await stub.Summary(
        pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH, user_id=learner)
    )
    assert summary.totals.events == 0
    await fold_everything(pool)
    await assert_nothing_left_of(pool, learner)
    await assert_rollups_are_a_fold_of_the_stored_events(pool)


async def test_an_erasure_while_writers_replay_and_the_folder_folds_ends_exact(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    rng = random.Random(11)
    start = datetime.now(UTC) - timedelta(days=3)
    erased = str(uuid.uuid4())
    others = [str(uuid.uuid4()) for _ in range(6)]

    def sent(user_id: str, at: datetime) -> reference.Sent:
        return reference.Sent(
            user_id,
            str(uuid.uuid4()),
            reference.micros(at),
            rng.randrange(100),
            rng.randrange(600),
            rng.choice(["JP", "US", ""]),
        )

    history = [sent(erased, start + timedelta(minutes=7 * i)) for i in range(240)]
    # Half of it is stored already; the first replay stores the rest.
    await record(stub, batches(history[:120]))
    acknowledged: list[reference.Sent] = []
    replays: list[tuple[bool, pb.RecordEventsResponse]] = []
    replayed_twice = asyncio.Event()
    erasure_done = asyncio.Event()

    async def other_writer(k: int) -> None:
        for round_ in range(12):
            mine = [
                sent(rng.choice(others), start + timedelta(minutes=rng.randrange(4000)))
                for _ in range(rng.randrange(20, 120))
            ]
            response = await record(stub, batches(mine, 30))
            assert response.inserted == len(mine), (k, round_)
            acknowledged.extend(mine)

    async def replayer() -> None:
        # The learner's old stream, sent again and again, before, during and after the erasure.
        after = 0
        while after < 3:
            began_after_erasure = erasure_done.is_set()
            replays.append((began_after_erasure, await record(stub, batches(history, 25))))
            after += began_after_erasure
            if len(replays) == 2:
                replayed_twice.set()

    async def eraser() -> pb.DeleteUserResponse:
        await replayed_twice.wait()
        response = await delete_user(stub, erased)
        erasure_done.set()
        return response

    folder = Folder(pool, idle_seconds=0.005)
    folding = asyncio.create_task(folder.run())
    try:
        *_, response = await asyncio.gather(
            *(other_writer(k) for k in range(2)), replayer(), eraser()
        )
    finally:
        folding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await folding
    assert folder.folded > 0

    for began_after_erasure, replay in replays:
        r = replay
        assert r.received == r.inserted + r.duplicates + r.conflicts + r.rejected == len(history)
        if began_after_erasure:
            assert (r.inserted, r.rejected, r.errors_truncated) == (0, len(history), True)
            assert {(e.field, e.reason) for e in r.errors} == {
                ("user_id", refusal(erased_at(response)))
            }
    await fold_everything(pool)
    await assert_nothing_left_of(pool, erased)
    summary = await stub.Summary(pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH))
    assert (summary.totals.events, summary.totals.word_count, summary.totals.active_users) == (
        len(acknowledged),
        sum(e.words for e in acknowledged),
        len({e.user_id for e in acknowledged}),
    )
    await assert_top_learners(stub, acknowledged, pb.METRIC_WORD_COUNT)
    await assert_rollups_are_a_fold_of_the_stored_events(pool)


async def test_a_replay_after_the_erasure_is_rejected_event_by_event(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
    start = datetime(2025, 5, 5, tzinfo=UTC)
    stream = [
        event(user_id=erased if i % 3 else kept, at=start + timedelta(hours=i)) for i in range(9)
    ]
    await record(stub, [stream[:5], stream[5:]])
    await fold_everything(pool)
    response = await delete_user(stub, erased)
    assert response.deleted_events == 6

    invalid = event(user_id=kept, words=2_000_000)
    replay = await record(stub, [[*stream[:5], invalid], stream[5:]])

    assert (replay.received, replay.inserted, replay.duplicates, replay.rejected) == (10, 0, 3, 7)
    expected = [
        (i, e.idempotency_key, "user_id", refusal(erased_at(response)))
        for i, e in enumerate(stream[:5])
        if e.user_id == erased
    ]
    expected.append((5, invalid.idempotency_key, "word_count", "must be at most 1000000"))
    expected += [
        (6 + i, e.idempotency_key, "user_id", refusal(erased_at(response)))
        for i, e in enumerate(stream[5:])
        if e.user_id == erased
    ]
    assert [(e.index, e.idempotency_key, e.field, e.reason) for e in replay.errors] == expected
    summary = await stub.Summary(pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH))
    assert (summary.totals.events, summary.totals.active_users) == (3, 1)


async def test_events_after_the_erasure_are_a_learner_who_came_back(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    learner = str(uuid.uuid4())
    now = datetime.now(UTC)
    await record(stub, [[event(user_id=learner, at=now - timedelta(days=1), words=900)]])
    await fold_everything(pool)
    when = erased_at(await delete_user(stub, learner))

    back = [
        event(user_id=learner, at=when - timedelta(microseconds=1), words=1),
        event(user_id=learner, at=when, words=20, country="DE"),
        event(user_id=learner, at=when + timedelta(minutes=1), words=30, country="DE"),
    ]
    response = await record(stub, [back])

    assert (response.inserted, response.rejected) == (2, 1)
    assert [(e.index, e.field) for e in response.errors] == [(0, "user_id")]
    span = {
        "start_time": timestamp(now - timedelta(days=2)),
        "end_time": timestamp(now + timedelta(days=1)),
    }
    for folded in (False, True):
        if folded:
            await fold_everything(pool)
        summary = await stub.Summary(pb.SummaryRequest(**span, user_id=learner))
        assert (summary.totals.events, summary.totals.word_count) == (2, 50), folded
        uniques = await stub.Uniques(pb.UniquesRequest(**span, countries=["DE"]))
        assert uniques.unique_users == 1, folded
        top = await stub.Breakdown(
            pb.BreakdownRequest(**span, dimension=pb.DIMENSION_USER, metric=pb.METRIC_WORD_COUNT)
        )
        assert [(r.key, r.events, r.word_count) for r in top.rows] == [(learner, 2, 50)], folded
    await assert_rollups_are_a_fold_of_the_stored_events(pool)


async def test_erasing_again_moves_the_erasure_forward_and_deletes_what_came_since(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    learner = str(uuid.uuid4())
    await record(stub, [[event(user_id=learner, at=datetime(2025, 1, 1, tzinfo=UTC))]])
    first = await delete_user(stub, learner)
    assert first.deleted_events == 1
    since = [
        event(user_id=learner, at=erased_at(first) + timedelta(microseconds=i)) for i in range(3)
    ]
    assert (await record(stub, [since[:2]])).inserted == 2
    await fold_everything(pool)
    assert (await record(stub, [since[2:]])).inserted == 1

    second = await delete_user(stub, learner)

    assert second.deleted_events == 3
    assert erased_at(second) > erased_at(first)
    await assert_nothing_left_of(pool, learner)
    replay = await record(stub, [since])
    assert (replay.inserted, replay.rejected) == (0, 3)
    assert {e.reason for e in replay.errors} == {refusal(erased_at(second))}
    stored = await pool.fetchval(
        "SELECT erased_at FROM erasures WHERE user_id = $1", uuid.UUID(learner)
    )
    assert stored == erased_at(second)


async def test_an_unknown_learner_is_erased_all_the_same(stub: Stub, pool: asyncpg.Pool) -> None:
    stranger = str(uuid.uuid4()).upper()
    response = await delete_user(stub, stranger)
    assert response.deleted_events == 0
    assert response.HasField("erased_at")
    # Their events from before the erasure are refused when they turn up.
    late = await record(stub, [[event(user_id=stranger, at=datetime(2025, 2, 2, tzinfo=UTC))]])
    assert (late.inserted, late.rejected) == (0, 1)
    assert late.errors[0].reason == refusal(erased_at(response))


@pytest.mark.parametrize(
    ("user_id", "description"),
    [
        ("", "is required"),
        ("7d4c1a52-0f5e-4f7b-9d1a", "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000"),
    ],
)
async def test_a_bad_user_id_is_invalid_argument_naming_it(
    stub: Stub, pool: asyncpg.Pool, user_id: str, description: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await delete_user(stub, user_id)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(failure.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("user_id", description)
    ]
    assert await pool.fetchval("SELECT count(*) FROM erasures") == 0


# --- The bundled client and the command line ------------------------------------------


async def test_both_clients_erase_and_say_what_went(stub: Stub, server: RunningServer) -> None:
    learners = [str(uuid.uuid4()) for _ in range(2)]
    await record(stub, [[event(user_id=u) for u in learners for _ in range(3)]])
    target = f"127.0.0.1:{server.port}"

    async with AsyncClient(target) as client:
        erased = await client.delete_user(learners[0])
        assert erased.deleted_events == 3
        assert erased.erased_at.tzinfo is not None
        with pytest.raises(InvalidArgumentError) as refused:
            await client.delete_user("nobody")
        assert [v.field for v in refused.value.field_violations] == ["user_id"]

    def sync() -> DeleteUserResult:
        with Client(target) as client:
            return client.delete_user(learners[1])

    assert (await asyncio.to_thread(sync)).deleted_events == 3
    summary = await stub.Summary(pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH))
    assert summary.totals.events == 0


async def stored_events(stub: Stub, user_id: str) -> int:
    summary = await stub.Summary(
        pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH, user_id=user_id)
    )
    return int(summary.totals.events)


async def test_delete_user_needs_yes_when_no_one_can_answer(
    stub: Stub, server: RunningServer
) -> None:
    learner = str(uuid.uuid4())
    await record(stub, [[event(user_id=learner), event(user_id=learner)]])
    target = ("--target", f"127.0.0.1:{server.port}")

    refused = await cli("delete-user", learner, *target, stdin=b"y\n")
    assert refused.code == 2
    assert refused.err.strip() == (
        "daily-aggregator delete-user: error: refusing to erase without confirmation: "
        "stdin is not a terminal; pass --yes"
    )
    assert await stored_events(stub, learner) == 2

    done = await cli("delete-user", learner, *target, "--yes", "--json")
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    assert answer["user_id"] == learner
    assert answer["deleted_events"] == 2
    assert datetime.fromisoformat(answer["erased_at"]).tzinfo is not None
    assert await stored_events(stub, learner) == 0


async def on_a_terminal(*args: str, answer: bytes) -> Run:
    """Run `daily-aggregator ARGS` with a terminal for stdin, and type `answer` into it."""
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            COMMAND,
            *args,
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        os.write(controller, answer)
        out, err = await asyncio.wait_for(process.communicate(), 180)
    finally:
        os.close(terminal)
        os.close(controller)
    return Run(process.returncode or 0, out.decode(), err.decode())


async def test_delete_user_asks_on_the_terminal_first(stub: Stub, server: RunningServer) -> None:
    learner = str(uuid.uuid4())
    await record(stub, [[event(user_id=learner, at=datetime(2025, 1, 2, tzinfo=UTC))]])
    target = ("--target", f"127.0.0.1:{server.port}")

    declined = await on_a_terminal("delete-user", learner, *target, answer=b"n\n")
    assert declined.code == 1
    assert f"Erase learner {learner}?" in declined.err
    assert declined.err.rstrip().endswith("daily-aggregator delete-user: not erased")
    assert await stored_events(stub, learner) == 1

    confirmed = await on_a_terminal("delete-user", learner, *target, answer=b"yes\n")
    assert confirmed.code == 0, confirmed.err
    when = erased_at(await delete_user(stub, learner))
    lines = confirmed.out.splitlines()
    assert lines[0] == f"erased learner {learner}: 1 event deleted"
    assert re.fullmatch(
        r"erased_at: \S+Z \(their events from before then are refused from now on\)", lines[1]
    )
    assert datetime.fromisoformat(lines[1].split()[1]) < when
    assert await stored_events(stub, learner) == 0
