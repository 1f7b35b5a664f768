"""Multicast through the gateway: JOIN/LEAVE, the JOIN reply, notices and datagrams.

docs/PROTOCOL.md "Multicast (JOIN 0x05, LEAVE 0x06)" is the normative text; the layouts:

    JoinRequest / LeaveRequest  VER | CMD=05/06 | RSV | ATYP | M.ADDR | M.PORT
    JoinReply (REP 00/B0/B1/B2) VER | REP | RSV | ATYP | ADDR | PORT | LEN | KEY
        KEY (LEN 73)            SUITE=01 | MEMBER_ID | KEY_ID | MEMBER_KEY | GROUP_KEY
    McastNotice (B4/B5/B7)      VER | CODE | RSV | ATYP | M.ADDR | M.PORT
    RekeyNotice (B6)            VER | B6 | RSV | ATYP | M.ADDR | M.PORT | LEN=36 | KEY_ID | KEY

Every other reply (LEAVE's, and JOIN refusals other than B2) has the plain RFC 1928 shape
(``messages.Reply``). The request parser accepts any well-framed address: whether it is a
multicast group (else REP 08) is the server's judgement, so a refused request never breaks the
framing of a control channel that carries more requests.

Datagrams between members and the relay (whole datagrams, no buffering):

    01 member -> relay, sealed     01 | MEMBER_ID | SEQ | BOX   box holds DATA
    02 relay -> members, sealed    02 | KEY_ID | SEQ | BOX      box holds ATYP|ADDR|PORT|DATA
    03 member -> relay, plain      03 | DATA
    04 relay -> members, plain     04 | ATYP | ADDR | PORT | DATA

Sealing, the nonce and the replay window are socksx.protocol.sealed's. Pure: keys, sequence
numbers and IDs are arguments.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar

from socksx.protocol.address import ZERO_V4, Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.connection import NOTICE_KIND, REPLY_KIND, register_reply_type
from socksx.protocol.constants import (
    MCAST_KEY_LEN,
    MCAST_REKEY_LEN,
    SOCKS5_VERSION,
    Atyp,
    Command,
    KeySuite,
    McastDatagramType,
    Notice,
    ReplyCode,
)
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    UnsupportedAddressType,
    UnsupportedVersion,
)
from socksx.protocol.messages import Reply, maybe_read_reply, register_request_reader
from socksx.protocol.sealed import KEY_SIZE, SealedHeader, UnsealError, open_sealed, seal

__all__ = [
    "END_NOTICES",
    "JOIN_REPLY_CODES",
    "GroupKeys",
    "JoinReply",
    "JoinRequest",
    "LeaveRequest",
    "McastNotice",
    "RekeyNotice",
    "decode_relay_plain",
    "encode_member_plain",
    "encode_relay_plain",
    "group_problem",
    "maybe_read_control_message",
    "maybe_read_join_reply",
    "maybe_read_notice",
    "open_member_datagram",
    "open_relay_datagram",
    "relay_plaintext",
    "seal_member",
    "seal_relay",
    "split_relay_plaintext",
]

Buf = bytes | bytearray | memoryview
ZERO_KEY = bytes(KEY_SIZE)
_ZERO_ADDRESS = ZERO_V4
_IP_ATYPS = frozenset({Atyp.IPV4, Atyp.IPV6})
#: REP values that use the JOIN reply shape (with LEN | KEY); every other REP is plain.
JOIN_REPLY_CODES = frozenset(
    {
        ReplyCode.SUCCEEDED,
        ReplyCode.MCAST_RECEIVE_ONLY,
        ReplyCode.MCAST_SEND_ONLY,
        ReplyCode.MCAST_DENIED,
    }
)
#: Notices after which the membership is gone.
END_NOTICES = frozenset({Notice.MCAST_EXPIRED, Notice.MCAST_EXPELLED, Notice.MCAST_RELAY_DOWN})
_MAX_ID = 0xFFFFFFFF


def group_problem(address: Address) -> str | None:
    """Why *address* cannot name a multicast group (None when it can).

    A JOIN or LEAVE for anything else is answered with REP 08: domain names included, since a
    group is joined by its address, never by a name somebody else resolves.
    """
    if not address.is_ip:
        return f"{address.host!r} is a domain name, not a multicast group address"
    if not ipaddress.ip_address(address.host).is_multicast:
        return f"{address.host} is not a multicast address"
    return None


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """JOIN_MCAST_GROUP: become a member of the public group ``address`` (M.ADDR, M.PORT)."""

    address: Address
    command: ClassVar[Command] = Command.JOIN_MCAST_GROUP

    def to_bytes(self) -> bytes:
        """VER | CMD=05 | RSV | ATYP | M.ADDR | M.PORT."""
        return bytes([SOCKS5_VERSION, self.command, 0]) + self.address.to_bytes()


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """LEAVE_MCAST_GROUP: end this channel's membership of ``address``."""

    address: Address
    command: ClassVar[Command] = Command.LEAVE_MCAST_GROUP

    def to_bytes(self) -> bytes:
        """VER | CMD=06 | RSV | ATYP | M.ADDR | M.PORT."""
        return bytes([SOCKS5_VERSION, self.command, 0]) + self.address.to_bytes()


def _read_group_request(r: Reader, command: Command) -> JoinRequest | LeaveRequest | None:
    # Any ATYP that frames (01, 03, 04) is read whole: the server refuses a non-group with
    # REP 08 and the channel stays in step for the next request.
    address = read_address_from(r)
    if address is None:
        return None
    if command == Command.JOIN_MCAST_GROUP:
        return JoinRequest(address)
    return LeaveRequest(address)


register_request_reader(Command.JOIN_MCAST_GROUP, _read_group_request)
register_request_reader(Command.LEAVE_MCAST_GROUP, _read_group_request)


# --------------------------------------------------------------------------- replies


def _check_id(value: int, name: str, *, zero: bool) -> None:
    if not isinstance(value, int) or not (0 if zero else 1) <= value <= _MAX_ID:
        lowest = 0 if zero else 1
        msg = f"{name} {value!r} out of range {lowest}..{_MAX_ID}"
        raise LocalProtocolError(msg)


def _check_key(value: bytes, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        msg = f"{name} must be {KEY_SIZE} octets"
        raise LocalProtocolError(msg)


@dataclass(frozen=True, slots=True)
class GroupKeys:
    """The KEY field of a JOIN reply.

    ``key_id`` 0 goes with an all-zero ``group_key`` (unicast mode, or a send-only member) and
    a non-zero ``key_id`` with a real one: a member can tell "no group key" from a key.
    """

    member_id: int
    key_id: int
    member_key: bytes = field(repr=False)
    group_key: bytes = field(repr=False)
    suite: KeySuite = KeySuite.SECRETBOX

    def __post_init__(self) -> None:
        if self.suite != KeySuite.SECRETBOX:
            msg = f"unknown key SUITE {self.suite!r}"
            raise LocalProtocolError(msg)
        _check_id(self.member_id, "MEMBER_ID", zero=False)
        _check_id(self.key_id, "KEY_ID", zero=True)
        _check_key(self.member_key, "MEMBER_KEY")
        _check_key(self.group_key, "GROUP_KEY")
        if (self.key_id == 0) != (self.group_key == ZERO_KEY):
            msg = "KEY_ID 0 goes with an all-zero GROUP_KEY, and only with it"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """SUITE | MEMBER_ID | KEY_ID | MEMBER_KEY | GROUP_KEY (73 octets)."""
        return (
            bytes([self.suite])
            + self.member_id.to_bytes(4, "big")
            + self.key_id.to_bytes(4, "big")
            + self.member_key
            + self.group_key
        )


@dataclass(frozen=True, slots=True)
class JoinReply:
    """A JOIN reply in the extended shape: REP 00 (send and receive), B0, B1 or B2 (neither).

    ``address`` is the relay's intranet endpoint; ``keys`` is None on an unencrypted relay
    (LEN 0) and always on B2, whose address is 0.0.0.0:0.
    """

    rep: ReplyCode
    address: Address = _ZERO_ADDRESS
    keys: GroupKeys | None = None

    def __post_init__(self) -> None:
        if self.rep not in JOIN_REPLY_CODES:
            msg = f"REP {self.rep!r} uses the plain reply shape, not the JOIN reply"
            raise LocalProtocolError(msg)
        if self.rep == ReplyCode.MCAST_DENIED and (
            self.keys is not None or self.address != _ZERO_ADDRESS
        ):
            msg = "a B2 reply carries address 0.0.0.0:0 and no key"
            raise LocalProtocolError(msg)

    @property
    def ok(self) -> bool:
        """True when a membership exists (REP 00, B0 or B1)."""
        return self.rep != ReplyCode.MCAST_DENIED

    @property
    def can_send(self) -> bool:
        """The relay forwards what this member sends (REP 00 or B1)."""
        return self.rep in (ReplyCode.SUCCEEDED, ReplyCode.MCAST_SEND_ONLY)

    @property
    def can_receive(self) -> bool:
        """The relay delivers the group's traffic to this member (REP 00 or B0)."""
        return self.rep in (ReplyCode.SUCCEEDED, ReplyCode.MCAST_RECEIVE_ONLY)

    def to_bytes(self) -> bytes:
        """VER | REP | RSV | ATYP | ADDR | PORT | LEN | KEY."""
        key = b"" if self.keys is None else self.keys.to_bytes()
        return (
            bytes([SOCKS5_VERSION, self.rep, 0]) + self.address.to_bytes() + bytes([len(key)]) + key
        )


def _read_head(r: Reader) -> tuple[int, int] | None:
    """VER | CODE | RSV of a server message: (code, rsv) or None."""
    ver = r.u8()
    if ver is None:
        return None
    if ver != SOCKS5_VERSION:
        msg = f"expected SOCKS version 0x05, got {ver:#04x}"
        raise UnsupportedVersion(msg)
    code = r.u8()
    rsv = r.u8()
    if code is None or rsv is None:
        return None
    if rsv != 0:
        msg = f"RSV must be 0x00, got {rsv:#04x}"
        raise MalformedMessage(msg)
    return code, rsv


def _read_keys(r: Reader, length: int) -> GroupKeys | None:
    raw = r.take(length)
    if raw is None:
        return None
    if raw[0] != KeySuite.SECRETBOX:
        msg = f"unknown key SUITE {raw[0]:#04x}"
        raise MalformedMessage(msg)
    try:
        return GroupKeys(
            member_id=int.from_bytes(raw[1:5], "big"),
            key_id=int.from_bytes(raw[5:9], "big"),
            member_key=raw[9:41],
            group_key=raw[41:73],
        )
    except LocalProtocolError as exc:
        raise MalformedMessage(str(exc)) from None


def maybe_read_join_reply(buf: Buf) -> tuple[JoinReply | Reply, int] | None:
    """Parse the reply to a JOIN (client side): a JoinReply, or a plain Reply for other REPs.

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: RSV not 0, an unknown REP, LEN neither 0 nor 73, an unknown SUITE, a
            zero MEMBER_ID, a KEY_ID that does not match its GROUP_KEY, or a B2 with a key.
        UnsupportedAddressType: bad ATYP.
    """
    r = Reader(buf)
    head = _read_head(r)
    if head is None:
        return None
    if head[0] not in JOIN_REPLY_CODES:
        return maybe_read_reply(buf)
    rep = ReplyCode(head[0])
    address = read_address_from(r)
    length = r.u8() if address is not None else None
    if address is None or length is None:
        return None
    if length not in (0, MCAST_KEY_LEN):
        msg = f"JOIN reply LEN must be 0 or {MCAST_KEY_LEN}, got {length}"
        raise MalformedMessage(msg)
    if length and rep == ReplyCode.MCAST_DENIED:
        msg = "a B2 JOIN reply carries no key"
        raise MalformedMessage(msg)
    keys = _read_keys(r, length) if length else None
    if length and keys is None:
        return None
    try:
        reply = JoinReply(rep, address, keys)
    except LocalProtocolError as exc:
        raise MalformedMessage(str(exc)) from None
    return reply, r.pos


# --------------------------------------------------------------------------- notices


@dataclass(frozen=True, slots=True)
class McastNotice:
    """B4 expired, B5 expelled or B7 relay down: the membership of ``group`` is over."""

    code: Notice
    group: Address

    def __post_init__(self) -> None:
        if self.code not in END_NOTICES:
            msg = f"notice {self.code!r} is not B4, B5 or B7"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """VER | CODE | RSV | ATYP | M.ADDR | M.PORT."""
        return bytes([SOCKS5_VERSION, self.code, 0]) + self.group.to_bytes()


@dataclass(frozen=True, slots=True)
class RekeyNotice:
    """B6: from now on the relay seals ``group``'s intranet traffic with ``group_key``."""

    group: Address
    key_id: int
    group_key: bytes = field(repr=False)
    code: ClassVar[Notice] = Notice.MCAST_REKEY

    def __post_init__(self) -> None:
        _check_id(self.key_id, "KEY_ID", zero=False)
        _check_key(self.group_key, "GROUP_KEY")

    def to_bytes(self) -> bytes:
        """VER | B6 | RSV | ATYP | M.ADDR | M.PORT | LEN=36 | KEY_ID | GROUP_KEY."""
        return (
            bytes([SOCKS5_VERSION, self.code, 0])
            + self.group.to_bytes()
            + bytes([MCAST_REKEY_LEN])
            + self.key_id.to_bytes(4, "big")
            + self.group_key
        )


def maybe_read_notice(buf: Buf) -> tuple[McastNotice | RekeyNotice, int] | None:
    """Parse a multicast notice (client side).

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: RSV not 0, a CODE that is not B4-B7, a B6 LEN other than 36, KEY_ID 0.
        UnsupportedAddressType: bad ATYP.
    """
    r = Reader(buf)
    head = _read_head(r)
    if head is None:
        return None
    code = head[0]
    if code not in (*END_NOTICES, Notice.MCAST_REKEY):
        msg = f"{code:#04x} is not a multicast notice"
        raise MalformedMessage(msg)
    group = read_address_from(r)
    if group is None:
        return None
    if code != Notice.MCAST_REKEY:
        return McastNotice(Notice(code), group), r.pos
    length = r.u8()
    if length is None:
        return None
    if length != MCAST_REKEY_LEN:
        msg = f"B6 LEN must be {MCAST_REKEY_LEN}, got {length}"
        raise MalformedMessage(msg)
    body = r.take(length)
    if body is None:
        return None
    key_id = int.from_bytes(body[:4], "big")
    if key_id == 0:
        msg = "B6 KEY_ID 0 is never valid"
        raise MalformedMessage(msg)
    return RekeyNotice(group, key_id, body[4:]), r.pos


def maybe_read_control_message(
    buf: Buf, awaiting: Command | None
) -> tuple[JoinReply | Reply | McastNotice | RekeyNotice, int] | None:
    """Parse whatever the server sent next on a multicast control channel (client side).

    A notice (CODE B4-B7) may come at any time; anything else is the reply to the one request
    outstanding (*awaiting*: JOIN uses the JOIN reply shape, LEAVE the plain one).

    Raises:
        MalformedMessage: a reply when no request is outstanding, or a malformed message.
        UnsupportedVersion, UnsupportedAddressType: as the parsers above.
    """
    if len(buf) < 2:
        if buf and buf[0] != SOCKS5_VERSION:
            msg = f"expected SOCKS version 0x05, got {buf[0]:#04x}"
            raise UnsupportedVersion(msg)
        return None
    if buf[1] in Notice._value2member_map_ and Notice(buf[1]) in (
        *END_NOTICES,
        Notice.MCAST_REKEY,
    ):
        return maybe_read_notice(buf)
    if awaiting == Command.JOIN_MCAST_GROUP:
        return maybe_read_join_reply(buf)
    if awaiting == Command.LEAVE_MCAST_GROUP:
        return maybe_read_reply(buf)
    msg = f"server sent {buf[1]:#04x} while no request was outstanding"
    raise MalformedMessage(msg)


# --------------------------------------------------------------------------- datagrams


def seal_member(member_key: bytes, member_id: int, seq: int, data: bytes) -> bytes:
    """TYPE 01: ``01 | MEMBER_ID | SEQ | BOX`` (an empty *data* is a keepalive, 29 octets).

    Raises:
        LocalProtocolError: a bad key or a header field out of range.
    """
    return seal(member_key, McastDatagramType.MEMBER_SEALED, member_id, seq, data)


def relay_plaintext(source: Address, data: bytes) -> bytes:
    """``ATYP | ADDR | PORT | DATA``: what a TYPE 02 box holds (the original sender first)."""
    return source.to_bytes() + data


def seal_relay(key: bytes, key_id: int, seq: int, source: Address, data: bytes) -> bytes:
    """TYPE 02: ``02 | KEY_ID | SEQ | BOX`` of ``ATYP | ADDR | PORT | DATA``.

    Raises:
        LocalProtocolError: a bad key or a header field out of range.
    """
    return seal(key, McastDatagramType.RELAY_SEALED, key_id, seq, relay_plaintext(source, data))


def split_relay_plaintext(plaintext: bytes) -> tuple[Address, bytes]:
    """``ATYP | ADDR | PORT | DATA`` -> (source, DATA).

    Raises:
        MalformedMessage: too short, or a domain or unknown ATYP (sources are IP addresses).
    """
    r = Reader(plaintext)
    try:
        source = read_address_from(r, _IP_ATYPS)
    except UnsupportedAddressType as exc:
        # Inside a datagram there is no reply to send: a bad ATYP is plain garbage.
        msg = f"relay datagram names no IP source: {exc}"
        raise MalformedMessage(msg) from None
    if source is None:
        msg = "relay datagram too short for its source address"
        raise MalformedMessage(msg)
    return source, plaintext[r.pos :]


def open_member_datagram(member_key: bytes, dgram: bytes) -> tuple[SealedHeader, bytes]:
    """Authenticate a TYPE 01 datagram: (header, DATA).

    Raises:
        UnsealError: not TYPE 01, too short, SEQ 0, or a failed tag.
    """
    if not dgram or dgram[0] != McastDatagramType.MEMBER_SEALED:
        msg = "not a TYPE 01 datagram"
        raise UnsealError(msg)
    return open_sealed(member_key, dgram)


def open_relay_datagram(key: bytes, dgram: bytes) -> tuple[SealedHeader, Address, bytes]:
    """Authenticate a TYPE 02 datagram: (header, original sender, DATA).

    Raises:
        UnsealError: not TYPE 02, too short, SEQ 0, or a failed tag.
        MalformedMessage: the plaintext names no IP source.
    """
    if not dgram or dgram[0] != McastDatagramType.RELAY_SEALED:
        msg = "not a TYPE 02 datagram"
        raise UnsealError(msg)
    header, plaintext = open_sealed(key, dgram)
    source, data = split_relay_plaintext(plaintext)
    return header, source, data


def encode_member_plain(data: bytes) -> bytes:
    """TYPE 03: ``03 | DATA`` (``03`` alone is a keepalive)."""
    return bytes([McastDatagramType.MEMBER_PLAIN]) + data


def encode_relay_plain(source: Address, data: bytes) -> bytes:
    """TYPE 04: ``04 | ATYP | ADDR | PORT | DATA``."""
    return bytes([McastDatagramType.RELAY_PLAIN]) + source.to_bytes() + data


def decode_relay_plain(dgram: bytes) -> tuple[Address, bytes]:
    """A TYPE 04 datagram -> (original sender, DATA).

    Raises:
        MalformedMessage: not TYPE 04, or no IP source.
    """
    if not dgram or dgram[0] != McastDatagramType.RELAY_PLAIN:
        msg = "not a TYPE 04 datagram"
        raise MalformedMessage(msg)
    return split_relay_plaintext(dgram[1:])


register_reply_type(JoinReply, REPLY_KIND)
register_reply_type(McastNotice, NOTICE_KIND)
register_reply_type(RekeyNotice, NOTICE_KIND)
