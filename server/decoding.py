"""Request bytes are untrusted input: a message that does not decode is the caller's error.

grpc decodes every request message with the method handler's request deserializer.
Left alone, a `DecodeError` there ends a unary call as UNKNOWN (grpc decodes the
request before any handler code runs, so nothing of ours sees the exception) and a
stream as INTERNAL, each with a traceback at ERROR. `DecodingInterceptor` rebuilds
the service's handlers around deserializers that say what failed instead:

- A stream's messages are decoded as the handler reads them, so the deserializer
  raises `MalformedRequest` inside the handler. Ours answer it with INVALID_ARGUMENT
  through `grpc_errors`: RecordEvents has by then committed every batch read before
  the malformed message, as it does before any other failure of the stream. One that
  escapes a handler (reflection's, say) is answered the same way by the rebuilt
  behavior.
- A unary request is decoded before the handler is called, so the deserializer
  returns an `Undecodable` in place of the request, and the rebuilt behavior answers
  it with INVALID_ARGUMENT (`abort_malformed`) without calling the handler (for a
  unary-stream method too, before its first response).

Handlers must be coroutines or async generators (grpc.aio's own kind).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message

from daily_aggregator.server.errors import MalformedRequest, abort_malformed
from daily_aggregator.server.interception import (
    Behavior,
    Deserializer,
    ServiceInterceptor,
    with_behavior,
)

__all__ = ["DecodingInterceptor", "Undecodable"]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a unary request whose bytes did not decode."""

    error: MalformedRequest


class DecodingInterceptor(ServiceInterceptor):
    """Answers request bytes that do not decode with INVALID_ARGUMENT "malformed request: ...".

    Applies to every method of `service`. Put it after every other interceptor:
    those before it see the call end with INVALID_ARGUMENT, while the behaviors
    after it (the handlers) only ever get decoded requests.
    """

    def __init__(self, service: descriptor.ServiceDescriptor) -> None:
        super().__init__(f"/{service.full_name}/")
        self._service = service

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        name = self._service.methods_by_name[method].input_type.full_name
        decode = handler.request_deserializer
        behavior = handler.unary_unary or handler.unary_stream
        if behavior is not None:
            # grpc.aio tells a streaming handler written as an async generator from one
            # that writes to its context by its kind; the wrapper keeps that kind.
            if inspect.isasyncgenfunction(behavior):
                wrap = _streaming_unless_undecodable
            else:
                wrap = _answering_undecodable
            return with_behavior(handler, wrap, request_deserializer=_lenient(decode, name))
        if inspect.isasyncgenfunction(handler.stream_stream):
            wrap = _streaming_unless_malformed
        else:
            wrap = _answering_malformed
        return with_behavior(handler, wrap, request_deserializer=_strict(decode, name))


def _problem(name: str, exc: message.DecodeError) -> str:
    # upb says "Error parsing message with type 'NAME': REASON"; keep the reason.
    text = str(exc)
    _, quoted, reason = text.partition("': ")
    return f"cannot decode {name}: {reason if quoted else text}"


def _lenient(decode: Deserializer, name: str) -> Deserializer:
    """`decode`, returning an `Undecodable` for bytes it cannot decode."""

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except message.DecodeError as exc:
            return Undecodable(MalformedRequest(f"malformed request: {_problem(name, exc)}"))

    return deserialize


def _strict(decode: Deserializer, name: str) -> Deserializer:
    """`decode`, raising `MalformedRequest` that names the position of the message in its stream.

    A handler is built per call, so the count is the call's own.
    """
    positions = itertools.count()

    def deserialize(raw: bytes) -> Any:
        position = next(positions)
        try:
            return decode(raw)
        except message.DecodeError as exc:
            raise MalformedRequest(
                f"malformed request: stream message {position} (counting from 0):"
                f" {_problem(name, exc)}"
            ) from None

    return deserialize


def _answering_malformed(behavior: Behavior) -> Behavior:
    # A stream's handler meets the MalformedRequest as it reads; ours answer it themselves.
    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(requests, context)
        except MalformedRequest as exc:
            await abort_malformed(context, exc)

    return call


def _streaming_unless_malformed(behavior: Behavior) -> Behavior:
    # A stream-stream behavior written as an async generator function; so is its wrapper.
    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for response in behavior(requests, context):  # type: ignore[attr-defined]
                yield response
        except MalformedRequest as exc:
            await abort_malformed(context, exc)

    return call


def _answering_undecodable(behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await abort_malformed(context, request.error)
        return await behavior(request, context)

    return call


def _streaming_unless_undecodable(behavior: Behavior) -> Behavior:
    # A unary-stream behavior is an async generator function, and so is its wrapper.
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await abort_malformed(context, request.error)
        async for response in behavior(request, context):  # type: ignore[attr-defined]
            yield response

    return call
