"""The errors the client raises, and the one place gRPC failures become them.

    Exception
     └── DailyAggregatorError          any failed call: .code, .message, .field_violations,
          │                            .retry_delay
          ├── InvalidArgumentError     INVALID_ARGUMENT: a request field is wrong
          ├── UnavailableError         UNAVAILABLE: the service or its database cannot be reached,
          │                            or the connection was lost mid-call (safe to retry)
          ├── DeadlineExceededError    DEADLINE_EXCEEDED: the call outlived its timeout
          ├── ResourceExhaustedError   RESOURCE_EXHAUSTED: a stream message was over the size
          │                            limit, the token is over its queries per second, or the
          │                            service was at a limit (with .retry_delay)
          ├── UnauthenticatedError     UNAUTHENTICATED: no token, or one the service does not accept
          └── PermissionDeniedError    PERMISSION_DENIED: the token lacks the scope the call needs

Every other status code (INTERNAL, CANCELLED, ...) is raised as
`DailyAggregatorError` itself. Every `grpc.RpcError` that leaves the client has been
turned into one of these with `raise ... from exc`, so the original stays in `__cause__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "DailyAggregatorError",
    "DeadlineExceededError",
    "FieldViolation",
    "InvalidArgumentError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field named by the service.

    Attributes:
        field: The request field, for example ``"time_zone"`` or ``"start_time"``.
        description: Why the value was refused.
    """

    field: str
    description: str


class DailyAggregatorError(Exception):
    """A call to the Daily Aggregator service failed.

    Attributes:
        code: The gRPC status code of the failure.
        message: The status message sent by the service (or by gRPC itself).
        field_violations: The invalid fields, from a ``google.rpc.BadRequest`` detail;
            empty unless the service named any.
        retry_delay: Seconds the service asked the client to wait before trying again, from
            a ``google.rpc.RetryInfo`` detail; None when it sent none.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        field_violations: list[FieldViolation] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations: list[FieldViolation] = list(field_violations or [])
        self.retry_delay = retry_delay


class InvalidArgumentError(DailyAggregatorError):
    """INVALID_ARGUMENT: the request was refused; `field_violations` says which field and why."""


class UnavailableError(DailyAggregatorError):
    """UNAVAILABLE: the service or its database could not be reached, or the connection was lost.

    Every RPC of the service is safe to retry after this error.
    """


class DeadlineExceededError(DailyAggregatorError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class ResourceExhaustedError(DailyAggregatorError):
    """RESOURCE_EXHAUSTED: a stream message exceeded the server's message size limit, or the
    token made more calls per second than it may, or the service was at one of its limits
    (concurrent streams or queries, memory).

    In the last two cases `retry_delay` says how long to wait, and the client's retries do
    that on their own; a message over the size limit has no `retry_delay` and fails again
    however often it is sent.
    """


class UnauthenticatedError(DailyAggregatorError):
    """UNAUTHENTICATED: the service requires a bearer token and got none it accepts."""


class PermissionDeniedError(DailyAggregatorError):
    """PERMISSION_DENIED: the token is accepted but lacks the scope the call needs; the
    message names that scope."""


_BY_CODE: dict[grpc.StatusCode, type[DailyAggregatorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

# gRPC reports a connection that dies mid-call, or a message it could not send on a stream
# the peer had already ended, as INTERNAL or UNKNOWN with one of these transport messages
# rather than as UNAVAILABLE; there is no other signal to go by.
_LOST_CONNECTION = (
    "execute_batch",
    "socket closed",
    "connection reset",
    "stream removed",
    "broken pipe",
    "goaway",
    "rst_stream",
    "connection closed",
    "end of tcp stream",
)


@dataclass
class _Status:
    code: grpc.StatusCode
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    retry_delay: float | None = None


def _status_of(exc: grpc.RpcError) -> _Status:
    call: Any = exc  # a failed call is both the error and the grpc.Call that ended
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry_delay = max(0.0, retry_info.retry_delay.ToNanoseconds() / 1e9)
    debug: str = call.debug_error_string() if hasattr(call, "debug_error_string") else ""
    transport = f"{message}\n{debug}".lower()
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        phrase in transport for phrase in _LOST_CONNECTION
    ):
        code = grpc.StatusCode.UNAVAILABLE
    return _Status(code, message, violations, retry_delay)


def from_rpc_error(exc: grpc.RpcError) -> DailyAggregatorError:
    """The most specific client error for a failed gRPC call."""
    status = _status_of(exc)
    kind = _BY_CODE.get(status.code, DailyAggregatorError)
    return kind(
        status.message,
        code=status.code,
        field_violations=status.violations,
        retry_delay=status.retry_delay,
    )
