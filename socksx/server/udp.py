"""UDP ASSOCIATE (RFC 1928 §7): a per-association relay between the client and the world.

Sockets: one client-facing socket bound to the control connection's local IP (so the reply's
BND.ADDR is reachable by the client), and outward sockets on the configured outward address,
one per address family, made on first use. When the outward address is the client-facing IP,
one socket serves both sides and datagrams are told apart by their source.

Client filter: only datagrams from the control connection's peer IP. If the request declared
that IP and a non-zero port, only that port; otherwise (0.0.0.0:0, or an address that is not the
client's: NAT, or a client misusing the field) the association binds to the source port of the
first datagram from the client's IP. FRAG != 0 is dropped (RFC 1928 allows it). Every datagram's
destination passes the access rules (command "udp"). Inbound datagrams go back only from
address:port pairs the client has sent to, unless ``udp_inbound = "any"``. The association ends
with its control connection, or after ``timeouts.udp_idle`` without a datagram either way.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import OrderedDict
from time import monotonic
from typing import TYPE_CHECKING

from gevent import socket as gsocket
from gevent.pool import Group

from socksx.errors import PolicyDenied, UpstreamError
from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode
from socksx.protocol.datagram import decode_udp_datagram
from socksx.protocol.errors import ProtocolError
from socksx.server.dgram import datagrams, family_of, norm_ip

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["UdpAssociation", "handle"]

ROUTE_CACHE_SIZE = 256
SENT_TO_LIMIT = 4096


class UdpAssociation:
    """The relay state of one UDP ASSOCIATE; counters are read by the stats API."""

    def __init__(self, session: Session, declared: Address) -> None:
        self.session = session
        server = session.server
        self.config = server.config
        self.stats = server.stats
        self.client_ip = session.client_ip
        self.fixed_port = declared.port if declared.host == session.client_ip else 0
        self.client_addr: tuple | None = None
        local_ip = session.sock.getsockname()[0]
        self.client_sock = gsocket.socket(family_of(local_ip), gsocket.SOCK_DGRAM)
        self.client_sock.bind((local_ip, 0))
        self.outward: dict[int, gsocket.socket] = {}
        outward_ip = self.config.outward_address
        if outward_ip and norm_ip(outward_ip) == norm_ip(local_ip):
            self.outward[family_of(local_ip)] = self.client_sock
        self.routes: OrderedDict[tuple[str, int], tuple[int, tuple]] = OrderedDict()
        self.fast_routes: dict[bytes, tuple[gsocket.socket, tuple, int]] = {}
        self.sent_to: set[tuple[str, int]] = set()
        self.headers: dict[tuple[str, int], bytes] = {}
        self.inbound_any = self.config.udp_inbound == "any"
        self.last = monotonic()
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.dropped = 0
        self.group = Group()

    @property
    def bound(self) -> tuple:
        """The client-facing socket's address."""
        return self.client_sock.getsockname()

    def close(self) -> None:
        """Stop every loop and close every socket."""
        self.group.kill()
        for sock in {id(s): s for s in [self.client_sock, *self.outward.values()]}.values():
            sock.close()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.stats.udp_dropped[reason] += 1

    def _outward_socket(self, family: int) -> gsocket.socket:
        sock = self.outward.get(family)
        if sock is None:
            sock = gsocket.socket(family, gsocket.SOCK_DGRAM)
            outward_ip = self.config.outward_address
            if outward_ip and family_of(outward_ip) == family:
                sock.bind((outward_ip, 0))
            elif family == gsocket.AF_INET6:
                sock.bind(("::", 0))
            else:
                sock.bind(("0.0.0.0", 0))  # the kernel picks the source per route
            self.outward[family] = sock
            self.group.spawn(self._serve, sock, False)
        return sock

    def _route(self, address: Address) -> tuple[int, tuple]:
        """Resolve and check a destination (cached per association).

        Raises:
            PolicyDenied, UpstreamError: the destination is refused or does not resolve.
        """
        key = (address.host, address.port)
        route = self.routes.get(key)
        if route is None:
            targets = self.session.resolve_and_check(address, "udp")
            route = targets[0]
            self.routes[key] = route
            if len(self.routes) > ROUTE_CACHE_SIZE:
                self.routes.popitem(last=False)
        return route

    def _from_client(self, data: bytes, src: tuple) -> None:
        # Hot path: the header's ATYP|ADDR|PORT octets are the key of a cache of checked
        # routes, so a known destination costs no parsing, no rule check and no lookup.
        n = len(data)
        atyp = data[3] if n > 4 else 0
        end = 10 if atyp == 1 else 22 if atyp == 4 else 7 + data[4] if atyp == 3 else 0
        route = self.fast_routes.get(data[3:end]) if 0 < end <= n else None
        if route is None or data[0] or data[1] or data[2]:
            route = self._slow_route(data)
            if route is None:
                return
        sock, sockaddr, end = route
        try:
            sock.sendto(memoryview(data)[end:], sockaddr)
        except OSError:
            self._drop("send-error")
            return
        self.datagrams_up += 1
        self.stats.udp_datagrams_up += 1
        self.session.bytes_up += n - end
        self.last = monotonic()

    def _slow_route(self, data: bytes) -> tuple[gsocket.socket, tuple, int] | None:
        """Parse, check and route a datagram whose header is not in the fast cache."""
        try:
            header, offset = decode_udp_datagram(data)
        except ProtocolError:
            self._drop("malformed")
            return None
        if header.frag:
            self._drop("fragment")
            return None
        try:
            family, sockaddr = self._route(header.address)
        except PolicyDenied:
            self.stats.rule_denials += 1
            self._drop("policy")
            return None
        except UpstreamError:
            self._drop("unresolved")
            return None
        route = (self._outward_socket(family), sockaddr, offset)
        if len(self.fast_routes) < ROUTE_CACHE_SIZE:
            self.fast_routes[bytes(data[3:offset])] = route
        if len(self.sent_to) < SENT_TO_LIMIT:
            self.sent_to.add((norm_ip(sockaddr[0]), sockaddr[1]))
        return route

    def _to_client(self, data: bytes, src: tuple) -> None:
        key = src if len(src) == 2 else (norm_ip(src[0]), src[1])
        if not self.inbound_any and key not in self.sent_to:
            self._drop("unsolicited")
            return
        if self.client_addr is None:
            self._drop("no-client-yet")
            return
        header = self.headers.get(key)
        if header is None:
            header = b"\0\0\0" + Address.from_ip(key[0], key[1]).to_bytes()
            if len(self.headers) < SENT_TO_LIMIT:
                self.headers[key] = header
        try:
            self.client_sock.sendto(header + data, self.client_addr)
        except OSError:
            self._drop("send-error")
            return
        self.datagrams_down += 1
        self.stats.udp_datagrams_down += 1
        self.session.bytes_down += len(data)
        self.last = monotonic()

    def _is_client(self, src: tuple) -> bool:
        if norm_ip(src[0]) != self.client_ip:
            return False
        if self.client_addr is None:
            if self.fixed_port and src[1] != self.fixed_port:
                return False
            self.client_addr = src
            return True
        return src[1] == self.client_addr[1]

    def _serve(self, sock: gsocket.socket, client_side: bool) -> None:
        """Read *sock* until closed; dispatch by source."""
        shared = client_side and any(s is sock for s in self.outward.values())
        for data, src in datagrams(sock):
            if client_side and self._is_client(src):
                self._from_client(data, src)
            elif shared or not client_side:
                self._to_client(data, src)
            else:
                self._drop("foreign-source")

    def run(self) -> str:
        """Serve until the control connection closes or the association idles out."""
        self.group.spawn(self._serve, self.client_sock, True)
        for sock in list(self.outward.values()):
            if sock is not self.client_sock:
                self.group.spawn(self._serve, sock, False)
        control = self.session.sock
        idle = self.config.timeouts.udp_idle
        while True:
            remaining = idle - (monotonic() - self.last)
            if remaining <= 0:
                return "udp-idle-timeout"
            control.settimeout(remaining)
            try:
                data = control.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return "ok"
            # RFC 1928 defines nothing on the control connection after the reply: ignore it.


def handle(session: Session, request: object) -> None:
    """Serve one UDP ASSOCIATE."""
    declared: Address = request.address  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):
        session.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
    assoc = UdpAssociation(session, declared)
    try:
        public = session.server.config.udp_public_address
        port = assoc.bound[1]
        host = public or norm_ip(assoc.bound[0])
        if ipaddress.ip_address(host).is_unspecified:
            host = norm_ip(session.sock.getsockname()[0])
        session.server.associations.add(assoc)
        session.send_reply(ReplyCode.SUCCEEDED, Address(host, port))
        session.result = assoc.run()
    finally:
        session.server.associations.discard(assoc)
        assoc.close()
