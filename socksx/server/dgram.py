"""Reading a UDP socket until it is closed: the loop every datagram relay of the server runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from socksx.protocol.constants import UDP_RECV_SIZE

__all__ = ["datagrams"]


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
