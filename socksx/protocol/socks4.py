"""SOCKS4 and SOCKS4a requests and replies.

Request:  VN=04 | CD | DSTPORT(2) | DSTIP(4) | USERID | 00
SOCKS4a:  DSTIP = 0.0.0.x with x != 0, and after USERID's NUL: HOSTNAME | 00
Reply:    VN=00 | CD | DSTPORT(2) | DSTIP(4)     (CD 5A granted, 5B rejected)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from socksx.protocol.address import ZERO_V4, Address, name_problem
from socksx.protocol.buffer import Reader
from socksx.protocol.constants import (
    MAX_DOMAIN_LENGTH,
    MAX_USERID_LENGTH,
    SOCKS4_REPLY_VERSION,
    SOCKS4_VERSION,
    Atyp,
    Socks4Code,
    Socks4Command,
)
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, UnsupportedVersion

__all__ = ["Socks4Reply", "Socks4Request", "maybe_read_socks4_reply", "maybe_read_socks4_request"]

Buf = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Socks4Request:
    """A SOCKS4 request; ``address.host`` is a domain name exactly when it is SOCKS4a."""

    command: Socks4Command
    address: Address
    userid: bytes = b""

    def to_bytes(self) -> bytes:
        """Encode as SOCKS4 for IPv4 literals, SOCKS4a for names.

        Raises:
            LocalProtocolError: what the parser would refuse: IPv6, a USERID over 255 octets or
                with a NUL, or an IPv4 address 0.0.0.x (x != 0), which is the SOCKS4a marker.
        """
        if b"\0" in self.userid or len(self.userid) > MAX_USERID_LENGTH:
            msg = f"SOCKS4 USERID must be at most {MAX_USERID_LENGTH} octets without NUL"
            raise LocalProtocolError(msg)
        head = bytes([SOCKS4_VERSION, self.command]) + self.address.port.to_bytes(2, "big")
        if self.address.atyp is Atyp.DOMAINNAME:
            name = self.address.host.encode("ascii")
            return head + b"\0\0\0\x01" + self.userid + b"\0" + name + b"\0"
        ip = ipaddress.ip_address(self.address.host)
        if ip.version != 4:
            msg = "SOCKS4 cannot carry an IPv6 address"
            raise LocalProtocolError(msg)
        if ip.packed[:3] == b"\0\0\0" and ip.packed[3]:
            msg = f"{ip} is the SOCKS4a marker and cannot be sent as a SOCKS4 address"
            raise LocalProtocolError(msg)
        return head + ip.packed + self.userid + b"\0"


@dataclass(frozen=True, slots=True)
class Socks4Reply:
    """A SOCKS4 reply (BIND sends two)."""

    code: Socks4Code
    address: Address = ZERO_V4

    @property
    def ok(self) -> bool:
        """True for 0x5A (granted)."""
        return self.code == Socks4Code.GRANTED

    def to_bytes(self) -> bytes:
        """VN=00 | CD | DSTPORT | DSTIP; a non-IPv4 address is sent as 0.0.0.0."""
        try:
            packed = ipaddress.IPv4Address(self.address.host).packed
        except ValueError:
            packed = b"\0\0\0\0"
        port = self.address.port.to_bytes(2, "big")
        return bytes([SOCKS4_REPLY_VERSION, self.code]) + port + packed


def maybe_read_socks4_request(buf: Buf) -> tuple[Socks4Request, int] | None:
    """Parse a SOCKS4/4a request: (request, consumed) or None if incomplete.

    Raises:
        UnsupportedVersion: VN is not 4.
        MalformedMessage: unknown CD, over-long USERID/hostname, empty or bad 4a hostname.
    """
    r = Reader(buf)
    head = r.take(8)
    if head is None:
        if buf and buf[0] != SOCKS4_VERSION:
            msg = f"expected SOCKS version 0x04, got {buf[0]:#04x}"
            raise UnsupportedVersion(msg)
        return None
    if head[0] != SOCKS4_VERSION:
        msg = f"expected SOCKS version 0x04, got {head[0]:#04x}"
        raise UnsupportedVersion(msg)
    try:
        command = Socks4Command(head[1])
    except ValueError:
        msg = f"unknown SOCKS4 command {head[1]:#04x}"
        raise MalformedMessage(msg) from None
    port = (head[2] << 8) | head[3]
    ip = head[4:8]
    try:
        userid = r.until(0, MAX_USERID_LENGTH)
    except ValueError:
        msg = f"SOCKS4 USERID longer than {MAX_USERID_LENGTH} octets"
        raise MalformedMessage(msg) from None
    if userid is None:
        return None
    if ip[:3] == b"\0\0\0" and ip[3] != 0:
        try:
            name = r.until(0, MAX_DOMAIN_LENGTH)
        except ValueError:
            msg = f"SOCKS4a hostname longer than {MAX_DOMAIN_LENGTH} octets"
            raise MalformedMessage(msg) from None
        if name is None:
            return None
        if not name:
            msg = "empty SOCKS4a hostname"
            raise MalformedMessage(msg)
        try:
            host = name.decode("ascii")
        except UnicodeDecodeError:
            msg = "SOCKS4a hostname is not ASCII"
            raise MalformedMessage(msg) from None
        if not host.isprintable() or any(c in host for c in " /\\"):
            msg = "SOCKS4a hostname contains illegal characters"
            raise MalformedMessage(msg)
        problem = name_problem(host)
        if problem:
            raise MalformedMessage(problem)
    else:
        host = str(ipaddress.IPv4Address(ip))
    return Socks4Request(command, Address(host, port), userid), r.pos


def maybe_read_socks4_reply(buf: Buf) -> tuple[Socks4Reply, int] | None:
    """Parse a SOCKS4 reply (client side).

    Raises:
        MalformedMessage: VN is not 0 or CD is unknown.
    """
    if len(buf) < 8:
        return None
    if buf[0] != SOCKS4_REPLY_VERSION:
        msg = f"SOCKS4 reply version must be 0x00, got {buf[0]:#04x}"
        raise MalformedMessage(msg)
    try:
        code = Socks4Code(buf[1])
    except ValueError:
        msg = f"unknown SOCKS4 reply code {buf[1]:#04x}"
        raise MalformedMessage(msg) from None
    port = (buf[2] << 8) | buf[3]
    host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
    return Socks4Reply(code, Address(host, port)), 8
