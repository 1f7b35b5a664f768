"""Hypothesis properties of the codec: round trips, totality on garbage, chunking invariance."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from socksx.protocol.address import Address, maybe_read_address
from socksx.protocol.connection import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    ServerConnection,
    State,
)
from socksx.protocol.constants import (
    Command,
    Method,
    ReplyCode,
    Socks4Code,
    Socks4Command,
)
from socksx.protocol.datagram import UdpHeader, decode_udp_datagram, encode_udp_datagram
from socksx.protocol.errors import LocalProtocolError, RemoteProtocolError
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    Request,
    UserPassReply,
    UserPassRequest,
    maybe_read_greeting,
    maybe_read_method_selection,
    maybe_read_reply,
    maybe_read_request,
    maybe_read_userpass_reply,
    maybe_read_userpass_request,
)
from socksx.protocol.socks4 import (
    Socks4Reply,
    Socks4Request,
    maybe_read_socks4_reply,
    maybe_read_socks4_request,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
domains = st.from_regex(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63}){0,3}", fullmatch=True)
hosts = st.one_of(ipv4, ipv6, domains)
ports = st.integers(0, 0xFFFF)
addresses = st.builds(Address, hosts, ports)
plain_commands = st.sampled_from([Command.CONNECT, Command.BIND, Command.UDP_ASSOCIATE])
requests = st.builds(Request, plain_commands, addresses)
replies = st.builds(Reply, st.sampled_from(ReplyCode), addresses)
greetings = st.lists(st.integers(0, 0xFF), min_size=1, max_size=255).map(
    lambda methods: Greeting(tuple(methods))
)
field = st.binary(min_size=1, max_size=255)
userpass_requests = st.builds(UserPassRequest, field, field)
userpass_replies = st.builds(UserPassReply, st.integers(0, 0xFF))
method_selections = st.builds(MethodSelection, st.sampled_from(Method))
# DSTIP 0.0.0.x with x != 0 is the SOCKS4a marker: such an IPv4 address has no SOCKS4 spelling
# (see test_socks4.py::test_socks4a_marker_address_cannot_be_sent_as_plain_socks4).
socks4_hosts = st.one_of(
    ipv4.filter(lambda h: not h.startswith("0.0.0.") or h == "0.0.0.0"),
    domains,
)
socks4_requests = st.builds(
    Socks4Request,
    st.sampled_from(Socks4Command),
    st.builds(Address, socks4_hosts, ports),
    st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"x")),
)
socks4_replies = st.builds(
    Socks4Reply, st.sampled_from(Socks4Code), st.builds(Address, ipv4, ports)
)

Parser = Callable[[bytes], "tuple[object, int] | None"]

ROUND_TRIPS: list[tuple[str, st.SearchStrategy, Parser]] = [
    ("address", addresses, maybe_read_address),
    ("request", requests, maybe_read_request),
    ("reply", replies, maybe_read_reply),
    ("greeting", greetings, maybe_read_greeting),
    ("method selection", method_selections, maybe_read_method_selection),
    ("userpass request", userpass_requests, maybe_read_userpass_request),
    ("userpass reply", userpass_replies, maybe_read_userpass_reply),
    ("socks4 request", socks4_requests, maybe_read_socks4_request),
    ("socks4 reply", socks4_replies, maybe_read_socks4_reply),
]


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "parse"), [c[1:] for c in ROUND_TRIPS], ids=[c[0] for c in ROUND_TRIPS]
)
@SETTINGS
@given(data=st.data(), trailing=st.binary(max_size=16))
def test_round_trip(strategy, parse, data, trailing) -> None:
    message = data.draw(strategy)
    wire = message.to_bytes()
    assert parse(wire) == (message, len(wire))
    assert parse(wire + trailing) == (message, len(wire))
    assert parse(wire[: data.draw(st.integers(0, len(wire) - 1))]) is None


@SETTINGS
@given(address=addresses, frag=st.integers(0, 0xFF), payload=st.binary(max_size=512))
def test_udp_datagram_round_trip(address, frag, payload) -> None:
    wire = encode_udp_datagram(address, payload, frag)
    header, offset = decode_udp_datagram(wire)
    assert header == UdpHeader(frag, address)
    assert wire[offset:] == payload


# -- garbage: parsers are total --------------------------------------------------------------

PEER_PARSERS: list[Parser] = [parse for _, _, parse in ROUND_TRIPS]

PREFIXES = [
    b"",
    b"\x05",
    b"\x05\x01\x00",
    b"\x05\x01\x00\x03",
    b"\x05\x00\x00\x01",
    b"\x01",
    b"\x01\x05alice",
    b"\x04\x01\x00\x50\x00\x00\x00\x01",
    b"\x00\x5a",
    b"\x03",
    b"\x00\x00\x00\x03",
]
garbage = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=300)),
)


@pytest.mark.parametrize("parse", PEER_PARSERS, ids=lambda p: p.__name__)
@SETTINGS
@given(buf=garbage, extra=st.binary(max_size=8))
def test_parser_on_garbage_is_total_and_prefix_consistent(parse, buf, extra) -> None:
    """None, a message with its exact length, or a RemoteProtocolError: nothing else, ever."""
    try:
        result = parse(buf)
    except RemoteProtocolError:
        return
    if result is None:
        return
    message, consumed = result
    assert 0 < consumed <= len(buf)
    assert parse(buf[:consumed]) == (message, consumed)
    assert parse(buf[:consumed] + extra) == (message, consumed)
    for i in range(consumed):
        assert parse(buf[:i]) is None
    # What was decoded re-encodes to something that decodes to the same message. (A decoded
    # domain that cannot be re-encoded would be a bug: see test_address.py.)
    try:
        again = message.to_bytes()  # type: ignore[attr-defined]
    except LocalProtocolError:
        assume(False)
    else:
        assert parse(again) == (message, len(again))


@SETTINGS
@given(buf=garbage)
def test_udp_decoder_on_garbage_is_total(buf) -> None:
    try:
        header, offset = decode_udp_datagram(buf)
    except RemoteProtocolError:
        return
    assert 4 <= offset <= len(buf)
    assert decode_udp_datagram(buf[:offset]) == (header, offset)


# -- the server machine on garbage and on chunked conversations ------------------------------


def _answer(conn: ServerConnection, event: object) -> None:
    """A canned server: accept what can be accepted, with a choice made from the event."""
    if isinstance(event, Greeting):
        if Method.NO_AUTH in event.methods:
            conn.send(MethodSelection(Method.NO_AUTH))
        elif Method.USERNAME_PASSWORD in event.methods:
            conn.send(MethodSelection(Method.USERNAME_PASSWORD))
        else:
            conn.send(MethodSelection(Method.NO_ACCEPTABLE))
    elif isinstance(event, UserPassRequest):
        conn.send(UserPassReply(0 if event.username[:1] != b"x" else 1))
    elif isinstance(event, Socks4Request):
        ok = event.address.port % 5 != 0
        code = Socks4Code.GRANTED if ok else Socks4Code.REJECTED
        conn.send(Socks4Reply(code))
        if conn.state is State.BIND_SECOND:
            conn.send(Socks4Reply(code))
    else:
        port = getattr(getattr(event, "address", None), "port", 1)
        rep = ReplyCode.SUCCEEDED if port % 5 != 0 else ReplyCode.CONNECTION_REFUSED
        conn.send(Reply(rep))
        if conn.state is State.BIND_SECOND:
            conn.send(Reply(rep))


def drive(chunks: list[bytes], eof: bool = True) -> tuple[list[object], str, bytes]:
    """Run a ServerConnection over *chunks*: its events, how it ended, and the trailing bytes.

    Every loop is bounded: each event consumes at least one octet, so there are never more
    events than octets (plus the final ConnectionClosed).
    """
    conn = ServerConnection()
    events: list[object] = []
    feed = [*chunks, b""] if eof else list(chunks)
    budget = sum(map(len, chunks)) + 2
    fed = 0
    try:
        for chunk in feed:
            conn.receive_data(chunk)
            fed += 1
            for _ in range(budget):
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    break
                _answer(conn, event)
            else:
                pytest.fail("next_event() kept producing events without consuming input")
            if isinstance(event, ConnectionClosed):
                break
    except RemoteProtocolError as exc:
        # Only the peer can be at fault here (LocalProtocolError would fail the test). The
        # machine may owe one refusal; bytes still in flight stay unread.
        if conn.state in (State.REPLY, State.CONTROL_REPLY) and exc.reply is not None:
            conn.send(Reply(exc.reply) if conn.version == 5 else Socks4Reply(Socks4Code.REJECTED))
        return events, type(exc).__name__, conn.trailing_data() + b"".join(feed[fed:])
    return events, conn.state.name, conn.trailing_data() + b"".join(feed[fed:])


def split(data: st.DataObject, wire: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=12)))
    cuts = [c for c in cuts if c < len(wire)]
    bounds = [0, *cuts, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


@SETTINGS
@given(buf=garbage)
def test_server_machine_on_garbage_raises_only_protocol_errors(buf) -> None:
    drive([buf])


@SETTINGS
@given(buf=garbage, data=st.data())
def test_server_machine_does_not_care_how_garbage_is_chunked(buf, data) -> None:
    assert drive(split(data, buf)) == drive([buf])
    assert drive([buf[i : i + 1] for i in range(len(buf))]) == drive([buf])


socks5_conversations = st.builds(
    lambda greeting, auth, request, payload: (
        greeting.to_bytes() + (auth.to_bytes() if auth else b"") + request.to_bytes() + payload,
        payload,
    ),
    st.just(Greeting((Method.NO_AUTH,))),
    st.none(),
    requests,
    st.binary(max_size=64),
) | st.builds(
    lambda auth, request, payload: (
        Greeting((Method.USERNAME_PASSWORD,)).to_bytes()
        + auth.to_bytes()
        + request.to_bytes()
        + payload,
        payload,
    ),
    userpass_requests.filter(lambda a: a.username[:1] != b"x"),
    requests,
    st.binary(max_size=64),
)
socks4_conversations = st.builds(
    lambda request, payload: (request.to_bytes() + payload, payload),
    socks4_requests,
    st.binary(max_size=64),
)


@SETTINGS
@given(conversation=socks5_conversations | socks4_conversations, data=st.data())
def test_valid_conversation_is_chunking_invariant(conversation, data) -> None:
    wire, payload = conversation
    events, outcome, trailing = drive([wire], eof=False)
    assert drive(split(data, wire), eof=False) == (events, outcome, trailing)
    if outcome == "RELAY":
        assert trailing == payload
