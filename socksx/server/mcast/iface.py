"""The interface behind a configured IP, and the socket options that tie multicast to it.

A relay joins groups and sends multicast only on configured interfaces, never on INADDR_ANY or
interface index 0 (which would let the routing table pick, and could leak a group to the wrong
side of the gateway). The config names an interface by one of its IP addresses; this module
finds its name, index and addresses (IPv4 with SIOCGIFCONF, IPv6 from /proc/net/if_inet6) and
sets the options: IPv4 memberships and IP_MULTICAST_IF use ``struct ip_mreqn`` with the
interface index, IPv6 uses IPV6_JOIN_GROUP / IPV6_MULTICAST_IF with it.

Plain stdlib sockets and ioctls, no gevent: the calls never block.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "Interface",
    "InterfaceError",
    "drop_membership",
    "find_interface",
    "join_group",
    "set_outgoing",
]

SIOCGIFCONF = 0x8912  #: linux/sockios.h: list the IPv4 addresses of every interface
_IFREQ_SIZE = 40  #: sizeof(struct ifreq) on 64-bit Linux
_IFNAMSIZ = 16
_MAX_ADDRESSES = 512
IF_INET6 = "/proc/net/if_inet6"
#: linux/in.h and linux/in6.h values Python does not export everywhere.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL = 29


class InterfaceError(OSError):
    """No interface carries the configured address (or multicast cannot be set up on it)."""


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface found by one of its addresses."""

    name: str
    index: int
    ipv4: str | None  #: an IPv4 address of it (for IPv4 memberships), if it has one
    addresses: frozenset[str]  #: every address it has: the sources of our own datagrams
    loopback: bool


def _ipv4_table() -> list[tuple[str, str]]:
    """(interface name, IPv4 address) for every IPv4 address (SIOCGIFCONF)."""
    buf = array.array("B", bytes(_IFREQ_SIZE * _MAX_ADDRESSES))
    pointer, _ = buf.buffer_info()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        out = fcntl.ioctl(probe.fileno(), SIOCGIFCONF, struct.pack("iL", len(buf), pointer))
    used = struct.unpack("iL", out)[0]
    raw = buf.tobytes()[:used]
    table = []
    for offset in range(0, used, _IFREQ_SIZE):
        name = raw[offset : offset + _IFNAMSIZ].split(b"\0", 1)[0].decode()
        # struct sockaddr_in follows the name: family(2) port(2) address(4).
        ip = socket.inet_ntoa(raw[offset + _IFNAMSIZ + 4 : offset + _IFNAMSIZ + 8])
        table.append((name.split(":", 1)[0], ip))  # "eth0:1" is an alias of eth0
    return table


def _ipv6_table() -> list[tuple[str, int, str]]:
    """(interface name, index, IPv6 address) from /proc/net/if_inet6 (empty without IPv6)."""
    try:
        with open(IF_INET6, encoding="ascii") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:  # address, index, prefix, scope, flags, name
            continue
        ip = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
        table.append((fields[5], int(fields[1], 16), ip))
    return table


def find_interface(ip: str) -> Interface:
    """The interface that has address *ip*.

    Raises:
        InterfaceError: no interface has it.
    """
    wanted = str(ipaddress.ip_address(ip))
    v4 = _ipv4_table()
    v6 = _ipv6_table()
    name = next((n for n, a in v4 if a == wanted), None) or next(
        (n for n, _, a in v6 if a == wanted), None
    )
    if name is None:
        msg = f"no interface has the address {wanted}"
        raise InterfaceError(msg)
    try:
        index = socket.if_nametoindex(name)
    except OSError as exc:
        msg = f"interface {name} ({wanted}) has no index: {exc}"
        raise InterfaceError(msg) from exc
    addresses = frozenset([a for n, a in v4 if n == name] + [a for n, _, a in v6 if n == name])
    ipv4 = wanted if ":" not in wanted else next((a for n, a in v4 if n == name), None)
    loopback = any(ipaddress.ip_address(a).is_loopback for a in addresses)
    return Interface(name, index, ipv4, addresses, loopback)


def _mreqn(group: str, iface: Interface) -> bytes:
    """struct ip_mreqn: group, local address (0.0.0.0 when unknown), interface index."""
    local = iface.ipv4 or "0.0.0.0"  # the index, not the address, selects
    return socket.inet_aton(group) + socket.inet_aton(local) + struct.pack("@i", iface.index)


def join_group(sock: socket.socket, group: str, iface: Interface) -> None:
    """Join *group* on *iface* only (and receive only the groups this socket joined).

    Raises:
        OSError: the kernel refused (no multicast on the interface, too many groups...).
    """
    if ":" in group:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", iface.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(group, iface))


def drop_membership(sock: socket.socket, group: str, iface: Interface) -> None:
    """Leave *group* on *iface* (IGMP leave / MLD done); errors are ignored (closing leaves too)."""
    with contextlib.suppress(OSError):
        if ":" in group:
            mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", iface.index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, mreq)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, _mreqn(group, iface))


def set_outgoing(sock: socket.socket, family: int, iface: Interface, ttl: int, loop: bool) -> None:
    """Send multicast out of *iface* with *ttl*; *loop* delivers copies to this host's sockets.

    Raises:
        OSError: the kernel refused an option.
    """
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn("0.0.0.0", iface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
