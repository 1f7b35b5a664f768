"""SETUP_UDP_TUNNEL (CMD 07): the request, the PROTO 02 reply, PROTO 01 frames, sealed payloads.

docs/PROTOCOL.md "UDP tunnels (SETUP_UDP_TUNNEL 0x07)" is the normative text. Request, client
-> its gateway A, and A -> gateway B in the gateway-to-gateway form (DST 0.0.0.0:0):

    +-----+-----+-----+------+-----+------+-------+------+------+--------+
    | VER | CMD | RSV | ATYP | DST | PORT | PROTO | ULEN | UNAME| PLEN | PASSWD |
    | 05  | 07  | 00  |  1   | Var |  2   |   1   |  1   | Var  |  1   |  Var   |

ULEN 0 means "no credentials" and is still followed by PLEN, which must then be 0; otherwise
both are 1..255 (RFC 1929's bounds: they are presented to B in RFC 1929).

B's successful reply for PROTO 02 is the RFC 1928 §6 reply followed by
``LEN=36 | TUNNEL_ID(4) | KEY(32)``; every other reply (PROTO 01 success, any failure) has the
plain shape. PROTO 01 frames in the TLS stream are ``LEN(2) | ATYP | ADDR | PORT | DATA`` with
LEN counting ATYP through DATA; LEN 0 is a keepalive. PROTO 02 datagrams are socksx.protocol.sealed
datagrams with TYPE = DIR (01 A->B, 02 B->A) and ID = TUNNEL_ID, whose plaintext is
``ATYP | ADDR | PORT | DATA`` (empty: a keepalive).

Pure: no sockets, clock or randomness; keys and IDs are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from socksx.protocol.address import Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.connection import REPLY_KIND, register_reply_type
from socksx.protocol.constants import (
    SOCKS5_VERSION,
    TUNNEL_FRAME_MAX,
    TUNNEL_KEY_BLOCK_LEN,
    Command,
    ReplyCode,
    TunnelProto,
)
from socksx.protocol.errors import LocalProtocolError, MalformedMessage
from socksx.protocol.messages import Reply, maybe_read_reply, register_request_reader
from socksx.protocol.sealed import KEY_SIZE

__all__ = [
    "FINGERPRINT_PREFIX",
    "KEEPALIVE",
    "Frame",
    "Keepalive",
    "TunnelReply",
    "TunnelRequest",
    "decode_payload",
    "is_gateway_form",
    "maybe_read_frame",
    "maybe_read_tunnel_reply",
    "parse_fingerprint",
]

Buf = bytes | bytearray | memoryview

FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT_SIZE = 32  # SHA-256 digest octets
_ID_MAX = 0xFFFFFFFF
_FRAME_HEAD = 2  # LEN


def is_gateway_form(address: Address) -> bool:
    """DST 0.0.0.0:0 or [::]:0: the gateway-to-gateway form (only accepted on TLS listeners)."""
    return address.port == 0 and address.host in ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """A SETUP_UDP_TUNNEL request; ``username``/``password`` are empty when none are carried."""

    address: Address
    proto: TunnelProto
    username: bytes = b""
    password: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.proto not in (TunnelProto.TLS, TunnelProto.UDP):
            msg = f"PROTO {self.proto!r} is not 01 or 02"
            raise LocalProtocolError(msg)
        if bool(self.username) != bool(self.password):
            msg = "tunnel credentials need both a username and a password, or neither"
            raise LocalProtocolError(msg)
        if len(self.username) > 0xFF or len(self.password) > 0xFF:
            msg = "tunnel username and password are at most 255 octets each"
            raise LocalProtocolError(msg)

    @property
    def command(self) -> Command:
        """Always SETUP_UDP_TUNNEL (the state machine and the session read it)."""
        return Command.SETUP_UDP_TUNNEL

    @property
    def has_credentials(self) -> bool:
        """True when ULEN is not 0."""
        return bool(self.username)

    def to_bytes(self) -> bytes:
        """VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT | PROTO | ULEN | UNAME | PLEN | PASSWD."""
        return (
            bytes([SOCKS5_VERSION, Command.SETUP_UDP_TUNNEL, 0])
            + self.address.to_bytes()
            + bytes([self.proto, len(self.username)])
            + self.username
            + bytes([len(self.password)])
            + self.password
        )


def _read_request(r: Reader, command: Command) -> TunnelRequest | None:
    """The body after VER | CMD | RSV; each bad field is refused as soon as its octet arrives."""
    address = read_address_from(r)
    if address is None:
        return None
    proto = r.u8()
    if proto is None:
        return None
    if proto not in (TunnelProto.TLS, TunnelProto.UDP):
        msg = f"unknown tunnel PROTO {proto:#04x}"
        raise MalformedMessage(msg)
    ulen = r.u8()
    if ulen is None:
        return None
    uname = r.take(ulen)
    if uname is None:
        return None
    plen = r.u8()
    if plen is None:
        return None
    if ulen == 0 and plen != 0:
        msg = "PLEN must be 0 when ULEN is 0"
        raise MalformedMessage(msg)
    if ulen != 0 and plen == 0:
        msg = "a tunnel username needs a password (PLEN 0)"
        raise MalformedMessage(msg)
    passwd = r.take(plen)
    if passwd is None:
        return None
    return TunnelRequest(address, TunnelProto(proto), uname, passwd)


register_request_reader(Command.SETUP_UDP_TUNNEL, _read_request)


@dataclass(frozen=True, slots=True)
class TunnelReply:
    """B's successful PROTO 02 reply: its UDP endpoint, then ``LEN=36 | TUNNEL_ID | KEY``.

    Only REP 00 has this shape; failures (and PROTO 01 success) are plain ``Reply`` values.
    """

    address: Address
    tunnel_id: int
    key: bytes = field(repr=False)
    rep: ReplyCode = ReplyCode.SUCCEEDED

    def __post_init__(self) -> None:
        if self.rep != ReplyCode.SUCCEEDED:
            msg = "only REP 00 carries a tunnel key; a failure has the plain reply shape"
            raise LocalProtocolError(msg)
        if not 0 <= self.tunnel_id <= _ID_MAX:
            msg = f"TUNNEL_ID {self.tunnel_id!r} does not fit in four octets"
            raise LocalProtocolError(msg)
        if len(self.key) != KEY_SIZE:
            msg = f"a tunnel key is {KEY_SIZE} octets, not {len(self.key)}"
            raise LocalProtocolError(msg)

    @property
    def ok(self) -> bool:
        """Always True (the state machine moves to CONTROL)."""
        return True

    def to_bytes(self) -> bytes:
        """VER | REP | RSV | ATYP | BND.ADDR | BND.PORT | LEN | TUNNEL_ID | KEY."""
        return (
            Reply(self.rep, self.address).to_bytes()
            + bytes([TUNNEL_KEY_BLOCK_LEN])
            + self.tunnel_id.to_bytes(4, "big")
            + self.key
        )


register_reply_type(TunnelReply, REPLY_KIND)


def maybe_read_tunnel_reply(buf: Buf, proto: TunnelProto) -> tuple[Reply | TunnelReply, int] | None:
    """Parse B's reply to a gateway-form request of *proto* (gateway A's side).

    Raises:
        UnsupportedVersion, UnsupportedAddressType, MalformedMessage: as ``maybe_read_reply``;
            MalformedMessage also for a key block whose LEN is not 36.
    """
    parsed = maybe_read_reply(buf)
    if parsed is None:
        return None
    reply, consumed = parsed
    if not reply.ok or proto == TunnelProto.TLS:
        return reply, consumed
    # PROTO 02 success: the key block follows at once.
    if len(buf) <= consumed:
        return None
    if buf[consumed] != TUNNEL_KEY_BLOCK_LEN:
        msg = f"tunnel key block LEN must be {TUNNEL_KEY_BLOCK_LEN}, got {buf[consumed]}"
        raise MalformedMessage(msg)
    end = consumed + 1 + TUNNEL_KEY_BLOCK_LEN
    if len(buf) < end:
        return None
    tunnel_id = int.from_bytes(buf[consumed + 1 : consumed + 5], "big")
    key = bytes(buf[consumed + 5 : end])
    return TunnelReply(reply.address, tunnel_id, key), end


# -- PROTO 01 frames ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A frame with LEN 0: proof of life, no datagram."""

    def to_bytes(self) -> bytes:
        """LEN = 00 00."""
        return b"\x00\x00"


KEEPALIVE = Keepalive()


@dataclass(frozen=True, slots=True)
class Frame:
    """One datagram in the TLS stream: its final destination (A->B) or its source (B->A)."""

    address: Address
    data: bytes

    def to_bytes(self) -> bytes:
        """LEN | ATYP | ADDR | PORT | DATA.

        Raises:
            LocalProtocolError: address and data do not fit in 65535 octets.
        """
        body = self.address.to_bytes() + self.data
        if len(body) > TUNNEL_FRAME_MAX:
            msg = f"frame body of {len(body)} octets exceeds {TUNNEL_FRAME_MAX}"
            raise LocalProtocolError(msg)
        return len(body).to_bytes(2, "big") + body


def maybe_read_frame(buf: Buf) -> tuple[Frame | Keepalive, int] | None:
    """Parse one PROTO 01 frame from the front of *buf*: (frame, consumed), or None if short.

    Raises:
        UnsupportedAddressType: an unknown ATYP (as soon as it arrives).
        MalformedMessage: the address does not fit in LEN, or a bad domain name.
    """
    if len(buf) < _FRAME_HEAD:
        return None
    length = (buf[0] << 8) | buf[1]
    if length == 0:
        return KEEPALIVE, _FRAME_HEAD
    end = _FRAME_HEAD + length
    r = Reader(buf, _FRAME_HEAD)
    address = read_address_from(r)
    if address is None:
        if len(buf) >= end:
            # The whole frame is here and its address is still incomplete.
            msg = f"frame LEN {length} is too short for its address"
            raise MalformedMessage(msg)
        return None
    if r.pos > end:
        msg = f"frame LEN {length} is too short for its address"
        raise MalformedMessage(msg)
    if len(buf) < end:
        return None
    return Frame(address, bytes(buf[r.pos : end])), end


# -- PROTO 02 payloads ------------------------------------------------------------------------


def decode_payload(plaintext: Buf) -> tuple[Address, int] | None:
    """An opened PROTO 02 plaintext: (address, offset of DATA), or None for a keepalive.

    Raises:
        UnsupportedAddressType: an unknown ATYP.
        MalformedMessage: a truncated address or a bad domain name.
    """
    if not plaintext:
        return None
    r = Reader(plaintext)
    address = read_address_from(r)
    if address is None:
        msg = "sealed tunnel payload truncated inside its address"
        raise MalformedMessage(msg)
    return address, r.pos


# -- trust ------------------------------------------------------------------------------------


def parse_fingerprint(text: str) -> bytes:
    """``sha256:HEX`` (colons between octets allowed) -> the 32-octet digest.

    Raises:
        ValueError: another algorithm, or not 32 octets of hex.
    """
    if not text.lower().startswith(FINGERPRINT_PREFIX):
        msg = f"fingerprint must look like sha256:HEX, got {text!r}"
        raise ValueError(msg)
    hexpart = text[len(FINGERPRINT_PREFIX) :].replace(":", "")
    try:
        digest = bytes.fromhex(hexpart)
    except ValueError:
        digest = b""
    if len(digest) != _FINGERPRINT_SIZE:
        msg = f"fingerprint must be 32 octets of hex after 'sha256:', got {text!r}"
        raise ValueError(msg)
    return digest
