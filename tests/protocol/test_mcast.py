"""Multicast codec (socksx/protocol/mcast.py): vectors, parsers, datagrams, the control machine."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksx.protocol.address import Address
from socksx.protocol.connection import ServerConnection, State
from socksx.protocol.constants import Command, McastDatagramType, Method, Notice, ReplyCode
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    UnsupportedVersion,
)
from socksx.protocol.mcast import (
    GroupKeys,
    JoinReply,
    JoinRequest,
    LeaveRequest,
    McastNotice,
    RekeyNotice,
    decode_relay_plain,
    encode_member_plain,
    encode_relay_plain,
    group_problem,
    maybe_read_control_message,
    maybe_read_join_reply,
    maybe_read_notice,
    open_member_datagram,
    open_relay_datagram,
    seal_member,
    seal_relay,
    split_relay_plaintext,
)
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    maybe_read_reply,
    maybe_read_request,
)
from socksx.protocol.sealed import OVERHEAD, ReplayWindow, SealedHeader, UnsealError
from tests.vectors import check_error_vector, check_vector
from tests.vectors import mcast as vectors

MK, GK = vectors.MEMBER_KEY, vectors.GROUP_KEY
G4 = vectors.G4


# -- vectors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("v", vectors.REQUESTS, ids=lambda v: v.name)
def test_request_vector(v) -> None:
    check_vector(maybe_read_request, v)


@pytest.mark.parametrize("v", vectors.REQUEST_ERRORS, ids=lambda v: v.name)
def test_request_error_vector(v) -> None:
    check_error_vector(maybe_read_request, v)


@pytest.mark.parametrize("v", vectors.JOIN_REPLIES, ids=lambda v: v.name)
def test_join_reply_vector(v) -> None:
    check_vector(maybe_read_join_reply, v)
    check_vector(lambda b: maybe_read_control_message(b, Command.JOIN_MCAST_GROUP), v)


@pytest.mark.parametrize("v", vectors.JOIN_REPLY_ERRORS, ids=lambda v: v.name)
def test_join_reply_error_vector(v) -> None:
    check_error_vector(maybe_read_join_reply, v)


@pytest.mark.parametrize("v", vectors.NOTICES, ids=lambda v: v.name)
def test_notice_vector(v) -> None:
    check_vector(maybe_read_notice, v)
    for awaiting in (None, Command.JOIN_MCAST_GROUP, Command.LEAVE_MCAST_GROUP):
        check_vector(lambda b, a=awaiting: maybe_read_control_message(b, a), v)


@pytest.mark.parametrize("v", vectors.NOTICE_ERRORS, ids=lambda v: v.name)
def test_notice_error_vector(v) -> None:
    check_error_vector(maybe_read_notice, v)


@pytest.mark.parametrize("v", vectors.DATAGRAMS, ids=lambda v: v.name)
def test_datagram_vector(v) -> None:
    d = v.msg
    wire = v.wire
    assert d.to_bytes() == wire
    assert wire[0] == d.type
    if d.type == McastDatagramType.MEMBER_SEALED:
        assert open_member_datagram(MK, wire) == (SealedHeader(1, d.id, d.seq), d.data)
    elif d.type == McastDatagramType.RELAY_SEALED:
        key = MK if d.key == "MEMBER_KEY" else GK
        assert open_relay_datagram(key, wire) == (SealedHeader(2, d.id, d.seq), d.source, d.data)
    elif d.type == McastDatagramType.RELAY_PLAIN:
        assert decode_relay_plain(wire) == (d.source, d.data)
    else:
        assert wire == b"\x03" + d.data


def test_keepalive_is_29_octets() -> None:
    assert len(seal_member(MK, 1, 1, b"")) == OVERHEAD == 29


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("239.1.1.1", True),
        ("224.0.0.251", True),
        ("ff02::fb", True),
        ("ff0e::1", True),
        ("0.0.0.0", False),
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("example.com", False),
    ],
)
def test_group_problem(host, ok) -> None:
    assert (group_problem(Address(host, 5000)) is None) == ok


def test_requests_carry_their_command() -> None:
    assert JoinRequest(G4).command == Command.JOIN_MCAST_GROUP
    assert LeaveRequest(G4).command == Command.LEAVE_MCAST_GROUP


group_addresses = st.builds(
    Address,
    st.one_of(
        st.ip_addresses(v=4, network="224.0.0.0/4"),
        st.ip_addresses(v=6, network="ff00::/8"),
    ).map(str),
    st.integers(0, 65535),
)


@given(group_addresses, st.sampled_from([JoinRequest, LeaveRequest]))
def test_request_roundtrip(address, cls) -> None:
    wire = cls(address).to_bytes()
    assert maybe_read_request(wire) == (cls(address), len(wire))


# -- replies ----------------------------------------------------------------------------------

keys_strategy = st.builds(
    lambda mid, kid, mk, gk: GroupKeys(mid, kid, mk, gk if kid else bytes(32)),
    st.integers(1, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32).filter(any),
)
replies = st.one_of(
    st.builds(
        JoinReply,
        st.sampled_from([ReplyCode.SUCCEEDED, ReplyCode.MCAST_RECEIVE_ONLY,
                         ReplyCode.MCAST_SEND_ONLY]),
        st.builds(Address, st.ip_addresses().map(str), st.integers(0, 65535)),
        st.one_of(st.none(), keys_strategy),
    ),
    st.just(JoinReply(ReplyCode.MCAST_DENIED)),
)


@given(replies)
def test_join_reply_roundtrip(reply) -> None:
    wire = reply.to_bytes()
    assert maybe_read_join_reply(wire) == (reply, len(wire))
    assert maybe_read_control_message(wire, Command.JOIN_MCAST_GROUP) == (reply, len(wire))


@given(st.binary(max_size=120))
def test_garbage_raises_only_protocol_errors(data) -> None:
    for parse in (
        maybe_read_join_reply,
        maybe_read_notice,
        lambda b: maybe_read_control_message(b, Command.JOIN_MCAST_GROUP),
        lambda b: maybe_read_control_message(b, Command.LEAVE_MCAST_GROUP),
        lambda b: maybe_read_control_message(b, None),
        maybe_read_request,
    ):
        with contextlib.suppress(ProtocolError):
            parse(data)


def test_join_reply_permissions() -> None:
    address = Address("192.0.2.1", 1)
    both = JoinReply(ReplyCode.SUCCEEDED, address)
    receive = JoinReply(ReplyCode.MCAST_RECEIVE_ONLY, address)
    send = JoinReply(ReplyCode.MCAST_SEND_ONLY, address)
    denied = JoinReply(ReplyCode.MCAST_DENIED)
    assert (both.can_send, both.can_receive, both.ok) == (True, True, True)
    assert (receive.can_send, receive.can_receive, receive.ok) == (False, True, True)
    assert (send.can_send, send.can_receive, send.ok) == (True, False, True)
    assert (denied.can_send, denied.can_receive, denied.ok) == (False, False, False)


@pytest.mark.parametrize(
    "build",
    [
        lambda: JoinReply(ReplyCode.MCAST_LIMIT),
        lambda: JoinReply(ReplyCode.NOT_ALLOWED),
        lambda: JoinReply(ReplyCode.MCAST_DENIED, Address("192.0.2.1", 1)),
        lambda: JoinReply(ReplyCode.MCAST_DENIED, keys=GroupKeys(1, 0, MK, bytes(32))),
        lambda: GroupKeys(0, 0, MK, bytes(32)),
        lambda: GroupKeys(1, 1 << 32, MK, GK),
        lambda: GroupKeys(1, 0, MK, GK),
        lambda: GroupKeys(1, 1, MK, bytes(32)),
        lambda: GroupKeys(1, 1, MK[:31], GK),
        lambda: GroupKeys(1, 1, MK, GK, suite=2),
        lambda: RekeyNotice(G4, 0, GK),
        lambda: RekeyNotice(G4, 1, b"short"),
        lambda: McastNotice(Notice.MCAST_REKEY, G4),
        lambda: McastNotice(Notice.PEER_CONNECTED, G4),
    ],
)
def test_illegal_values_are_refused_locally(build) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_keys_are_not_in_reprs() -> None:
    text = repr(JoinReply(ReplyCode.SUCCEEDED, Address("192.0.2.1", 1),
                          GroupKeys(7, 1, MK, GK))) + repr(RekeyNotice(G4, 2, GK))
    assert MK.hex() not in text
    assert GK.hex() not in text
    assert repr(MK) not in text
    assert repr(GK) not in text


def test_control_message_dispatch() -> None:
    leave_ok = Reply(ReplyCode.SUCCEEDED, G4).to_bytes()
    assert maybe_read_control_message(leave_ok, Command.LEAVE_MCAST_GROUP) == (
        Reply(ReplyCode.SUCCEEDED, G4),
        len(leave_ok),
    )
    # The same octets after a JOIN are the start of a JOIN reply: LEN is still missing.
    assert maybe_read_control_message(leave_ok, Command.JOIN_MCAST_GROUP) is None
    with pytest.raises(MalformedMessage):
        maybe_read_control_message(leave_ok, None)
    assert maybe_read_control_message(b"\x05", None) is None
    with pytest.raises(UnsupportedVersion):
        maybe_read_control_message(b"\x04", None)


def test_notice_and_reply_back_to_back_are_split() -> None:
    notice = McastNotice(Notice.MCAST_EXPIRED, G4)
    reply = Reply(ReplyCode.GENERAL_FAILURE, G4)
    wire = notice.to_bytes() + reply.to_bytes()
    first, used = maybe_read_control_message(wire, Command.LEAVE_MCAST_GROUP)
    assert first == notice
    assert maybe_read_control_message(wire[used:], Command.LEAVE_MCAST_GROUP) == (
        reply,
        len(wire) - used,
    )


def test_unknown_plain_rep_after_join_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        maybe_read_join_reply(bytes.fromhex("05 c9 00 01 00000000 0000"))
    assert maybe_read_reply(bytes.fromhex("05 b3 00 01 00000000 0000")) is not None


# -- datagrams --------------------------------------------------------------------------------

sources = st.builds(Address, st.ip_addresses().map(str), st.integers(0, 65535))


@given(st.integers(1, 0xFFFFFFFF), st.integers(1, (1 << 64) - 1), st.binary(max_size=300))
def test_member_datagram_roundtrip(member_id, seq, data) -> None:
    wire = seal_member(MK, member_id, seq, data)
    assert open_member_datagram(MK, wire) == (SealedHeader(1, member_id, seq), data)


@given(st.integers(0, 0xFFFFFFFF), st.integers(1, (1 << 64) - 1), sources, st.binary(max_size=300))
def test_relay_datagram_roundtrip(key_id, seq, source, data) -> None:
    wire = seal_relay(GK, key_id, seq, source, data)
    assert open_relay_datagram(GK, wire) == (SealedHeader(2, key_id, seq), source, data)
    assert decode_relay_plain(encode_relay_plain(source, data)) == (source, data)


@given(st.binary(min_size=1, max_size=80), st.data())
def test_any_flipped_bit_is_rejected(data, draw) -> None:
    wire = bytearray(seal_relay(GK, 3, 9, Address("198.51.100.7", 5000), data))
    bit = draw.draw(st.integers(8, len(wire) * 8 - 1))  # TYPE is checked before the tag
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(UnsealError):
        open_relay_datagram(GK, bytes(wire))


def test_wrong_key_and_wrong_type_are_rejected() -> None:
    member = seal_member(MK, 5, 1, b"x")
    relay = seal_relay(GK, 1, 1, Address("192.0.2.1", 1), b"x")
    with pytest.raises(UnsealError):
        open_member_datagram(GK, member)
    with pytest.raises(UnsealError):
        open_relay_datagram(MK, relay)
    with pytest.raises(UnsealError):
        open_member_datagram(MK, relay)  # a member's key never opens relay traffic as 01
    with pytest.raises(UnsealError):
        open_relay_datagram(GK, member)
    with pytest.raises(UnsealError):
        open_relay_datagram(GK, b"")
    # Same key, same ID and SEQ, other TYPE: a different nonce, so the tag fails.
    forged = bytes([2]) + member[1:]
    with pytest.raises(UnsealError):
        open_relay_datagram(MK, forged)


def test_plain_datagrams() -> None:
    assert encode_member_plain(b"") == b"\x03"
    assert encode_member_plain(b"hi") == b"\x03hi"
    with pytest.raises(MalformedMessage):
        decode_relay_plain(b"\x03hi")
    with pytest.raises(MalformedMessage):
        decode_relay_plain(b"")
    with pytest.raises(MalformedMessage):
        decode_relay_plain(b"\x04\x01\x01\x02")


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"\x01\x01\x02\x03", b"\x03\x03abc\x00\x01", b"\x02" + bytes(6), b"\x04" + bytes(17)],
)
def test_relay_plaintext_without_ip_source_is_malformed(plaintext) -> None:
    with pytest.raises(MalformedMessage):
        split_relay_plaintext(plaintext)


def test_replay_window_per_key_id_scheme() -> None:
    """SEQ restarts at 1 under a new key: one window per KEY_ID keeps both fresh."""
    windows = {1: ReplayWindow(), 2: ReplayWindow()}
    assert windows[1].accept(1)
    assert windows[1].accept(2)
    assert windows[2].accept(1)
    assert not windows[1].accept(1)


# -- the server's state machine with JOIN / LEAVE ---------------------------------------------


def _negotiated() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(Greeting((Method.NO_AUTH,)).to_bytes())
    assert isinstance(conn.next_event(), Greeting)
    conn.send(MethodSelection(Method.NO_AUTH))
    return conn


def test_join_then_leave_then_notice_on_the_control_channel() -> None:
    conn = _negotiated()
    conn.receive_data(JoinRequest(G4).to_bytes())
    assert conn.next_event() == JoinRequest(G4)
    reply = JoinReply(ReplyCode.SUCCEEDED, Address("127.0.0.1", 4000), GroupKeys(9, 0, MK,
                                                                                bytes(32)))
    assert conn.send(reply) == reply.to_bytes()
    assert conn.state is State.CONTROL
    conn.send(RekeyNotice(G4, 1, GK))
    conn.receive_data(LeaveRequest(G4).to_bytes())
    assert conn.next_event() == LeaveRequest(G4)
    conn.send(McastNotice(Notice.MCAST_EXPIRED, G4))  # a notice may precede the reply
    conn.send(Reply(ReplyCode.GENERAL_FAILURE, G4))
    assert conn.state is State.CONTROL
    conn.receive_data(JoinRequest(G4).to_bytes())
    conn.next_event()
    conn.send(JoinReply(ReplyCode.MCAST_DENIED))  # refused on a live channel: stays open
    assert conn.state is State.CONTROL


@pytest.mark.parametrize(
    "refusal",
    [JoinReply(ReplyCode.MCAST_DENIED), Reply(ReplyCode.MCAST_LIMIT),
     Reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)],
)
def test_refused_first_join_closes(refusal) -> None:
    conn = _negotiated()
    conn.receive_data(JoinRequest(Address("0.0.0.0", 0)).to_bytes())
    conn.next_event()
    conn.send(refusal)
    assert conn.state is State.CLOSED


def test_notice_before_any_join_is_illegal() -> None:
    conn = _negotiated()
    with pytest.raises(LocalProtocolError):
        conn.send(McastNotice(Notice.MCAST_EXPIRED, G4))
    assert conn.state is State.CLOSED
