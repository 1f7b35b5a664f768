"""The public exception module: the codec's errors plus server, client and config errors.

Users of socksx import errors from here. Client-side errors also subclass the matching builtin
(TimeoutError, ConnectionError) so code written for plain sockets catches them.
"""

from __future__ import annotations

from socksx.protocol.constants import REPLY_TEXT, ReplyCode
from socksx.protocol.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedMessage,
    NoAcceptableMethod,
    ProtocolError,
    RemoteProtocolError,
    SocksError,
    UnsupportedAddressType,
    UnsupportedCommand,
    UnsupportedVersion,
)

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "ConfigProblem",
    "HandshakeTimeout",
    "LocalProtocolError",
    "MalformedMessage",
    "NoAcceptableMethod",
    "PolicyDenied",
    "ProtocolError",
    "ProxyConnectionError",
    "ProxyTimeoutError",
    "RemoteProtocolError",
    "ReplyError",
    "SocksError",
    "TLSVerificationError",
    "UnsupportedAddressType",
    "UnsupportedCommand",
    "UnsupportedVersion",
    "UpstreamError",
]


class PolicyDenied(SocksError):
    """An access rule (or the default deny) refused the request."""

    reply: ReplyCode | None = ReplyCode.NOT_ALLOWED

    def __init__(self, rule_id: str, message: str = "") -> None:
        self.rule_id = rule_id
        super().__init__(message or f"denied by rule {rule_id}")


class UpstreamError(SocksError):
    """The CONNECT/BIND target or a far gateway failed; ``reply`` says how."""

    def __init__(self, reply: ReplyCode, message: str) -> None:
        self.reply: ReplyCode | None = reply
        super().__init__(message)


class HandshakeTimeout(SocksError, TimeoutError):
    """A client took too long to finish the handshake (slowloris guard)."""


class ReplyError(SocksError):
    """The proxy answered a request with REP != 00 (client side)."""

    def __init__(self, reply: int, message: str = "") -> None:
        self.reply = reply
        try:
            text = REPLY_TEXT[ReplyCode(reply)]
        except ValueError:
            text = "unknown reply code"
        super().__init__(message or f"{text} (REP {reply:#04x})")


class ProxyConnectionError(SocksError, ConnectionError):
    """The proxy could not be reached, or closed the connection mid-handshake."""


class ProxyTimeoutError(SocksError, TimeoutError):
    """The proxy did not answer in time."""


class TLSVerificationError(ProxyConnectionError):
    """The proxy's (or a peer gateway's) certificate failed verification."""


class ConfigProblem:
    """One problem in a config: where and what."""

    __slots__ = ("file", "key", "problem")

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.problem}"
        return f"{self.file}: {self.problem}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.key!r}, {self.problem!r})"


class ConfigError(SocksError):
    """A config that cannot be used; ``problems`` lists every problem found (at least one)."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
