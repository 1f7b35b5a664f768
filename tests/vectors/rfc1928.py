"""RFC 1928 vectors: greetings, method selections, addresses, requests and replies."""

from __future__ import annotations

from socksx.protocol.address import Address
from socksx.protocol.constants import REPLY_TEXT, Command, Method, ReplyCode
from socksx.protocol.errors import (
    MalformedMessage,
    UnsupportedAddressType,
    UnsupportedCommand,
    UnsupportedVersion,
)
from socksx.protocol.messages import Greeting, MethodSelection, Reply, Request
from tests.vectors import ErrorVector, Vector

S3 = "RFC 1928 §3"
S4 = "RFC 1928 §4"
S5 = "RFC 1928 §5"
S6 = "RFC 1928 §6"

V4 = Address("192.0.2.1", 80)
V6 = Address("2001:db8::1", 443)
NAME = Address("example.com", 443)
ZERO = Address("0.0.0.0", 0)

GREETINGS = [
    Vector("offers no-auth", "05 01 00", Greeting((Method.NO_AUTH,)), S3),
    Vector(
        "offers no-auth and username/password",
        "05 02 00 02",
        Greeting((Method.NO_AUTH, Method.USERNAME_PASSWORD)),
        S3,
    ),
    Vector("offers username/password only", "05 01 02", Greeting((Method.USERNAME_PASSWORD,)), S3),
    Vector("offers an unassigned method 0x80 first", "05 02 80 00", Greeting((0x80, 0x00)), S3),
]

GREETING_ERRORS = [
    ErrorVector("NMETHODS is 0", "05 00", MalformedMessage, ReplyCode.GENERAL_FAILURE, S3),
    ErrorVector("VER is 04", "04 01 00", UnsupportedVersion, None, S3),
    ErrorVector("an HTTP request", "47 45 54 20 2f", UnsupportedVersion, None, S3),
]

METHOD_SELECTIONS = [
    Vector("selects no-auth", "05 00", MethodSelection(Method.NO_AUTH), S3),
    Vector("selects username/password", "05 02", MethodSelection(Method.USERNAME_PASSWORD), S3),
    Vector("no acceptable method", "05 ff", MethodSelection(Method.NO_ACCEPTABLE), S3),
]

METHOD_SELECTION_ERRORS = [
    ErrorVector("VER is 04", "04 00", UnsupportedVersion, None, S3),
    ErrorVector("unassigned method 0x03", "05 03", MalformedMessage, ReplyCode.GENERAL_FAILURE, S3),
]

ADDRESSES = [
    Vector("IPv4 192.0.2.1:80", "01 c0000201 0050", V4, S5),
    Vector("IPv6 [2001:db8::1]:443", "04 20010db8000000000000000000000001 01bb", V6, S5),
    Vector("domain example.com:443", "03 0b 6578616d706c652e636f6d 01bb", NAME, S5),
    Vector("IPv4 0.0.0.0:0", "01 00000000 0000", ZERO, S5),
    Vector("IPv6 [::]:65535", "04 00000000000000000000000000000000 ffff", Address("::", 65535), S5),
    Vector("one-letter domain a:1", "03 01 61 0001", Address("a", 1), S5),
]

ADDRESS_ERRORS = [
    ErrorVector(
        "ATYP 00",
        "00 c0000201 0050",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S5,
    ),
    ErrorVector(
        "ATYP 02",
        "02 c0000201 0050",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S5,
    ),
    ErrorVector(
        "ATYP 05",
        "05 c0000201 0050",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S5,
    ),
    ErrorVector(
        "zero-length domain", "03 00 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S5
    ),
    ErrorVector(
        "domain that is not ASCII",
        "03 02 c3a9 0050",
        MalformedMessage,
        ReplyCode.GENERAL_FAILURE,
        S5,
    ),
    ErrorVector(
        "domain with a space", "03 03 612062 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S5
    ),
    ErrorVector(
        "domain with a slash", "03 03 612f62 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S5
    ),
    ErrorVector(
        "domain with a NUL", "03 03 610062 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S5
    ),
]

REQUESTS = [
    Vector("CONNECT 192.0.2.1:80", "05 01 00 01 c0000201 0050", Request(Command.CONNECT, V4), S4),
    Vector(
        "CONNECT [2001:db8::1]:443",
        "05 01 00 04 20010db8000000000000000000000001 01bb",
        Request(Command.CONNECT, V6),
        S4,
    ),
    Vector(
        "CONNECT example.com:443",
        "05 01 00 03 0b 6578616d706c652e636f6d 01bb",
        Request(Command.CONNECT, NAME),
        S4,
    ),
    Vector(
        "BIND, peer expected from 192.0.2.1:21",
        "05 02 00 01 c0000201 0015",
        Request(Command.BIND, Address("192.0.2.1", 21)),
        S4,
    ),
    Vector("BIND, any peer", "05 02 00 01 00000000 0000", Request(Command.BIND, ZERO), S4),
    Vector(
        "UDP ASSOCIATE 0.0.0.0:0",
        "05 03 00 01 00000000 0000",
        Request(Command.UDP_ASSOCIATE, ZERO),
        S4,
    ),
    Vector(
        "UDP ASSOCIATE from 192.0.2.1:5353",
        "05 03 00 01 c0000201 14e9",
        Request(Command.UDP_ASSOCIATE, Address("192.0.2.1", 5353)),
        S4,
    ),
]

REQUEST_ERRORS = [
    ErrorVector(
        "unknown CMD 0x0a",
        "05 0a 00 01 c0000201 0050",
        UnsupportedCommand,
        ReplyCode.COMMAND_NOT_SUPPORTED,
        S4,
    ),
    ErrorVector(
        "unassigned CMD 0x04",
        "05 04 00 01 c0000201 0050",
        UnsupportedCommand,
        ReplyCode.COMMAND_NOT_SUPPORTED,
        S4,
    ),
    ErrorVector(
        "CMD 0x00",
        "05 00 00 01 c0000201 0050",
        UnsupportedCommand,
        ReplyCode.COMMAND_NOT_SUPPORTED,
        S4,
    ),
    ErrorVector(
        "ATYP 02",
        "05 01 00 02 c0000201 0050",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S4,
    ),
    ErrorVector("VER 04", "04 01 00 01 c0000201 0050", UnsupportedVersion, None, S4),
    ErrorVector(
        "RSV is 01", "05 01 01 01 c0000201 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S4
    ),
    ErrorVector(
        "zero-length domain", "05 01 00 03 00 0050", MalformedMessage, ReplyCode.GENERAL_FAILURE, S4
    ),
]

REPLIES = [
    Vector(
        "succeeded, bound 198.51.100.1:4321",
        "05 00 00 01 c6336401 10e1",
        Reply(ReplyCode.SUCCEEDED, Address("198.51.100.1", 4321)),
        S6,
    ),
    Vector(
        "succeeded, bound [2001:db8::1]:1080",
        "05 00 00 04 20010db8000000000000000000000001 0438",
        Reply(ReplyCode.SUCCEEDED, Address("2001:db8::1", 1080)),
        S6,
    ),
    Vector(
        "succeeded, bound example.com:1080",
        "05 00 00 03 0b 6578616d706c652e636f6d 0438",
        Reply(ReplyCode.SUCCEEDED, Address("example.com", 1080)),
        S6,
    ),
    *(
        Vector(
            f"REP {code:02x}: {REPLY_TEXT[code]}",
            f"05 {code:02x} 00 01 00000000 0000",
            Reply(code, ZERO),
            S6,
        )
        for code in ReplyCode
        if code <= ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
    ),
]

REPLY_ERRORS = [
    ErrorVector("VER 04", "04 00 00 01 c6336401 10e1", UnsupportedVersion, None, S6),
    ErrorVector(
        "RSV is 01", "05 00 01 01 c6336401 10e1", MalformedMessage, ReplyCode.GENERAL_FAILURE, S6
    ),
    ErrorVector(
        "unassigned REP 0x09",
        "05 09 00 01 00000000 0000",
        MalformedMessage,
        ReplyCode.GENERAL_FAILURE,
        S6,
    ),
    ErrorVector(
        "ATYP 02",
        "05 00 00 02 c6336401 10e1",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        S6,
    ),
]

TABLES: dict[str, list[Vector]] = {
    "rfc1928-greetings": GREETINGS,
    "rfc1928-method-selections": METHOD_SELECTIONS,
    "rfc1928-addresses": ADDRESSES,
    "rfc1928-requests": REQUESTS,
    "rfc1928-replies": REPLIES,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "rfc1928-greeting-errors": GREETING_ERRORS,
    "rfc1928-method-selection-errors": METHOD_SELECTION_ERRORS,
    "rfc1928-address-errors": ADDRESS_ERRORS,
    "rfc1928-request-errors": REQUEST_ERRORS,
    "rfc1928-reply-errors": REPLY_ERRORS,
}
