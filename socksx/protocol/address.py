"""ATYP | ADDR | PORT, the address field every SOCKS5 message shares (RFC 1928 §5).

    +------+----------+----------+
    | ATYP | DST.ADDR | DST.PORT |
    +------+----------+----------+
    |  1   | Variable |    2     |

ATYP 01: 4 octets IPv4; 03: one length octet then that many octets of name; 04: 16 octets IPv6.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from socksx.protocol.buffer import Reader
from socksx.protocol.constants import MAX_DOMAIN_LENGTH, MAX_LABEL_LENGTH, Atyp
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, UnsupportedAddressType

__all__ = ["Address", "maybe_read_address", "name_problem", "read_address_from"]


@functools.lru_cache(maxsize=4096)
def _is_canonical_ipv4(host: str) -> bool:
    """Dotted quad of decimal octets without leading zeros (what str(IPv4Address) gives)."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0"):
            return False
        if int(part) > 255:
            return False
    return True


def name_problem(name: str) -> str | None:
    """Why *name* cannot be a host name on the wire (None when it can).

    A name is 1..255 octets of labels of 1..63 octets (one trailing dot allowed): what DNS can
    carry. Parsers refuse the rest, so every decoded name re-encodes to the same octets.
    """
    if len(name) > MAX_DOMAIN_LENGTH:
        return f"host name of {len(name)} octets exceeds {MAX_DOMAIN_LENGTH}"
    labels = (name[:-1] if name.endswith(".") and len(name) > 1 else name).split(".")
    if any(not 0 < len(label) <= MAX_LABEL_LENGTH for label in labels):
        return f"host name {name!r} has an empty label or one over {MAX_LABEL_LENGTH} octets"
    return None


@dataclass(frozen=True, slots=True)
class Address:
    """A host (IP literal or domain name) and a port.

    ``host`` is kept as text: an IP literal is canonicalised (lower case, compressed, no scope
    id) and a non-ASCII name is IDNA-encoded, so there is one spelling per wire address and
    decode(encode(a)) == a. The ATYP follows from the host.
    """

    host: str
    port: int
    atyp: Atyp = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 0xFFFF:
            msg = f"port {self.port!r} out of range 0..65535"
            raise LocalProtocolError(msg)
        host = self.host
        if not host:
            msg = "empty host"
            raise LocalProtocolError(msg)
        if _is_canonical_ipv4(host):
            # The common case (every IPv4 the kernel or the wire gives us), without ipaddress.
            object.__setattr__(self, "atyp", Atyp.IPV4)
            return
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            if not host.isascii():
                try:
                    host = host.encode("idna").decode("ascii")
                except UnicodeError as exc:
                    msg = f"host name {self.host!r} cannot be IDNA-encoded"
                    raise LocalProtocolError(msg) from exc
            problem = name_problem(host)
            if problem:
                raise LocalProtocolError(problem) from None
            object.__setattr__(self, "host", host)
            object.__setattr__(self, "atyp", Atyp.DOMAINNAME)
            return
        object.__setattr__(self, "host", str(ip))
        object.__setattr__(self, "atyp", Atyp.IPV4 if ip.version == 4 else Atyp.IPV6)

    @property
    def is_ip(self) -> bool:
        """True for an IP literal (no name resolution needed)."""
        return self.atyp is not Atyp.DOMAINNAME

    @classmethod
    def from_ip(cls, host: str, port: int) -> Address:
        """Build from a socket address, normalising IPv4-mapped IPv6 and scope ids away."""
        if _is_canonical_ipv4(host):
            return cls(host, port)
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(str(ip), port)

    def to_bytes(self) -> bytes:
        """ATYP | ADDR | PORT."""
        port = self.port.to_bytes(2, "big")
        if self.atyp is Atyp.DOMAINNAME:
            name = self.host.encode("ascii")
            return bytes([Atyp.DOMAINNAME, len(name)]) + name + port
        if self.atyp is Atyp.IPV4:
            return bytes([Atyp.IPV4, *map(int, self.host.split("."))]) + port
        return bytes([self.atyp]) + ipaddress.IPv6Address(self.host).packed + port

    def __str__(self) -> str:
        if self.atyp is Atyp.IPV6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


ZERO_V4 = Address("0.0.0.0", 0)  # the wire's "no address"


def read_address_from(r: Reader, allowed: frozenset[Atyp] | None = None) -> Address | None:
    """Read ATYP | ADDR | PORT at the reader's position, or None (consuming nothing) if short.

    Raises:
        UnsupportedAddressType: ATYP not 01/03/04, or not in *allowed*.
        MalformedMessage: a zero-length or undecodable domain name.
    """
    start = r.pos
    atyp = r.u8()
    if atyp is None:
        return None
    if atyp not in (Atyp.IPV4, Atyp.DOMAINNAME, Atyp.IPV6):
        msg = f"unknown ATYP {atyp:#04x}"
        raise UnsupportedAddressType(msg)
    if allowed is not None and atyp not in allowed:
        msg = f"ATYP {atyp:#04x} not accepted here"
        raise UnsupportedAddressType(msg)
    host: str
    if atyp == Atyp.IPV4:
        raw = r.take(4)
        if raw is None:
            r.pos = start
            return None
        host = f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    elif atyp == Atyp.IPV6:
        raw = r.take(16)
        if raw is None:
            r.pos = start
            return None
        host = str(ipaddress.IPv6Address(raw))
    else:
        length = r.u8()
        if length is None:
            r.pos = start
            return None
        if length == 0:
            msg = "zero-length domain name"
            raise MalformedMessage(msg)
        raw = r.take(length)
        if raw is None:
            r.pos = start
            return None
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            msg = "domain name is not ASCII"
            raise MalformedMessage(msg) from None
        if not host.isprintable() or any(c in host for c in " /\\"):
            msg = "domain name contains illegal characters"
            raise MalformedMessage(msg)
        problem = name_problem(host)
        if problem:
            raise MalformedMessage(problem)
    port = r.u16()
    if port is None:
        r.pos = start
        return None
    return Address(host, port)


def maybe_read_address(
    buf: bytes | bytearray | memoryview, allowed: frozenset[Atyp] | None = None
) -> tuple[Address, int] | None:
    """Parse an address from the front of *buf*: (address, consumed), or None if incomplete."""
    r = Reader(buf)
    address = read_address_from(r, allowed)
    return None if address is None else (address, r.pos)
