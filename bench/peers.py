"""The engines people would otherwise pick, ClickHouse (chDB) and DuckDB, with the same events.

Both run in this process and are asked the benchmark's questions in their own SQL,
each in the fastest form found for it: learners as UUIDs; ClickHouse as a MergeTree
ordered by time, merged after loading, answering a bucketed question in one query with
ROLLUP; DuckDB in time order, bucketing by local wall time, with the range's distinct
total as a second query (faster there than ROLLUP).
They pay no network or gRPC cost. They are never project dependencies; run the
benchmark with them installed for the run:

    uv run --with chdb --with duckdb python -m bench.queries --peers

Answers come back in the forms `bench.questions` compares:
series rows (bucket start as Unix seconds, values...) and a total, ranked rows, or
retention cells (cohort start as Unix seconds, period, learners). Retention is plain
SQL in both: each learner's first event and its local bucket, and the local buckets of
the learner's events, counted per cohort and period; ClickHouse in one pass grouped by
learner (its `retention` aggregate needs the cohort's bucket in its conditions, which
is an aggregate of the same group and not allowed there), DuckDB with a join.
"""

from __future__ import annotations

import abc
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bench.questions import Answer, Question

__all__ = ["PEERS", "Peer", "load_peers"]


class Peer(abc.ABC):
    """An engine loaded with the events, answering `Question`s."""

    name = ""

    @abc.abstractmethod
    def answer(self, question: Question) -> Answer:
        """Ask `question` as one query and return its answer in comparable form."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine."""


def _ts(q: Question) -> tuple[str, str]:
    return (_us(q.start), _us(q.end))


def _us(when: datetime) -> str:
    """A UTC instant as a literal the engines read, to the microsecond."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class ClickHouse(Peer):
    """chDB: ClickHouse in process, a MergeTree ordered by time."""

    name = "ClickHouse"

    def __init__(self, csv: Path) -> None:
        from chdb import session  # type: ignore[import-not-found]

        self._dir = tempfile.TemporaryDirectory(prefix="da-chdb-")
        self._session = session.Session(self._dir.name)
        self._session.query(
            "CREATE TABLE events (user_id UUID, occurred_at DateTime64(6, 'UTC'),"
            " word_count UInt32, study_seconds UInt32, country LowCardinality(String))"
            " ENGINE = MergeTree ORDER BY occurred_at"
        )
        self._session.query(
            "INSERT INTO events SELECT toUUID(user_id), fromUnixTimestamp64Micro(us, 'UTC'),"
            f" word_count, study_seconds, country FROM file('{csv}', CSVWithNames,"
            " 'user_id String, us Int64, word_count UInt32, study_seconds UInt32, country String')"
        )
        self._session.query("OPTIMIZE TABLE events FINAL")

    def _rows(self, sql: str) -> list[list[Any]]:
        result = self._session.query(sql + " SETTINGS group_by_use_nulls = 1", "JSONCompact")
        rows: list[list[Any]] = json.loads(result.bytes())["data"]
        return rows

    def _where(self, q: Question) -> str:
        lo, hi = _ts(q)
        where = (
            f"occurred_at >= toDateTime64('{lo}', 6, 'UTC')"
            f" AND occurred_at < toDateTime64('{hi}', 6, 'UTC')"
        )
        return where + (f" AND user_id = toUUID('{q.user_id}')" if q.user_id else "")

    def _bucket(self, q: Question) -> str:
        if q.unit == "hour":  # the zones asked about keep whole-hour offsets: UTC hours
            return "toStartOfHour(occurred_at)"
        if q.unit == "day":
            return f"toStartOfDay(occurred_at, '{q.zone}')"
        return f"toDateTime(toStartOfMonth(occurred_at, '{q.zone}'), '{q.zone}')"

    def _retention(self, q: Question) -> Answer:
        """One pass grouped by learner: the first event, and the distinct local buckets
        of the learner's events, each turned into a period (faster here than a join)."""
        lo, hi = _ts(q)
        reach = q.retention_reach().strftime("%Y-%m-%d %H:%M:%S.%f")
        local = {
            "day": "toDate({t}, '{z}')",
            "week": "toStartOfWeek({t}, 1, '{z}')",
            "month": "toStartOfMonth({t}, '{z}')",
        }[q.unit]
        period = {
            "day": "dateDiff('day', cohort, b)",
            "week": "intDiv(dateDiff('day', cohort, b), 7)",
            "month": "dateDiff('month', cohort, b)",
        }[q.unit]
        rows = self._rows(
            f"SELECT toUnixTimestamp(toDateTime(cohort, '{q.zone}')) AS s, period, count()"
            f" FROM (SELECT {local.format(t='min(occurred_at)', z=q.zone)} AS cohort,"
            " min(occurred_at) AS first_at,"
            f" groupUniqArray({local.format(t='occurred_at', z=q.zone)}) AS buckets"
            f" FROM events WHERE occurred_at < toDateTime64('{reach}', 6, 'UTC')"
            f" GROUP BY user_id HAVING first_at >= toDateTime64('{lo}', 6, 'UTC')"
            f" AND first_at < toDateTime64('{hi}', 6, 'UTC'))"
            f" ARRAY JOIN arrayMap(b -> {period}, buckets) AS period"
            f" WHERE period <= {q.periods} GROUP BY s, period ORDER BY s, period"
        )
        return [tuple(map(int, r)) for r in rows]

    def answer(self, q: Question) -> Answer:
        where = self._where(q)
        if q.kind == "stats":
            hi = _ts(q)[1]
            rows = self._rows(
                f"SELECT toString(toDate(occurred_at, '{q.zone}')) AS d, count(), sum(word_count),"
                " sum(study_seconds), toUnixTimestamp64Micro(min(occurred_at)),"
                " toUnixTimestamp64Micro(max(occurred_at)) FROM events"
                f" WHERE user_id = toUUID('{q.user_id}')"
                f" AND occurred_at < toDateTime64('{hi}', 6, 'UTC') GROUP BY d ORDER BY d"
            )
            return q.stats_answer(rows)
        if q.kind == "rolling":
            # Each learner's active local days, each spread over the days whose window holds it.
            first, last, reach = q.rolling_days_range()
            rows = self._rows(
                f"SELECT toString(d), uniqExact(user_id) FROM ("
                f" SELECT DISTINCT user_id, toDate(occurred_at, '{q.zone}') AS day FROM events"
                f" WHERE occurred_at >= toDateTime64('{_us(reach)}', 6, 'UTC')"
                f" AND occurred_at < toDateTime64('{_ts(q)[1]}', 6, 'UTC'))"
                f" ARRAY JOIN arrayMap(i -> day + i, range({q.rolling_days})) AS d"
                f" WHERE d BETWEEN toDate('{first}') AND toDate('{last}') GROUP BY d"
            )
            return q.rolling_answer([(date.fromisoformat(r[0]), r[1]) for r in rows])
        if q.kind == "retention":
            return self._retention(q)
        if q.kind in ("summary", "uniques", "learner"):
            values = (
                "count(), sum(word_count), sum(study_seconds), uniqExact(user_id)"
                if q.kind != "uniques"
                else "uniqExact(user_id)"
            )
            rows = self._rows(
                f"SELECT toUnixTimestamp({self._bucket(q)}) AS b, {values} FROM events"
                f" WHERE {where} GROUP BY ROLLUP(b) ORDER BY b"
            )
            return q.series_answer([(r[0], *map(int, r[1:])) for r in rows])
        if q.kind == "countries":
            rows = self._rows(
                "SELECT country, count(), sum(word_count), sum(study_seconds),"
                f" uniqExact(user_id) AS u FROM events WHERE {where}"
                f" GROUP BY country ORDER BY u DESC, country LIMIT {q.limit}"
            )
        else:
            rows = self._rows(
                "SELECT toString(user_id) AS u, count(), sum(word_count) AS w, sum(study_seconds)"
                f" FROM events WHERE {where} GROUP BY user_id ORDER BY w DESC, u LIMIT {q.limit}"
            )
        return [(r[0], *map(int, r[1:])) for r in rows]

    def close(self) -> None:
        self._session.close()
        self._dir.cleanup()


class DuckDB(Peer):
    """DuckDB in process, a table in insertion (time) order."""

    name = "DuckDB"

    def __init__(self, csv: Path) -> None:
        import duckdb  # type: ignore[import-not-found]

        self._db = duckdb.connect()
        self._db.execute("SET TimeZone = 'UTC'")
        self._db.execute(
            "CREATE TABLE events AS SELECT user_id::UUID AS user_id,"
            " make_timestamp(us) AT TIME ZONE 'UTC' AS occurred_at, word_count, study_seconds,"
            # The CSV writes a country of '' as an empty field, which DuckDB reads as NULL.
            " coalesce(country, '') AS country"
            f" FROM read_csv('{csv}', header = true, columns = {{'user_id': 'VARCHAR',"
            " 'us': 'BIGINT', 'word_count': 'INTEGER', 'study_seconds': 'INTEGER',"
            " 'country': 'VARCHAR'}) ORDER BY occurred_at"
        )

    def _where(self, q: Question) -> str:
        lo, hi = _ts(q)
        where = f"occurred_at >= TIMESTAMPTZ '{lo}+00' AND occurred_at < TIMESTAMPTZ '{hi}+00'"
        return where + (f" AND user_id = '{q.user_id}'::UUID" if q.user_id else "")

    def _retention(self, q: Question) -> Answer:
        lo, hi = _ts(q)
        reach = q.retention_reach().strftime("%Y-%m-%d %H:%M:%S.%f")
        period = {
            "day": "date_diff('day', c.cohort, a.bucket)",
            "week": "date_diff('day', c.cohort, a.bucket) // 7",
            "month": "date_diff('month', c.cohort, a.bucket)",
        }[q.unit]
        rows = self._db.execute(
            f"WITH c AS ("
            f" SELECT user_id, date_trunc('{q.unit}', min(occurred_at) AT TIME ZONE '{q.zone}')"
            f" AS cohort FROM events WHERE occurred_at < TIMESTAMPTZ '{reach}+00'"
            f" GROUP BY user_id HAVING min(occurred_at) >= TIMESTAMPTZ '{lo}+00'"
            f" AND min(occurred_at) < TIMESTAMPTZ '{hi}+00'"
            "), a AS ("
            f" SELECT DISTINCT user_id,"
            f" date_trunc('{q.unit}', occurred_at AT TIME ZONE '{q.zone}') AS bucket"
            f" FROM events WHERE occurred_at >= TIMESTAMPTZ '{lo}+00'"
            f" AND occurred_at < TIMESTAMPTZ '{reach}+00'"
            "), cells AS ("
            f" SELECT c.cohort, {period} AS period FROM c JOIN a USING (user_id)"
            " WHERE a.bucket >= c.cohort)"
            f" SELECT epoch(cohort AT TIME ZONE '{q.zone}')::BIGINT, period, count(*)"
            f" FROM cells WHERE period <= {q.periods} GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()
        return [tuple(map(int, r)) for r in rows]

    def answer(self, q: Question) -> Answer:
        where = self._where(q)
        if q.kind == "stats":
            hi = _ts(q)[1]
            rows = self._db.execute(
                f"SELECT strftime((occurred_at AT TIME ZONE '{q.zone}')::DATE, '%Y-%m-%d') AS d,"
                " count(*), sum(word_count), sum(study_seconds), epoch_us(min(occurred_at)),"
                f" epoch_us(max(occurred_at)) FROM events WHERE user_id = '{q.user_id}'::UUID"
                f" AND occurred_at < TIMESTAMPTZ '{hi}+00' GROUP BY d ORDER BY d"
            ).fetchall()
            return q.stats_answer(rows)
        if q.kind == "rolling":
            # Each learner's active local days, then every day joined to the days of its window.
            first, last, reach = q.rolling_days_range()
            rows = self._db.execute(
                "WITH active AS (SELECT DISTINCT user_id,"
                f" CAST(occurred_at AT TIME ZONE '{q.zone}' AS DATE) AS day FROM events"
                f" WHERE occurred_at >= TIMESTAMPTZ '{_us(reach)}+00'"
                f" AND occurred_at < TIMESTAMPTZ '{_ts(q)[1]}+00'),"
                f" days AS (SELECT CAST(d AS DATE) AS day FROM range(DATE '{first}',"
                f" DATE '{last}' + 1, INTERVAL 1 DAY) AS t (d))"
                " SELECT d.day, count(DISTINCT a.user_id) FROM days AS d JOIN active AS a"
                f" ON a.day BETWEEN d.day - {q.rolling_days - 1} AND d.day GROUP BY d.day"
            ).fetchall()
            return q.rolling_answer([(r[0], r[1]) for r in rows])
        if q.kind == "retention":
            return self._retention(q)
        if q.kind in ("summary", "uniques", "learner"):
            # Buckets by local wall time, each start turned into its instant afterwards.
            # The zones asked about keep whole-hour offsets: their hours are UTC hours.
            zone = "UTC" if q.unit == "hour" else q.zone
            values = (
                "count(*), sum(word_count), sum(study_seconds), count(DISTINCT user_id)"
                if q.kind != "uniques"
                else "count(DISTINCT user_id)"
            )
            rows = self._db.execute(
                f"SELECT epoch(b AT TIME ZONE '{zone}')::BIGINT, * EXCLUDE (b) FROM ("
                f" SELECT date_trunc('{q.unit}', occurred_at AT TIME ZONE '{zone}') AS b, {values}"
                f" FROM events WHERE {where} GROUP BY b) ORDER BY 1"
            ).fetchall()
            total = self._db.execute(
                f"SELECT count(DISTINCT user_id) FROM events WHERE {where}"
            ).fetchall()
            return q.series_answer([(r[0], *map(int, r[1:])) for r in rows] + [(None, *total[0])])
        if q.kind == "countries":
            sql = (
                "SELECT country, count(*), sum(word_count), sum(study_seconds),"
                f" count(DISTINCT user_id) AS u FROM events WHERE {where}"
                f" GROUP BY country ORDER BY u DESC, country LIMIT {q.limit}"
            )
        else:
            sql = (
                "SELECT user_id::VARCHAR AS u, count(*), sum(word_count) AS w, sum(study_seconds)"
                f" FROM events WHERE {where} GROUP BY user_id ORDER BY w DESC, u LIMIT {q.limit}"
            )
        return [(r[0], *map(int, r[1:])) for r in self._db.execute(sql).fetchall()]

    def close(self) -> None:
        self._db.close()


PEERS: dict[str, Callable[[Path], Peer]] = {"ClickHouse": ClickHouse, "DuckDB": DuckDB}


def load_peers(csv: Path) -> list[Peer]:
    """Every peer, loaded from the events exported to `csv`.

    Raises:
        SystemExit: the peers are not installed in this environment.
    """
    try:
        return [make(csv) for make in PEERS.values()]
    except ImportError as exc:
        raise SystemExit(
            f"--peers needs chdb and duckdb ({exc}); run it as\n"
            "  uv run --with chdb --with duckdb python -m bench.queries --peers"
        ) from None
