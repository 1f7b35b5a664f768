"""Multicast vectors (docs/PROTOCOL.md "Multicast"): JOIN/LEAVE, JOIN replies, notices, datagrams.

Keys in the sealed vectors are fixed so anyone can recompute them: MEMBER_KEY is the octets
00 01 02 .. 1f, GROUP_KEY the octets 20 21 .. 3f; MEMBER_ID is 01020304.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from socksx.protocol.address import Address
from socksx.protocol.constants import Command, McastDatagramType, Notice, ReplyCode
from socksx.protocol.errors import MalformedMessage, UnsupportedAddressType, UnsupportedVersion
from socksx.protocol.mcast import (
    GroupKeys,
    JoinReply,
    JoinRequest,
    LeaveRequest,
    McastNotice,
    RekeyNotice,
    encode_member_plain,
    encode_relay_plain,
    seal_member,
    seal_relay,
)
from socksx.protocol.messages import Reply
from tests.vectors import ErrorVector, Vector

SPEC = "PROTOCOL.md §8"
MEMBER_KEY = bytes(range(32))
GROUP_KEY = bytes(range(32, 64))
ZERO_KEY = bytes(32)
MEMBER_ID = 0x01020304
KEY_HEX_MEMBER = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY_HEX_GROUP = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
G4 = Address("239.1.1.1", 5000)
G6 = Address("ff0e::1:5", 5000)
FAIL = ReplyCode.GENERAL_FAILURE


@dataclass(frozen=True)
class McastDatagram:
    """A member/relay datagram: TYPE, the header ID, SEQ, which key sealed it, and its content.

    ``key`` is "MEMBER_KEY", "GROUP_KEY" or "" (an unencrypted TYPE 03/04); ``source`` is the
    original sender a relay datagram names (None for member datagrams).
    """

    type: McastDatagramType
    data: bytes
    id: int = 0
    seq: int = 0
    key: str = ""
    source: Address | None = None

    def to_bytes(self) -> bytes:
        """The datagram, built with the codec's own functions."""
        key = {"MEMBER_KEY": MEMBER_KEY, "GROUP_KEY": GROUP_KEY}.get(self.key, b"")
        if self.type == McastDatagramType.MEMBER_SEALED:
            return seal_member(key, self.id, self.seq, self.data)
        if self.type == McastDatagramType.RELAY_SEALED:
            assert self.source is not None
            return seal_relay(key, self.id, self.seq, self.source, self.data)
        if self.type == McastDatagramType.MEMBER_PLAIN:
            return encode_member_plain(self.data)
        assert self.source is not None
        return encode_relay_plain(self.source, self.data)


REQUESTS = [
    Vector(
        "JOIN 239.1.1.1:5000",
        "05 05 00 01 ef010101 1388",
        JoinRequest(G4),
        SPEC,
    ),
    Vector(
        "JOIN [ff0e::1:5]:5000",
        "05 05 00 04 ff0e0000000000000000000000010005 1388",
        JoinRequest(G6),
        SPEC,
    ),
    Vector(
        "LEAVE 239.1.1.1:5000",
        "05 06 00 01 ef010101 1388",
        LeaveRequest(G4),
        SPEC,
    ),
    Vector(
        "JOIN 0.0.0.0:0 (well framed; refused with REP 08: not a group)",
        "05 05 00 01 00000000 0000",
        JoinRequest(Address("0.0.0.0", 0)),
        SPEC,
    ),
    Vector(
        "JOIN example.com:5000 (well framed; refused with REP 08: a name)",
        "05 05 00 03 0b 6578616d706c652e636f6d 1388",
        JoinRequest(Address("example.com", 5000)),
        SPEC,
    ),
]

REQUEST_ERRORS = [
    ErrorVector(
        "JOIN with ATYP 02",
        "05 05 00 02 ef010101 1388",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        SPEC,
    ),
    ErrorVector("LEAVE with RSV 01", "05 06 01 01 ef010101 1388", MalformedMessage, FAIL, SPEC),
]

_UNICAST_KEYS = GroupKeys(MEMBER_ID, 0, MEMBER_KEY, ZERO_KEY)
_MULTICAST_KEYS = GroupKeys(MEMBER_ID, 1, MEMBER_KEY, GROUP_KEY)

JOIN_REPLIES = [
    Vector(
        "REP 00, unicast mode: relay 192.0.2.1:40000, KEY_ID 0",
        f"05 00 00 01 c0000201 9c40 49 01 01020304 00000000 {KEY_HEX_MEMBER} 00*32",
        JoinReply(ReplyCode.SUCCEEDED, Address("192.0.2.1", 40000), _UNICAST_KEYS),
        SPEC,
    ),
    Vector(
        "REP 00, multicast mode: intranet group 239.192.76.1:5000, KEY_ID 1",
        f"05 00 00 01 efc04c01 1388 49 01 01020304 00000001 {KEY_HEX_MEMBER} {KEY_HEX_GROUP}",
        JoinReply(ReplyCode.SUCCEEDED, Address("239.192.76.1", 5000), _MULTICAST_KEYS),
        SPEC,
    ),
    Vector(
        "REP B0 (receive only), multicast mode",
        f"05 b0 00 01 efc04c01 1388 49 01 01020304 00000001 {KEY_HEX_MEMBER} {KEY_HEX_GROUP}",
        JoinReply(ReplyCode.MCAST_RECEIVE_ONLY, Address("239.192.76.1", 5000), _MULTICAST_KEYS),
        SPEC,
    ),
    Vector(
        "REP B1 (send only): no group key",
        f"05 b1 00 01 efc04c01 1388 49 01 01020304 00000000 {KEY_HEX_MEMBER} 00*32",
        JoinReply(ReplyCode.MCAST_SEND_ONLY, Address("239.192.76.1", 5000), _UNICAST_KEYS),
        SPEC,
    ),
    Vector(
        "REP 00, unencrypted relay: LEN 0",
        "05 00 00 01 c0000201 9c40 00",
        JoinReply(ReplyCode.SUCCEEDED, Address("192.0.2.1", 40000)),
        SPEC,
    ),
    Vector(
        "REP B2 (neither): no membership",
        "05 b2 00 01 00000000 0000 00",
        JoinReply(ReplyCode.MCAST_DENIED),
        SPEC,
    ),
    Vector(
        "REP B3 (limit reached): plain shape",
        "05 b3 00 01 00000000 0000",
        Reply(ReplyCode.MCAST_LIMIT),
        SPEC,
    ),
    Vector(
        "REP 02 (access rules): plain shape",
        "05 02 00 01 00000000 0000",
        Reply(ReplyCode.NOT_ALLOWED),
        SPEC,
    ),
]

JOIN_REPLY_ERRORS = [
    ErrorVector(
        "LEN 05",
        "05 00 00 01 c0000201 9c40 05 01 01020304",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector(
        "SUITE 02",
        f"05 00 00 01 c0000201 9c40 49 02 01020304 00000000 {KEY_HEX_MEMBER} 00*32",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector(
        "MEMBER_ID 0",
        f"05 00 00 01 c0000201 9c40 49 01 00000000 00000000 {KEY_HEX_MEMBER} 00*32",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector(
        "KEY_ID 0 with a non-zero GROUP_KEY",
        f"05 00 00 01 c0000201 9c40 49 01 01020304 00000000 {KEY_HEX_MEMBER} {KEY_HEX_GROUP}",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector(
        "B2 with a key",
        f"05 b2 00 01 00000000 0000 49 01 01020304 00000000 {KEY_HEX_MEMBER} 00*32",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector("VER 04", "04 00 00 01 c0000201 9c40 00", UnsupportedVersion, None, SPEC),
]

NOTICES = [
    Vector("B4 membership expired", "05 b4 00 01 ef010101 1388", McastNotice(
        Notice.MCAST_EXPIRED, G4), SPEC),
    Vector("B5 expelled by policy", "05 b5 00 01 ef010101 1388", McastNotice(
        Notice.MCAST_EXPELLED, G4), SPEC),
    Vector("B7 relay shut down", "05 b7 00 04 ff0e0000000000000000000000010005 1388",
           McastNotice(Notice.MCAST_RELAY_DOWN, G6), SPEC),
    Vector(
        "B6 rekey: KEY_ID 2",
        f"05 b6 00 01 ef010101 1388 24 00000002 {KEY_HEX_GROUP}",
        RekeyNotice(G4, 2, GROUP_KEY),
        SPEC,
    ),
]

NOTICE_ERRORS = [
    ErrorVector(
        "B6 with LEN 35",
        f"05 b6 00 01 ef010101 1388 23 00000002 {KEY_HEX_GROUP}",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector(
        "B6 with KEY_ID 0",
        f"05 b6 00 01 ef010101 1388 24 00000000 {KEY_HEX_GROUP}",
        MalformedMessage,
        FAIL,
        SPEC,
    ),
    ErrorVector("CODE B8", "05 b8 00 01 ef010101 1388", MalformedMessage, FAIL, SPEC),
]

_PUBLIC = Address("198.51.100.7", 5000)
DATAGRAMS = [
    Vector(
        "TYPE 01 keepalive: empty plaintext, SEQ 1 (29 octets)",
        "01 01020304 0000000000000001 0d683caaaa1aa2a31f7c9c1ca1196626",
        McastDatagram(McastDatagramType.MEMBER_SEALED, b"", MEMBER_ID, 1, "MEMBER_KEY"),
        SPEC,
    ),
    Vector(
        'TYPE 01 DATA "hello", SEQ 2',
        "01 01020304 0000000000000002 85c1b87b89ce565c0704c2bc3b5d501a 03a7a2a6c2",
        McastDatagram(McastDatagramType.MEMBER_SEALED, b"hello", MEMBER_ID, 2, "MEMBER_KEY"),
        SPEC,
    ),
    Vector(
        'TYPE 02 multicast mode, KEY_ID 1: from 198.51.100.7:5000, DATA "hello"',
        "02 00000001 0000000000000001 2d23a6a78a5b53a98b2152da2a66934d cabb484925f866424b797c65",
        McastDatagram(McastDatagramType.RELAY_SEALED, b"hello", 1, 1, "GROUP_KEY", _PUBLIC),
        SPEC,
    ),
    Vector(
        'TYPE 02 unicast mode, KEY_ID 0: from 192.0.2.10:40000, DATA "hello"',
        "02 00000000 0000000000000001 f13cbb53da4ff881101ef99e93940b21 3a6aea8a2102f2c1b5a10495",
        McastDatagram(
            McastDatagramType.RELAY_SEALED,
            b"hello",
            0,
            1,
            "MEMBER_KEY",
            Address("192.0.2.10", 40000),
        ),
        SPEC,
    ),
    Vector(
        'TYPE 02, KEY_ID 2: from [2001:db8::7]:5000, DATA "hello"',
        "02 00000002 0000000000000001 24ef69b016c82dea738dee3e4205d0d4 "
        "42d946a0d8f409d909bac42807695416c2c3bc17484b131e",
        McastDatagram(
            McastDatagramType.RELAY_SEALED, b"hello", 2, 1, "GROUP_KEY",
            Address("2001:db8::7", 5000),
        ),
        SPEC,
    ),
    Vector("TYPE 03 keepalive", "03", McastDatagram(McastDatagramType.MEMBER_PLAIN, b""), SPEC),
    Vector(
        'TYPE 03 DATA "hello"',
        "03 68656c6c6f",
        McastDatagram(McastDatagramType.MEMBER_PLAIN, b"hello"),
        SPEC,
    ),
    Vector(
        'TYPE 04: from 198.51.100.7:5000, DATA "hello"',
        "04 01 c6336407 1388 68656c6c6f",
        McastDatagram(McastDatagramType.RELAY_PLAIN, b"hello", source=_PUBLIC),
        SPEC,
    ),
]

TABLES: dict[str, list[Vector]] = {
    "mcast-requests": REQUESTS,
    "mcast-join-replies": JOIN_REPLIES,
    "mcast-notices": NOTICES,
    "mcast-datagrams": DATAGRAMS,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "mcast-request-errors": REQUEST_ERRORS,
    "mcast-join-reply-errors": JOIN_REPLY_ERRORS,
    "mcast-notice-errors": NOTICE_ERRORS,
}


def _fixed(text: str) -> Callable[[ErrorVector], str]:
    return lambda _: text


def _request_refusal(vector: ErrorVector) -> str:
    return f"REP {vector.reply:02X}, then close" if vector.reply is not None else "close"


ON_THE_WIRE: dict[str, Callable[[ErrorVector], str]] = {
    "mcast-request-errors": _request_refusal,
    "mcast-join-reply-errors": _fixed("client closes"),
    "mcast-notice-errors": _fixed("client closes"),
}

_PERMISSION = {
    ReplyCode.SUCCEEDED: "send and receive",
    ReplyCode.MCAST_RECEIVE_ONLY: "receive only",
    ReplyCode.MCAST_SEND_ONLY: "send only",
    ReplyCode.MCAST_DENIED: "no membership",
}
_NOTICE_TEXT = {
    Notice.MCAST_EXPIRED: "membership expired",
    Notice.MCAST_EXPELLED: "expelled by policy",
    Notice.MCAST_RELAY_DOWN: "relay shut down",
}
_TYPE_TEXT = {
    McastDatagramType.MEMBER_SEALED: "member -> relay, sealed",
    McastDatagramType.RELAY_SEALED: "relay -> members, sealed",
    McastDatagramType.MEMBER_PLAIN: "member -> relay, unencrypted",
    McastDatagramType.RELAY_PLAIN: "relay -> members, unencrypted",
}


def _data(data: bytes) -> str:
    return f'DATA "{data.decode()}"' if data else "empty (keepalive)"


def describe(msg: object) -> str | None:
    """The document's words for a multicast vector (None: not one of ours)."""
    match msg:
        case JoinRequest(address=address) | LeaveRequest(address=address):
            command = Command.JOIN_MCAST_GROUP if isinstance(msg, JoinRequest) else (
                Command.LEAVE_MCAST_GROUP
            )
            return f"CMD {command:02X} {command.name.replace('_', ' ')}, group {address}"
        case JoinReply(rep=rep, address=address, keys=keys):
            text = f"REP {rep:02X} {_PERMISSION[rep]}, endpoint {address}"
            if keys is None:
                return text + ", LEN 0 (no key)"
            return (
                f"{text}, LEN 73: SUITE 01, MEMBER_ID {keys.member_id:08x}, "
                f"KEY_ID {keys.key_id}, MEMBER_KEY, GROUP_KEY"
                + (" (all zero)" if keys.key_id == 0 else "")
            )
        case McastNotice(code=code, group=group):
            return f"notice {code:02X} {_NOTICE_TEXT[code]}, group {group}"
        case RekeyNotice(group=group, key_id=key_id):
            return f"notice B6 rekey, group {group}, LEN 36: KEY_ID {key_id}, GROUP_KEY"
        case McastDatagram(type=type_, data=data, id=id_, seq=seq, key=key, source=source):
            text = f"TYPE {type_:02X} {_TYPE_TEXT[type_]}"
            if type_ == McastDatagramType.MEMBER_SEALED:
                text += f", MEMBER_ID {id_:08x}, SEQ {seq}, sealed with {key}"
            elif type_ == McastDatagramType.RELAY_SEALED:
                text += f", KEY_ID {id_}, SEQ {seq}, sealed with {key}"
            if source is not None:
                text += f", from {source}"
            return f"{text}: {_data(data)}"
    return None
