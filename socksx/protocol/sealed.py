"""Sealed datagrams: NaCl secretbox (XSalsa20-Poly1305) with a header-derived nonce.

Used by the multicast relay (TYPE 01/02, docs/PROTOCOL.md "Multicast") and by PROTO 02 UDP
tunnels (DIR 01/02, "UDP tunnels"). On the wire:

    +------+--------+---------+-------------------------+
    | TYPE |   ID   |   SEQ   |           BOX           |
    +------+--------+---------+-------------------------+
    |  1   |   4    |    8    | 16-octet tag | ciphertext |

ID is a MEMBER_ID, KEY_ID or TUNNEL_ID; SEQ starts at 1 and rises by one per datagram per
(sender, key). The 24-octet nonce is ``TYPE | ID | eleven zero octets | SEQ``: the header is
authenticated (any change to it changes the nonce, so the tag fails) and, since SEQ never
repeats under one key, no nonce is used twice.

Receivers drop replays with ``ReplayWindow`` (RFC 4303 §3.4.3, 64 wide): SEQ 0 is never valid,
and only a datagram that authenticated may mark its SEQ as seen.

Pure: keys, sequence numbers and plaintexts are arguments; no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.exceptions
import nacl.secret

from socksx.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER_SIZE",
    "KEY_SIZE",
    "OVERHEAD",
    "REPLAY_WINDOW",
    "ReplayWindow",
    "SealedHeader",
    "UnsealError",
    "nonce_for",
    "open_sealed",
    "peek_header",
    "seal",
]

KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE  #: 32 octets
TAG_SIZE = nacl.secret.SecretBox.MACBYTES  #: 16 octets
HEADER_SIZE = 1 + 4 + 8  #: TYPE | ID | SEQ
OVERHEAD = HEADER_SIZE + TAG_SIZE  #: 29: an empty plaintext (a keepalive) is this long
REPLAY_WINDOW = 64  #: RFC 4303 §3.4.3 default width
MAX_SEQ = (1 << 64) - 1
_ZERO11 = bytes(11)


class UnsealError(RemoteProtocolError):
    """A datagram that is too short or fails authentication (dropped and counted)."""

    reply = None


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The clear part of a sealed datagram."""

    type: int
    id: int
    seq: int


def nonce_for(type_: int, id_: int, seq: int) -> bytes:
    """TYPE | ID | eleven zero octets | SEQ (24 octets).

    Raises:
        LocalProtocolError: a field out of range (SEQ 0 is never valid).
    """
    if not 0 <= type_ <= 0xFF or not 0 <= id_ <= 0xFFFFFFFF or not 1 <= seq <= MAX_SEQ:
        msg = f"sealed header out of range: type={type_} id={id_} seq={seq}"
        raise LocalProtocolError(msg)
    return bytes([type_]) + id_.to_bytes(4, "big") + _ZERO11 + seq.to_bytes(8, "big")


def seal(key: bytes, type_: int, id_: int, seq: int, plaintext: bytes) -> bytes:
    """The whole datagram: header | tag | ciphertext.

    Raises:
        LocalProtocolError: a bad key length or a header field out of range.
    """
    if len(key) != KEY_SIZE:
        msg = f"a secretbox key is {KEY_SIZE} octets, not {len(key)}"
        raise LocalProtocolError(msg)
    nonce = nonce_for(type_, id_, seq)
    box = nacl.secret.SecretBox(key).encrypt(plaintext, nonce).ciphertext
    return nonce[:5] + nonce[16:] + box


def peek_header(dgram: bytes | memoryview) -> SealedHeader:
    """Read the clear header without a key (to pick the key by ID).

    Raises:
        UnsealError: shorter than header and tag, or SEQ 0.
    """
    if len(dgram) < OVERHEAD:
        msg = f"sealed datagram of {len(dgram)} octets is shorter than {OVERHEAD}"
        raise UnsealError(msg)
    seq = int.from_bytes(dgram[5:HEADER_SIZE], "big")
    if seq == 0:
        msg = "SEQ 0 is never valid"
        raise UnsealError(msg)
    return SealedHeader(dgram[0], int.from_bytes(dgram[1:5], "big"), seq)


def open_sealed(key: bytes, dgram: bytes | memoryview) -> tuple[SealedHeader, bytes]:
    """Authenticate and decrypt: (header, plaintext).

    Raises:
        UnsealError: too short, SEQ 0, or the tag does not verify under *key*.
    """
    header = peek_header(dgram)
    nonce = bytes(dgram[:5]) + _ZERO11 + bytes(dgram[5:HEADER_SIZE])
    try:
        plaintext = nacl.secret.SecretBox(key).decrypt(bytes(dgram[HEADER_SIZE:]), nonce)
    except nacl.exceptions.CryptoError:
        msg = "sealed datagram failed authentication"
        raise UnsealError(msg) from None
    return header, plaintext


class ReplayWindow:
    """RFC 4303 anti-replay: with highest accepted SEQ ``top``, ``top-63..top`` is the window.

    Use ``check`` before authenticating (cheap rejection) and ``accept`` only after the
    datagram authenticated, so a forgery marks nothing as seen.
    """

    __slots__ = ("bitmap", "top", "width")

    def __init__(self, width: int = REPLAY_WINDOW) -> None:
        self.width = width
        self.top = 0  # highest accepted SEQ; 0 = nothing accepted yet
        self.bitmap = 0  # bit i set: SEQ top - i was accepted

    def check(self, seq: int) -> bool:
        """Could *seq* be fresh? (Not 0, not left of the window, not seen.)"""
        if seq <= 0 or seq > MAX_SEQ:
            return False
        if seq > self.top:
            return True
        offset = self.top - seq
        if offset >= self.width:
            return False
        return not (self.bitmap >> offset) & 1

    def accept(self, seq: int) -> bool:
        """Mark *seq* as seen; False (and nothing marked) if it is not fresh."""
        if not self.check(seq):
            return False
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.width) - 1)
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
        return True
