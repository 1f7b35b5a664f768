"""The codec's exception tree: every error carries the reply code to answer with.

Lives in the pure layer (and not in socksx/errors.py) so that the codec imports nothing else;
socksx/errors.py re-exports it and adds the server and client errors.
"""

from __future__ import annotations

from socksx.protocol.constants import ReplyCode

__all__ = [
    "AuthenticationFailed",
    "LocalProtocolError",
    "MalformedMessage",
    "NoAcceptableMethod",
    "ProtocolError",
    "RemoteProtocolError",
    "SocksError",
    "UnsupportedAddressType",
    "UnsupportedCommand",
    "UnsupportedVersion",
]


class SocksError(Exception):
    """Base of everything socksx raises on purpose."""


class ProtocolError(SocksError):
    """Bytes that break RFC 1928/1929, SOCKS4 or our extensions.

    ``reply`` is the REP to answer with before closing; None means no valid reply exists and the
    connection is closed silently.
    """

    reply: ReplyCode | None = ReplyCode.GENERAL_FAILURE


class LocalProtocolError(ProtocolError):
    """We tried to build or send something illegal: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal (raised only by parsers of peer bytes)."""


class MalformedMessage(RemoteProtocolError):
    """A message whose fields break its layout (bad RSV, bad length, zero NMETHODS...)."""

    reply = ReplyCode.GENERAL_FAILURE


class UnsupportedVersion(RemoteProtocolError):
    """A version byte we do not speak: there is no reply in a language the peer understands."""

    reply = None


class UnsupportedCommand(RemoteProtocolError):
    """A CMD byte that no reader is registered for (REP 07)."""

    reply = ReplyCode.COMMAND_NOT_SUPPORTED


class UnsupportedAddressType(RemoteProtocolError):
    """An ATYP byte outside 01/03/04, or one a command does not accept (REP 08)."""

    reply = ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED


class NoAcceptableMethod(RemoteProtocolError):
    """None of the client's methods is acceptable; method 0xFF has been or must be sent."""

    reply = None


class AuthenticationFailed(SocksError):
    """RFC 1929 status != 0 (client side), or credentials rejected (server side)."""
