"""RFC 1928 §7 vectors: whole UDP datagrams with their request header."""

from __future__ import annotations

from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode
from socksx.protocol.datagram import UdpHeader
from socksx.protocol.errors import MalformedMessage, UnsupportedAddressType
from tests.vectors import Datagram, ErrorVector, Vector

S7 = "RFC 1928 §7"
FAIL = ReplyCode.GENERAL_FAILURE

DATAGRAMS = [
    Vector(
        'to 192.0.2.1:53, DATA "hello"',
        "0000 00 01 c0000201 0035 68656c6c6f",
        Datagram(UdpHeader(0, Address("192.0.2.1", 53)), b"hello"),
        S7,
    ),
    Vector(
        'to [2001:db8::1]:53, DATA "hello"',
        "0000 00 04 20010db8000000000000000000000001 0035 68656c6c6f",
        Datagram(UdpHeader(0, Address("2001:db8::1", 53)), b"hello"),
        S7,
    ),
    Vector(
        'to example.com:53, DATA "hello"',
        "0000 00 03 0b 6578616d706c652e636f6d 0035 68656c6c6f",
        Datagram(UdpHeader(0, Address("example.com", 53)), b"hello"),
        S7,
    ),
    Vector(
        "to 192.0.2.1:53, empty DATA",
        "0000 00 01 c0000201 0035",
        Datagram(UdpHeader(0, Address("192.0.2.1", 53)), b""),
        S7,
    ),
    Vector(
        'FRAG 1 (a fragment: socksx drops it), DATA "hello"',
        "0000 01 01 c0000201 0035 68656c6c6f",
        Datagram(UdpHeader(1, Address("192.0.2.1", 53)), b"hello"),
        S7,
    ),
    Vector(
        "FRAG 81 (last fragment, position 1: dropped too)",
        "0000 81 01 c0000201 0035 68656c6c6f",
        Datagram(UdpHeader(0x81, Address("192.0.2.1", 53)), b"hello"),
        S7,
    ),
]

DATAGRAM_ERRORS = [
    ErrorVector("3 octets: shorter than any header", "0000 00", MalformedMessage, FAIL, S7),
    ErrorVector("RSV is 0001", "0001 00 01 c0000201 0035", MalformedMessage, FAIL, S7),
    ErrorVector("RSV is 0100", "0100 00 01 c0000201 0035", MalformedMessage, FAIL, S7),
    ErrorVector("address cut short", "0000 00 01 c00002", MalformedMessage, FAIL, S7),
    ErrorVector("port cut short", "0000 00 01 c0000201 00", MalformedMessage, FAIL, S7),
    ErrorVector(
        "ATYP 02",
        "0000 00 02 c0000201 0035",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S7,
    ),
    ErrorVector("zero-length domain", "0000 00 03 00 0035", MalformedMessage, FAIL, S7),
]

TABLES: dict[str, list[Vector]] = {"udp-datagrams": DATAGRAMS}

ERROR_TABLES: dict[str, list[ErrorVector]] = {"udp-datagram-errors": DATAGRAM_ERRORS}
