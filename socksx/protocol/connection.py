"""The server side of a SOCKS control connection as a state machine, with no I/O.

Feed it bytes with ``receive_data``; take events with ``next_event``; turn answers into bytes
with ``send``. All transitions are in the two tables below (h11's rule: one table per machine).
An event the table does not allow raises and moves the machine to CLOSED.

    GREETING --Greeting--> METHOD --MethodSelection(00)--> REQUEST
                                  --MethodSelection(02)--> AUTH --UserPassRequest--> AUTH_REPLY
                                  --MethodSelection(FF)--> CLOSED
    AUTH_REPLY --UserPassReply(ok)--> REQUEST,  --UserPassReply(failure)--> CLOSED
    GREETING --Socks4Request--> REPLY
    REQUEST --request--> REPLY --reply(ok)--> RELAY (CONNECT, ACCEPT)
                                           --> BIND_SECOND (BIND: a second reply follows)
                                           --> CONTROL (UDP ASSOCIATE and the extensions)
                                --reply(failure)--> CLOSED
    CONTROL --request--> CONTROL_REPLY --reply--> CONTROL   (extension channels: more requests)

A reply must be in the connection's version (Socks4Reply for SOCKS4, the SOCKS5 shapes
otherwise), and after malformed input only a failure reply is legal.

In RELAY the bytes are opaque: the caller takes ``trailing_data()`` and stops feeding the machine.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from socksx.protocol.constants import SOCKS4_VERSION, SOCKS5_VERSION, Command, Method
from socksx.protocol.errors import LocalProtocolError, RemoteProtocolError, UnsupportedVersion
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    UserPassReply,
    maybe_read_greeting,
    maybe_read_request,
    maybe_read_userpass_request,
)
from socksx.protocol.socks4 import Socks4Reply, Socks4Request, maybe_read_socks4_request

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "ConnectionClosed",
    "ServerConnection",
    "State",
    "register_reply_type",
]


class State(enum.Enum):
    """Where the control connection stands."""

    GREETING = enum.auto()  #: waiting for a SOCKS5 greeting or a SOCKS4 request
    METHOD = enum.auto()  #: greeting received, we owe a method selection
    AUTH = enum.auto()  #: waiting for RFC 1929 credentials
    AUTH_REPLY = enum.auto()  #: credentials received, we owe a status
    REQUEST = enum.auto()  #: waiting for a request
    REPLY = enum.auto()  #: request received, we owe a reply
    BIND_SECOND = enum.auto()  #: BIND's first reply sent, the second is owed
    RELAY = enum.auto()  #: bytes are opaque from here
    CONTROL = enum.auto()  #: an extension channel: notices may be sent, requests may arrive
    CONTROL_REPLY = enum.auto()  #: a request on the control channel waits for its reply
    CLOSED = enum.auto()

    # Members are singletons compared by identity: hash them the same way, in C. (Enum's own
    # __hash__ is Python code, and every transition looks a state up in a dict.)
    __hash__ = object.__hash__


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: next_event(): no whole message buffered yet; feed more bytes.
NEED_DATA = _Sentinel("NEED_DATA")
#: next_event(): a message was received and we owe an answer before reading on.
PAUSED = _Sentinel("PAUSED")


class ConnectionClosed:
    """Event: the peer closed its side (EOF) at a message boundary."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


_CLOSED_EVENT = ConnectionClosed()

#: After a successful reply, where each command leaves the machine.
AFTER_SUCCESS: dict[int, State] = {
    Command.CONNECT: State.RELAY,
    Command.BIND: State.BIND_SECOND,
    Command.UDP_ASSOCIATE: State.CONTROL,
    Command.JOIN_MCAST_GROUP: State.CONTROL,
    Command.LEAVE_MCAST_GROUP: State.CONTROL,
    Command.SETUP_UDP_TUNNEL: State.CONTROL,
    Command.MULTI_BIND: State.CONTROL,
    Command.ACCEPT: State.RELAY,
}


def _after_method(conn: ServerConnection, msg: object) -> State:
    assert isinstance(msg, MethodSelection)
    if msg.method == Method.NO_AUTH:
        return State.REQUEST
    if msg.method == Method.USERNAME_PASSWORD:
        return State.AUTH
    return State.CLOSED


def _after_auth(conn: ServerConnection, msg: object) -> State:
    assert isinstance(msg, UserPassReply)
    return State.REQUEST if msg.ok else State.CLOSED


def _right_version(conn: ServerConnection, msg: object) -> bool:
    return isinstance(msg, Socks4Reply) == (conn.version == SOCKS4_VERSION)


def _after_reply(conn: ServerConnection, msg: object) -> State | None:
    if not _right_version(conn, msg):
        return None
    if not getattr(msg, "ok", False):
        return State.CLOSED
    if conn.command is None:
        return None  # malformed input: only a refusal may follow
    return AFTER_SUCCESS.get(conn.command, State.RELAY)


def _after_second_reply(conn: ServerConnection, msg: object) -> State | None:
    if not _right_version(conn, msg):
        return None
    return State.RELAY if getattr(msg, "ok", False) else State.CLOSED


def _after_control_reply(conn: ServerConnection, msg: object) -> State | None:
    # The server decides whether a refused control request ends the channel (it closes the
    # socket itself); the machine stays ready for the next request.
    if conn.command is None and getattr(msg, "ok", False):
        return None
    return State.CONTROL


def _stay(conn: ServerConnection, msg: object) -> State:
    return conn.state


#: Message kinds the server may send; extension modules register their reply/notice classes.
REPLY_KIND = "reply"
NOTICE_KIND = "notice"
_KINDS: dict[type, str] = {
    MethodSelection: "method",
    UserPassReply: "auth",
    Socks4Reply: REPLY_KIND,
}

#: (state, kind of message sent) -> next state. Anything absent is illegal.
SEND_TRANSITIONS: dict[tuple[State, str], Callable[[ServerConnection, object], State | None]] = {
    (State.METHOD, "method"): _after_method,
    (State.AUTH_REPLY, "auth"): _after_auth,
    (State.REPLY, REPLY_KIND): _after_reply,
    (State.BIND_SECOND, REPLY_KIND): _after_second_reply,
    (State.CONTROL_REPLY, REPLY_KIND): _after_control_reply,
    (State.CONTROL, NOTICE_KIND): _stay,
    (State.CONTROL_REPLY, NOTICE_KIND): _stay,
}

#: state -> the parser for what the peer may send in it, and the state after a message.
RECEIVE_TRANSITIONS: dict[State, State] = {
    State.GREETING: State.METHOD,  # or REPLY for SOCKS4 (handled in _read_greeting)
    State.AUTH: State.AUTH_REPLY,
    State.REQUEST: State.REPLY,
    State.CONTROL: State.CONTROL_REPLY,
}


#: After malformed input in these states a failure reply is still owed (and then CLOSED).
_AFTER_BAD_INPUT: dict[State, State] = {
    State.GREETING: State.REPLY,  # only for SOCKS4, whose requests come first
    State.REQUEST: State.REPLY,
    State.CONTROL: State.CONTROL_REPLY,
}


def register_reply_type(cls: type, kind: str = REPLY_KIND) -> None:
    """Let ``send`` accept an extension reply or notice class (kind "reply" or "notice")."""
    _KINDS[cls] = kind


# The plain reply shape is registered here rather than in _KINDS above only to keep the import
# of Reply next to its registration; both are equivalent.
def _register_plain() -> None:
    from socksx.protocol.messages import Reply

    register_reply_type(Reply)


_register_plain()


class ServerConnection:
    """One control connection, server side.

    ``version`` is 4 or 5 once the first byte is known. ``command`` is the last request's
    command (SOCKS4 commands are mapped onto the SOCKS5 ones).
    """

    __slots__ = ("_buf", "_eof", "allow_socks4", "command", "state", "version")

    def __init__(self, *, allow_socks4: bool = True) -> None:
        self.state = State.GREETING
        self.version: int | None = None
        self.command: int | None = None
        self.allow_socks4 = allow_socks4
        self._buf = bytearray()
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            self._buf += data
        else:
            self._eof = True

    def trailing_data(self) -> bytes:
        """Bytes received after the last message (pipelined data for the relay); clears them."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def next_event(self) -> object:
        """The next message, NEED_DATA, PAUSED, or a ConnectionClosed event.

        Raises:
            RemoteProtocolError: (and subclasses) malformed input or EOF inside a message.
                After malformed input in REQUEST, CONTROL or a SOCKS4 GREETING, the machine
                waits for the failure reply (``exc.reply``); otherwise it is CLOSED.
        """
        state = self.state
        nxt = RECEIVE_TRANSITIONS.get(state)
        if nxt is None:
            if state is State.CLOSED:
                return _CLOSED_EVENT
            return PAUSED
        if not self._buf and not self._eof:
            return NEED_DATA  # the common case between reads: nothing to parse yet
        try:
            if state is State.GREETING:
                parsed = self._read_greeting()
            elif state is State.AUTH:
                parsed = maybe_read_userpass_request(self._buf)
            else:
                parsed = maybe_read_request(self._buf)
        except RemoteProtocolError:
            # Like h11 after a bad request: the peer broke the protocol, but a refusal in the
            # peer's own version may still be sent (REP 07/08/01, SOCKS4 0x5B); then CLOSED.
            self.state = _AFTER_BAD_INPUT.get(state, State.CLOSED)
            if state is State.GREETING and self.version != SOCKS4_VERSION:
                self.state = State.CLOSED
            self.command = None
            raise
        if parsed is None:
            if self._eof:
                self.state = State.CLOSED
                if self._buf:
                    msg = f"peer closed in the middle of a message in state {state.name}"
                    raise RemoteProtocolError(msg)
                return _CLOSED_EVENT
            return NEED_DATA
        message, consumed = parsed
        del self._buf[:consumed]
        if isinstance(message, Socks4Request):
            self.state = State.REPLY
            self.command = int(message.command)  # SOCKS4 CD 01/02 equal SOCKS5 CONNECT/BIND
        elif isinstance(message, Greeting):
            self.state = nxt
        else:
            self.state = nxt
            self.command = getattr(message, "command", None)
        return message

    def _read_greeting(self) -> tuple[object, int] | None:
        if not self._buf:
            return None
        first = self._buf[0]
        if first == SOCKS5_VERSION:
            self.version = SOCKS5_VERSION
            return maybe_read_greeting(self._buf)
        if first == SOCKS4_VERSION and self.allow_socks4:
            self.version = SOCKS4_VERSION
            return maybe_read_socks4_request(self._buf)
        msg = f"unsupported SOCKS version {first:#04x}"
        raise UnsupportedVersion(msg)

    def send(self, message: object) -> bytes:
        """Bytes for *message*, advancing the machine.

        Raises:
            LocalProtocolError: *message* is not allowed in the current state (the machine is
                CLOSED afterwards).
        """
        kind = _KINDS.get(type(message))
        transition = SEND_TRANSITIONS.get((self.state, kind)) if kind else None
        after = transition(self, message) if transition is not None else None
        if after is None:
            state, self.state = self.state, State.CLOSED
            msg = f"cannot send {type(message).__name__} in state {state.name}"
            raise LocalProtocolError(msg)
        try:
            data: bytes = message.to_bytes()  # type: ignore[attr-defined]
        except LocalProtocolError:
            self.state = State.CLOSED
            raise
        self.state = after
        return data
