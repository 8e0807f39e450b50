"""Bearer tokens at the door: which calls carry an accepted token, and whether it may make them."""

from __future__ import annotations

import grpc

from daily_aggregator.server.access import Token, TokenRegistry, required_scope
from daily_aggregator.server.errors import refusing
from daily_aggregator.server.interception import ServiceInterceptor

__all__ = ["BearerTokenInterceptor"]


class BearerTokenInterceptor(ServiceInterceptor):
    """Turns away calls to methods under `prefix` without an accepted token or its scope.

    A call must send the metadata ``authorization: Bearer <token>`` (the scheme in any
    case) with a token of `registry`, else it fails with UNAUTHENTICATED; a token without
    the scope the method needs (`access.required_scope`) fails with PERMISSION_DENIED
    naming that scope. Both happen before the handler runs, so nothing of a refused stream
    is read or stored. Methods outside `prefix` (health checking, reflection) stay open.
    """

    def __init__(self, registry: TokenRegistry, prefix: str) -> None:
        super().__init__(prefix)
        self._registry = registry

    def intercept(
        self, method: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        found = self._registry.authenticate(details.invocation_metadata or ())
        if not isinstance(found, Token):
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, found)
        scope = required_scope(method)
        if scope not in found.scopes:
            held = ", ".join(sorted(found.scopes))
            return refusing(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the {scope} scope; token {found.name!r} has {held}",
            )
        return handler
