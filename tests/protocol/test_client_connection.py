from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksx.protocol.address import Address
from socksx.protocol.client_connection import (
    NEED_DATA,
    TRANSITIONS,
    ClientConnection,
    ClientState,
    RawReply,
    RawRequest,
)
from socksx.protocol.constants import Command, Method, ReplyCode, Socks4Code, Socks4Command
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    RemoteProtocolError,
    UnsupportedAddressType,
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

NO_AUTH = Greeting((Method.NO_AUTH,))
BOTH = Greeting((Method.NO_AUTH, Method.USERNAME_PASSWORD))
CONNECT = Request(Command.CONNECT, Address("example.com", 80))


def feed_exactly(conn: ClientConnection, wire: bytes) -> tuple[object, bytes]:
    """Drive like the socket driver: give only bytes_needed() at a time; return the rest."""
    pos = 0
    for _ in range(len(wire) + 1):
        event = conn.next_event()
        if event is not NEED_DATA:
            return event, wire[pos:]
        n = conn.bytes_needed()
        assert n >= 1
        conn.receive_data(wire[pos : pos + n])
        pos += n
    raise AssertionError("no event after feeding everything")


def negotiated() -> ClientConnection:
    conn = ClientConnection()
    conn.send(NO_AUTH)
    conn.receive_data(b"\x05\x00")
    assert conn.next_event() == MethodSelection(Method.NO_AUTH)
    return conn


# -- sending -------------------------------------------------------------------------------


def test_greeting_bytes_and_state():
    conn = ClientConnection()
    assert conn.send(BOTH) == b"\x05\x02\x00\x02"
    assert conn.state is ClientState.SENT_GREETING


def test_connect_request_bytes():
    conn = negotiated()
    assert conn.send(CONNECT) == b"\x05\x01\x00\x03\x0bexample.com\x00\x50"
    assert conn.state is ClientState.SENT_CONNECT


def test_socks4a_request_starts_without_greeting():
    conn = ClientConnection()
    req = Socks4Request(Socks4Command.CONNECT, Address("example.com", 80), b"bob")
    assert conn.send(req) == b"\x04\x01\x00\x50\x00\x00\x00\x01bob\x00example.com\x00"
    assert conn.state is ClientState.SENT_CONNECT


@pytest.mark.parametrize(
    "message",
    [CONNECT, UserPassRequest(b"u", b"p"), RawRequest(b"\x05\x05\x00")],
    ids=["request", "userpass", "raw"],
)
def test_request_before_negotiation_is_local_error(message):
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.send(message)
    assert conn.state is ClientState.CLOSED


def test_extension_command_must_go_raw():
    conn = negotiated()
    with pytest.raises(LocalProtocolError, match="RawRequest"):
        conn.send(Request(Command.JOIN_MCAST_GROUP, Address("239.1.1.1", 5000)))
    assert conn.state is ClientState.CLOSED


def test_second_greeting_is_local_error():
    conn = negotiated()
    with pytest.raises(LocalProtocolError, match="NEGOTIATED"):
        conn.send(NO_AUTH)


# -- vectors: whole, one byte at a time, exact reads, trailing bytes kept --------------------

REPLY_VECTORS = [
    ("ipv4", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38", Reply(ReplyCode.SUCCEEDED,
                                                                Address("127.0.0.1", 1080))),
    ("ipv6", b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x16",
     Reply(ReplyCode.SUCCEEDED, Address("::1", 22))),
    ("domain", b"\x05\x00\x00\x03\x09localhost\x1f\x90",
     Reply(ReplyCode.SUCCEEDED, Address("localhost", 8080))),
    ("refused", b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00",
     Reply(ReplyCode.CONNECTION_REFUSED, Address("0.0.0.0", 0))),
]


reply_vectors = pytest.mark.parametrize(
    ("name", "wire", "reply"), REPLY_VECTORS, ids=[v[0] for v in REPLY_VECTORS]
)


def reply_states(vector_ok: bool) -> ClientState:
    return ClientState.RELAY if vector_ok else ClientState.CLOSED


@reply_vectors
def test_reply_whole(name, wire, reply):
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(wire)
    assert conn.next_event() == reply
    assert conn.state is reply_states(reply.ok)


@reply_vectors
def test_reply_byte_at_a_time(name, wire, reply):
    conn = negotiated()
    conn.send(CONNECT)
    for byte in wire[:-1]:
        conn.receive_data(bytes([byte]))
        assert conn.next_event() is NEED_DATA
    conn.receive_data(wire[-1:])
    assert conn.next_event() == reply


@reply_vectors
def test_reply_exact_reads_leave_data_unread(name, wire, reply):
    conn = negotiated()
    conn.send(CONNECT)
    event, rest = feed_exactly(conn, wire + b"HTTP/1.0 200 OK\r\n")
    assert event == reply
    assert rest == b"HTTP/1.0 200 OK\r\n"
    assert conn.trailing_data() == b""


@reply_vectors
def test_reply_trailing_bytes_kept(name, wire, reply):
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(wire + b"GET /")
    assert conn.next_event() == reply
    assert conn.trailing_data() == b"GET /"


def test_userpass_flow():
    conn = ClientConnection()
    conn.send(BOTH)
    event, rest = feed_exactly(conn, b"\x05\x02\x01\x00")
    assert event == MethodSelection(Method.USERNAME_PASSWORD)
    assert conn.state is ClientState.AUTH
    assert conn.send(UserPassRequest(b"bob", b"pw")) == b"\x01\x03bob\x02pw"
    event, rest = feed_exactly(conn, rest)
    assert event == UserPassReply(0)
    assert rest == b""
    assert conn.state is ClientState.NEGOTIATED


def test_userpass_failure_closes():
    conn = ClientConnection()
    conn.send(BOTH)
    conn.receive_data(b"\x05\x02")
    conn.next_event()
    conn.send(UserPassRequest(b"bob", b"bad"))
    conn.receive_data(b"\x01\x01")
    event = conn.next_event()
    assert isinstance(event, UserPassReply)
    assert not event.ok
    assert conn.state is ClientState.CLOSED


def test_no_acceptable_method_closes():
    conn = ClientConnection()
    conn.send(NO_AUTH)
    conn.receive_data(b"\x05\xff")
    assert conn.next_event() == MethodSelection(Method.NO_ACCEPTABLE)
    assert conn.state is ClientState.CLOSED


@pytest.mark.parametrize("method", [b"\x02", b"\x01"], ids=["userpass", "gssapi"])
def test_method_not_offered_is_remote_error(method):
    conn = ClientConnection()
    conn.send(NO_AUTH)
    conn.receive_data(b"\x05" + method)
    with pytest.raises(MalformedMessage, match="not offered"):
        conn.next_event()
    assert conn.state is ClientState.CLOSED


def test_gssapi_offered_and_selected_is_still_refused():
    conn = ClientConnection()
    conn.send(Greeting((Method.GSSAPI,)))
    conn.receive_data(b"\x05\x01")
    with pytest.raises(MalformedMessage):
        conn.next_event()


def test_bind_two_replies():
    conn = negotiated()
    conn.send(Request(Command.BIND, Address("0.0.0.0", 0)))
    first = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40"
    second = b"\x05\x00\x00\x01\x7f\x00\x00\x02\x30\x39"
    event, rest = feed_exactly(conn, first + second + b"data")
    assert event == Reply(ReplyCode.SUCCEEDED, Address("127.0.0.1", 40000))
    assert conn.state is ClientState.BIND_WAIT
    event, rest = feed_exactly(conn, rest)
    assert event == Reply(ReplyCode.SUCCEEDED, Address("127.0.0.2", 12345))
    assert conn.state is ClientState.RELAY
    assert rest == b"data"


def test_bind_second_reply_failure():
    conn = negotiated()
    conn.send(Request(Command.BIND, Address("0.0.0.0", 0)))
    conn.receive_data(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40")
    conn.next_event()
    conn.receive_data(b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00")
    assert conn.next_event() == Reply(ReplyCode.HOST_UNREACHABLE, Address("0.0.0.0", 0))
    assert conn.state is ClientState.CLOSED


def test_udp_associate_goes_to_control():
    conn = negotiated()
    conn.send(Request(Command.UDP_ASSOCIATE, Address("127.0.0.1", 5555)))
    conn.receive_data(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x13\x88")
    assert conn.next_event() == Reply(ReplyCode.SUCCEEDED, Address("127.0.0.1", 5000))
    assert conn.state is ClientState.CONTROL
    with pytest.raises(LocalProtocolError, match="CONTROL"):
        conn.next_event()


@pytest.mark.parametrize(
    ("wire", "code", "state"),
    [
        (b"\x00\x5a\x00\x50\x7f\x00\x00\x01", Socks4Code.GRANTED, ClientState.RELAY),
        (b"\x00\x5b\x00\x00\x00\x00\x00\x00", Socks4Code.REJECTED, ClientState.CLOSED),
    ],
    ids=["granted", "rejected"],
)
def test_socks4_reply(wire, code, state):
    conn = ClientConnection()
    conn.send(Socks4Request(Socks4Command.CONNECT, Address("127.0.0.1", 80)))
    event, rest = feed_exactly(conn, wire + b"xyz")
    assert isinstance(event, Socks4Reply)
    assert event.code is code
    assert rest == b"xyz"
    assert conn.state is state


def test_socks4_bind_two_replies():
    conn = ClientConnection()
    conn.send(Socks4Request(Socks4Command.BIND, Address("127.0.0.1", 0)))
    _, rest = feed_exactly(conn, b"\x00\x5a\x9c\x40\x7f\x00\x00\x01" * 2)
    assert conn.state is ClientState.BIND_WAIT
    _, rest = feed_exactly(conn, rest)
    assert conn.state is ClientState.RELAY
    assert rest == b""


# -- raw probes -----------------------------------------------------------------------------


def test_raw_request_reply():
    conn = negotiated()
    assert conn.send(RawRequest(b"\x05\x09\x00" + bytes(16))) == b"\x05\x09\x00" + bytes(16)
    event, rest = feed_exactly(conn, b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00more")
    assert event == RawReply(b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    assert event.rep == 0x02
    assert rest == b"more"
    assert conn.state is ClientState.CLOSED


def test_raw_reply_with_unknown_codes_is_not_validated():
    conn = negotiated()
    conn.send(RawRequest(b"\x05\x05\x00\x01" + bytes(6)))
    conn.receive_data(b"\x05\xee\x07\x09")
    assert conn.next_event() == RawReply(b"\x05\xee\x07\x09")


def test_raw_request_answered_by_close():
    conn = negotiated()
    conn.send(RawRequest(b"\x05\x07\x00"))
    conn.receive_data(b"\x05")
    conn.receive_data(b"")
    event = conn.next_event()
    assert event == RawReply(b"\x05")
    assert event.rep is None
    assert conn.state is ClientState.CLOSED


def test_raw_reply_not_socks5():
    assert RawReply(b"HTTP/1.1 400").rep is None
    assert RawReply(b"").rep is None


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"", b"\x05", b"\x05\x00\x00\x01\x7f"])
def test_eof_before_reply_is_remote_error(prefix):
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(prefix)
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed"):
        conn.next_event()
    assert conn.state is ClientState.CLOSED


@pytest.mark.parametrize(
    ("wire", "exc"),
    [
        (b"\x04\x00", UnsupportedVersion),
        (b"\x05\x00\x01\x01", MalformedMessage),
        (b"\x05\x00\x00\x07", UnsupportedAddressType),
        (b"\x05\x42\x00\x01\x00\x00\x00\x00\x00\x00", MalformedMessage),
    ],
    ids=["version", "rsv", "atyp", "unknown-rep"],
)
def test_malformed_reply_closes(wire, exc):
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(wire)
    with pytest.raises(exc):
        conn.next_event()
    assert conn.state is ClientState.CLOSED


def test_nothing_expected_when_idle():
    with pytest.raises(LocalProtocolError, match="IDLE"):
        ClientConnection().next_event()


def test_relay_keeps_later_bytes_as_trailing():
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(b"\x05\x00\x00\x01" + bytes(6))
    conn.next_event()
    conn.receive_data(b"abc")
    assert conn.bytes_needed() == 1
    assert conn.trailing_data() == b"abc"


def test_transition_table_targets_are_states():
    assert all(isinstance(v, ClientState) for v in TRANSITIONS.values())
    terminal = {ClientState.RELAY, ClientState.CONTROL, ClientState.CLOSED}
    assert terminal.isdisjoint({state for state, _ in TRANSITIONS})


# -- properties -----------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True),
)
addresses = st.builds(Address, hosts, st.integers(0, 65535))
codes = st.sampled_from(list(ReplyCode)[:9])


@given(codes, addresses, st.binary(max_size=64))
def test_exact_reads_never_overread(code, address, tail):
    conn = negotiated()
    conn.send(CONNECT)
    reply = Reply(code, address)
    event, rest = feed_exactly(conn, reply.to_bytes() + tail)
    assert event == reply
    assert rest == tail


@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_errors(data):
    conn = negotiated()
    conn.send(CONNECT)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        event = conn.next_event()
    except ProtocolError:
        assert conn.state is ClientState.CLOSED
    else:
        # A well-formed reply is fine too; anything after it would be relayed data.
        assert isinstance(event, Reply)


@given(st.binary(max_size=300))
def test_raw_probe_total(data):
    conn = negotiated()
    conn.send(RawRequest(b"\x05\x08\x00"))
    conn.receive_data(data)
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, RawReply)
    assert data.startswith(event.data)
