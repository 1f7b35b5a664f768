from __future__ import annotations

import pytest

from socksx.protocol.address import Address
from socksx.protocol.constants import Socks4Code, Socks4Command
from socksx.protocol.errors import LocalProtocolError, UnsupportedVersion
from socksx.protocol.socks4 import (
    Socks4Reply,
    Socks4Request,
    maybe_read_socks4_reply,
    maybe_read_socks4_request,
)
from tests.vectors import check_error_vector, check_vector
from tests.vectors import socks4 as v4


@pytest.mark.parametrize("vector", v4.SOCKS4_REQUESTS, ids=lambda v: v.name)
def test_request_vector(vector) -> None:
    check_vector(maybe_read_socks4_request, vector)


@pytest.mark.parametrize("vector", v4.SOCKS4_REPLIES, ids=lambda v: v.name)
def test_reply_vector(vector) -> None:
    check_vector(maybe_read_socks4_reply, vector)


@pytest.mark.parametrize("vector", v4.SOCKS4_REQUEST_ERRORS, ids=lambda v: v.name)
def test_request_error_vector(vector) -> None:
    check_error_vector(maybe_read_socks4_request, vector)


@pytest.mark.parametrize("vector", v4.SOCKS4_REPLY_ERRORS, ids=lambda v: v.name)
def test_reply_error_vector(vector) -> None:
    check_error_vector(maybe_read_socks4_reply, vector)


def test_version_is_checked_on_the_first_octet() -> None:
    with pytest.raises(UnsupportedVersion):
        maybe_read_socks4_request(b"\x05")
    assert maybe_read_socks4_request(b"\x04") is None


@pytest.mark.parametrize("last", [0x01, 0x02, 0x7F, 0xFF])
def test_any_dstip_0_0_0_x_with_x_nonzero_means_socks4a(last) -> None:
    wire = bytes([4, 1, 0, 80, 0, 0, 0, last]) + b"\0example.com\0"
    request = Socks4Request(Socks4Command.CONNECT, Address("example.com", 80))
    assert maybe_read_socks4_request(wire) == (request, len(wire))


def test_dstip_0_0_0_0_is_a_plain_address_not_socks4a() -> None:
    wire = bytes.fromhex("04 02 0000 00000000 00") + b"not-a-hostname\0"
    request = Socks4Request(Socks4Command.BIND, Address("0.0.0.0", 0))
    assert maybe_read_socks4_request(wire) == (request, 9)


def test_socks4a_hostname_of_255_octets_is_accepted() -> None:
    name = ".".join(["a" * 63] * 4)
    wire = bytes.fromhex("04 01 0050 00000001 00") + name.encode() + b"\0"
    request = Socks4Request(Socks4Command.CONNECT, Address(name, 80))
    assert maybe_read_socks4_request(wire) == (request, len(wire))


def test_userid_octets_are_kept_verbatim() -> None:
    wire = bytes.fromhex("04 01 0050 c0000201 ff01c3a9 00")
    parsed = maybe_read_socks4_request(wire)
    assert parsed is not None
    assert parsed[0].userid == b"\xff\x01\xc3\xa9"


def test_request_cannot_carry_ipv6() -> None:
    with pytest.raises(LocalProtocolError):
        Socks4Request(Socks4Command.CONNECT, Address("2001:db8::1", 80)).to_bytes()


def test_request_userid_may_not_contain_nul() -> None:
    with pytest.raises(LocalProtocolError):
        Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80), b"a\0b").to_bytes()


def test_reply_with_a_non_ipv4_address_sends_zeroes() -> None:
    reply = Socks4Reply(Socks4Code.GRANTED, Address("2001:db8::1", 1080))
    assert reply.to_bytes() == bytes.fromhex("00 5a 0438 00000000")


@pytest.mark.parametrize(("code", "ok"), [(c, c is Socks4Code.GRANTED) for c in Socks4Code])
def test_reply_ok_only_when_granted(code, ok) -> None:
    assert Socks4Reply(code).ok is ok


@pytest.mark.parametrize(
    "build",
    [
        lambda: Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80), b"u" * 256),
        lambda: Socks4Request(Socks4Command.CONNECT, Address(".".join(["a" * 63] * 4) + "b", 80)),
        lambda: Socks4Request(Socks4Command.CONNECT, Address("a" * 64 + ".example", 80)),
        lambda: Socks4Request(Socks4Command.CONNECT, Address("a..b", 80)),
    ],
    ids=["userid-256", "hostname-256", "label-64", "empty-label"],
)
def test_request_encoder_refuses_what_the_parser_refuses(build) -> None:
    with pytest.raises(LocalProtocolError):
        build().to_bytes()


@pytest.mark.parametrize("host", ["0.0.0.1", "0.0.0.255"])
def test_socks4a_marker_address_cannot_be_sent_as_plain_socks4(host) -> None:
    request = Socks4Request(Socks4Command.CONNECT, Address(host, 80))
    try:
        wire = request.to_bytes()
    except LocalProtocolError:
        return
    assert maybe_read_socks4_request(wire) == (request, len(wire))
