"""The server-side control connection state machine (socksx/protocol/connection.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from socksx.protocol import connection
from socksx.protocol.address import Address
from socksx.protocol.connection import (
    NEED_DATA,
    NOTICE_KIND,
    PAUSED,
    RECEIVE_TRANSITIONS,
    SEND_TRANSITIONS,
    ConnectionClosed,
    ServerConnection,
    State,
    register_reply_type,
)
from socksx.protocol.constants import Command, Method, Notice, ReplyCode, Socks4Code, Socks4Command
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
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
)
from socksx.protocol.socks4 import Socks4Reply, Socks4Request

GREETING = bytes.fromhex("05 01 00")
GREETING_USERPASS = bytes.fromhex("05 01 02")
USERPASS = bytes.fromhex("01 05 616c696365 06 733363726574")
CONNECT = bytes.fromhex("05 01 00 01 c0000201 0050")
BIND = bytes.fromhex("05 02 00 01 00000000 0000")
UDP = bytes.fromhex("05 03 00 01 00000000 0000")
SOCKS4_CONNECT = bytes.fromhex("04 01 0050 c0000201 626f62 00")
SOCKS4A_CONNECT = bytes.fromhex("04 01 01bb 00000001 626f62 00 6578616d706c652e636f6d 00")
SOCKS4_BIND = bytes.fromhex("04 02 0015 c0000201 00")
BOUND = Address("198.51.100.1", 4321)
OK = Reply(ReplyCode.SUCCEEDED, BOUND)
FAIL = Reply(ReplyCode.CONNECTION_REFUSED)
OK4 = Socks4Reply(Socks4Code.GRANTED, BOUND)
FAIL4 = Socks4Reply(Socks4Code.REJECTED)


@dataclass(frozen=True)
class _Notice:
    """A stand-in extension notice, registered through the public API in the fixture."""

    code: Notice

    def to_bytes(self) -> bytes:
        return bytes([5, self.code, 0])


@pytest.fixture(autouse=True)
def notice_registered(monkeypatch):
    monkeypatch.setattr(connection, "_KINDS", dict(connection._KINDS))
    register_reply_type(_Notice, NOTICE_KIND)


NOTICE = _Notice(Notice.MCAST_EXPIRED)


# -- getting a machine into each state through real traffic ------------------------------


def _receive(conn: ServerConnection, data: bytes) -> object:
    conn.receive_data(data)
    return conn.next_event()


def at_greeting() -> ServerConnection:
    return ServerConnection()


def at_method() -> ServerConnection:
    conn = ServerConnection()
    assert isinstance(_receive(conn, GREETING), Greeting)
    return conn


def at_auth() -> ServerConnection:
    conn = ServerConnection()
    _receive(conn, GREETING_USERPASS)
    conn.send(MethodSelection(Method.USERNAME_PASSWORD))
    return conn


def at_auth_reply() -> ServerConnection:
    conn = at_auth()
    assert isinstance(_receive(conn, USERPASS), UserPassRequest)
    return conn


def at_request() -> ServerConnection:
    conn = at_method()
    conn.send(MethodSelection(Method.NO_AUTH))
    return conn


def at_reply(request: bytes = CONNECT) -> Callable[[], ServerConnection]:
    def build() -> ServerConnection:
        conn = ServerConnection() if request[0] == 4 else at_request()
        assert isinstance(_receive(conn, request), Request | Socks4Request)
        return conn

    build.__name__ = f"at_reply({request.hex()})"
    return build


def at_bind_second(request: bytes = BIND) -> Callable[[], ServerConnection]:
    def build() -> ServerConnection:
        conn = at_reply(request)()
        conn.send(OK4 if request[0] == 4 else OK)
        return conn

    build.__name__ = f"at_bind_second({request.hex()})"
    return build


def at_relay() -> ServerConnection:
    conn = at_reply(CONNECT)()
    conn.send(OK)
    return conn


def at_control() -> ServerConnection:
    conn = at_reply(UDP)()
    conn.send(OK)
    return conn


def at_control_reply() -> ServerConnection:
    conn = at_control()
    assert isinstance(_receive(conn, CONNECT), Request)
    return conn


def at_closed() -> ServerConnection:
    conn = at_method()
    conn.send(MethodSelection(Method.NO_ACCEPTABLE))
    return conn


BUILDERS: dict[State, Callable[[], ServerConnection]] = {
    State.GREETING: at_greeting,
    State.METHOD: at_method,
    State.AUTH: at_auth,
    State.AUTH_REPLY: at_auth_reply,
    State.REQUEST: at_request,
    State.REPLY: at_reply(CONNECT),
    State.BIND_SECOND: at_bind_second(BIND),
    State.RELAY: at_relay,
    State.CONTROL: at_control,
    State.CONTROL_REPLY: at_control_reply,
    State.CLOSED: at_closed,
}


def test_builders_reach_their_state() -> None:
    assert set(BUILDERS) == set(State)
    for state, build in BUILDERS.items():
        assert build().state is state


# -- every send transition ---------------------------------------------------------------

SEND_CASES: list[tuple[Callable[[], ServerConnection], object, State]] = [
    (at_method, MethodSelection(Method.NO_AUTH), State.REQUEST),
    (at_method, MethodSelection(Method.USERNAME_PASSWORD), State.AUTH),
    (at_method, MethodSelection(Method.NO_ACCEPTABLE), State.CLOSED),
    (at_method, MethodSelection(Method.GSSAPI), State.CLOSED),
    (at_auth_reply, UserPassReply(0), State.REQUEST),
    (at_auth_reply, UserPassReply(1), State.CLOSED),
    (at_reply(CONNECT), OK, State.RELAY),
    (at_reply(BIND), OK, State.BIND_SECOND),
    (at_reply(UDP), OK, State.CONTROL),
    (at_reply(CONNECT), FAIL, State.CLOSED),
    (at_reply(BIND), FAIL, State.CLOSED),
    (at_reply(UDP), FAIL, State.CLOSED),
    (at_reply(SOCKS4_CONNECT), OK4, State.RELAY),
    (at_reply(SOCKS4A_CONNECT), OK4, State.RELAY),
    (at_reply(SOCKS4_BIND), OK4, State.BIND_SECOND),
    (at_reply(SOCKS4_CONNECT), FAIL4, State.CLOSED),
    (at_bind_second(BIND), OK, State.RELAY),
    (at_bind_second(BIND), FAIL, State.CLOSED),
    (at_bind_second(SOCKS4_BIND), OK4, State.RELAY),
    (at_bind_second(SOCKS4_BIND), FAIL4, State.CLOSED),
    (at_control_reply, OK, State.CONTROL),
    (at_control_reply, FAIL, State.CONTROL),
    (at_control, NOTICE, State.CONTROL),
    (at_control_reply, NOTICE, State.CONTROL_REPLY),
]


def _case_id(case: tuple[Callable[[], ServerConnection], object, State]) -> str:
    build, message, after = case
    return f"{build.__name__}-{message!r}->{after.name}"


@pytest.mark.parametrize("case", SEND_CASES, ids=_case_id)
def test_send_transition(case) -> None:
    build, message, after = case
    conn = build()
    assert conn.send(message) == message.to_bytes()
    assert conn.state is after


def test_send_cases_cover_the_whole_table() -> None:
    covered = {(build().state, connection._KINDS[type(msg)]) for build, msg, _ in SEND_CASES}
    assert covered == set(SEND_TRANSITIONS)


@pytest.mark.parametrize("command", [0x05, 0x06, 0x07, 0x08], ids=lambda c: Command(c).name)
def test_extension_requests_leave_a_control_channel(command) -> None:
    conn = at_request()
    conn.state, conn.command = State.REPLY, command  # as after a registered extension request
    conn.send(OK)
    assert conn.state is State.CONTROL


def test_accept_leaves_a_relay() -> None:
    conn = at_request()
    conn.state, conn.command = State.REPLY, Command.ACCEPT
    conn.send(OK)
    assert conn.state is State.RELAY


# -- totality: every (state, message) either follows the table or is refused --------------

MESSAGES: list[object] = [
    MethodSelection(Method.NO_AUTH),
    MethodSelection(Method.NO_ACCEPTABLE),
    UserPassReply(0),
    UserPassReply(1),
    OK,
    FAIL,
    OK4,
    FAIL4,
    NOTICE,
    Greeting((0,)),  # a client message
    Request(Command.CONNECT, BOUND),  # a client message
    b"\x05\x00",  # raw bytes are not a message
    None,
]


@pytest.mark.parametrize(
    ("state", "message"),
    list(itertools.product(State, MESSAGES)),
    ids=lambda x: x.name if isinstance(x, State) else type(x).__name__,
)
def test_state_machine_is_total(state, message) -> None:
    conn = BUILDERS[state]()
    kind = connection._KINDS.get(type(message))
    transition = SEND_TRANSITIONS.get((state, kind))
    # A table entry may still refuse by content (wrong version, success after bad input).
    expected = transition(conn, message) if transition is not None else None
    if expected is None:
        with pytest.raises(LocalProtocolError):
            conn.send(message)
        assert conn.state is State.CLOSED
        assert isinstance(conn.next_event(), ConnectionClosed)
    else:
        assert conn.send(message) == message.to_bytes()
        assert conn.state is expected


# -- every receive transition ------------------------------------------------------------

RECEIVE_CASES: list[tuple[Callable[[], ServerConnection], bytes, object, State]] = [
    (at_greeting, GREETING, Greeting((Method.NO_AUTH,)), State.METHOD),
    (
        at_greeting,
        SOCKS4_CONNECT,
        Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80), b"bob"),
        State.REPLY,
    ),
    (at_auth, USERPASS, UserPassRequest(b"alice", b"s3cret"), State.AUTH_REPLY),
    (at_request, CONNECT, Request(Command.CONNECT, Address("192.0.2.1", 80)), State.REPLY),
    (at_control, BIND, Request(Command.BIND, Address("0.0.0.0", 0)), State.CONTROL_REPLY),
]


@pytest.mark.parametrize("case", RECEIVE_CASES, ids=lambda c: f"{c[0].__name__}-{c[3].name}")
def test_receive_transition(case) -> None:
    build, wire, event, after = case
    conn = build()
    conn.receive_data(wire)
    assert conn.next_event() == event
    assert conn.state is after
    assert conn.trailing_data() == b""


def test_receive_cases_cover_the_whole_table() -> None:
    assert {build().state for build, *_ in RECEIVE_CASES} == set(RECEIVE_TRANSITIONS)


def test_version_and_command_are_recorded() -> None:
    conn = at_reply(BIND)()
    assert (conn.version, conn.command) == (5, Command.BIND)
    conn = at_reply(SOCKS4_BIND)()
    assert (conn.version, conn.command) == (4, Command.BIND)
    conn = at_control_reply()
    assert conn.command == Command.CONNECT


@pytest.mark.parametrize(
    "state", [s for s in State if s not in RECEIVE_TRANSITIONS and s is not State.CLOSED]
)
def test_states_that_owe_an_answer_pause_even_with_bytes_buffered(state) -> None:
    conn = BUILDERS[state]()
    conn.receive_data(CONNECT)
    assert conn.next_event() is PAUSED
    assert conn.state is state


def test_sentinels_and_events_have_readable_reprs() -> None:
    assert (repr(NEED_DATA), repr(PAUSED), repr(ConnectionClosed())) == (
        "NEED_DATA",
        "PAUSED",
        "ConnectionClosed()",
    )


def test_closed_reports_connection_closed_forever() -> None:
    conn = at_closed()
    conn.receive_data(CONNECT)
    for _ in range(3):
        assert isinstance(conn.next_event(), ConnectionClosed)


def test_need_data_until_the_message_is_whole() -> None:
    conn = at_request()
    for octet in CONNECT[:-1]:
        assert _receive(conn, bytes([octet])) is NEED_DATA
        assert conn.state is State.REQUEST
    assert _receive(conn, CONNECT[-1:]) == Request(Command.CONNECT, Address("192.0.2.1", 80))


# -- pipelining: one chunk and one byte at a time give the same events -------------------


def _answer(conn: ServerConnection, event: object) -> None:
    if isinstance(event, Greeting):
        wanted = Method.USERNAME_PASSWORD if Method.USERNAME_PASSWORD in event.methods else 0
        conn.send(MethodSelection(Method(wanted)))
    elif isinstance(event, UserPassRequest):
        conn.send(UserPassReply(0))
    elif isinstance(event, Socks4Request):
        conn.send(OK4)
        if conn.state is State.BIND_SECOND:
            conn.send(OK4)
    else:
        conn.send(OK)
        if conn.state is State.BIND_SECOND:
            conn.send(OK)


def converse(chunks: list[bytes]) -> tuple[list[object], State, bytes]:
    """Feed *chunks*, answering each event; the events, the final state and what is left."""
    conn = ServerConnection()
    events: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            _answer(conn, event)
    return events, conn.state, conn.trailing_data()


DATA = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
CONVERSATIONS = {
    "no-auth CONNECT": GREETING + CONNECT + DATA,
    "username/password CONNECT": GREETING_USERPASS + USERPASS + CONNECT + DATA,
    "BIND": GREETING + BIND + DATA,
    "UDP ASSOCIATE then a request on the channel": GREETING + UDP + CONNECT,
    "SOCKS4 CONNECT": SOCKS4_CONNECT + DATA,
    "SOCKS4a CONNECT": SOCKS4A_CONNECT + DATA,
    "SOCKS4 BIND": SOCKS4_BIND + DATA,
    "request bytes look like data after CONNECT": GREETING + CONNECT + CONNECT + GREETING,
}


@pytest.mark.parametrize("wire", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_one_chunk_and_byte_at_a_time_agree(wire) -> None:
    whole = converse([wire])
    trickled = converse([wire[i : i + 1] for i in range(len(wire))])
    assert whole == trickled
    events, state, trailing = whole
    assert state in (State.RELAY, State.CONTROL)
    consumed = sum(len(e.to_bytes()) for e in events)  # type: ignore[attr-defined]
    assert trailing == wire[consumed:]


def test_pipelined_data_after_connect_is_kept_whole() -> None:
    events, state, trailing = converse([GREETING + CONNECT + DATA])
    assert events == [Greeting((0,)), Request(Command.CONNECT, Address("192.0.2.1", 80))]
    assert state is State.RELAY
    assert trailing == DATA


def test_trailing_data_is_handed_over_once() -> None:
    conn = at_request()
    conn.receive_data(CONNECT + b"xyz")
    conn.next_event()
    assert conn.trailing_data() == b"xyz"
    assert conn.trailing_data() == b""


# -- EOF -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(RECEIVE_TRANSITIONS), ids=lambda s: s.name)
def test_eof_at_a_message_boundary_is_connection_closed(state) -> None:
    conn = BUILDERS[state]()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


MESSAGE_IN = {
    State.GREETING: GREETING_USERPASS,
    State.AUTH: USERPASS,
    State.REQUEST: CONNECT,
    State.CONTROL: BIND,
}


@pytest.mark.parametrize("state", list(RECEIVE_TRANSITIONS), ids=lambda s: s.name)
def test_eof_inside_a_message_is_a_remote_protocol_error(state) -> None:
    wire = MESSAGE_IN[state]
    for i in range(1, len(wire)):
        conn = BUILDERS[state]()
        conn.receive_data(wire[:i])
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="closed in the middle") as info:
            conn.next_event()
        assert info.value.reply is ReplyCode.GENERAL_FAILURE
        assert conn.state is State.CLOSED


def test_eof_inside_a_socks4_request_is_a_remote_protocol_error() -> None:
    conn = ServerConnection()
    conn.receive_data(SOCKS4_CONNECT[:-1])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.CLOSED


def test_message_before_eof_is_delivered_first() -> None:
    conn = at_request()
    conn.receive_data(UDP)
    conn.receive_data(b"")
    assert conn.next_event() == Request(Command.UDP_ASSOCIATE, Address("0.0.0.0", 0))
    conn.send(OK)
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_eof_while_a_reply_is_owed_still_pauses() -> None:
    conn = at_reply(CONNECT)()
    conn.receive_data(b"")
    assert conn.next_event() is PAUSED
    conn.send(FAIL)
    assert isinstance(conn.next_event(), ConnectionClosed)


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [b"\x00", b"\x01", b"\x03", b"\x06", b"\x16\x03\x01", b"GET /"])
def test_first_octet_other_than_04_or_05_closes_without_a_reply(first) -> None:
    conn = ServerConnection()
    conn.receive_data(first)
    with pytest.raises(UnsupportedVersion) as info:
        conn.next_event()
    assert info.value.reply is None
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_socks4_can_be_switched_off() -> None:
    conn = ServerConnection(allow_socks4=False)
    conn.receive_data(SOCKS4_CONNECT)
    with pytest.raises(UnsupportedVersion):
        conn.next_event()
    assert conn.state is State.CLOSED


CLOSING_INPUT = [
    (at_greeting, bytes.fromhex("05 00"), MalformedMessage),
    (at_greeting, bytes.fromhex("05 01"), None),  # EOF inside the greeting
    (at_auth, bytes.fromhex("05 01 61 01 62"), MalformedMessage),
    (at_auth, bytes.fromhex("01 00"), MalformedMessage),
]


@pytest.mark.parametrize("case", CLOSING_INPUT, ids=lambda c: f"{c[0].__name__}-{c[1].hex()}")
def test_bad_greeting_or_credentials_close_the_machine(case) -> None:
    """No reply shape exists for a broken greeting or RFC 1929 request: just close."""
    build, wire, exc = case
    conn = build()
    conn.receive_data(wire)
    if exc is None:
        conn.receive_data(b"")
    with pytest.raises(exc or RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        conn.send(FAIL)


REFUSED_REQUESTS = [
    ("05 0a 00 01 c0000201 0050", UnsupportedCommand, ReplyCode.COMMAND_NOT_SUPPORTED),
    ("05 01 00 02 c0000201 0050", UnsupportedAddressType, ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
    ("05 01 01 01 c0000201 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE),
    ("05 01 00 03 00 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE),
]


@pytest.mark.parametrize(("wire", "exc", "rep"), REFUSED_REQUESTS, ids=lambda x: str(x))
def test_refused_request_is_answered_with_its_reply_code_then_closed(wire, exc, rep) -> None:
    """RFC 1928 §6: the server answers a request it cannot serve, then closes."""
    conn = at_request()
    conn.receive_data(bytes.fromhex(wire) + CONNECT)
    with pytest.raises(exc) as info:
        conn.next_event()
    assert info.value.reply is rep
    assert conn.state is State.REPLY
    assert conn.next_event() is PAUSED
    assert conn.send(Reply(rep)) == bytes([5, rep, 0]) + bytes.fromhex("01 00000000 0000")
    assert conn.state is State.CLOSED


def test_request_of_another_version_owes_no_reply() -> None:
    conn = at_request()
    conn.receive_data(bytes.fromhex("04 01 00 01 c0000201 0050"))
    with pytest.raises(UnsupportedVersion) as info:
        conn.next_event()
    assert info.value.reply is None


def test_malformed_socks4_request_is_rejected_with_5b() -> None:
    conn = ServerConnection()
    conn.receive_data(bytes.fromhex("04 03 0050 c0000201 00"))
    with pytest.raises(MalformedMessage):
        conn.next_event()
    assert conn.version == 4
    assert conn.state is State.REPLY
    assert conn.send(FAIL4) == bytes.fromhex("00 5b 0000 00000000")
    assert conn.state is State.CLOSED


def test_malformed_request_on_a_control_channel_is_answered_and_the_channel_stays() -> None:
    conn = at_control()
    conn.receive_data(bytes.fromhex("05 0a 00 01 c0000201 0050"))
    with pytest.raises(UnsupportedCommand):
        conn.next_event()
    assert conn.state is State.CONTROL_REPLY
    conn.send(Reply(ReplyCode.COMMAND_NOT_SUPPORTED))
    assert conn.state is State.CONTROL


# -- bugs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "wire", "message"),
    [
        (at_request, "05 0a 00 01 c0000201 0050", OK),
        (at_greeting, "04 03 0050 c0000201 00", OK4),
    ],
    ids=["socks5", "socks4"],
)
def test_success_reply_after_malformed_request_is_refused(build, wire, message) -> None:
    conn = build()
    conn.receive_data(bytes.fromhex(wire))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(message)
    assert conn.state is State.CLOSED


def test_unencodable_address_cannot_even_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Reply(ReplyCode.SUCCEEDED, Address("x" * 256, 1))


@dataclass(frozen=True)
class _Unencodable:
    """A registered reply whose encoding fails: send() must leave the machine CLOSED."""

    ok: bool = True

    def to_bytes(self) -> bytes:
        raise LocalProtocolError("cannot encode")


def test_unencodable_reply_closes_the_machine() -> None:
    register_reply_type(_Unencodable)
    conn = at_reply(CONNECT)()
    with pytest.raises(LocalProtocolError):
        conn.send(_Unencodable())
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("build", "message"),
    [(at_reply(CONNECT), OK4), (at_reply(SOCKS4_CONNECT), OK)],
    ids=["socks4-reply-on-socks5", "socks5-reply-on-socks4"],
)
def test_reply_of_the_other_version_is_refused(build, message) -> None:
    conn = build()
    with pytest.raises(LocalProtocolError):
        conn.send(message)
    assert conn.state is State.CLOSED
