"""Hostile requests, generated: every RPC's fields at their extremes, and raw bytes.

Each property sends what a careless or malicious caller could send and checks the
service's side of the contract: no answer is INTERNAL or UNKNOWN; a refusal is
INVALID_ARGUMENT naming a field that was indeed given a hostile value (or
"malformed request" for bytes that do not decode); RESOURCE_EXHAUSTED comes
exactly for a message over the size limit; and afterwards the server still
reports SERVING and counts every stored event exactly.

One server per PostgreSQL flavour serves the whole module (Hypothesis runs each
property many times, and a server per example would cost more than the examples).
Its message limit is 256 KiB, so messages over it stay cheap to build.
"""

from __future__ import annotations

import asyncio
import operator
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import message, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from daily_aggregator.server.app import SERVICE_NAME, RunningServer
from daily_aggregator.server.config import Settings
from daily_aggregator.v1 import aggregator_pb2 as pb
from daily_aggregator.v1 import aggregator_pb2_grpc
from tests.conftest import Cluster, serving

LIMIT = 256 * 1024
"""--max-message-bytes of the module's server."""

PROFILE = settings(
    deadline=None,
    database=None,
    # CI runs the same examples every time; a developer's run explores new ones.
    derandomize=bool(os.environ.get("CI")),
    # Oversized strings and batches are the point, and the server is the module's.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seconds_at(year: int) -> int:
    return int((datetime(year, 1, 1, tzinfo=UTC) - EPOCH).total_seconds())


TIMESTAMP_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z, the least Timestamp allows
TIMESTAMP_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z, the most
NOW = int(datetime.now(UTC).timestamp())


@dataclass
class Hostile:
    """The module's server, its database and a channel to it."""

    running: RunningServer
    pool: asyncpg.Pool
    channel: grpc.aio.Channel
    stub: aggregator_pb2_grpc.AggregatorServiceStub
    health: health_pb2_grpc.HealthStub


@pytest.fixture(scope="module")
async def hostile(cluster: Cluster) -> AsyncIterator[Hostile]:
    """A server with a 256 KiB message limit on a fresh database, for the whole module."""
    settings = Settings(listen="127.0.0.1:0", max_message_bytes=LIMIT, grace_seconds=5)
    async with serving(await cluster.new_database(), settings, max_size=8) as served:
        yield Hostile(
            served.running,
            served.pool,
            served.channel,
            served.stub,
            health_pb2_grpc.HealthStub(served.channel),
        )


# --- what a healthy server answers ---------------------------------------------------------

EVERYTHING = {
    "start_time": timestamp_pb2.Timestamp(seconds=seconds_at(2000)),
    "end_time": timestamp_pb2.Timestamp(seconds=seconds_at(2100)),
}


async def assert_healthy(h: Hostile) -> None:
    """SERVING, and a Summary of everything counts exactly what the events table holds."""
    for service in ("", SERVICE_NAME):
        reply = await h.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # A stream cut short by RESOURCE_EXHAUSTED may still be committing what came before the
    # oversized message: compare with a count that stayed the same around the answer.
    count = "SELECT count(*) AS events, coalesce(sum(word_count), 0) AS words FROM events"
    async with asyncio.timeout(60):
        while True:
            before = await h.pool.fetchrow(count)
            summary = await h.stub.Summary(
                pb.SummaryRequest(**EVERYTHING, granularity=pb.GRANULARITY_MONTH), timeout=30
            )
            if tuple(await h.pool.fetchrow(count)) == tuple(before):
                break
    assert (summary.totals.events, summary.totals.word_count) == tuple(before)


@dataclass
class Outcome:
    """How a call ended: its status, the fields it named, its response when OK."""

    code: grpc.StatusCode
    details: str = ""
    fields: list[str] = field(default_factory=list)
    response: Any = None


def outcome_of(exc: grpc.aio.AioRpcError) -> Outcome:
    fields: list[str] = []
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # the status detail does not match the code grpc reports
        status = None
    if status is not None:
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            assert detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return Outcome(exc.code(), exc.details() or "", fields)


CLIENT_SIDE_INTERNAL = "Internal error from Core"
"""What grpcio's asyncio client reports, instead of the server's status, when the server ends
a stream it is still sending (grpc/grpc#36066); the server's own INTERNAL says otherwise."""


async def call(method: Any, request: Any) -> Outcome:
    """The outcome of one call; a stream is given as a list of its messages.

    A stream the client reports as its own internal error is sent again (at most twenty
    times: on a loaded machine five in a row happened), since that report hides the status
    the server sent; resending a stream is safe, as what its first attempt stored comes
    back as duplicates.
    """
    for _ in range(20):
        try:
            response = await method(
                iter(request) if isinstance(request, list) else request, timeout=60
            )
        except grpc.aio.AioRpcError as exc:
            outcome = outcome_of(exc)
            if not (isinstance(request, list) and outcome.details == CLIENT_SIDE_INTERNAL):
                return outcome
        else:
            return Outcome(grpc.StatusCode.OK, response=response)
    return outcome


def base_field(name: str) -> str:
    """`countries[3]` -> `countries`."""
    return re.sub(r"\[\d+\]$", "", name)


def assert_refusal_names(outcome: Outcome, hostile: set[str], size: int) -> None:
    """The status is what the contract allows for a request with `hostile` fields."""
    note(f"outcome: {outcome.code.name} {outcome.details[:300]!r} {outcome.fields}")
    event(outcome.code.name, payload=" ".join(base_field(f) for f in outcome.fields))
    if size > LIMIT:
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return
    assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        [named] = outcome.fields
        assert base_field(named) in hostile, f"{named} refused but only {hostile} were hostile"
        assert len(outcome.details) < 1000, "a refusal repeats no unbounded input"


# --- strategies ---------------------------------------------------------------------------

UTF8 = st.characters(codec="utf-8")
UUIDS = st.uuids().map(str)


def oversized(max_count: int = 100_000) -> st.SearchStrategy[str]:
    """A character or a short string repeated up to `max_count` times."""
    piece = st.one_of(UTF8, st.sampled_from(["a", "\x00", "é", "😀", "ab-", "0"]))
    count = st.one_of(st.integers(0, 64), st.integers(1000, max_count), st.just(max_count))
    return st.builds(operator.mul, piece, count)


HOSTILE_TEXT = st.one_of(
    st.text(UTF8, max_size=40),
    oversized(),
    st.sampled_from(
        ["", " ", "\x00", "\u202e", "\ufeff", "null", "%s%n", "'; DROP TABLE events;--"]
    ),
)
HOSTILE_UUID = st.one_of(
    HOSTILE_TEXT,
    UUIDS.map(str.upper),
    UUIDS.map(lambda u: u.replace("-", "")),
    UUIDS.map(lambda u: u[:-1] + "g"),
    UUIDS.map(lambda u: "{" + u + "}"),
    UUIDS.map(lambda u: u + "\x00"),
    UUIDS.map(
        lambda u: u.translate(str.maketrans("0123456789", "".join(map(chr, range(0x660, 0x66A)))))
    ),
)

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
EDGE_SECONDS = [
    TIMESTAMP_MIN - 1,
    TIMESTAMP_MIN,
    TIMESTAMP_MAX,
    TIMESTAMP_MAX + 1,
    -(2**63),
    2**63 - 1,
    -1,
    0,
    seconds_at(1900) - 1,
    seconds_at(1900),
    seconds_at(2000) - 1,
    seconds_at(2000),
    seconds_at(2200),
    seconds_at(2200) + 1,
    NOW + 86_400 - 3600,
    NOW + 86_400 + 3600,
]
HOSTILE_SECONDS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(EDGE_SECONDS))
HOSTILE_NANOS = st.one_of(INT32, st.sampled_from([-1, 0, 999_999_999, 1_000_000_000]))
HOSTILE_TIMESTAMP = st.builds(timestamp_pb2.Timestamp, seconds=HOSTILE_SECONDS, nanos=HOSTILE_NANOS)

VALID_COUNTRIES = ["JP", "US", "DE", "ZA", "FR"]
HOSTILE_COUNTRY = st.one_of(
    HOSTILE_TEXT, st.sampled_from(["jp", "JPN", "J1", "ÉÉ", "J", "\uff2a\uff30", "XX", "ZZ"])
)
HOSTILE_COUNTRIES = st.one_of(
    st.lists(st.one_of(st.sampled_from(VALID_COUNTRIES), HOSTILE_COUNTRY), max_size=8),
    # Long lists of short entries, valid or not (long entries come in short lists above).
    st.builds(
        operator.mul,
        st.lists(
            st.text(UTF8, max_size=4) | HOSTILE_COUNTRY.filter(lambda c: len(c) < 8),
            min_size=1,
            max_size=2,
        ),
        st.integers(0, 30_000),
    ),
    st.builds(operator.mul, st.sampled_from([["JP"], ["JP", "US"]]), st.integers(0, 60_000)),
)

VALID_ZONES = [
    "",
    "UTC",
    "Asia/Tokyo",
    "Asia/Kathmandu",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "America/Havana",
    "+09:00",
    "-03:30",
    "+14:00",
    "-14:00",
    "+05:17",
]
HOSTILE_ZONE = st.one_of(
    HOSTILE_TEXT,
    st.sampled_from(
        [
            "UTC+3",
            "+14:01",
            "-14:30",
            "+09:60",
            "+9:00",
            "+\u0660\u0669:\u0660\u0660",
            "asia/tokyo",
            "Asia/Tokyo\x00",
            "Asia/Tokyo ",
            "posix/Asia/Tokyo",
            "localtime",
            "Factory",
            "../../etc/passwd",
        ]
    ),
    st.builds(operator.add, st.sampled_from(VALID_ZONES), oversized(20_000)),
)

GRANULARITIES = list(pb.Granularity.values())
DIMENSIONS = list(pb.Dimension.values())
METRICS = list(pb.Metric.values())


@st.composite
def valid_range(draw: st.DrawFn) -> tuple[timestamp_pb2.Timestamp, timestamp_pb2.Timestamp]:
    """A range of up to 365 days within 1900..2200: never more than 10,000 buckets."""
    start = draw(
        st.one_of(
            st.integers(seconds_at(2000), NOW),
            st.integers(seconds_at(1900), seconds_at(2200) - 366 * 86_400),
        )
    )
    length = draw(st.integers(1, 365 * 86_400))
    nanos = draw(st.integers(0, 999_999_999))
    return (
        timestamp_pb2.Timestamp(seconds=start, nanos=nanos),
        timestamp_pb2.Timestamp(seconds=start + length, nanos=nanos),
    )


@st.composite
def hostile_range(draw: st.DrawFn) -> tuple[timestamp_pb2.Timestamp | None, ...]:
    """Each end anything, or missing."""
    ends = st.one_of(st.none(), HOSTILE_TIMESTAMP, valid_range().map(operator.itemgetter(0)))
    return draw(ends), draw(ends)


@dataclass
class Drawn:
    """A request and the names of the fields a refusal may name."""

    request: Any
    hostile: set[str]

    def size(self) -> int:
        return int(self.request.ByteSize())


IMPLIED = {"range": {"start_time", "end_time", "granularity"}}
"""A hostile range may be refused on either end, or for holding too many buckets."""


class Hostility:
    """Picks one or two fields of a request to get hostile values; the rest are valid.

    Few at a time, so that every field's check is reached and none hides behind
    another that is checked first.
    """

    def __init__(
        self, draw: st.DrawFn, names: Sequence[str], least: int = 1, most: int = 2
    ) -> None:
        self._draw = draw
        self.chosen: set[str] = draw(st.sets(st.sampled_from(names), min_size=least, max_size=most))

    def value(self, name: str, valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return self._draw(bad if name in self.chosen else valid)

    def drawn(self, request: Any) -> Drawn:
        blamable = set(self.chosen)
        for name in self.chosen:
            blamable |= IMPLIED.get(name, set())
        return Drawn(request, blamable)

    def fill_range(self, request: Any) -> None:
        start, end = self.value("range", valid_range(), hostile_range())
        if start is not None:
            request.start_time.CopyFrom(start)
        if end is not None:
            request.end_time.CopyFrom(end)

    def fill_countries(self, request: Any) -> None:
        valid = st.lists(st.sampled_from(VALID_COUNTRIES), max_size=3)
        for name in ("countries", "exclude_countries"):
            getattr(request, name).extend(self.value(name, valid, HOSTILE_COUNTRIES))


SERIES_FIELDS = ["range", "granularity", "time_zone", "countries", "exclude_countries"]


@st.composite
def summary_requests(draw: st.DrawFn, least: int = 1, most: int = 2) -> Drawn:
    pick = Hostility(draw, [*SERIES_FIELDS, "user_id", "moving_average_window"], least, most)
    request = pb.SummaryRequest(
        user_id=pick.value("user_id", st.one_of(st.just(""), UUIDS), HOSTILE_UUID),
        time_zone=pick.value("time_zone", st.sampled_from(VALID_ZONES), HOSTILE_ZONE),
        moving_average_window=pick.value("moving_average_window", st.integers(0, 365), UINT32),
    )
    request.granularity = pick.value("granularity", st.sampled_from(GRANULARITIES), INT32)
    pick.fill_range(request)
    pick.fill_countries(request)
    return pick.drawn(request)


@st.composite
def uniques_requests(draw: st.DrawFn, least: int = 1, most: int = 2) -> Drawn:
    pick = Hostility(draw, SERIES_FIELDS, least, most)
    request = pb.UniquesRequest(
        time_zone=pick.value("time_zone", st.sampled_from(VALID_ZONES), HOSTILE_ZONE),
    )
    request.granularity = pick.value("granularity", st.sampled_from(GRANULARITIES), INT32)
    pick.fill_range(request)
    pick.fill_countries(request)
    return pick.drawn(request)


@st.composite
def breakdown_requests(draw: st.DrawFn, least: int = 1, most: int = 2) -> Drawn:
    fields = ["range", "dimension", "metric", "limit", "countries", "exclude_countries"]
    pick = Hostility(draw, fields, least, most)
    request = pb.BreakdownRequest(limit=pick.value("limit", st.integers(0, 1000), UINT32))
    request.dimension = pick.value("dimension", st.sampled_from(DIMENSIONS[1:]), INT32)
    request.metric = pick.value("metric", st.sampled_from(METRICS), INT32)
    pick.fill_range(request)
    pick.fill_countries(request)
    return pick.drawn(request)


# --- the query RPCs -----------------------------------------------------------------------


def assert_buckets_in_order(buckets: Sequence[Any]) -> None:
    assert len(buckets) <= 10_000
    starts = [(b.start_time.seconds, b.start_time.nanos) for b in buckets]
    assert starts == sorted(set(starts))


@settings(PROFILE, max_examples=40)
@given(drawn=summary_requests())
async def test_summary_refuses_hostile_fields_by_name(hostile: Hostile, drawn: Drawn) -> None:
    outcome = await call(hostile.stub.Summary, drawn.request)
    assert_refusal_names(outcome, drawn.hostile, drawn.size())
    if outcome.code == grpc.StatusCode.OK:
        reply: pb.SummaryResponse = outcome.response
        assert_buckets_in_order(reply.buckets)
        assert reply.totals.events == sum(b.events for b in reply.buckets)
        assert reply.time_zone == (drawn.request.time_zone or "UTC")
    await assert_healthy(hostile)


@settings(PROFILE, max_examples=30)
@given(drawn=uniques_requests())
async def test_uniques_refuses_hostile_fields_by_name(hostile: Hostile, drawn: Drawn) -> None:
    outcome = await call(hostile.stub.Uniques, drawn.request)
    assert_refusal_names(outcome, drawn.hostile, drawn.size())
    if outcome.code == grpc.StatusCode.OK:
        reply: pb.UniquesResponse = outcome.response
        assert_buckets_in_order(reply.buckets)
        assert all(b.unique_users <= reply.unique_users for b in reply.buckets)
    await assert_healthy(hostile)


@settings(PROFILE, max_examples=30)
@given(drawn=breakdown_requests())
async def test_breakdown_refuses_hostile_fields_by_name(hostile: Hostile, drawn: Drawn) -> None:
    outcome = await call(hostile.stub.Breakdown, drawn.request)
    assert_refusal_names(outcome, drawn.hostile, drawn.size())
    if outcome.code == grpc.StatusCode.OK:
        reply: pb.BreakdownResponse = outcome.response
        assert len(reply.rows) <= (drawn.request.limit or 10)
    await assert_healthy(hostile)


# --- RecordEvents -------------------------------------------------------------------------

MIN_OCCURRED_US = seconds_at(2000) * 1_000_000
FUTURE_US = 86_400 * 1_000_000
UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
EVENT_FIELDS = [
    "user_id",
    "idempotency_key",
    "occurred_at",
    "word_count",
    "study_seconds",
    "country",
]

VALID_OCCURRED_AT = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(seconds_at(2000), NOW),
    nanos=st.integers(0, 999_999_999),
)


@st.composite
def hostile_events(draw: st.DrawFn) -> pb.Event:
    """An event with up to two hostile fields."""
    pick = Hostility(draw, EVENT_FIELDS, least=0)
    sent = pb.Event(
        user_id=pick.value("user_id", st.one_of(UUIDS, UUIDS.map(str.upper)), HOSTILE_UUID),
        idempotency_key=pick.value("idempotency_key", UUIDS, HOSTILE_UUID),
        word_count=pick.value("word_count", st.integers(0, 1_000_000), UINT32),
        study_seconds=pick.value("study_seconds", st.integers(0, 86_400), UINT32),
        country=pick.value("country", st.sampled_from(["", *VALID_COUNTRIES]), HOSTILE_COUNTRY),
    )
    occurred = pick.value("occurred_at", st.none() | VALID_OCCURRED_AT, HOSTILE_TIMESTAMP)
    if occurred is not None:
        sent.occurred_at.CopyFrom(occurred)
    return sent


def first_problem(sent: pb.Event, now_us: int) -> str | None:
    """The field RecordEvents must reject `sent` for, as the contract states the rules."""
    if not UUID_PATTERN.fullmatch(sent.user_id):
        return "user_id"
    if not UUID_PATTERN.fullmatch(sent.idempotency_key):
        return "idempotency_key"
    if sent.HasField("occurred_at"):
        ts = sent.occurred_at
        us = ts.seconds * 1_000_000 + ts.nanos // 1000
        if not 0 <= ts.nanos < 1_000_000_000 or not MIN_OCCURRED_US <= us <= now_us + FUTURE_US:
            return "occurred_at"
    if sent.word_count > 1_000_000:
        return "word_count"
    if sent.study_seconds > 86_400:
        return "study_seconds"
    if sent.country and not re.fullmatch(r"[A-Z]{2}", sent.country):
        return "country"
    return None


STORED_AMONG = """
SELECT count(*) FROM events
WHERE (user_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
"""


async def stored_among(pool: asyncpg.Pool, pairs: set[tuple[str, str]]) -> int:
    users, keys = [p[0] for p in pairs], [p[1] for p in pairs]
    count: int = await pool.fetchval(STORED_AMONG, users, keys)
    return count


async def record(h: Hostile, batches: Sequence[Sequence[pb.Event]]) -> Outcome:
    requests = [pb.RecordEventsRequest(events=b) for b in batches]
    return await call(h.stub.RecordEvents, list(requests))


@settings(PROFILE, max_examples=40)
@given(batches=st.lists(st.lists(hostile_events(), max_size=12), max_size=4))
async def test_record_events_rejects_each_hostile_event_by_name_and_stores_the_rest(
    hostile: Hostile, batches: list[list[pb.Event]]
) -> None:
    before_us = int(datetime.now(UTC).timestamp() * 1_000_000)

    def settled(e: pb.Event) -> bool:
        # The receive time decides "24 hours ahead": leave out what the clock could tip.
        return first_problem(e, before_us) == first_problem(e, before_us + 600_000_000)

    batches = [[e for e in batch if settled(e)] for batch in batches]
    sent = [e for batch in batches for e in batch]
    problems = [first_problem(e, before_us) for e in sent]
    valid = {
        (e.user_id.lower(), e.idempotency_key.lower())
        for e, problem in zip(sent, problems, strict=True)
        if problem is None
    }
    stored_before = await stored_among(hostile.pool, valid)
    sizes = [pb.RecordEventsRequest(events=b).ByteSize() for b in batches]
    outcome = await record(hostile, batches)
    note(f"outcome: {outcome.code.name} {outcome.details[:300]!r}; sizes {sizes}")
    event(outcome.code.name, payload=" ".join(sorted({p for p in problems if p})))
    if any(size > LIMIT for size in sizes):
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        await assert_healthy(hostile)
        return
    assert outcome.code == grpc.StatusCode.OK
    reply: pb.RecordEventsResponse = outcome.response
    rejected = [(i, p) for i, p in enumerate(problems) if p is not None]
    assert reply.received == len(sent)
    assert reply.rejected == len(rejected)
    assert reply.inserted + reply.duplicates + reply.conflicts == len(sent) - len(rejected)
    assert [(e.index, e.field) for e in reply.errors] == rejected[:100]
    assert [e.idempotency_key for e in reply.errors] == [
        sent[i].idempotency_key[:64] for i, _ in rejected[:100]
    ]
    assert reply.errors_truncated == (len(rejected) > 100)
    # Every valid event is stored, each (user, key) once.
    assert await stored_among(hostile.pool, valid) == len(valid)
    assert reply.inserted == len(valid) - stored_before
    await assert_healthy(hostile)


def valid_event() -> pb.Event:
    valid = pb.Event(
        user_id=str(uuid.uuid4()),
        idempotency_key=str(uuid.uuid4()),
        word_count=7,
        study_seconds=60,
        country="JP",
    )
    valid.occurred_at.FromDatetime(datetime(2024, 2, 29, 12, tzinfo=UTC))
    return valid


def batch_of_size(target: int) -> tuple[list[pb.Event], int]:
    """Valid events and one invalid padding event whose message is `target` bytes (or one more,
    where a length prefix grows); returns the events and the message's size."""
    events = [valid_event()]
    per_event = pb.RecordEventsRequest(events=events).ByteSize()
    events += [valid_event() for _ in range(max(0, target // per_event - 2))]
    padding = pb.Event(user_id="", idempotency_key=str(uuid.uuid4()))
    events.append(padding)
    for _ in range(4):
        size = pb.RecordEventsRequest(events=events).ByteSize()
        if size == target:
            break
        padding.user_id = "p" * max(0, len(padding.user_id) + target - size)
    return events, pb.RecordEventsRequest(events=events).ByteSize()


@settings(PROFILE, max_examples=12)
@given(
    offset=st.one_of(st.integers(-3, 3), st.integers(-LIMIT + 200, LIMIT // 4)),
    before=st.integers(0, 2),
)
async def test_a_message_up_to_the_limit_is_stored_and_one_past_it_is_resource_exhausted(
    hostile: Hostile, offset: int, before: int
) -> None:
    large, size = batch_of_size(LIMIT + offset)
    note(f"message of {size} bytes")
    small = [[valid_event() for _ in range(5)] for _ in range(before)]
    after = [valid_event() for _ in range(5)]
    outcome = await record(hostile, [*small, large, after])
    earlier = {(e.user_id, e.idempotency_key) for batch in small for e in batch}
    if size <= LIMIT:
        assert outcome.code == grpc.StatusCode.OK
        reply: pb.RecordEventsResponse = outcome.response
        assert (reply.received, reply.rejected) == (5 * before + len(large) + 5, 1)
        assert reply.inserted == reply.received - 1
    else:
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"({size} vs. {LIMIT})" in outcome.details
        # The batches before it commit (the error may arrive first), and nothing after it.
        async with asyncio.timeout(30):
            while await stored_among(hostile.pool, earlier) < len(earlier):
                await asyncio.sleep(0.05)
        assert (
            await stored_among(hostile.pool, {(e.user_id, e.idempotency_key) for e in after}) == 0
        )
    await assert_healthy(hostile)


async def test_rejections_of_huge_keys_make_a_small_response(hostile: Hostile) -> None:
    # 40 messages of one event with a 200 KB key: describing each in full would need
    # 8 MB, twice what a client accepts by default.
    batches = [[pb.Event(user_id="nope", idempotency_key=f"{i:02d}" * 100_000)] for i in range(40)]
    outcome = await record(hostile, batches)
    assert outcome.code == grpc.StatusCode.OK
    reply: pb.RecordEventsResponse = outcome.response
    assert (reply.received, reply.rejected) == (40, 40)
    assert [e.idempotency_key for e in reply.errors] == [f"{i:02d}" * 32 for i in range(40)]


# --- raw bytes ----------------------------------------------------------------------------

UNARY = {  # each method's request type, and valid requests to damage
    "Summary": (pb.SummaryRequest, summary_requests(0, 0)),
    "Uniques": (pb.UniquesRequest, uniques_requests(0, 0)),
    "Breakdown": (pb.BreakdownRequest, breakdown_requests(0, 0)),
}


@st.composite
def damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """Random bytes, or `valid` cut short, or `valid` with some bits flipped."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random" or not valid:
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    flipped = bytearray(valid)
    for position in draw(st.lists(st.integers(0, len(valid) * 8 - 1), min_size=1, max_size=4)):
        flipped[position // 8] ^= 1 << (position % 8)
    return bytes(flipped)


def decodes(message_type: Any, raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except message.DecodeError:
        return None


@st.composite
def raw_unary(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(UNARY)))
    drawn: Drawn = draw(UNARY[method][1])
    return method, draw(damaged(drawn.request.SerializeToString()))


@settings(PROFILE, max_examples=50)
@given(case=raw_unary())
async def test_raw_bytes_to_a_unary_method_are_malformed_or_the_message_they_decode_to(
    hostile: Hostile, case: tuple[str, bytes]
) -> None:
    method, raw = case
    message_type = UNARY[method][0]
    outcome = await call(hostile.channel.unary_unary(f"/{SERVICE_NAME}/{method}"), raw)
    note(f"outcome: {outcome.code.name} {outcome.details[:300]!r}")
    decoded = decodes(message_type, raw)
    event("decodes" if decoded is not None else "malformed", payload=outcome.code.name)
    if decoded is None:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        name = message_type.DESCRIPTOR.full_name
        assert outcome.details.startswith(f"malformed request: cannot decode {name}: ")
        assert outcome.fields == []
    else:
        # The bytes mean the message they decode to: the same answer, as if sent by a stub.
        again = await call(getattr(hostile.stub, method), decoded)
        assert (outcome.code, outcome.details, outcome.fields) == (
            again.code,
            again.details,
            again.fields,
        )
        if outcome.code == grpc.StatusCode.OK:
            assert outcome.response == again.response.SerializeToString()
        else:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    await assert_healthy(hostile)


@st.composite
def raw_streams(draw: st.DrawFn) -> list[bytes]:
    """One to four messages, each a valid batch or a damaged one."""
    messages = []
    for _ in range(draw(st.integers(1, 4))):
        batch = pb.RecordEventsRequest(
            events=[valid_event() for _ in range(draw(st.integers(0, 4)))]
        )
        valid = batch.SerializeToString()
        messages.append(draw(st.one_of(st.just(valid), damaged(valid))))
    return messages


@settings(PROFILE, max_examples=30)
@given(messages=raw_streams())
async def test_raw_bytes_in_a_stream_fail_it_at_the_first_malformed_message(
    hostile: Hostile, messages: list[bytes]
) -> None:
    decoded = [decodes(pb.RecordEventsRequest, raw) for raw in messages]
    outcome = await call(
        hostile.channel.stream_unary(f"/{SERVICE_NAME}/RecordEvents"), list(messages)
    )
    note(f"outcome: {outcome.code.name} {outcome.details[:300]!r}")
    event(outcome.code.name)
    read = decoded
    if None in decoded:
        position = decoded.index(None)
        read = decoded[:position]
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.details.startswith(
            f"malformed request: stream message {position} (counting from 0): cannot decode"
            " daily_aggregator.v1.RecordEventsRequest: "
        )
    else:
        assert outcome.code == grpc.StatusCode.OK
        reply = pb.RecordEventsResponse.FromString(outcome.response)
        received = sum(len(m.events) for m in decoded if m is not None)
        assert reply.received == received
        assert reply.inserted + reply.duplicates + reply.conflicts + reply.rejected == received
    # Whatever came before the malformed message is stored when the answer arrives.
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    valid = {
        (e.user_id.lower(), e.idempotency_key.lower())
        for m in read
        if m is not None
        for e in m.events
        if first_problem(e, now_us) is None
    }
    assert await stored_among(hostile.pool, valid) == len(valid)
    await assert_healthy(hostile)
