"""What every datagram relay of the server shares: the read loop and the address spelling."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from socksx.protocol.constants import UDP_RECV_SIZE

__all__ = ["datagrams", "family_of", "norm_ip"]


def norm_ip(ip: str) -> str:
    """IPv4-mapped IPv6 -> IPv4 and no scope id: one spelling per host, so one comparison works
    whichever socket (IPv4, IPv6, dual-stack) saw the address. Per datagram: no allocation for
    the plain case."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    if "%" in ip:
        return ip[: ip.index("%")]
    return ip


def family_of(ip: str) -> int:
    """The address family of an IP literal."""
    return int(socket.AF_INET6 if ":" in ip else socket.AF_INET)


def datagrams(sock: Any) -> Iterator[tuple[bytes, Any]]:
    """(data, source) for every datagram *sock* receives, whole, until the socket is closed.

    An error on a socket that is still open is an ICMP error the kernel reports on the next
    read (ECONNREFUSED after sending to a closed port): skipped, the relay keeps serving.
    """
    recvfrom = sock.recvfrom
    while True:
        try:
            received = recvfrom(UDP_RECV_SIZE)
        except OSError:
            if sock.fileno() < 0:
                return
            continue
        yield received
