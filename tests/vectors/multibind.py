"""Multi-bind vectors: MULTI_BIND (CMD 08) and ACCEPT (CMD 09), the reply, the C0/C1/C2 events.

Rendered into docs/PROTOCOL.md section 10 ("Multi-bind").
"""

from __future__ import annotations

from collections.abc import Callable

from socksx.protocol.address import Address
from socksx.protocol.constants import (
    ChannelCloseReason,
    ChannelFlag,
    ChannelType,
    ReplyCode,
)
from socksx.protocol.datagram import UdpHeader
from socksx.protocol.errors import MalformedMessage, UnsupportedAddressType, UnsupportedVersion
from socksx.protocol.messages import Reply
from socksx.protocol.multibind import (
    AcceptExpired,
    AcceptRequest,
    BoundChannel,
    ChannelClosed,
    ChannelRequest,
    MultiBindReply,
    MultiBindRequest,
    PeerConnected,
)
from tests.vectors import Datagram, ErrorVector, Vector

S10 = "PROTOCOL.md §10"
FAIL = ReplyCode.GENERAL_FAILURE

TCP = ChannelRequest(ChannelType.TCP)
UDP = ChannelRequest(ChannelType.UDP)
UDP_PAIR = ChannelRequest(ChannelType.UDP, ChannelFlag.RTP_PAIR)

ANY = Address("0.0.0.0", 0)
SERVER = Address("192.0.2.1", 554)
MEDIA = Address("198.51.100.2", 54321)
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
TOKEN_HEX = "00112233445566778899aabbccddeeff"
ANY_HEX = "01 00000000 0000"

REQUESTS = [
    Vector(
        "one TCP channel, any peer",
        f"05 08 00 {ANY_HEX} 01 01 00",
        MultiBindRequest(ANY, (TCP,)),
        S10,
    ),
    Vector(
        "RTSP-style: TCP, then an RTP/RTCP pair, from 192.0.2.1 (any port)",
        "05 08 00 01 c0000201 0000 03 01 00 02 01 02 00",
        MultiBindRequest(Address("192.0.2.1", 0), (TCP, UDP_PAIR, UDP)),
        S10,
    ),
    Vector(
        "two UDP channels, peer [2001:db8::1]:5004 only",
        "05 08 00 04 20010db8000000000000000000000001 138c 02 02 00 02 00",
        MultiBindRequest(Address("2001:db8::1", 5004), (UDP, UDP)),
        S10,
    ),
    Vector(
        "peer named example.com, one TCP channel",
        "05 08 00 03 0b 6578616d706c652e636f6d 0000 01 01 00",
        MultiBindRequest(Address("example.com", 0), (TCP,)),
        S10,
    ),
    Vector(
        "sixteen TCP channels (the most)",
        f"05 08 00 {ANY_HEX} 10 0100*16",
        MultiBindRequest(ANY, (TCP,) * 16),
        S10,
    ),
    Vector(
        "ACCEPT with a token from C0",
        f"05 09 00 {TOKEN_HEX}",
        AcceptRequest(TOKEN),
        S10,
    ),
    Vector(
        "ACCEPT with the all-zero token (socksx check's probe: REP 02)",
        "05 09 00 00*16",
        AcceptRequest(bytes(16)),
        S10,
    ),
]

_ANY_PREFIX = f"05 08 00 {ANY_HEX}"

REQUEST_ERRORS = [
    ErrorVector("NCHAN 0 (socksx check's probe)", f"{_ANY_PREFIX} 00", MalformedMessage, FAIL, S10),
    ErrorVector("NCHAN 17", f"{_ANY_PREFIX} 11", MalformedMessage, FAIL, S10),
    ErrorVector("TYPE 03", f"{_ANY_PREFIX} 01 03 00", MalformedMessage, FAIL, S10),
    ErrorVector("FLAGS bit 1 (unknown)", f"{_ANY_PREFIX} 01 02 02", MalformedMessage, FAIL, S10),
    ErrorVector("pair bit on a TCP channel", f"{_ANY_PREFIX} 02 01 01 02 00", MalformedMessage,
                FAIL, S10),
    ErrorVector("pair bit on the last channel", f"{_ANY_PREFIX} 01 02 01", MalformedMessage, FAIL,
                S10),
    ErrorVector("pair followed by a TCP channel", f"{_ANY_PREFIX} 02 02 01 01 00",
                MalformedMessage, FAIL, S10),
    ErrorVector("a channel in two pairs", f"{_ANY_PREFIX} 03 02 01 02 01 02 00", MalformedMessage,
                FAIL, S10),
    ErrorVector("RSV 01", "05 08 01 01 00000000 0000 01 01 00", MalformedMessage, FAIL, S10),
    ErrorVector("ATYP 05", "05 08 00 05 00000000 0000 01 01 00", UnsupportedAddressType,
                ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, S10),
]

BND_TCP = Address("192.0.2.1", 8080)
REPLIES = [
    Vector(
        "one TCP channel bound at 192.0.2.1:8080",
        "05 00 00 01 00 01 01 c0000201 1f90",
        MultiBindReply((BoundChannel(0, ChannelType.TCP, BND_TCP),)),
        S10,
    ),
    Vector(
        "TCP, then an RTP/RTCP pair at 6000/6001 relayed at 198.51.100.1:40000/40002",
        "05 00 00 03 00 01 01 c0000201 1f90"
        " 01 02 01 c0000201 1770 01 c6336401 9c40"
        " 02 02 01 c0000201 1771 01 c6336401 9c42",
        MultiBindReply(
            (
                BoundChannel(0, ChannelType.TCP, BND_TCP),
                BoundChannel(
                    1, ChannelType.UDP, Address("192.0.2.1", 6000), Address("198.51.100.1", 40000)
                ),
                BoundChannel(
                    2, ChannelType.UDP, Address("192.0.2.1", 6001), Address("198.51.100.1", 40002)
                ),
            )
        ),
        S10,
    ),
    Vector(
        "one UDP channel, IPv6",
        "05 00 00 01 00 02 04 20010db8000000000000000000000001 1770"
        " 04 20010db8000000000000000000000002 9c40",
        MultiBindReply(
            (
                BoundChannel(
                    0, ChannelType.UDP, Address("2001:db8::1", 6000), Address("2001:db8::2", 40000)
                ),
            )
        ),
        S10,
    ),
    Vector(
        "refused: REP 02 in the plain shape",
        f"05 02 00 {ANY_HEX}",
        Reply(ReplyCode.NOT_ALLOWED, ANY),
        S10,
    ),
    Vector(
        "not implemented: REP 07 in the plain shape",
        f"05 07 00 {ANY_HEX}",
        Reply(ReplyCode.COMMAND_NOT_SUPPORTED, ANY),
        S10,
    ),
]

REPLY_ERRORS = [
    ErrorVector("VER 04", "04 00 00 01", UnsupportedVersion, None, S10),
    ErrorVector("NCHAN 0", "05 00 00 00", MalformedMessage, FAIL, S10),
    ErrorVector("RSV 01", "05 00 01 01", MalformedMessage, FAIL, S10),
    ErrorVector("first entry has CHAN_ID 01", "05 00 00 01 01 01 01 c0000201 1f90",
                MalformedMessage, FAIL, S10),
    ErrorVector("entry TYPE 03", "05 00 00 01 00 03 01 c0000201 1f90", MalformedMessage, FAIL,
                S10),
]

EVENTS = [
    Vector(
        "C0: peer 198.51.100.2:54321 waits on channel 0",
        f"05 c0 00 00 {TOKEN_HEX} 01 c6336402 d431",
        PeerConnected(0, TOKEN, MEDIA),
        S10,
    ),
    Vector(
        "C1: channel 2 closed, idle",
        "05 c1 00 02 01",
        ChannelClosed(2, ChannelCloseReason.IDLE),
        S10,
    ),
    Vector(
        "C1: channel 0 closed, server shutting down",
        "05 c1 00 00 04",
        ChannelClosed(0, ChannelCloseReason.SHUTDOWN),
        S10,
    ),
    Vector(
        "C2: the peer of that token was not accepted in time",
        f"05 c2 00 00 {TOKEN_HEX}",
        AcceptExpired(0, TOKEN),
        S10,
    ),
]

EVENT_ERRORS = [
    ErrorVector("code C3", "05 c3 00 00 01", MalformedMessage, FAIL, S10),
    ErrorVector("a plain reply where an event belongs", f"05 00 00 {ANY_HEX}", MalformedMessage,
                FAIL, S10),
    ErrorVector("RSV 01", "05 c1 01 00 01", MalformedMessage, FAIL, S10),
    ErrorVector("CHAN_ID 16", "05 c1 00 10 01", MalformedMessage, FAIL, S10),
    ErrorVector("C1 REASON 05", "05 c1 00 00 05", MalformedMessage, FAIL, S10),
    ErrorVector("C0 with ATYP 02", f"05 c0 00 00 {TOKEN_HEX} 02 c6336402 d431",
                UnsupportedAddressType, ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, S10),
]

DATAGRAMS = [
    Vector(
        "client -> REL: registration (DST 0.0.0.0:0, no DATA; not forwarded)",
        "0000 00 01 00000000 0000",
        Datagram(UdpHeader(0, ANY), b""),
        S10,
    ),
    Vector(
        'client -> REL: to the peer 198.51.100.2:5005, DATA "rtcp"',
        "0000 00 01 c6336402 138d 72746370",
        Datagram(UdpHeader(0, Address("198.51.100.2", 5005)), b"rtcp"),
        S10,
    ),
    Vector(
        'REL -> client: from the peer 198.51.100.2:5004, DATA "rtp"',
        "0000 00 01 c6336402 138c 727470",
        Datagram(UdpHeader(0, Address("198.51.100.2", 5004)), b"rtp"),
        S10,
    ),
]

TABLES: dict[str, list[Vector]] = {
    "multibind-requests": REQUESTS,
    "multibind-replies": REPLIES,
    "multibind-events": EVENTS,
    "multibind-datagrams": DATAGRAMS,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "multibind-request-errors": REQUEST_ERRORS,
    "multibind-reply-errors": REPLY_ERRORS,
    "multibind-event-errors": EVENT_ERRORS,
}


def _rep(v: ErrorVector) -> str:
    return "server closes, no reply" if v.reply is None else f"REP {v.reply:02X}, then close"


def _client_closes(_: ErrorVector) -> str:
    return "client closes"


ON_THE_WIRE: dict[str, Callable[[ErrorVector], str]] = {
    "multibind-request-errors": _rep,
    "multibind-reply-errors": _client_closes,
    "multibind-event-errors": _client_closes,
}

_REASON_TEXT = {
    ChannelCloseReason.IDLE: "idle",
    ChannelCloseReason.POLICY: "policy",
    ChannelCloseReason.ERROR: "error",
    ChannelCloseReason.SHUTDOWN: "server shutting down",
}


def _channel(channel: ChannelRequest) -> str:
    text = channel.type.name
    return f"{text} (pair)" if channel.rtp_pair else text


def _entry(channel: BoundChannel) -> str:
    text = f"{channel.chan_id}: {channel.type.name} BND {channel.bound}"
    return text if channel.relay is None else f"{text} REL {channel.relay}"


def describe(msg: object) -> str | None:
    """The document's one-line reading of a multi-bind message (None: not ours)."""
    match msg:
        case MultiBindRequest(address=address, channels=channels):
            listed = ", ".join(_channel(c) for c in channels)
            return f"MULTI_BIND, peer {address}, NCHAN {len(channels)}: {listed}"
        case AcceptRequest(token=token):
            return f"ACCEPT, TOKEN 0x{token.hex()}"
        case MultiBindReply(channels=channels):
            return f"REP 00, NCHAN {len(channels)}: " + "; ".join(_entry(c) for c in channels)
        case PeerConnected(chan_id=chan_id, token=token, peer=peer):
            return f"C0 channel {chan_id}, TOKEN 0x{token.hex()}, PEER {peer}"
        case ChannelClosed(chan_id=chan_id, reason=reason):
            return f"C1 channel {chan_id}, REASON {reason:02X} ({_REASON_TEXT[reason]})"
        case AcceptExpired(chan_id=chan_id, token=token):
            return f"C2 channel {chan_id}, TOKEN 0x{token.hex()}"
    return None
