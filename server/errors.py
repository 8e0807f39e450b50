"""The one place where failures become gRPC status codes.

    InvalidArgument          -> INVALID_ARGUMENT, with google.rpc.BadRequest naming the field
    MalformedRequest         -> INVALID_ARGUMENT "malformed request: ..." (bytes that do not
                                decode; server/decoding.py raises it, no field to name)
    database unreachable,
    shutting down, deadlock  -> UNAVAILABLE (safe to retry)
    anything else            -> INTERNAL (logged with its traceback)
    no accepted bearer token -> UNAUTHENTICATED     (server/auth.py, before the handler)
    token lacks the scope    -> PERMISSION_DENIED   (server/auth.py, before the handler)
    token over its rate      -> RESOURCE_EXHAUSTED with google.rpc.RetryInfo
                                (server/rate_limits.py, before the handler)
    over a service limit     -> RESOURCE_EXHAUSTED with google.rpc.RetryInfo
                                (server/admission.py, before the handler)

Handlers raise; `grpc_errors` wraps each handler and answers with the status. Interceptors
that turn a call away answer with `refusing`, or `refusing_with_status` for a rich status
such as `resource_exhausted_status`, or `abort_malformed` for a request that did not
decode. Failures of the caller's making are logged at DEBUG at most (the access log has
the call's status); only INTERNAL carries a traceback.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, NamedTuple, NoReturn, ParamSpec, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from daily_aggregator.server.database import UNAVAILABLE_ERRORS
from daily_aggregator.server.interception import with_behavior

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


ECHOED_CHARACTERS = 40
"""Most characters of a caller's value that an error message repeats."""

_MAX_DESCRIPTION = 500
"""Most characters of one field violation's description: statuses travel in trailers,
which a client refuses past 8 KiB by default (each description is sent twice there)."""


def echo(value: str) -> str:
    """`value` quoted for an error message; only its first ECHOED_CHARACTERS when longer."""
    if len(value) <= ECHOED_CHARACTERS:
        return repr(value)
    return f"{value[:ECHOED_CHARACTERS]!r}... ({len(value)} characters)"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its name (dotted path) and why."""

    field: str
    description: str


class InvalidArgument(Exception):
    """A request field is invalid; answered with INVALID_ARGUMENT naming the field."""

    def __init__(self, field: str, description: str) -> None:
        if len(description) > _MAX_DESCRIPTION:
            description = description[: _MAX_DESCRIPTION - 3] + "..."
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]


class MalformedRequest(Exception):
    """Request bytes that are not an encoding of the method's request message.

    Answered with INVALID_ARGUMENT and the exception's message, which starts with
    "malformed request: "; there is no field to name.
    """


async def abort_malformed(context: grpc.aio.ServicerContext, exc: MalformedRequest) -> NoReturn:
    """Answer a request that did not decode: INVALID_ARGUMENT, and a DEBUG line, no traceback."""
    log.debug("%s", exc)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise AssertionError("unreachable: abort raises")


def invalid_argument_status(violations: list[FieldViolation]) -> grpc.Status:
    """A rich INVALID_ARGUMENT status carrying google.rpc.BadRequest."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
    )
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    )


def resource_exhausted_status(message: str, retry_delay: float) -> grpc.Status:
    """A rich RESOURCE_EXHAUSTED status carrying google.rpc.RetryInfo.

    `retry_delay` is in seconds; it is rounded up to the millisecond, so a client that
    waits as long as told does not come back a moment too early.
    """
    milliseconds = max(0, math.ceil(retry_delay * 1000))
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=milliseconds // 1000, nanos=milliseconds % 1000 * 1_000_000
            )
        )
    )
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])
    )


def grpc_errors(
    handler: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """Wrap a grpc.aio handler so that every failure leaves with the right status.

    The handler's last positional argument must be its `grpc.aio.ServicerContext`.
    """

    @functools.wraps(handler)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        context: Any = args[-1]
        try:
            return await handler(self, *args, **kwargs)
        except InvalidArgument as exc:
            await context.abort_with_status(invalid_argument_status(exc.violations))
        except MalformedRequest as exc:
            await abort_malformed(context, exc)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("%s: database unavailable: %r", handler.__name__, exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"database unavailable, retry later ({type(exc).__name__}: {exc})",
            )
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class _PlainStatus(NamedTuple):
    """A status without details, in the shape grpc.Status describes."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def refusing(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers every call with `code`."""
    return refusing_with_status(handler, _PlainStatus(code, details))


def refusing_with_status(
    handler: grpc.RpcMethodHandler, status: grpc.Status
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers every call with `status`.

    It reads nothing of the call: a refused stream's messages are never received, let alone
    stored.
    """

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    return with_behavior(handler, lambda _: refuse)
