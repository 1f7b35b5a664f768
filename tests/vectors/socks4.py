"""SOCKS4 and SOCKS4a vectors (Ying-Da Lee's "SOCKS: A protocol for TCP proxy across firewalls"
and "SOCKS 4A: A Simple Extension to SOCKS 4 Protocol")."""

from __future__ import annotations

from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode, Socks4Code, Socks4Command
from socksx.protocol.errors import MalformedMessage, UnsupportedVersion
from socksx.protocol.socks4 import Socks4Reply, Socks4Request
from tests.vectors import ErrorVector, Vector

S4 = "SOCKS4"
S4A = "SOCKS4a"
FAIL = ReplyCode.GENERAL_FAILURE

SOCKS4_REQUESTS = [
    Vector(
        'CONNECT 192.0.2.1:80, USERID "bob"',
        "04 01 0050 c0000201 626f62 00",
        Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80), b"bob"),
        S4,
    ),
    Vector(
        "CONNECT 192.0.2.1:80, empty USERID",
        "04 01 0050 c0000201 00",
        Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80)),
        S4,
    ),
    Vector(
        'BIND, peer expected from 192.0.2.1:21, USERID "bob"',
        "04 02 0015 c0000201 626f62 00",
        Socks4Request(Socks4Command.BIND, Address("192.0.2.1", 21), b"bob"),
        S4,
    ),
    Vector(
        "CONNECT 192.0.2.1:80, USERID of 255 octets (the longest accepted)",
        "04 01 0050 c0000201 61*255 00",
        Socks4Request(Socks4Command.CONNECT, Address("192.0.2.1", 80), b"a" * 255),
        S4,
    ),
    Vector(
        "SOCKS4a CONNECT example.com:80, empty USERID",
        "04 01 0050 00000001 00 6578616d706c652e636f6d 00",
        Socks4Request(Socks4Command.CONNECT, Address("example.com", 80)),
        S4A,
    ),
    Vector(
        'SOCKS4a CONNECT example.com:443, USERID "bob"',
        "04 01 01bb 00000001 626f62 00 6578616d706c652e636f6d 00",
        Socks4Request(Socks4Command.CONNECT, Address("example.com", 443), b"bob"),
        S4A,
    ),
]

SOCKS4_REQUEST_ERRORS = [
    ErrorVector("VN is 05", "05 01 0050 c0000201 00", UnsupportedVersion, None, S4),
    ErrorVector("unknown CD 03", "04 03 0050 c0000201 00", MalformedMessage, FAIL, S4),
    ErrorVector(
        "USERID of 256 octets with no NUL", "04 01 0050 c0000201 61*256", MalformedMessage, FAIL, S4
    ),
    ErrorVector("SOCKS4a empty hostname", "04 01 0050 00000001 00 00", MalformedMessage, FAIL, S4A),
    ErrorVector(
        "SOCKS4a hostname of 256 octets with no NUL",
        "04 01 0050 00000001 00 61*256",
        MalformedMessage,
        FAIL,
        S4A,
    ),
    ErrorVector(
        "SOCKS4a hostname that is not ASCII",
        "04 01 0050 00000001 00 c3a9 00",
        MalformedMessage,
        FAIL,
        S4A,
    ),
    ErrorVector(
        "SOCKS4a hostname with a space",
        "04 01 0050 00000001 00 612062 00",
        MalformedMessage,
        FAIL,
        S4A,
    ),
]

SOCKS4_REPLIES = [
    Vector(
        "5A granted, 198.51.100.1:4321",
        "00 5a 10e1 c6336401",
        Socks4Reply(Socks4Code.GRANTED, Address("198.51.100.1", 4321)),
        S4,
    ),
    Vector("5B rejected or failed", "00 5b 0000 00000000", Socks4Reply(Socks4Code.REJECTED), S4),
    Vector("5C no identd", "00 5c 0000 00000000", Socks4Reply(Socks4Code.NO_IDENTD), S4),
    Vector(
        "5D identd mismatch", "00 5d 0000 00000000", Socks4Reply(Socks4Code.IDENTD_MISMATCH), S4
    ),
]

SOCKS4_REPLY_ERRORS = [
    ErrorVector("VN is 04", "04 5a 0000 00000000", MalformedMessage, FAIL, S4),
    ErrorVector("unknown CD 5E", "00 5e 0000 00000000", MalformedMessage, FAIL, S4),
]

TABLES: dict[str, list[Vector]] = {
    "socks4-requests": SOCKS4_REQUESTS,
    "socks4-replies": SOCKS4_REPLIES,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "socks4-request-errors": SOCKS4_REQUEST_ERRORS,
    "socks4-reply-errors": SOCKS4_REPLY_ERRORS,
}
