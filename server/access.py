"""Who may do what: the tokens file, the scopes each method needs, and the token registry.

A tokens file holds one token per line, optionally followed by options::

    # TOKEN [scopes=ingest,query,admin] [events_per_second=N] [queries_per_second=N] [name=NAME]
    9f1c...e2  name=etl scopes=ingest events_per_second=20000
    41ab...07  name=dashboard scopes=query queries_per_second=50
    c0de...99

A bare token keeps every scope and has no limit. Names appear in logs and metrics instead
of tokens; a token without ``name=`` is called ``token-<line number>``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = [
    "METHOD_SCOPES",
    "Scope",
    "Token",
    "TokenRegistry",
    "TokensFileError",
    "read_tokens",
    "required_scope",
]


class Scope(enum.StrEnum):
    """What a token may do."""

    INGEST = "ingest"
    """Store events (RecordEvents)."""

    QUERY = "query"
    """Ask questions (Summary, Uniques, Breakdown and every other read RPC)."""

    ADMIN = "admin"
    """Administrative RPCs, and any method not listed in METHOD_SCOPES."""


METHOD_SCOPES: Mapping[str, Scope] = {
    "RecordEvents": Scope.INGEST,
    "Summary": Scope.QUERY,
    "Uniques": Scope.QUERY,
    "Breakdown": Scope.QUERY,
    "Retention": Scope.QUERY,
    "LearnerStats": Scope.QUERY,
    "DeleteUser": Scope.ADMIN,
}
"""The scope each AggregatorService method needs. A method not listed needs ADMIN, so a new
RPC is closed to ingest and query tokens until it is listed here."""


def required_scope(method: str) -> Scope:
    """The scope a call of `method` (its name within the service) needs."""
    return METHOD_SCOPES.get(method, Scope.ADMIN)


@dataclass(frozen=True)
class Token:
    """One accepted bearer token and what it may do."""

    name: str
    """How logs and metrics name the token; never the token itself."""

    scopes: frozenset[Scope]
    """The scopes it holds."""

    events_per_second: int | None = None
    """Events per second its RecordEvents streams may store together; None for no limit."""

    queries_per_second: int | None = None
    """Calls per second of any other method; None for no limit."""

    digest: bytes = field(default=b"", repr=False)
    """SHA-256 of the token; the registry keeps no token in the clear."""


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names the line and the problem."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OPTIONS = ("scopes", "events_per_second", "queries_per_second", "name")


def read_tokens(path: Path) -> list[Token]:
    """The tokens in `path`; blank lines and lines starting with # are skipped.

    Raises:
        OSError: the file cannot be read.
        TokensFileError: a line is malformed, two lines share a token or a name, or the
            file holds no token.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    tokens: list[Token] = []
    lines_by_name: dict[str, int] = {}
    lines_by_digest: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            token = _parse_line(text, number)
        except ValueError as exc:
            raise TokensFileError(f"{path}, line {number}: {exc}") from None
        if token.name in lines_by_name:
            raise TokensFileError(
                f"{path}, line {number}: name {token.name!r} is already used on line "
                f"{lines_by_name[token.name]}; names must be unique"
            )
        if token.digest in lines_by_digest:
            raise TokensFileError(
                f"{path}, line {number}: the same token is already on line "
                f"{lines_by_digest[token.digest]}"
            )
        lines_by_name[token.name] = number
        lines_by_digest[token.digest] = number
        tokens.append(token)
    if not tokens:
        raise TokensFileError(f"{path} holds no token")
    return tokens


def _parse_line(text: str, number: int) -> Token:
    secret, *fields = text.split()
    key = secret.partition("=")[0]
    if "=" in secret and key in _OPTIONS:
        raise ValueError(f"starts with the option {key}=; the token comes first")
    options: dict[str, str] = {}
    for item in fields:
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"{item!r} is not an option; write KEY=VALUE after the token")
        if key not in _OPTIONS:
            raise ValueError(f"unknown option {key!r}; the options are {', '.join(_OPTIONS)}")
        if key in options:
            raise ValueError(f"option {key} is given twice")
        options[key] = value
    name = options.get("name", f"token-{number}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return Token(
        name=name,
        scopes=_scopes(options["scopes"]) if "scopes" in options else frozenset(Scope),
        events_per_second=_rate(options, "events_per_second"),
        queries_per_second=_rate(options, "queries_per_second"),
        digest=_digest(secret.encode()),
    )


def _scopes(value: str) -> frozenset[Scope]:
    names = [name for name in value.split(",") if name]
    if not names:
        raise ValueError("scopes= names no scope; give one or more of ingest, query, admin")
    known = {scope.value for scope in Scope}
    for name in names:
        if name not in known:
            raise ValueError(f"unknown scope {name!r}; the scopes are ingest, query, admin")
    return frozenset(Scope(name) for name in names)


def _rate(options: Mapping[str, str], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
        raise ValueError(f"{key} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class TokenRegistry:
    """The accepted tokens, found by the bearer token a call presents.

    Tokens are kept and looked up as SHA-256 digests: the time a lookup takes depends on
    the digest of what was sent, which tells a caller nothing about any accepted token.
    """

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._by_digest = {token.digest: token for token in tokens}

    @property
    def tokens(self) -> Sequence[Token]:
        """Every accepted token."""
        return list(self._by_digest.values())

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Token | str:
        """The token a call's metadata presents, or why it is not accepted."""
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return "missing authorization metadata; send 'authorization: Bearer <token>'"
        value = values[0]
        scheme, _, secret = (value.decode() if isinstance(value, bytes) else value).partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return "authorization metadata must be 'Bearer <token>'"
        token = self._by_digest.get(_digest(secret.strip().encode()))
        return token if token is not None else "the bearer token is not accepted"

    def caller(self, details: grpc.HandlerCallDetails) -> Token | None:
        """The accepted token a call presents; None when it presents none."""
        found = self.authenticate(details.invocation_metadata or ())
        return found if isinstance(found, Token) else None

    def caller_name(self, details: grpc.HandlerCallDetails) -> str | None:
        """The name of the accepted token a call presents, for logs; None when there is none."""
        token = self.caller(details)
        return token.name if token is not None else None
