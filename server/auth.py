"""Bearer-token authentication: which calls need a token, and which tokens are accepted."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path

import grpc

from daily_aggregator.server.errors import refusing
from daily_aggregator.server.interception import ServiceInterceptor

__all__ = ["BearerTokenInterceptor", "read_tokens"]


def read_tokens(path: Path) -> list[str]:
    """The tokens in `path`: one per line; blank lines and lines starting with # are skipped.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no token.
    """
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tokens


class BearerTokenInterceptor(ServiceInterceptor):
    """Turns away calls to methods under `prefix` that carry no accepted bearer token.

    A call must send the metadata ``authorization: Bearer <token>`` (the scheme in any
    case) with one of `tokens`; otherwise it fails with UNAUTHENTICATED before its handler
    runs, so nothing of a refused stream is read or stored. Methods outside `prefix`
    (health checking, reflection) stay open.
    """

    def __init__(self, tokens: Sequence[str], prefix: str) -> None:
        super().__init__(prefix)
        self._tokens = [token.encode() for token in tokens]

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        problem = self._problem(details.invocation_metadata or ())
        if problem is None:
            return handler
        return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, problem)

    def _problem(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        """Why the call's credentials are not accepted; None when they are."""
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return "missing authorization metadata; send 'authorization: Bearer <token>'"
        value = values[0]
        scheme, _, token = (value.decode() if isinstance(value, bytes) else value).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode()
        # Compare with every token, so the time taken says nothing about which one is close.
        accepted = False
        for known in self._tokens:
            accepted |= hmac.compare_digest(given, known)
        return None if accepted else "the bearer token is not accepted"
