"""One log line per finished AggregatorService call: who, what, how it ended, how long."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from daily_aggregator.server.interception import Behavior, ServiceInterceptor, with_behavior
from daily_aggregator.v1 import aggregator_pb2 as pb

__all__ = ["AccessLogInterceptor"]

log = logging.getLogger("daily_aggregator.access")


class AccessLogInterceptor(ServiceInterceptor):
    """Logs each finished call to a method under `prefix` at INFO on `daily_aggregator.access`.

    For example ``RecordEvents ipv4:10.0.0.7:51234 OK 812.4 ms received=20000
    inserted=19990 duplicates=10 conflicts=0 rejected=0`` or ``Summary ipv4:10.0.0.7:51240
    INVALID_ARGUMENT 0.9 ms``. Health checks and reflection are not logged.

    With `caller_name`, a call it names gets `` token=<name>`` after the duration
    (``Summary ipv4:10.0.0.7:51240 OK 3.2 ms token=dashboard``); it must never return the
    token itself.
    """

    def __init__(
        self,
        prefix: str,
        caller_name: Callable[[grpc.HandlerCallDetails], str | None] | None = None,
    ) -> None:
        super().__init__(prefix)
        self._caller_name = caller_name

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not (handler.unary_unary or handler.stream_unary):
            return handler  # no streamed responses in this service
        caller = self._caller_name(details) if self._caller_name is not None else None
        who = f" token={caller}" if caller is not None else ""
        return with_behavior(handler, lambda behavior: _logged(method, who, behavior))


def _logged(name: str, who: str, behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        began = time.perf_counter()
        outcome = "OK"
        response = None
        try:
            response = await behavior(request, context)
            return response
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except BaseException:
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            milliseconds = (time.perf_counter() - began) * 1000
            counts = _counts(response)
            log.info(
                "%s %s %s %.1f ms%s%s", name, context.peer(), outcome, milliseconds, who, counts
            )

    return call


def _counts(response: Any) -> str:
    if not isinstance(response, pb.RecordEventsResponse):
        return ""
    return (
        f" received={response.received} inserted={response.inserted}"
        f" duplicates={response.duplicates} conflicts={response.conflicts}"
        f" rejected={response.rejected}"
    )
