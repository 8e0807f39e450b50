"""The options every channel of the client starts from: keepalive the service accepts.

The client pings a connection that has carried nothing for 30 s, also between calls, and
drops it (to reconnect at the next call) when a ping goes unanswered for 20 s: a
connection a NAT or a load balancer silently forgot fails fast instead of at the next
call's deadline. The service accepts pings as often as every 20 s on a quiet connection
and closes a connection that pings more often ("too_many_pings"); servers from before it
set that, like gRPC's default, accepted one ping in 5 minutes. Options passed to the
client replace these by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["KEEPALIVE_OPTIONS", "channel_options"]

KEEPALIVE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keepalive pings on a quiet connection are the point: do not stop after two.
    ("grpc.http2.max_pings_without_data", 0),
)
"""Client keepalive in agreement with the service's ping policy."""


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`KEEPALIVE_OPTIONS` with `options` added, an option of the same name replacing ours."""
    merged = dict(KEEPALIVE_OPTIONS)
    merged.update(options)
    return list(merged.items())
