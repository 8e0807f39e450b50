"""What the server's interceptors share: the calls they apply to, rebuilt handlers, how a call
ended, and the status of an aborted call sent only once they have all seen it."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

__all__ = [
    "Behavior",
    "Deserializer",
    "Outcome",
    "ServiceInterceptor",
    "StatusLastInterceptor",
    "observed",
    "with_behavior",
]

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
"""What a method handler runs: (request or request iterator, context) -> response."""

Deserializer = Callable[[bytes], Any]
"""What turns one request message's bytes into the request a behavior gets."""


def with_behavior(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior], Behavior],
    *,
    request_deserializer: Deserializer | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and codecs as `handler` that runs `wrap(its behavior)`.

    `request_deserializer`, when given, decodes the requests instead of the handler's own.
    """
    codecs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **codecs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **codecs)


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, given what its behavior raised (None: it returned).

    CANCELLED when it was cancelled; otherwise the code it aborted with or set, OK when it
    returned without setting one, and UNKNOWN (what grpc answers) for an exception that
    escaped without a code.
    """
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


@dataclass(frozen=True)
class Outcome:
    """How one call ended, as the interceptors that watch calls report it."""

    code: grpc.StatusCode
    """CANCELLED when the call was cancelled; else the code it aborted with or set, OK when
    it returned without one, UNKNOWN for an exception that escaped without one."""
    response: Any
    """What the behavior returned; None when it raised."""
    error: BaseException | None
    """What the behavior raised; None when it returned."""
    seconds: float
    """How long the behavior ran."""


def observed(
    behavior: Behavior, finished: Callable[[grpc.aio.ServicerContext, Outcome], None]
) -> Behavior:
    """`behavior`, calling `finished` once it has ended, however it ended.

    `finished` runs before the response goes out or the error propagates.
    """

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        began = time.perf_counter()
        error: BaseException | None = None
        response = None
        try:
            response = await behavior(request, context)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            seconds = time.perf_counter() - began
            finished(context, Outcome(_final_code(context, error), response, error, seconds))

    return call


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """An interceptor for the methods under `prefix` only; health and reflection pass by.

    Subclasses say what to do with those calls in `intercept`.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        return self.intercept(method.removeprefix(self._prefix), handler, handler_call_details)

    @abc.abstractmethod
    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """The handler to run for a call of `method` (its name within the service)."""


class StatusLastInterceptor(ServiceInterceptor):
    """Sends the status of an aborted call only once every interceptor has seen it end.

    grpc.aio's `abort` sends the status at once, so a client could hold its answer before
    the interceptors around the aborting one had counted, traced or logged the call. This
    one comes first and hands the others a context whose `abort` sets the code and details
    and raises; the status goes out here, after all of them.
    """

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        return with_behavior(handler, _status_last)


def _status_last(behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, _HoldingContext(context))
        except _HeldAbort as held:
            await context.abort(held.code, held.details, held.trailing_metadata)

    return call


class _HeldAbort(grpc.aio.AbortError):  # type: ignore[misc]  # grpc is untyped
    """An abort whose status `StatusLastInterceptor` has yet to send."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[Any, ...]
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class _HoldingContext:
    """A call's context, except that `abort` holds the status back (see _HeldAbort)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._context.set_code(code)
        self._context.set_details(details)
        raise _HeldAbort(code, details, tuple(trailing_metadata))

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)
