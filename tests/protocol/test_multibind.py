from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socksx.protocol.address import Address
from socksx.protocol.connection import ServerConnection, State
from socksx.protocol.constants import (
    ChannelCloseReason,
    ChannelFlag,
    ChannelType,
    Command,
    Method,
    ReplyCode,
)
from socksx.protocol.datagram import decode_udp_datagram, encode_udp_datagram
from socksx.protocol.errors import LocalProtocolError, ProtocolError
from socksx.protocol.messages import Greeting, MethodSelection, Reply, maybe_read_request
from socksx.protocol.multibind import (
    AcceptExpired,
    AcceptRequest,
    BoundChannel,
    ChannelClosed,
    ChannelRequest,
    MultiBindReply,
    MultiBindRequest,
    PeerConnected,
    maybe_read_event,
    maybe_read_multibind_reply,
)
from tests.vectors import TRAILING, check_error_vector, check_vector
from tests.vectors import multibind as vmb

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSED = [
    *((maybe_read_request, v) for v in vmb.REQUESTS),
    *((maybe_read_multibind_reply, v) for v in vmb.REPLIES),
    *((maybe_read_event, v) for v in vmb.EVENTS),
]
REFUSED = [
    *((maybe_read_request, v) for v in vmb.REQUEST_ERRORS),
    *((maybe_read_multibind_reply, v) for v in vmb.REPLY_ERRORS),
    *((maybe_read_event, v) for v in vmb.EVENT_ERRORS),
]


def _id(case) -> str:
    parse, vector = case
    return f"{parse.__name__.removeprefix('maybe_read_')}: {vector.name}"


@pytest.mark.parametrize("case", PARSED, ids=_id)
def test_vector(case) -> None:
    parse, vector = case
    check_vector(parse, vector)


@pytest.mark.parametrize("case", REFUSED, ids=_id)
def test_error_vector(case) -> None:
    parse, vector = case
    check_error_vector(parse, vector)


@pytest.mark.parametrize("vector", vmb.DATAGRAMS, ids=lambda v: v.name)
def test_channel_datagram_vector(vector) -> None:
    wire = vector.wire
    header, data = vector.msg.header, vector.msg.data
    assert decode_udp_datagram(wire) == (header, len(wire) - len(data))
    assert encode_udp_datagram(header.address, data) == wire


def test_every_table_has_vectors_and_every_event_kind_is_covered() -> None:
    assert all(vmb.TABLES.values())
    assert all(vmb.ERROR_TABLES.values())
    kinds = {type(v.msg) for v in vmb.EVENTS}
    assert kinds == {PeerConnected, ChannelClosed, AcceptExpired}


def test_check_probes_get_the_documented_answers() -> None:
    """PROTOCOL.md introduction: NCHAN 0 is refused with 01; the zero token parses (then 02)."""
    with pytest.raises(ProtocolError) as info:
        maybe_read_request(bytes.fromhex("05 08 00 01 00000000 0000 00"))
    assert info.value.reply is ReplyCode.GENERAL_FAILURE
    assert maybe_read_request(bytes([5, 9, 0]) + bytes(16)) == (AcceptRequest(bytes(16)), 19)


# -- constructors refuse what cannot be sent -------------------------------------------------

TCP = ChannelRequest(ChannelType.TCP)
UDP = ChannelRequest(ChannelType.UDP)
PAIR = ChannelRequest(ChannelType.UDP, ChannelFlag.RTP_PAIR)
ANY = Address("0.0.0.0", 0)


@pytest.mark.parametrize(
    ("channels", "problem"),
    [
        ((), "NCHAN 0"),
        ((TCP,) * 17, "NCHAN 17"),
        ((PAIR,), "last channel"),
        ((PAIR, TCP), "must be UDP"),
        ((PAIR, PAIR, UDP), "two RTP/RTCP pairs"),
    ],
)
def test_request_constructor_refuses_illegal_channel_lists(channels, problem) -> None:
    with pytest.raises(LocalProtocolError, match=problem):
        MultiBindRequest(ANY, channels)


def test_pair_bit_on_tcp_is_refused() -> None:
    tcp_pair = ChannelRequest(ChannelType.TCP, ChannelFlag.RTP_PAIR)
    with pytest.raises(LocalProtocolError, match="only allowed on UDP"):
        MultiBindRequest(ANY, (tcp_pair, UDP))


@pytest.mark.parametrize(
    ("kind", "flags"), [(1, 0), (ChannelType.UDP, 2), (ChannelType.UDP, "1")]
)
def test_channel_request_refuses_bad_type_or_flags(kind, flags) -> None:
    with pytest.raises(LocalProtocolError):
        ChannelRequest(kind, flags)


def test_channel_flags_given_as_int_become_the_enum() -> None:
    assert ChannelRequest(ChannelType.UDP, 1).flags is ChannelFlag.RTP_PAIR
    assert ChannelRequest(ChannelType.UDP, 1) == PAIR


@pytest.mark.parametrize(
    "build",
    [
        lambda: AcceptRequest(bytes(15)),
        lambda: AcceptRequest("0" * 16),
        lambda: BoundChannel(16, ChannelType.TCP, ANY),
        lambda: BoundChannel(0, 1, ANY),
        lambda: BoundChannel(0, ChannelType.TCP, ANY, ANY),
        lambda: BoundChannel(0, ChannelType.UDP, ANY),
        lambda: MultiBindReply(()),
        lambda: MultiBindReply((BoundChannel(1, ChannelType.TCP, ANY),)),
        lambda: PeerConnected(16, bytes(16), ANY),
        lambda: PeerConnected(0, bytes(17), ANY),
        lambda: ChannelClosed(0, 1),
        lambda: ChannelClosed(-1, ChannelCloseReason.IDLE),
        lambda: AcceptExpired(0, b""),
    ],
)
def test_server_messages_refuse_illegal_values(build) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_tokens_stay_out_of_reprs() -> None:
    token = bytes(range(16))
    for message in (AcceptRequest(token), PeerConnected(0, token, ANY), AcceptExpired(0, token)):
        assert token.hex() not in repr(message)
        assert repr(token) not in repr(message)


def test_requests_name_their_command() -> None:
    assert MultiBindRequest(ANY, (TCP,)).command is Command.MULTI_BIND
    assert AcceptRequest(bytes(16)).command is Command.ACCEPT


# -- the server state machine carries both commands ------------------------------------------


def _negotiated() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(Greeting((Method.NO_AUTH,)).to_bytes())
    assert isinstance(conn.next_event(), Greeting)
    conn.send(MethodSelection(Method.NO_AUTH))
    return conn


REPLY = MultiBindReply((BoundChannel(0, ChannelType.TCP, Address("127.0.0.1", 4000)),))
TOKEN = bytes(range(16))


def test_multibind_leaves_a_control_channel_with_notices_and_one_refused_second_request() -> None:
    conn = _negotiated()
    request = MultiBindRequest(ANY, (TCP,))
    conn.receive_data(request.to_bytes() + request.to_bytes())
    assert conn.next_event() == request
    assert conn.state is State.REPLY
    assert conn.send(REPLY) == REPLY.to_bytes()
    assert conn.state is State.CONTROL
    for notice in (
        PeerConnected(0, TOKEN, Address("127.0.0.1", 5000)),
        AcceptExpired(0, TOKEN),
        ChannelClosed(0, ChannelCloseReason.IDLE),
    ):
        assert conn.send(notice) == notice.to_bytes()
        assert conn.state is State.CONTROL
    # The second MULTI_BIND parses; the server refuses it (and then closes, by its own choice).
    assert conn.next_event() == request
    assert conn.state is State.CONTROL_REPLY
    conn.send(PeerConnected(0, TOKEN, ANY))  # events may still interleave before the refusal
    conn.send(Reply(ReplyCode.GENERAL_FAILURE))
    assert conn.state is State.CONTROL


def test_accept_success_leads_to_relay_and_failure_to_closed() -> None:
    for reply, after in (
        (Reply(ReplyCode.SUCCEEDED, Address("192.0.2.9", 40000)), State.RELAY),
        (Reply(ReplyCode.NOT_ALLOWED), State.CLOSED),
    ):
        conn = _negotiated()
        conn.receive_data(AcceptRequest(TOKEN).to_bytes() + b"early")
        assert conn.next_event() == AcceptRequest(TOKEN)
        conn.send(reply)
        assert conn.state is after
    assert conn.trailing_data() == b"early"


def test_events_are_illegal_before_the_reply() -> None:
    conn = _negotiated()
    conn.receive_data(MultiBindRequest(ANY, (TCP,)).to_bytes())
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(ChannelClosed(0, ChannelCloseReason.IDLE))
    assert conn.state is State.CLOSED


# -- properties ------------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,2}", fullmatch=True),
)
addresses = st.builds(Address, hosts, st.integers(0, 0xFFFF))
ip_addresses = st.builds(
    Address,
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    st.integers(0, 0xFFFF),
)
tokens = st.binary(min_size=16, max_size=16)


@st.composite
def channel_lists(draw) -> tuple[ChannelRequest, ...]:
    """Legal channel lists: pairs are two UDP channels, the first with the bit."""
    out: list[ChannelRequest] = []
    limit = draw(st.integers(1, 16))
    while len(out) < limit:
        kind = draw(st.sampled_from(["tcp", "udp", "pair"]))
        if kind == "pair" and len(out) + 2 <= limit:
            out += [PAIR, UDP]
        else:
            out.append(TCP if kind == "tcp" else UDP)
    return tuple(out)


requests = st.builds(MultiBindRequest, addresses, channel_lists())


@st.composite
def replies(draw) -> MultiBindReply:
    kinds = draw(st.lists(st.sampled_from(ChannelType), min_size=1, max_size=16))
    entries = []
    for index, kind in enumerate(kinds):
        relay = draw(ip_addresses) if kind is ChannelType.UDP else None
        entries.append(BoundChannel(index, kind, draw(ip_addresses), relay))
    return MultiBindReply(tuple(entries))


chan_ids = st.integers(0, 15)
events = st.one_of(
    st.builds(PeerConnected, chan_ids, tokens, ip_addresses),
    st.builds(ChannelClosed, chan_ids, st.sampled_from(ChannelCloseReason)),
    st.builds(AcceptExpired, chan_ids, tokens),
)
ROUND_TRIPS = [
    ("request", requests, maybe_read_request),
    ("accept", st.builds(AcceptRequest, tokens), maybe_read_request),
    ("reply", replies(), maybe_read_multibind_reply),
    ("event", events, maybe_read_event),
]


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


@pytest.mark.parametrize(
    "parse", [maybe_read_multibind_reply, maybe_read_event, maybe_read_request],
    ids=lambda p: p.__name__,
)
@SETTINGS
@given(garbage=st.binary(max_size=200))
def test_garbage_raises_only_protocol_errors(parse, garbage) -> None:
    with contextlib.suppress(ProtocolError):
        parse(garbage)


@SETTINGS
@given(
    head=st.sampled_from([b"\x05\x08\x00", b"\x05\x00\x00", b"\x05\xc0\x00", b"\x05\xc1\x00"]),
    body=st.binary(max_size=120),
)
def test_garbage_after_a_valid_head_raises_only_protocol_errors(head, body) -> None:
    for parse in (maybe_read_request, maybe_read_multibind_reply, maybe_read_event):
        with contextlib.suppress(ProtocolError):
            parse(head + body)


@SETTINGS
@given(request=requests, cut=st.integers(1, 40))
def test_a_request_split_anywhere_parses_the_same(request, cut) -> None:
    wire = request.to_bytes() + TRAILING
    conn = _negotiated()
    conn.receive_data(wire[:cut])
    first = conn.next_event()
    conn.receive_data(wire[cut:])
    assert (first if first == request else conn.next_event()) == request
