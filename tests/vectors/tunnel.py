"""SETUP_UDP_TUNNEL vectors: requests, replies, PROTO 01 frames, PROTO 02 sealed datagrams.

The sealed datagrams use the key 00 01 02 ... 1f and TUNNEL_ID 0a0b0c0d (docs/PROTOCOL.md
"UDP tunnels"); their octets are fixed because the nonce comes from the header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode, TunnelDir, TunnelProto
from socksx.protocol.errors import MalformedMessage, UnsupportedAddressType
from socksx.protocol.messages import Reply
from socksx.protocol.sealed import seal
from socksx.protocol.tunnel import Frame, Keepalive, TunnelReply, TunnelRequest
from tests.vectors import ErrorVector, Vector

DOC = 'PROTOCOL.md "UDP tunnels"'
FAIL = ReplyCode.GENERAL_FAILURE
ZERO = Address("0.0.0.0", 0)
GW_B = Address("198.51.100.2", 1443)
SITE_B = Address("10.2.0.5", 5060)
KEY = bytes(range(32))
TUNNEL_ID = 0x0A0B0C0D


@dataclass(frozen=True)
class SealedDatagram:
    """A PROTO 02 datagram: header fields, the plaintext's address (None: keepalive) and DATA."""

    direction: TunnelDir
    seq: int
    address: Address | None = None
    data: bytes = b""
    tunnel_id: int = TUNNEL_ID
    key: bytes = KEY

    @property
    def plaintext(self) -> bytes:
        """ATYP | ADDR | PORT | DATA, or nothing for a keepalive."""
        return b"" if self.address is None else self.address.to_bytes() + self.data

    def to_bytes(self) -> bytes:
        """The sealed datagram."""
        return seal(self.key, self.direction, self.tunnel_id, self.seq, self.plaintext)


REQUESTS = [
    Vector(
        "client -> A: tunnel to 198.51.100.2:1443, PROTO 01, no credentials",
        "05 07 00 01 c6336402 05a3 01 00 00",
        TunnelRequest(GW_B, TunnelProto.TLS),
        DOC,
    ),
    Vector(
        'client -> A: to gw-b.example:1443, PROTO 02, user "alice", password "s3cret"',
        "05 07 00 03 0c 67772d622e6578616d706c65 05a3 02 05 616c696365 06 733363726574",
        TunnelRequest(Address("gw-b.example", 1443), TunnelProto.UDP, b"alice", b"s3cret"),
        DOC,
    ),
    Vector(
        "client -> A: to [2001:db8::2]:1443, PROTO 01",
        "05 07 00 04 20010db8000000000000000000000002 05a3 01 00 00",
        TunnelRequest(Address("2001:db8::2", 1443), TunnelProto.TLS),
        DOC,
    ),
    Vector(
        "A -> B: gateway form, PROTO 01",
        "05 07 00 01 00000000 0000 01 00 00",
        TunnelRequest(ZERO, TunnelProto.TLS),
        DOC,
    ),
    Vector(
        "A -> B: gateway form [::]:0, PROTO 02",
        "05 07 00 04 00*16 0000 02 00 00",
        TunnelRequest(Address("::", 0), TunnelProto.UDP),
        DOC,
    ),
]

REQUEST_ERRORS = [
    ErrorVector(
        "PROTO FF (the probe of socksx check)",
        "05 07 00 01 00000000 0000 ff 00 00",
        MalformedMessage,
        FAIL,
        DOC,
    ),
    ErrorVector("PROTO 00", "05 07 00 01 c6336402 05a3 00 00 00", MalformedMessage, FAIL, DOC),
    ErrorVector(
        "ULEN 0 followed by PLEN 6",
        "05 07 00 01 c6336402 05a3 01 00 06 733363726574",
        MalformedMessage,
        FAIL,
        DOC,
    ),
    ErrorVector(
        "ULEN 5 followed by PLEN 0",
        "05 07 00 01 c6336402 05a3 01 05 616c696365 00",
        MalformedMessage,
        FAIL,
        DOC,
    ),
    ErrorVector(
        "ATYP 02",
        "05 07 00 02 c6336402 05a3 01 00 00",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        DOC,
    ),
]

REPLIES = [
    Vector(
        "B -> A, PROTO 01 granted: frames follow in the TLS stream",
        "05 00 00 01 00000000 0000",
        Reply(ReplyCode.SUCCEEDED, ZERO),
        DOC,
    ),
    Vector(
        "B -> A, PROTO 02 granted: endpoint 198.51.100.2:40000, TUNNEL_ID 0a0b0c0d, KEY",
        "05 00 00 01 c6336402 9c40 24 0a0b0c0d 000102030405060708090a0b0c0d0e0f"
        "101112131415161718191a1b1c1d1e1f",
        TunnelReply(Address("198.51.100.2", 40000), TUNNEL_ID, KEY),
        DOC,
    ),
    Vector(
        "B -> A refused (its limits): the plain shape, for either PROTO",
        "05 ba 00 01 00000000 0000",
        Reply(ReplyCode.PEER_REFUSED, ZERO),
        DOC,
    ),
    Vector(
        "A -> client granted: send datagrams to 10.1.0.1:54321",
        "05 00 00 01 0a010001 d431",
        Reply(ReplyCode.SUCCEEDED, Address("10.1.0.1", 54321)),
        DOC,
    ),
    Vector(
        "A -> client: B rejected the credentials",
        "05 b8 00 01 00000000 0000",
        Reply(ReplyCode.PEER_AUTH_FAILED, ZERO),
        DOC,
    ),
]

#: PROTO of the request each reply vector answers, for parsing it with maybe_read_tunnel_reply
#: (only a PROTO 02 success has the key block; A's replies to its client are all plain).
REPLY_PROTO: dict[str, tuple[TunnelProto, ...]] = {
    REPLIES[0].name: (TunnelProto.TLS,),
    REPLIES[1].name: (TunnelProto.UDP,),
    REPLIES[2].name: (TunnelProto.TLS, TunnelProto.UDP),
    REPLIES[3].name: (TunnelProto.TLS,),
    REPLIES[4].name: (TunnelProto.TLS, TunnelProto.UDP),
}

REPLY_ERRORS = [
    ErrorVector(
        "PROTO 02 granted with key block LEN 20",
        "05 00 00 01 c6336402 9c40 14 0a0b0c0d 000102030405060708090a0b0c0d0e0f",
        MalformedMessage,
        FAIL,
        DOC,
    ),
]

FRAMES = [
    Vector(
        'A -> B: "ping" for 10.2.0.5:5060',
        "000b 01 0a020005 13c4 70696e67",
        Frame(SITE_B, b"ping"),
        DOC,
    ),
    Vector(
        'B -> A: "pong" from [2001:db8::5]:5060',
        "0017 04 20010db8000000000000000000000005 13c4 706f6e67",
        Frame(Address("2001:db8::5", 5060), b"pong"),
        DOC,
    ),
    Vector(
        'A -> B: "hi" for sip.example:5060 (B resolves the name)',
        "0011 03 0b 7369702e6578616d706c65 13c4 6869",
        Frame(Address("sip.example", 5060), b"hi"),
        DOC,
    ),
    Vector("an empty datagram", "0007 01 0a020005 13c4", Frame(SITE_B, b""), DOC),
    Vector("keepalive (LEN 0)", "0000", Keepalive(), DOC),
]

FRAME_ERRORS = [
    ErrorVector(
        "LEN 3: too short for an IPv4 address",
        "0003 01 0a0200",
        MalformedMessage,
        FAIL,
        DOC,
    ),
    ErrorVector(
        "ATYP 02",
        "0007 02 0a020005 13c4",
        UnsupportedAddressType,
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
        DOC,
    ),
    ErrorVector("zero-length domain name", "0006 03 00 13c4 6869", MalformedMessage, FAIL, DOC),
]

SEALED = [
    Vector(
        "A -> B keepalive, SEQ 1 (sent right after B's reply)",
        "01 0a0b0c0d 0000000000000001 3276aecf04d4a6e3e8f053557ce02afd",
        SealedDatagram(TunnelDir.A_TO_B, 1),
        DOC,
    ),
    Vector(
        'A -> B "ping" for 10.2.0.5:5060, SEQ 2',
        "01 0a0b0c0d 0000000000000002 683c5cd9169bb355ebcccfcdb1ce82af ea48e4302ee012bcc19f44",
        SealedDatagram(TunnelDir.A_TO_B, 2, SITE_B, b"ping"),
        DOC,
    ),
    Vector(
        'B -> A "pong" from 10.2.0.5:5060, SEQ 1',
        "02 0a0b0c0d 0000000000000001 7fd23dde4eef1810336ad66f905547c5 1c3dbecdcd8573b392eff2",
        SealedDatagram(TunnelDir.B_TO_A, 1, SITE_B, b"pong"),
        DOC,
    ),
]

TABLES: dict[str, list[Vector]] = {
    "tunnel-requests": REQUESTS,
    "tunnel-replies": REPLIES,
    "tunnel-frames": FRAMES,
    "tunnel-sealed": SEALED,
}

ERROR_TABLES: dict[str, list[ErrorVector]] = {
    "tunnel-request-errors": REQUEST_ERRORS,
    "tunnel-reply-errors": REPLY_ERRORS,
    "tunnel-frame-errors": FRAME_ERRORS,
}


def _rep(v: ErrorVector) -> str:
    return f"REP {v.reply:02X}, then close"


ON_THE_WIRE: dict[str, Callable[[ErrorVector], str]] = {
    "tunnel-request-errors": _rep,
    "tunnel-reply-errors": lambda _: "A closes the TLS connection; its client gets REP 01",
    "tunnel-frame-errors": lambda _: "the tunnel ends: the receiver closes the TLS connection",
}

_NAMES = {TunnelProto.TLS: "01 (TLS frames)", TunnelProto.UDP: "02 (sealed UDP)"}
_DIRS = {TunnelDir.A_TO_B: "01 A->B", TunnelDir.B_TO_A: "02 B->A"}


def describe(msg: object) -> str | None:
    """Doc text for this module's message types (None: not ours)."""
    match msg:
        case TunnelRequest(address=address, proto=proto, username=username):
            creds = f'ULEN {len(username)} "{username.decode()}"' if username else "ULEN 0, PLEN 0"
            return f"DST {address}, PROTO {_NAMES[proto]}, {creds}"
        case TunnelReply(address=address, tunnel_id=tunnel_id):
            return f"REP 00, endpoint {address}, LEN 36, TUNNEL_ID {tunnel_id:08x}, KEY"
        case Frame(address=address, data=data):
            return f"LEN {len(address.to_bytes()) + len(data)}, {address}, DATA {data!r}"
        case Keepalive():
            return "keepalive"
        case SealedDatagram(direction=direction, seq=seq, address=address, data=data):
            what = "keepalive (empty plaintext)" if address is None else f"{address}, {data!r}"
            return f"DIR {_DIRS[direction]}, SEQ {seq}, {what}"
    return None
