"""Whole-datagram codecs: the RFC 1928 §7 UDP request header.

    +----+------+------+----------+----------+----------+
    |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +----+------+------+----------+----------+----------+
    | 2  |  1   |  1   | Variable |    2     | Variable |

A datagram is complete or it is garbage: there is no "need more" here.
"""

from __future__ import annotations

from dataclasses import dataclass

from socksx.protocol.address import Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.errors import LocalProtocolError, MalformedMessage

__all__ = ["UdpHeader", "decode_udp_datagram", "encode_udp_datagram"]


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """The parsed header: fragment number and the address (destination out, source back)."""

    frag: int
    address: Address


def decode_udp_datagram(dgram: bytes | bytearray | memoryview) -> tuple[UdpHeader, int]:
    """Parse the header: (header, offset of DATA).

    Raises:
        MalformedMessage: shorter than its header, RSV not zero, or a bad domain name.
        UnsupportedAddressType: unknown ATYP.
    """
    if len(dgram) < 4:
        msg = f"UDP datagram of {len(dgram)} bytes is shorter than any header"
        raise MalformedMessage(msg)
    if dgram[0] or dgram[1]:
        msg = "UDP header RSV must be zero"
        raise MalformedMessage(msg)
    r = Reader(dgram, 3)
    address = read_address_from(r)
    if address is None:
        msg = "UDP datagram truncated inside its header"
        raise MalformedMessage(msg)
    return UdpHeader(dgram[2], address), r.pos


def encode_udp_datagram(address: Address, data: bytes = b"", frag: int = 0) -> bytes:
    """RSV | FRAG | ATYP | ADDR | PORT | DATA.

    Raises:
        LocalProtocolError: FRAG outside 0..255.
    """
    if not 0 <= frag <= 0xFF:
        msg = f"FRAG {frag} does not fit in one octet"
        raise LocalProtocolError(msg)
    return bytes([0, 0, frag]) + address.to_bytes() + data
