"""The client side of a SOCKS4/4a/5 handshake as a sans-I/O state machine.

The driver (socksx/client/_driver.py) owns the socket; this module turns messages into bytes and
bytes into events, and says how many more bytes the awaited message certainly still has
(``bytes_needed()``). A driver that reads exactly that many never takes a byte past a reply, so
data the target sends right after a CONNECT reply stays in the socket for the application.

SOCKS5 (RFC 1928 §3-6, RFC 1929 §2)::

    IDLE --Greeting--> SENT_GREETING --select 00--> NEGOTIATED
                                     --select 02--> AUTH --UserPassRequest--> SENT_AUTH
                                                                --status 00--> NEGOTIATED
    NEGOTIATED --Request(CONNECT)--> SENT_CONNECT --REP 00--> RELAY
               --Request(BIND)-----> SENT_BIND ----REP 00--> BIND_WAIT --REP 00--> RELAY
               --Request(UDP)------> SENT_UDP_ASSOCIATE --REP 00--> CONTROL
               --RawRequest--------> SENT_RAW --any reply or EOF--> CLOSED

SOCKS4/4a: ``IDLE --Socks4Request--> SENT_CONNECT | SENT_BIND``, then as above with CD 5A as
success. Every refusal, failure status, EOF or malformed reply moves to CLOSED; the driver maps
the event to the caller's error. All transitions are in ``TRANSITIONS``; a pair that is not
there raises LocalProtocolError (what we sent) and moves to CLOSED.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from socksx.protocol.constants import (
    SOCKS5_VERSION,
    Atyp,
    Command,
    Method,
    Socks4Command,
)
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, RemoteProtocolError
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    Request,
    UserPassReply,
    UserPassRequest,
    maybe_read_method_selection,
    maybe_read_reply,
    maybe_read_userpass_reply,
)
from socksx.protocol.socks4 import Socks4Reply, Socks4Request, maybe_read_socks4_reply

__all__ = [
    "NEED_DATA",
    "TRANSITIONS",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "RawReply",
    "RawRequest",
]

Buf = bytes | bytearray | memoryview

#: RFC 1928 §6: VER | REP | RSV | ATYP, the fixed head of a reply.
_REPLY_HEAD: Final = 4
#: RFC 1928 §3 METHOD selection and RFC 1929 §2 status: two octets each.
_TWO_OCTETS: Final = 2
#: SOCKS4 reply: VN | CD | DSTPORT(2) | DSTIP(4).
_SOCKS4_REPLY_SIZE: Final = 8
#: Reply sizes by ATYP: head + address + port (RFC 1928 §5); domains add 1 + length.
_REPLY_SIZE: Final[dict[int, int]] = {
    Atyp.IPV4: _REPLY_HEAD + 4 + 2,
    Atyp.IPV6: _REPLY_HEAD + 16 + 2,
}


class _NeedData(enum.Enum):
    NEED_DATA = enum.auto()


#: ``next_event()`` result meaning "feed more bytes first" (a sentinel, not an exception).
NEED_DATA: Final = _NeedData.NEED_DATA


class ClientState(enum.Enum):
    """Where the client is in the handshake; names say what it sent or waits for."""

    IDLE = enum.auto()
    SENT_GREETING = enum.auto()
    AUTH = enum.auto()
    SENT_AUTH = enum.auto()
    NEGOTIATED = enum.auto()
    SENT_CONNECT = enum.auto()
    SENT_BIND = enum.auto()
    BIND_WAIT = enum.auto()
    SENT_UDP_ASSOCIATE = enum.auto()
    SENT_RAW = enum.auto()
    RELAY = enum.auto()
    CONTROL = enum.auto()
    CLOSED = enum.auto()


class _Input(enum.Enum):
    """Everything that moves the machine: what we send and what the proxy answered."""

    SEND_GREETING = enum.auto()
    SEND_USERPASS = enum.auto()
    SEND_CONNECT = enum.auto()
    SEND_BIND = enum.auto()
    SEND_UDP_ASSOCIATE = enum.auto()
    SEND_RAW = enum.auto()
    SEND_SOCKS4_CONNECT = enum.auto()
    SEND_SOCKS4_BIND = enum.auto()
    GOT_NO_AUTH = enum.auto()
    GOT_USERPASS = enum.auto()
    GOT_NO_ACCEPTABLE = enum.auto()
    GOT_AUTH_OK = enum.auto()
    GOT_AUTH_FAILED = enum.auto()
    GOT_GRANTED = enum.auto()
    GOT_REFUSED = enum.auto()
    GOT_RAW = enum.auto()


S = ClientState
I = _Input  # noqa: E741  (the table reads better with a one-letter alias)

#: (state, input) -> next state. Anything missing is illegal and closes the connection.
TRANSITIONS: Final[dict[tuple[ClientState, _Input], ClientState]] = {
    (S.IDLE, I.SEND_GREETING): S.SENT_GREETING,
    (S.IDLE, I.SEND_SOCKS4_CONNECT): S.SENT_CONNECT,
    (S.IDLE, I.SEND_SOCKS4_BIND): S.SENT_BIND,
    (S.SENT_GREETING, I.GOT_NO_AUTH): S.NEGOTIATED,
    (S.SENT_GREETING, I.GOT_USERPASS): S.AUTH,
    (S.SENT_GREETING, I.GOT_NO_ACCEPTABLE): S.CLOSED,
    (S.AUTH, I.SEND_USERPASS): S.SENT_AUTH,
    (S.SENT_AUTH, I.GOT_AUTH_OK): S.NEGOTIATED,
    (S.SENT_AUTH, I.GOT_AUTH_FAILED): S.CLOSED,
    (S.NEGOTIATED, I.SEND_CONNECT): S.SENT_CONNECT,
    (S.NEGOTIATED, I.SEND_BIND): S.SENT_BIND,
    (S.NEGOTIATED, I.SEND_UDP_ASSOCIATE): S.SENT_UDP_ASSOCIATE,
    (S.NEGOTIATED, I.SEND_RAW): S.SENT_RAW,
    (S.SENT_CONNECT, I.GOT_GRANTED): S.RELAY,
    (S.SENT_CONNECT, I.GOT_REFUSED): S.CLOSED,
    (S.SENT_BIND, I.GOT_GRANTED): S.BIND_WAIT,
    (S.SENT_BIND, I.GOT_REFUSED): S.CLOSED,
    (S.BIND_WAIT, I.GOT_GRANTED): S.RELAY,
    (S.BIND_WAIT, I.GOT_REFUSED): S.CLOSED,
    (S.SENT_UDP_ASSOCIATE, I.GOT_GRANTED): S.CONTROL,
    (S.SENT_UDP_ASSOCIATE, I.GOT_REFUSED): S.CLOSED,
    (S.SENT_RAW, I.GOT_RAW): S.CLOSED,
}
del S, I

_SEND_REQUEST: Final = {
    Command.CONNECT: _Input.SEND_CONNECT,
    Command.BIND: _Input.SEND_BIND,
    Command.UDP_ASSOCIATE: _Input.SEND_UDP_ASSOCIATE,
}
_SEND_SOCKS4: Final = {
    Socks4Command.CONNECT: _Input.SEND_SOCKS4_CONNECT,
    Socks4Command.BIND: _Input.SEND_SOCKS4_BIND,
}
_GOT_METHOD: Final = {
    Method.NO_AUTH: _Input.GOT_NO_AUTH,
    Method.USERNAME_PASSWORD: _Input.GOT_USERPASS,
    Method.NO_ACCEPTABLE: _Input.GOT_NO_ACCEPTABLE,
}
_AWAITING_REPLY: Final = frozenset(
    {
        ClientState.SENT_CONNECT,
        ClientState.SENT_BIND,
        ClientState.BIND_WAIT,
        ClientState.SENT_UDP_ASSOCIATE,
    }
)

#: How an early close reads in an error message, by what we were waiting for.
_CLOSED_WHILE: Final = {
    ClientState.SENT_GREETING: "instead of selecting a method",
    ClientState.SENT_AUTH: "instead of answering the username/password",
    ClientState.SENT_CONNECT: "instead of replying",
    ClientState.SENT_BIND: "instead of replying",
    ClientState.SENT_UDP_ASSOCIATE: "instead of replying",
    ClientState.BIND_WAIT: "before a peer connected",
}


@dataclass(frozen=True, slots=True)
class RawRequest:
    """Arbitrary request bytes sent after negotiation (probing commands we cannot build yet)."""

    data: bytes

    def to_bytes(self) -> bytes:
        """The bytes as given."""
        return self.data


@dataclass(frozen=True, slots=True)
class RawReply:
    """A reply framed by the RFC 1928 §6 shape but not validated; empty when the proxy closed."""

    data: bytes

    @property
    def rep(self) -> int | None:
        """The REP octet when the reply looks like SOCKS5, else None."""
        if len(self.data) >= _TWO_OCTETS and self.data[0] == SOCKS5_VERSION:
            return self.data[1]
        return None


ClientEvent = MethodSelection | UserPassReply | Reply | Socks4Reply | RawReply
ClientMessage = Greeting | UserPassRequest | Request | Socks4Request | RawRequest


class ClientConnection:
    """One client handshake: ``send(msg) -> bytes``, ``receive_data``, ``next_event``.

    The first message decides the protocol: a Greeting means SOCKS5, a Socks4Request SOCKS4/4a.
    """

    def __init__(self) -> None:
        self.state = ClientState.IDLE
        self._buffer = bytearray()
        self._eof = False
        self._socks4 = False
        self._offered: tuple[int, ...] = ()

    # -- sending ---------------------------------------------------------------------------
    def send(self, message: ClientMessage) -> bytes:
        """Encode *message* and advance the state.

        Raises:
            LocalProtocolError: the message is illegal in this state (the state becomes CLOSED).
        """
        match message:
            case Greeting():
                step = _Input.SEND_GREETING
            case UserPassRequest():
                step = _Input.SEND_USERPASS
            case Request(command=command) if command in _SEND_REQUEST:
                step = _SEND_REQUEST[command]
            case Socks4Request():
                step = _SEND_SOCKS4[message.command]
            case RawRequest():
                step = _Input.SEND_RAW
            case _:
                self.state = ClientState.CLOSED
                msg = f"cannot send {message!r}: extension requests go out as RawRequest"
                raise LocalProtocolError(msg)
        data = message.to_bytes()
        self._advance(step, f"cannot send {type(message).__name__}")
        if isinstance(message, Greeting):
            self._offered = message.methods
        elif isinstance(message, Socks4Request):
            self._socks4 = True
        return data

    # -- receiving -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the proxy; ``b""`` means the proxy closed the connection."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ClientEvent | _NeedData:
        """The next message from the proxy, or NEED_DATA.

        Raises:
            RemoteProtocolError: the proxy closed mid-message, or sent a malformed message, or
                selected a method we did not offer (the state becomes CLOSED).
            LocalProtocolError: no message is expected in this state (RELAY, CONTROL, ...).
        """
        try:
            parsed = self._parse()
        except RemoteProtocolError:
            self.state = ClientState.CLOSED
            raise
        if parsed is None:
            if self._eof:
                return self._on_eof()
            return NEED_DATA
        event, consumed = parsed
        del self._buffer[:consumed]
        self._advance(self._classify(event), "unexpected event")
        return event

    def bytes_needed(self) -> int:
        """How many more bytes the awaited message certainly has (at least 1).

        Reading exactly this many never consumes bytes that follow the message.
        """
        buf = self._buffer
        if self.state in (ClientState.SENT_GREETING, ClientState.SENT_AUTH):
            total = _TWO_OCTETS
        elif self.state in _AWAITING_REPLY and self._socks4:
            total = _SOCKS4_REPLY_SIZE
        elif self.state in _AWAITING_REPLY or self.state is ClientState.SENT_RAW:
            total = _socks5_reply_size(buf)
        else:
            total = len(buf) + 1
        return max(1, total - len(buf))

    def trailing_data(self) -> bytes:
        """Bytes received after the last message (the start of the relayed stream)."""
        return bytes(self._buffer)

    # -- internals -------------------------------------------------------------------------
    def _advance(self, step: _Input, what: str) -> None:
        try:
            self.state = TRANSITIONS[self.state, step]
        except KeyError:
            old, self.state = self.state, ClientState.CLOSED
            msg = f"{what} in state {old.name}"
            raise LocalProtocolError(msg) from None

    def _parse(self) -> tuple[ClientEvent, int] | None:
        buf = self._buffer
        state = self.state
        if state is ClientState.SENT_GREETING:
            return maybe_read_method_selection(buf)
        if state is ClientState.SENT_AUTH:
            return maybe_read_userpass_reply(buf)
        if state in _AWAITING_REPLY:
            return maybe_read_socks4_reply(buf) if self._socks4 else maybe_read_reply(buf)
        if state is ClientState.SENT_RAW:
            return _maybe_read_raw_reply(buf)
        msg = f"no message is expected from the proxy in state {state.name}"
        raise LocalProtocolError(msg)

    def _classify(self, event: ClientEvent) -> _Input:
        match event:
            case MethodSelection(method=method):
                # RFC 1928 §3: the server picks one of the offered methods or 0xFF; we can
                # only continue with a method this machine implements.
                offered = method == Method.NO_ACCEPTABLE or method in self._offered
                if not offered or method not in _GOT_METHOD:
                    self.state = ClientState.CLOSED
                    msg = f"proxy selected method {method:#04x}, which was not offered"
                    raise MalformedMessage(msg)
                return _GOT_METHOD[method]
            case UserPassReply():
                return _Input.GOT_AUTH_OK if event.ok else _Input.GOT_AUTH_FAILED
            case Reply() | Socks4Reply():
                return _Input.GOT_GRANTED if event.ok else _Input.GOT_REFUSED
            case RawReply():
                return _Input.GOT_RAW

    def _on_eof(self) -> RawReply:
        # A probe's request may legitimately be answered by a close (how many servers say
        # "unknown command"); everywhere else a close before the reply is the proxy's failure.
        if self.state is ClientState.SENT_RAW:
            event = RawReply(bytes(self._buffer))
            self._buffer.clear()
            self.state = ClientState.CLOSED
            return event
        old, self.state = self.state, ClientState.CLOSED
        msg = f"proxy closed the connection {_CLOSED_WHILE.get(old, 'unexpectedly')}"
        raise RemoteProtocolError(msg)


def _socks5_reply_size(buf: Buf) -> int:
    """Total size of the RFC 1928 §6 reply at the front of *buf*, as far as it is knowable."""
    if len(buf) < _REPLY_HEAD:
        return _REPLY_HEAD
    atyp = buf[_REPLY_HEAD - 1]
    if atyp == Atyp.DOMAINNAME:
        if len(buf) < _REPLY_HEAD + 1:
            return _REPLY_HEAD + 1
        return _REPLY_HEAD + 1 + buf[_REPLY_HEAD] + 2
    # An unknown ATYP cannot be framed further: what is there is the whole (raw) reply.
    return _REPLY_SIZE.get(atyp, _REPLY_HEAD)


def _maybe_read_raw_reply(buf: Buf) -> tuple[RawReply, int] | None:
    size = _socks5_reply_size(buf)
    if len(buf) < size:
        return None
    return RawReply(bytes(buf[:size])), size
