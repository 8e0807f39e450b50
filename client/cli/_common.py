"""What every command shares: exit codes, the client from flags, one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

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


def credentials_for(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls/--tls-ca/--tls-client-cert; None for a plaintext channel."""
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        raise UsageError("--tls-client-cert and --tls-client-key go together")
    roots = _read(args, "tls_ca")
    chain = _read(args, "tls_client_cert")
    key = _read(args, "tls_client_key")
    if roots is None and chain is None and not args.tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )


def _read(args: argparse.Namespace, option: str) -> bytes | None:
    """The contents of the file given to --OPTION; None when the option is not given."""
    name: str | None = getattr(args, option)
    if name is None:
        return None
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        flag = "--" + option.replace("_", "-")
        raise UsageError(f"{flag} {name}: {exc.strerror or exc}") from None


def client_for(args: argparse.Namespace) -> Client:
    return Client(args.target, token=args.token, credentials=credentials_for(args))


def fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]
