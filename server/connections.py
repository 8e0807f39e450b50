"""How long client connections live and how both ends keep them alive: gRPC server options.

A gRPC client keeps one HTTP/2 connection and sends every call over it, so without a
limit a long-lived client stays on the worker (or replica) it first reached however many
were added since. The server therefore closes each connection once it is
`Settings.max_connection_age_seconds` old (gRPC adds up to 10 % of jitter so that
clients connected together do not reconnect together): it sends GOAWAY, the client
opens a new connection for its next call, and the kernel (several workers) or the load
balancer (several replicas) may place that one elsewhere. Calls already running on the
old connection carry on for `Settings.max_connection_age_grace_seconds`; a call still
running then is cut with UNAVAILABLE, which the bundled client answers by resending
(idempotency keys make that safe). The grace is long by default because a
RecordEvents stream lives as long as its sender keeps writing.

Keepalive pings find dead peers on idle connections (a client that vanished without a
FIN, a NAT that forgot the mapping): the server pings a connection that has been quiet
for `KEEPALIVE_TIME_MS` and drops it when no answer comes within `KEEPALIVE_TIMEOUT_MS`.
Clients may ping too, also without calls in flight, as often as every
`CLIENT_PING_INTERVAL_MIN_MS`; a client that pings more often is sent GOAWAY
("too_many_pings"). The bundled client pings every 30 s (see `client/_channel.py`), so
the two agree.
"""

from __future__ import annotations

from typing import Any

from daily_aggregator.server.config import Settings

__all__ = [
    "CLIENT_PING_INTERVAL_MIN_MS",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "server_options",
]

KEEPALIVE_TIME_MS = 60_000
"""The server pings a connection that has carried nothing for this long."""

KEEPALIVE_TIMEOUT_MS = 20_000
"""A ping unanswered for this long closes the connection."""

CLIENT_PING_INTERVAL_MIN_MS = 20_000
"""The shortest interval between client pings the server accepts on a quiet connection."""


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """The gRPC server options for keepalive and connection age under `settings`."""
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_INTERVAL_MIN_MS),
    ]
    if settings.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", _milliseconds(settings.max_connection_age_seconds)),
            (
                "grpc.max_connection_age_grace_ms",
                _milliseconds(settings.max_connection_age_grace_seconds),
            ),
        ]
    return options


def _milliseconds(seconds: float) -> int:
    # gRPC reads these options as C ints: cap at about 24 days rather than overflow.
    return min(round(seconds * 1000), 2**31 - 1)
