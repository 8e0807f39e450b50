"""What every command shares: exit codes, the client from flags, one-line errors."""

from __future__ import annotations

import argparse
import sys

from daily_aggregator.client import (
    Client,
    Dimension,
    Metric,
)

DEFAULT_TARGET = "127.0.0.1:50051"

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


METRICS = {
    "events": Metric.EVENTS,
    "words": Metric.WORD_COUNT,
    "seconds": Metric.STUDY_SECONDS,
    "users": Metric.UNIQUE_USERS,
}
DIMENSIONS = {"user": Dimension.USER, "country": Dimension.COUNTRY}


class UsageError(Exception):
    """A mistake in what the user asked for; reported in one line, exit code 2."""


def client_for(args: argparse.Namespace) -> Client:
    return Client(args.target, token=args.token)


def fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]
