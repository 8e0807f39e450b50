"""The server's configuration: one typed object, filled from flags and environment in one place."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 300.0
DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS = 600.0
DEFAULT_POOL_MAX_SIZE = 10
DEFAULT_MAX_CONCURRENT_STREAMS = 256
# A query holds a pooled connection while it runs; four per connection keeps the pool busy
# while a few more wait their turn, and refuses the rest before they queue up for seconds.
DEFAULT_MAX_CONCURRENT_QUERIES = 4 * DEFAULT_POOL_MAX_SIZE
DEFAULT_MAX_BYTES_IN_FLIGHT = 128 * 1024 * 1024
DEFAULT_MEMORY_PATIENCE = 10.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the embedded PostgreSQL keeps its data unless told otherwise.

    `$XDG_DATA_HOME/daily-aggregator`, which is `~/.local/share/daily-aggregator`
    when XDG_DATA_HOME is unset.
    """
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "daily-aggregator"


@dataclass(frozen=True)
class Settings:
    """Everything `daily-aggregator serve` can be told."""

    listen: str = DEFAULT_LISTEN
    """HOST:PORT the gRPC server binds; port 0 picks a free port."""

    database_url: str | None = None
    """PostgreSQL URL. None starts the embedded PostgreSQL in `data_dir`."""

    data_dir: Path = field(default_factory=default_data_dir)
    """Data directory of the embedded PostgreSQL (unused with `database_url`)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest stream message accepted; a larger one fails with RESOURCE_EXHAUSTED."""

    grace_seconds: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight RPCs may run before they are cancelled."""

    database_patience: float = 60.0
    """At start-up, how long to keep trying to reach PostgreSQL before giving up."""

    pool_min_size: int = 2
    """Connections the pool keeps open."""

    pool_max_size: int = DEFAULT_POOL_MAX_SIZE
    """Most connections the pool opens; also the most batches committing at once. At least
    2: the folder keeps one and borrows a second while it folds."""

    fold_idle_seconds: float = 0.05
    """How long the folder waits before looking again when it found little to fold."""

    log_level: str = "info"
    """Lowest level logged: debug, info (start-up, shutdown and one line per call), warning
    or error."""

    log_format: str = "text"
    """How log records look on stderr: text lines, or json (one object per line, with the
    access lines' fields as keys)."""

    metrics_listen: str | None = None
    """HOST:PORT serving Prometheus metrics at /metrics over HTTP; port 0 picks a free one.
    None serves no metrics and counts nothing."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector URL (http://HOST:PORT, or https:// for TLS) that receives a trace
    of every AggregatorService call; needs the `tracing` extra. None traces nothing."""

    tokens_file: Path | None = None
    """File of accepted bearer tokens, one per line, each with optional scopes, rates and
    name (see server/access.py). None serves AggregatorService to anyone."""

    tls_cert: Path | None = None
    """PEM certificate chain for TLS; with `tls_key`. None serves plaintext."""

    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""

    tls_client_ca: Path | None = None
    """PEM certificates of the CA that signs client certificates: with it (and `tls_cert`)
    every connection must present a client certificate it signed (mutual TLS). None asks
    clients for no certificate."""

    workers: int = 1
    """Server processes sharing the port (SO_REUSEPORT) and the database. 1 serves from this
    process; more starts a supervisor that runs them, restarts any that dies and drains them
    all on SIGTERM/SIGINT (see server/workers.py)."""

    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    """How long a client connection may live before the server asks the client to reconnect,
    so long-lived clients spread over workers and replicas; 0 keeps connections forever."""

    max_connection_age_grace_seconds: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS
    """How long calls running on a connection past its age may go on before they are cut
    (UNAVAILABLE); long enough for the longest RecordEvents stream a sender keeps open."""

    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    """RecordEvents streams in progress at once, those waiting for memory included; one more
    is refused with RESOURCE_EXHAUSTED and RetryInfo before anything of it is read."""

    max_concurrent_queries: int = DEFAULT_MAX_CONCURRENT_QUERIES
    """Summary, Uniques and Breakdown calls in progress at once, together; one more is
    refused with RESOURCE_EXHAUSTED and RetryInfo. 40 by default: four per connection of
    the default pool."""

    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
    """Memory budget of ingest, in bytes of stream messages: each stream takes room for two
    messages of `max_message_bytes` before it reads anything, so 128 MiB lets 16 streams of
    4 MiB messages ingest at once while the others wait their turn. The service's memory for
    that data is five to six times this figure (decoded messages, validated columns and the
    statements being sent to PostgreSQL)."""

    memory_patience: float = DEFAULT_MEMORY_PATIENCE
    """Seconds a stream may wait for room in the memory budget; after that it is refused
    with RESOURCE_EXHAUSTED and RetryInfo, having read nothing. 0 refuses at once."""

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ
    ) -> Settings:
        """Build settings from `serve` flags, falling back to environment variables."""
        parser = argparse.ArgumentParser(
            prog="daily-aggregator serve", description="Run the Daily Aggregator gRPC service."
        )
        parser.add_argument(
            "--listen",
            default=env.get("DAILY_AGGREGATOR_LISTEN", DEFAULT_LISTEN),
            help="HOST:PORT to serve gRPC on; port 0 picks a free one "
            f"(env DAILY_AGGREGATOR_LISTEN; default {DEFAULT_LISTEN})",
        )
        parser.add_argument(
            "--database-url",
            default=env.get("DATABASE_URL") or None,
            help="PostgreSQL URL (env DATABASE_URL); without it an embedded PostgreSQL is started",
        )
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=Path(env["DAILY_AGGREGATOR_DATA_DIR"])
            if env.get("DAILY_AGGREGATOR_DATA_DIR")
            else default_data_dir(env),
            help="data directory of the embedded PostgreSQL (env DAILY_AGGREGATOR_DATA_DIR; "
            "default $XDG_DATA_HOME/daily-aggregator)",
        )
        parser.add_argument(
            "--max-message-bytes",
            type=int,
            default=int(env.get("DAILY_AGGREGATOR_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
            help="largest RecordEvents stream message accepted, in bytes (default 4 MiB)",
        )
        parser.add_argument(
            "--grace-seconds",
            type=float,
            default=float(env.get("DAILY_AGGREGATOR_GRACE_SECONDS", 30.0)),
            help="on SIGTERM/SIGINT, how long in-flight RPCs may finish (default 30)",
        )
        parser.add_argument(
            "--database-patience",
            type=float,
            default=float(env.get("DAILY_AGGREGATOR_DATABASE_PATIENCE", 60.0)),
            help="at start-up, seconds to keep trying to reach PostgreSQL (default 60)",
        )
        parser.add_argument(
            "--log-level",
            choices=LOG_LEVELS,
            default=env.get("DAILY_AGGREGATOR_LOG_LEVEL", "info").lower(),
            help="lowest level logged; info includes one line per call "
            "(env DAILY_AGGREGATOR_LOG_LEVEL; default info)",
        )
        parser.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default=env.get("DAILY_AGGREGATOR_LOG_FORMAT", "text").lower(),
            help="text lines, or json: one object per line "
            "(env DAILY_AGGREGATOR_LOG_FORMAT; default text)",
        )
        parser.add_argument(
            "--metrics-listen",
            metavar="HOST:PORT",
            default=env.get("DAILY_AGGREGATOR_METRICS_LISTEN") or None,
            help="serve Prometheus metrics at http://HOST:PORT/metrics; port 0 picks a free "
            "one (env DAILY_AGGREGATOR_METRICS_LISTEN; default: no metrics)",
        )
        parser.add_argument(
            "--otlp-endpoint",
            metavar="URL",
            default=env.get("DAILY_AGGREGATOR_OTLP_ENDPOINT") or None,
            help="export a trace of every call to this OTLP/gRPC collector, e.g. "
            "http://127.0.0.1:4317; needs daily-aggregator[tracing] "
            "(env DAILY_AGGREGATOR_OTLP_ENDPOINT; default: no tracing)",
        )
        parser.add_argument(
            "--tokens-file",
            type=Path,
            default=_path(env, "DAILY_AGGREGATOR_TOKENS_FILE"),
            help="require a bearer token from this file on every AggregatorService call; "
            "a line is TOKEN [scopes=ingest,query,admin] [events_per_second=N] "
            "[queries_per_second=N] [name=NAME] (env DAILY_AGGREGATOR_TOKENS_FILE); health "
            "and reflection stay open",
        )
        parser.add_argument(
            "--tls-cert",
            type=Path,
            default=_path(env, "DAILY_AGGREGATOR_TLS_CERT"),
            help="serve TLS with this PEM certificate chain (env DAILY_AGGREGATOR_TLS_CERT)",
        )
        parser.add_argument(
            "--tls-key",
            type=Path,
            default=_path(env, "DAILY_AGGREGATOR_TLS_KEY"),
            help="the PEM private key of --tls-cert (env DAILY_AGGREGATOR_TLS_KEY)",
        )
        parser.add_argument(
            "--tls-client-ca",
            type=Path,
            default=_path(env, "DAILY_AGGREGATOR_TLS_CLIENT_CA"),
            help="require a client certificate signed by the CA in this PEM file (mutual "
            "TLS; needs --tls-cert and --tls-key; env DAILY_AGGREGATOR_TLS_CLIENT_CA)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=int(env.get("DAILY_AGGREGATOR_WORKERS", 1)),
            help="server processes sharing the port and the database; one per core left "
            "after PostgreSQL's share (env DAILY_AGGREGATOR_WORKERS; default 1)",
        )
        parser.add_argument(
            "--max-connection-age-seconds",
            type=float,
            default=float(
                env.get(
                    "DAILY_AGGREGATOR_MAX_CONNECTION_AGE_SECONDS",
                    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
                )
            ),
            help="ask clients to reconnect after this long, so they spread over workers and "
            "replicas; 0 never (env DAILY_AGGREGATOR_MAX_CONNECTION_AGE_SECONDS; default 300)",
        )
        parser.add_argument(
            "--max-connection-age-grace-seconds",
            type=float,
            default=float(
                env.get(
                    "DAILY_AGGREGATOR_MAX_CONNECTION_AGE_GRACE_SECONDS",
                    DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS,
                )
            ),
            help="how long calls on an aged connection may still run "
            "(env DAILY_AGGREGATOR_MAX_CONNECTION_AGE_GRACE_SECONDS; default 600)",
        )
        parser.add_argument(
            "--max-concurrent-streams",
            type=int,
            default=int(
                env.get("DAILY_AGGREGATOR_MAX_CONCURRENT_STREAMS", DEFAULT_MAX_CONCURRENT_STREAMS)
            ),
            help="RecordEvents streams in progress at once; more are refused with "
            "RESOURCE_EXHAUSTED and a retry delay (env DAILY_AGGREGATOR_MAX_CONCURRENT_STREAMS; "
            f"default {DEFAULT_MAX_CONCURRENT_STREAMS})",
        )
        parser.add_argument(
            "--max-concurrent-queries",
            type=int,
            default=int(
                env.get("DAILY_AGGREGATOR_MAX_CONCURRENT_QUERIES", DEFAULT_MAX_CONCURRENT_QUERIES)
            ),
            help="Summary, Uniques and Breakdown calls in progress at once; more are refused "
            "with RESOURCE_EXHAUSTED and a retry delay (env "
            f"DAILY_AGGREGATOR_MAX_CONCURRENT_QUERIES; default {DEFAULT_MAX_CONCURRENT_QUERIES})",
        )
        parser.add_argument(
            "--max-bytes-in-flight",
            type=int,
            default=int(
                env.get("DAILY_AGGREGATOR_MAX_BYTES_IN_FLIGHT", DEFAULT_MAX_BYTES_IN_FLIGHT)
            ),
            help="memory budget of ingest in message bytes; each stream takes room for two "
            "messages of --max-message-bytes, others wait (env "
            "DAILY_AGGREGATOR_MAX_BYTES_IN_FLIGHT; default 128 MiB)",
        )
        parser.add_argument(
            "--memory-patience",
            type=float,
            default=float(env.get("DAILY_AGGREGATOR_MEMORY_PATIENCE", DEFAULT_MEMORY_PATIENCE)),
            help="seconds a stream may wait for room in the memory budget before it is "
            "refused (env DAILY_AGGREGATOR_MEMORY_PATIENCE; default "
            f"{DEFAULT_MEMORY_PATIENCE:g})",
        )
        args = parser.parse_args(argv)
        if args.max_message_bytes < 1024:
            parser.error("--max-message-bytes must be at least 1024")
        for flag in ("max_concurrent_streams", "max_concurrent_queries"):
            if getattr(args, flag) < 1:
                parser.error(f"--{flag.replace('_', '-')} must be at least 1")
        if args.max_bytes_in_flight < 2 * args.max_message_bytes:
            parser.error(
                "--max-bytes-in-flight must hold two messages of --max-message-bytes "
                f"(at least {2 * args.max_message_bytes})"
            )
        if args.memory_patience < 0:
            parser.error("--memory-patience must not be negative")
        if args.log_level not in LOG_LEVELS:
            parser.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if args.log_format not in LOG_FORMATS:
            parser.error(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        if args.metrics_listen is not None and not _is_host_port(args.metrics_listen):
            parser.error(f"--metrics-listen must be HOST:PORT, not {args.metrics_listen!r}")
        if args.otlp_endpoint is not None and not _is_collector_url(args.otlp_endpoint):
            parser.error(
                f"--otlp-endpoint must be http://HOST:PORT or https://HOST:PORT, "
                f"not {args.otlp_endpoint!r}"
            )
        if (args.tls_cert is None) != (args.tls_key is None):
            parser.error("--tls-cert and --tls-key go together")
        if args.tls_client_ca is not None and args.tls_cert is None:
            parser.error("--tls-client-ca needs --tls-cert and --tls-key")
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        if args.workers > 1 and args.listen.startswith("unix:"):
            parser.error("--workers above 1 needs a TCP --listen address")
        if args.max_connection_age_seconds < 0 or args.max_connection_age_grace_seconds < 0:
            parser.error("connection ages cannot be negative")
        return cls(
            listen=args.listen,
            database_url=args.database_url,
            data_dir=args.data_dir.expanduser(),
            max_message_bytes=args.max_message_bytes,
            grace_seconds=args.grace_seconds,
            database_patience=args.database_patience,
            log_level=args.log_level,
            log_format=args.log_format,
            metrics_listen=args.metrics_listen,
            otlp_endpoint=args.otlp_endpoint,
            tokens_file=args.tokens_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            workers=args.workers,
            max_connection_age_seconds=args.max_connection_age_seconds,
            max_connection_age_grace_seconds=args.max_connection_age_grace_seconds,
            max_concurrent_streams=args.max_concurrent_streams,
            max_concurrent_queries=args.max_concurrent_queries,
            max_bytes_in_flight=args.max_bytes_in_flight,
            memory_patience=args.memory_patience,
        )


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535


def _is_collector_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
