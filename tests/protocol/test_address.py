from __future__ import annotations

import pytest

from socksx.protocol.address import Address, maybe_read_address
from socksx.protocol.constants import Atyp
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, UnsupportedAddressType
from tests.vectors import check_error_vector, check_vector, octets
from tests.vectors import rfc1928 as v1928


@pytest.mark.parametrize("vector", v1928.ADDRESSES, ids=lambda v: v.name)
def test_address_vector(vector) -> None:
    check_vector(maybe_read_address, vector)


@pytest.mark.parametrize("vector", v1928.ADDRESS_ERRORS, ids=lambda v: v.name)
def test_address_error_vector(vector) -> None:
    check_error_vector(maybe_read_address, vector)


@pytest.mark.parametrize(
    ("host", "atyp"),
    [
        ("192.0.2.1", Atyp.IPV4),
        ("2001:db8::1", Atyp.IPV6),
        ("::", Atyp.IPV6),
        ("example.com", Atyp.DOMAINNAME),
        ("localhost", Atyp.DOMAINNAME),
        ("192.0.2.256", Atyp.DOMAINNAME),
    ],
)
def test_atyp_follows_from_the_host(host, atyp) -> None:
    address = Address(host, 1)
    assert address.atyp is atyp
    assert address.is_ip is (atyp is not Atyp.DOMAINNAME)
    assert address.to_bytes()[0] == atyp


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("192.0.2.1", 80), "192.0.2.1:80"),
        (Address("2001:db8::1", 443), "[2001:db8::1]:443"),
        (Address("example.com", 0), "example.com:0"),
    ],
)
def test_str_brackets_ipv6(address, text) -> None:
    assert str(address) == text


@pytest.mark.parametrize(("host", "port"), [("192.0.2.1", -1), ("192.0.2.1", 65536), ("", 80)])
def test_constructor_rejects_illegal_values(host, port) -> None:
    with pytest.raises(LocalProtocolError):
        Address(host, port)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_from_ip_normalises_socket_addresses(host, expected) -> None:
    assert Address.from_ip(host, 9) == Address(expected, 9)


def test_from_ip_refuses_a_name() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        Address.from_ip("example.com", 80)


def test_longest_domain_round_trips() -> None:
    name = ".".join(["a" * 63] * 4)  # 255 octets, every label within DNS's 63
    address = Address(name, 443)
    wire = address.to_bytes()
    assert wire[:2] == b"\x03\xff"
    assert maybe_read_address(wire) == (address, len(wire))


def test_domain_over_255_octets_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        Address(".".join(["a" * 63] * 4 + ["b"]), 443).to_bytes()  # 257 octets, labels fine


@pytest.mark.parametrize("host", ["a..b", ".", "a" * 64 + ".example"])
def test_unencodable_domain_raises_local_protocol_error(host) -> None:
    with pytest.raises(LocalProtocolError):
        Address(host, 1).to_bytes()


def test_unicode_name_is_sent_as_idna() -> None:
    assert Address("bücher.example", 80).to_bytes() == (b"\x03\x15xn--bcher-kva.example\x00\x50")


def test_allowed_restricts_address_types() -> None:
    v4 = bytes.fromhex("01 c0000201 0050")
    assert maybe_read_address(v4, frozenset({Atyp.IPV4})) == (Address("192.0.2.1", 80), 7)
    with pytest.raises(UnsupportedAddressType):
        maybe_read_address(v4, frozenset({Atyp.DOMAINNAME, Atyp.IPV6}))


def test_unknown_atyp_is_refused_before_the_address_arrives() -> None:
    with pytest.raises(UnsupportedAddressType):
        maybe_read_address(b"\x02")


def test_zero_length_domain_is_refused_before_the_port_arrives() -> None:
    with pytest.raises(MalformedMessage):
        maybe_read_address(b"\x03\x00")


@pytest.mark.parametrize("host", ["2001:DB8::1", "fe80::1%eth0", "::ffff:192.0.2.1"])
def test_ip_literal_round_trips_to_an_equal_address(host) -> None:
    address = Address(host, 443)
    assert maybe_read_address(address.to_bytes()) == (address, len(address.to_bytes()))


@pytest.mark.parametrize(
    "hex_wire", ["03 40 61*64 0050", "03 04 612e2e62 0050", "03 01 2e 0050"], ids=str
)
def test_decoded_domain_is_refused_or_re_encodes_identically(hex_wire) -> None:
    wire = octets(hex_wire)
    try:
        parsed = maybe_read_address(wire)
    except MalformedMessage:
        return
    assert parsed is not None
    assert parsed[0].to_bytes() == wire
