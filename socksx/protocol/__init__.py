"""The sans-I/O codec: bytes in, typed messages out, and back; no sockets, no clocks.

The extension modules (``mcast``, ``tunnel``, ``multibind``, ``sealed``) register their
request readers when imported; the server imports them, a client imports what it uses.
"""

from __future__ import annotations

from socksx.protocol.address import Address
from socksx.protocol.connection import NEED_DATA, PAUSED, ConnectionClosed, ServerConnection, State
from socksx.protocol.constants import Atyp, Command, Method, Notice, ReplyCode
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    RemoteProtocolError,
    SocksError,
    UnsupportedAddressType,
    UnsupportedCommand,
    UnsupportedVersion,
)
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    Request,
    UserPassReply,
    UserPassRequest,
    maybe_read_request,
)

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Address",
    "Atyp",
    "Command",
    "ConnectionClosed",
    "Greeting",
    "LocalProtocolError",
    "MalformedMessage",
    "Method",
    "MethodSelection",
    "Notice",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "ReplyCode",
    "Request",
    "ServerConnection",
    "SocksError",
    "State",
    "UnsupportedAddressType",
    "UnsupportedCommand",
    "UnsupportedVersion",
    "UserPassReply",
    "UserPassRequest",
    "maybe_read_request",
]
