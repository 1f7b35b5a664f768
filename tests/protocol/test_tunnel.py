"""SETUP_UDP_TUNNEL codec (socksx/protocol/tunnel.py): vectors three ways, errors, properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socksx.protocol.address import Address
from socksx.protocol.connection import ServerConnection, State
from socksx.protocol.constants import (
    TUNNEL_FRAME_MAX,
    Command,
    Method,
    ReplyCode,
    TunnelDir,
    TunnelProto,
)
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, ProtocolError
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    maybe_read_request,
)
from socksx.protocol.sealed import open_sealed, seal
from socksx.protocol.tunnel import (
    KEEPALIVE,
    Frame,
    Keepalive,
    TunnelReply,
    TunnelRequest,
    decode_payload,
    is_gateway_form,
    maybe_read_frame,
    maybe_read_tunnel_reply,
    parse_fingerprint,
)
from tests.vectors import TRAILING, check_error_vector, check_vector
from tests.vectors import tunnel as vt

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("vector", vt.REQUESTS, ids=lambda v: v.name)
def test_request_vector(vector) -> None:
    check_vector(maybe_read_request, vector)


@pytest.mark.parametrize("vector", vt.REQUEST_ERRORS, ids=lambda v: v.name)
def test_request_error_vector(vector) -> None:
    check_error_vector(maybe_read_request, vector)


@pytest.mark.parametrize("vector", vt.REPLIES, ids=lambda v: v.name)
def test_reply_vector(vector) -> None:
    for proto in vt.REPLY_PROTO[vector.name]:
        check_vector(lambda buf, p=proto: maybe_read_tunnel_reply(buf, p), vector)


@pytest.mark.parametrize("vector", vt.REPLY_ERRORS, ids=lambda v: v.name)
def test_reply_error_vector(vector) -> None:
    check_error_vector(lambda buf: maybe_read_tunnel_reply(buf, TunnelProto.UDP), vector)


def test_proto_01_success_has_no_key_block() -> None:
    wire = bytes.fromhex("05 00 00 01 00000000 0000")
    assert maybe_read_tunnel_reply(wire + b"\x00\x0b", TunnelProto.TLS) == (
        Reply(ReplyCode.SUCCEEDED, vt.ZERO),
        len(wire),
    )
    # The same octets answering PROTO 02 still wait for the key block.
    assert maybe_read_tunnel_reply(wire, TunnelProto.UDP) is None


@pytest.mark.parametrize("vector", vt.FRAMES, ids=lambda v: v.name)
def test_frame_vector(vector) -> None:
    check_vector(maybe_read_frame, vector)


@pytest.mark.parametrize("vector", vt.FRAME_ERRORS, ids=lambda v: v.name)
def test_frame_error_vector(vector) -> None:
    check_error_vector(maybe_read_frame, vector)


@pytest.mark.parametrize("vector", vt.SEALED, ids=lambda v: v.name)
def test_sealed_vector(vector) -> None:
    """Nonce = DIR | TUNNEL_ID | 11 zero octets | SEQ, so the octets are fixed by the header."""
    msg = vector.msg
    assert seal(vt.KEY, msg.direction, vt.TUNNEL_ID, msg.seq, msg.plaintext) == vector.wire
    header, plaintext = open_sealed(vt.KEY, vector.wire)
    assert (header.type, header.id, header.seq) == (msg.direction, vt.TUNNEL_ID, msg.seq)
    if msg.address is None:
        assert decode_payload(plaintext) is None
    else:
        address, offset = decode_payload(plaintext)
        assert (address, plaintext[offset:]) == (msg.address, msg.data)


def test_directions_never_share_a_nonce() -> None:
    same = {"key": vt.KEY, "id_": vt.TUNNEL_ID, "seq": 1, "plaintext": b"x"}
    a_to_b = seal(type_=TunnelDir.A_TO_B, **same)
    b_to_a = seal(type_=TunnelDir.B_TO_A, **same)
    assert a_to_b[13:] != b_to_a[13:]


def test_pipelined_frames_parse_one_at_a_time() -> None:
    stream = b"".join(v.wire for v in vt.FRAMES) + TRAILING[:1]
    seen = []
    while (parsed := maybe_read_frame(stream)) is not None:
        msg, used = parsed
        seen.append(msg)
        stream = stream[used:]
    assert seen == [v.msg for v in vt.FRAMES]
    assert stream == TRAILING[:1]


def test_keepalive_is_two_zero_octets() -> None:
    assert KEEPALIVE.to_bytes() == b"\x00\x00"
    assert maybe_read_frame(b"\x00\x00\x00") == (Keepalive(), 2)


def test_largest_frame_and_one_octet_more() -> None:
    address = Address("192.0.2.1", 9)
    data = b"d" * (TUNNEL_FRAME_MAX - len(address.to_bytes()))
    wire = Frame(address, data).to_bytes()
    assert wire[:2] == b"\xff\xff"
    assert maybe_read_frame(wire) == (Frame(address, data), len(wire))
    with pytest.raises(LocalProtocolError):
        Frame(address, data + b"!").to_bytes()


def test_truncated_payload_address_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_payload(b"\x01\x0a\x02")


def test_gateway_form() -> None:
    assert is_gateway_form(Address("0.0.0.0", 0))
    assert is_gateway_form(Address("::", 0))
    assert not is_gateway_form(Address("0.0.0.0", 1))
    assert not is_gateway_form(Address("198.51.100.2", 0))


@pytest.mark.parametrize(
    ("username", "password"),
    [(b"alice", b""), (b"", b"pw"), (b"u" * 256, b"p"), (b"u", b"p" * 256)],
)
def test_request_refuses_unencodable_credentials(username, password) -> None:
    with pytest.raises(LocalProtocolError):
        TunnelRequest(vt.GW_B, TunnelProto.TLS, username, password)


def test_request_refuses_unknown_proto() -> None:
    with pytest.raises(LocalProtocolError):
        TunnelRequest(vt.GW_B, 3)  # type: ignore[arg-type]


def test_request_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(TunnelRequest(vt.GW_B, TunnelProto.TLS, b"alice", b"s3cret"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tunnel_id": -1},
        {"tunnel_id": 1 << 32},
        {"key": bytes(31)},
        {"rep": ReplyCode.PEER_REFUSED},
    ],
)
def test_tunnel_reply_refuses_illegal_values(kwargs) -> None:
    values = {"address": vt.GW_B, "tunnel_id": 1, "key": vt.KEY, **kwargs}
    with pytest.raises(LocalProtocolError):
        TunnelReply(**values)


def test_tunnel_reply_repr_hides_the_key() -> None:
    assert vt.KEY.hex() not in repr(TunnelReply(vt.GW_B, 1, vt.KEY))
    assert str(list(vt.KEY)) not in repr(TunnelReply(vt.GW_B, 1, vt.KEY))


def test_server_machine_reaches_control_after_a_tunnel_reply() -> None:
    conn = ServerConnection()
    conn.receive_data(Greeting((Method.NO_AUTH,)).to_bytes())
    conn.next_event()
    conn.send(MethodSelection(Method.NO_AUTH))
    conn.receive_data(TunnelRequest(vt.ZERO, TunnelProto.UDP).to_bytes())
    request = conn.next_event()
    assert request == TunnelRequest(vt.ZERO, TunnelProto.UDP)
    assert conn.command == Command.SETUP_UDP_TUNNEL
    assert conn.send(TunnelReply(vt.GW_B, 7, vt.KEY))[-32:] == vt.KEY
    assert conn.state is State.CONTROL


@pytest.mark.parametrize(
    ("text", "digest"),
    [
        ("sha256:" + "ab" * 32, bytes([0xAB]) * 32),
        ("SHA256:" + ":".join(["0f"] * 32), bytes([0x0F]) * 32),
    ],
)
def test_fingerprint(text, digest) -> None:
    assert parse_fingerprint(text) == digest


@pytest.mark.parametrize("text", ["md5:" + "ab" * 16, "sha256:" + "ab" * 31, "sha256:zz", "ab"])
def test_bad_fingerprint(text) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        parse_fingerprint(text)


# -- properties -------------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63}){0,3}", fullmatch=True),
)
addresses = st.builds(Address, hosts, st.integers(0, 0xFFFF))
credentials = st.one_of(
    st.just((b"", b"")),
    st.tuples(st.binary(min_size=1, max_size=255), st.binary(min_size=1, max_size=255)),
)
requests = st.builds(
    lambda a, p, c: TunnelRequest(a, p, *c), addresses, st.sampled_from(TunnelProto), credentials
)
frames = st.builds(Frame, addresses, st.binary(max_size=2000))


@SETTINGS
@given(requests)
def test_request_round_trip(request) -> None:
    wire = request.to_bytes()
    assert maybe_read_request(wire) == (request, len(wire))
    assert maybe_read_request(wire[:-1]) is None


@SETTINGS
@given(addresses, st.integers(0, 0xFFFFFFFF), st.binary(min_size=32, max_size=32))
def test_tunnel_reply_round_trip(address, tunnel_id, key) -> None:
    reply = TunnelReply(address, tunnel_id, key)
    wire = reply.to_bytes()
    assert maybe_read_tunnel_reply(wire + b"\x00", TunnelProto.UDP) == (reply, len(wire))


@SETTINGS
@given(st.lists(st.one_of(frames, st.just(KEEPALIVE)), max_size=5), st.integers(1, 50))
def test_frames_survive_any_chunking(messages, chunk) -> None:
    stream = b"".join(m.to_bytes() for m in messages)
    buffer, seen = bytearray(), []
    for start in range(0, len(stream), chunk):
        buffer += stream[start : start + chunk]
        while (parsed := maybe_read_frame(buffer)) is not None:
            seen.append(parsed[0])
            del buffer[: parsed[1]]
    assert seen == messages
    assert not buffer


@SETTINGS
@given(addresses, st.binary(max_size=300))
def test_payload_round_trip(address, data) -> None:
    plaintext = address.to_bytes() + data
    parsed, offset = decode_payload(plaintext)
    assert (parsed, plaintext[offset:]) == (address, data)


@SETTINGS
@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_errors(data) -> None:
    for parse in (
        maybe_read_frame,
        decode_payload,
        lambda b: maybe_read_tunnel_reply(b, TunnelProto.UDP),
        lambda b: maybe_read_tunnel_reply(b, TunnelProto.TLS),
        lambda b: maybe_read_request(b"\x05\x07\x00" + b),
    ):
        with contextlib.suppress(ProtocolError):
            parse(data)


@SETTINGS
@given(requests, st.integers(0, 400), st.integers(0, 7))
def test_a_flipped_bit_never_crashes_the_request_parser(request, index, bit) -> None:
    wire = bytearray(request.to_bytes())
    wire[index % len(wire)] ^= 1 << bit
    with contextlib.suppress(ProtocolError):
        maybe_read_request(bytes(wire))
