"""RFC 1929 vectors: the username/password subnegotiation."""

from __future__ import annotations

from socksx.protocol.constants import ReplyCode
from socksx.protocol.errors import MalformedMessage
from socksx.protocol.messages import UserPassReply, UserPassRequest
from tests.vectors import ErrorVector, Vector

S2 = "RFC 1929 §2"

USERPASS_REQUESTS = [
    Vector(
        'user "alice", password "s3cret"',
        "01 05 616c696365 06 733363726574",
        UserPassRequest(b"alice", b"s3cret"),
        S2,
    ),
    Vector("one-octet user and password", "01 01 75 01 70", UserPassRequest(b"u", b"p"), S2),
    Vector(
        "octets outside ASCII are kept as they are",
        "01 02 c3a9 02 00ff",
        UserPassRequest(b"\xc3\xa9", b"\x00\xff"),
        S2,
    ),
]

USERPASS_REQUEST_ERRORS = [
    ErrorVector(
        "VER is 05",
        "05 05 616c696365 06 733363726574",
        MalformedMessage,
        ReplyCode.GENERAL_FAILURE,
        S2,
    ),
    ErrorVector(
        "ULEN is 0", "01 00 06 733363726574", MalformedMessage, ReplyCode.GENERAL_FAILURE, S2
    ),
    ErrorVector(
        "PLEN is 0", "01 05 616c696365 00", MalformedMessage, ReplyCode.GENERAL_FAILURE, S2
    ),
]

USERPASS_REPLIES = [
    Vector("success", "01 00", UserPassReply(0x00), S2),
    Vector("failure", "01 01", UserPassReply(0x01), S2),
    Vector("failure (any non-zero STATUS)", "01 ff", UserPassReply(0xFF), S2),
]

USERPASS_REPLY_ERRORS = [
    ErrorVector("VER is 05", "05 00", MalformedMessage, ReplyCode.GENERAL_FAILURE, S2),
]

TABLES: dict[str, list[Vector]] = {
    "rfc1929-requests": USERPASS_REQUESTS,
    "rfc1929-replies": USERPASS_REPLIES,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "rfc1929-request-errors": USERPASS_REQUEST_ERRORS,
    "rfc1929-reply-errors": USERPASS_REPLY_ERRORS,
}
