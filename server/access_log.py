"""One log line per finished AggregatorService call: who, what, how it ended, how long."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from daily_aggregator.server.interception import (
    Behavior,
    Outcome,
    ServiceInterceptor,
    observed,
    with_behavior,
)
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["AccessLogInterceptor", "CallerName"]

log = logging.getLogger("daily_aggregator.access")

CallerName = Callable[[grpc.HandlerCallDetails], str | None]
"""Names who made a call (the name of its token), or None when calls carry no name."""

_COUNTS = ("received", "inserted", "duplicates", "conflicts", "rejected")


class AccessLogInterceptor(ServiceInterceptor):
    """Logs each finished call to a method under `prefix` at INFO on `daily_aggregator.access`.

    For example ``RecordEvents ipv4:10.0.0.7:51234 OK 812.4 ms received=20000
    inserted=19990 duplicates=10 conflicts=0 rejected=0`` or ``Summary ipv4:10.0.0.7:51240
    INVALID_ARGUMENT 0.9 ms``. Health checks and reflection are not logged.

    The record carries the same facts as ``extra={"fields": ...}`` for structured output
    (see `daily_aggregator.server.logs`): ``method``, ``peer``, ``code``, ``duration_ms``,
    ``token`` and, for RecordEvents, the counts ``received`` ... ``rejected``.

    Args:
        prefix: the methods logged, ``/package.Service/``.
        caller_name: names the caller of a call, e.g. by its token. When it returns a
            name, the line gains `` token=<name>`` after the duration and ``token`` is that
            name; without it (or when it returns None) ``token`` is None.
    """

    def __init__(self, prefix: str, caller_name: CallerName | None = None) -> None:
        super().__init__(prefix)
        self._caller_name = caller_name

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not (handler.unary_unary or handler.stream_unary):
            return handler  # no streamed responses in this service
        token = None if self._caller_name is None else self._caller_name(details)
        return with_behavior(handler, lambda behavior: _logged(method, token, behavior))


class _AccessLine:
    """An access-log message: renders its fields as the text line when it is formatted."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        f = self.fields
        line = f"{f['method']} {f['peer']} {f['code']} {f['duration_ms']:.1f} ms"
        if f["token"] is not None:
            line += f" token={f['token']}"
        counts = [f"{name}={f[name]}" for name in _COUNTS if name in f]
        return " ".join([line, *counts])


def _logged(name: str, token: str | None, behavior: Behavior) -> Behavior:
    def finished(context: grpc.aio.ServicerContext, outcome: Outcome) -> None:
        fields: dict[str, Any] = {
            "method": name,
            "peer": context.peer(),
            "code": outcome.code.name,
            "duration_ms": round(outcome.seconds * 1000, 3),
            "token": token,
        }
        if isinstance(outcome.response, pb.RecordEventsResponse):
            fields.update((count, getattr(outcome.response, count)) for count in _COUNTS)
        log.info(_AccessLine(fields), extra={"fields": fields})

    return observed(behavior, finished)
