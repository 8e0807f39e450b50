"""The `daily-aggregator` command line: serve, ingest, summary, uniques, breakdown, retention,
learner, delete-user, demo.

The library (`daily_aggregator.client`) never imports this module; only this module
imports `rich`. Exit codes:

    0  everything done (ingest: every event was stored or was already stored)
    1  partly done (ingest: some lines were bad, rejected or conflicting; delete-user: declined
       at the prompt) or a service failure
    2  usage error: a bad flag, a missing file, a request the service refused, a
       missing or refused token, or a token without the scope the command needs
    3  the service cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from daily_aggregator.client import (
    DailyAggregatorError,
    DeadlineExceededError,
    Granularity,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from daily_aggregator.client.cli._common import (
    DIMENSIONS,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    METRICS,
    UsageError,
    fail,
    first_line,
)
from daily_aggregator.client.cli._demo import demo_command
from daily_aggregator.client.cli._erasure import delete_user_command
from daily_aggregator.client.cli._ingest import ingest_command
from daily_aggregator.client.cli._learner import learner_command
from daily_aggregator.client.cli._reports import (
    breakdown_command,
    summary_command,
    uniques_command,
)
from daily_aggregator.client.cli._retention import GRANULARITIES as RETENTION_GRANULARITIES
from daily_aggregator.client.cli._retention import retention_command

DEFAULT_TARGET = "127.0.0.1:50051"
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
        fail(f"daily-aggregator {parsed.command}: error: {exc}")
        return EXIT_USAGE
    except InvalidArgumentError as exc:
        reasons = [f"{v.field}: {v.description}" for v in exc.field_violations] or [exc.message]
        fail(f"daily-aggregator {parsed.command}: refused: {'; '.join(reasons)}")
        return EXIT_USAGE
    except UnauthenticatedError as exc:
        fail(
            f"daily-aggregator {parsed.command}: not authenticated: {first_line(exc.message)} "
            "(pass --token or set DAILY_AGGREGATOR_TOKEN)"
        )
        return EXIT_USAGE
    except PermissionDeniedError as exc:
        fail(f"daily-aggregator {parsed.command}: not permitted: {first_line(exc.message)}")
        return EXIT_USAGE
    except (UnavailableError, DeadlineExceededError) as exc:
        fail(f"cannot reach Daily Aggregator at {target}: {first_line(exc.message)}")
        return EXIT_UNREACHABLE
    except DailyAggregatorError as exc:
        fail(f"daily-aggregator {parsed.command}: {exc.code.name}: {first_line(exc.message)}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_PARTIAL


def serve_command(argv: Sequence[str]) -> int:
    """`daily-aggregator serve FLAGS`: run the service until SIGTERM or SIGINT."""
    # The server, asyncpg and PostgreSQL tooling load only for this command.
    from daily_aggregator.server import logs
    from daily_aggregator.server.app import StartupError, configure_logging, serve
    from daily_aggregator.server.config import Settings

    settings = Settings.from_args(argv)
    configure_logging(settings)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except StartupError as exc:
        if settings.log_format == "json":
            # Whatever reads the JSON lines gets the reason as one of them.
            logs.failed(f"daily-aggregator serve: {exc}")
        else:
            fail(f"daily-aggregator serve: {exc}")
        return EXIT_PARTIAL
    return EXIT_OK


def _days(text: str) -> int:
    """A count of days for --rolling: a whole number, 0 or more (the service checks the rest)."""
    try:
        days = int(text)
    except ValueError:
        days = -1
    if days < 0:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return days


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
    connection.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("DAILY_AGGREGATOR_TLS", "").lower() in ("1", "true", "yes"),
        help="connect with TLS, trusting the system's root certificates "
        "(env DAILY_AGGREGATOR_TLS=1)",
    )
    connection.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=os.environ.get("DAILY_AGGREGATOR_TLS_CA") or None,
        help="connect with TLS, trusting the PEM certificates in FILE "
        "(env DAILY_AGGREGATOR_TLS_CA)",
    )
    connection.add_argument(
        "--tls-client-cert",
        metavar="FILE",
        default=os.environ.get("DAILY_AGGREGATOR_TLS_CLIENT_CERT") or None,
        help="connect with TLS and present the PEM client certificate chain in FILE, for a "
        "service that requires one (env DAILY_AGGREGATOR_TLS_CLIENT_CERT)",
    )
    connection.add_argument(
        "--tls-client-key",
        metavar="FILE",
        default=os.environ.get("DAILY_AGGREGATOR_TLS_CLIENT_KEY") or None,
        help="the PEM private key of --tls-client-cert (env DAILY_AGGREGATOR_TLS_CLIENT_KEY)",
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
    ingest.set_defaults(run=ingest_command)

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
    questions.add_argument(
        "--compare",
        action="store_true",
        help="also show the previous period and the change in %% (summary, uniques: the same "
        "number of buckets before; breakdown: the same length before)",
    )
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
    summary.set_defaults(run=summary_command)

    uniques = commands.add_parser(
        "uniques",
        parents=[questions, bucketed],
        help="distinct learners per bucket",
        description="Distinct active learners per calendar bucket and over the range.",
    )
    uniques.add_argument(
        "--rolling",
        type=_days,
        default=0,
        metavar="N",
        help="also count, per day, the learners of the N local days ending with it "
        "(7: weekly actives per day; daily buckets only)",
    )
    uniques.set_defaults(run=uniques_command)

    breakdown = commands.add_parser(
        "breakdown",
        parents=[questions],
        help="top users or countries by a metric",
        description="Users or countries ranked by a metric over the range.",
    )
    breakdown.add_argument("--by", choices=sorted(DIMENSIONS), default="user", help="group by")
    breakdown.add_argument("--metric", choices=list(METRICS), default="events", help="rank by")
    breakdown.add_argument("--limit", type=int, default=10, help="rows to show (default 10)")
    breakdown.set_defaults(run=breakdown_command)

    learner = commands.add_parser(
        "learner",
        parents=[connection],
        help="one learner's totals, active days and streaks",
        description="One learner's events, words and study time, first and last activity, "
        "active local days, and the current and longest streaks of consecutive days.",
    )
    learner.add_argument("user_id", metavar="USER_ID", help="the learner's user_id")
    learner.add_argument(
        "--tz", help="time zone of the local dates: IANA name or +HH:MM (default UTC)"
    )
    learner.add_argument(
        "--as-of",
        metavar="TIME",
        help="count only events before this ISO 8601 time (default: now); without an offset "
        "it is read in --tz",
    )
    learner.add_argument("--json", action="store_true", help="print JSON instead of a table")
    learner.set_defaults(run=learner_command)
    retention = commands.add_parser(
        "retention",
        parents=[questions],
        help="new learners per bucket and how many came back",
        description="Cohorts of new learners (first event in a bucket of the range) and how "
        "many of them were active in each of the following buckets, as a shaded triangle.",
    )
    retention.add_argument(
        "--granularity",
        choices=RETENTION_GRANULARITIES,
        default="day",
        help="bucket size of the cohorts and the periods after them (default day)",
    )
    retention.add_argument(
        "--periods",
        type=int,
        default=7,
        metavar="N",
        help="buckets to follow after each cohort's, 1 to 365 (default 7)",
    )
    retention.set_defaults(run=retention_command)

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
    demo.set_defaults(run=demo_command)

    delete_user = commands.add_parser(
        "delete-user",
        parents=[connection],
        help="erase a learner: every stored event, from every answer",
        description="Erase a learner: delete every stored event of theirs from every answer, "
        "and refuse their events that occurred before now when they are sent again. Asks for "
        "confirmation on the terminal unless --yes.",
    )
    delete_user.add_argument("user_id", metavar="USER_ID", help="the learner's user_id")
    delete_user.add_argument(
        "--yes", action="store_true", help="erase without asking (needed when stdin is no terminal)"
    )
    delete_user.add_argument("--json", action="store_true", help="print the result as JSON")
    delete_user.set_defaults(run=delete_user_command)
    return parser


if __name__ == "__main__":
    sys.exit(main())
