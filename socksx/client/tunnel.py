"""Blocking client of SETUP_UDP_TUNNEL: ask gateway A for a UDP tunnel to gateway B.

    with open_tunnel(("gw-b.example", 1443), proxy="socks5s://gw-a:1080", ca_file="ca.pem",
                     peer_username="alice", peer_password="s3cret") as tunnel:
        tunnel.sendto(b"ping", ("10.2.0.5", 5060))      # a host in site B
        data, source = tunnel.recvfrom(timeout=5)

After the reply the tunnel works exactly like a UDP association (RFC 1928 §7 datagrams to the
relay address A gave); it lasts as long as the control connection. The credentials for B are
only sent over a TLS connection to A (socks5s://): a plaintext proxy URL with peer credentials
is refused here, before anything is sent (A would refuse it with REP 02 anyway).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

from socksx.client import UdpAssociation
from socksx.client._driver import Session, open_session
from socksx.client.proxyurl import ProxyURL, parse_proxy_url, proxy_from_env
from socksx.errors import ProxyConnectionError, ReplyError
from socksx.protocol.address import Address
from socksx.protocol.client_connection import RawReply, RawRequest
from socksx.protocol.constants import TunnelProto
from socksx.protocol.messages import maybe_read_reply
from socksx.protocol.tunnel import TunnelRequest

__all__ = ["PROTOS", "Tunnel", "open_tunnel"]

HostPort = tuple[str, int]
DEFAULT_TIMEOUT: Final = 30.0  #: A's reply waits for TCP, TLS and SOCKS with B
#: The names ``--proto`` uses for PROTO 01 and 02.
PROTOS: Final = {"tls": TunnelProto.TLS, "udp": TunnelProto.UDP}


class Tunnel(UdpAssociation):
    """An open tunnel: datagrams to ``relay`` go to site B; lives as long as ``control``.

    A UDP association whose far end is gateway B: names are always resolved in site B.
    """

    def __init__(
        self, session: Session, udp: socket.socket, relay: HostPort, peer: HostPort, proto: int
    ) -> None:
        super().__init__(session, udp, relay, remote_dns=True)
        self.peer = peer
        self.proto = TunnelProto(proto)


def _proxy(proxy: ProxyURL | str | None) -> ProxyURL:
    if isinstance(proxy, ProxyURL):
        return proxy
    if isinstance(proxy, str):
        return parse_proxy_url(proxy)
    found = proxy_from_env()
    if found is None:
        msg = "no proxy given and neither SOCKS_PROXY nor ALL_PROXY names a SOCKS proxy"
        raise ValueError(msg)
    return found


def open_tunnel(
    peer: HostPort,
    *,
    proxy: ProxyURL | str | None = None,
    proto: TunnelProto | str = TunnelProto.TLS,
    peer_username: str | None = None,
    peer_password: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> Tunnel:
    """Ask gateway A (*proxy*) for a tunnel to gateway B (*peer*, B's TLS listener).

    *proto* is PROTO 01 ("tls": datagrams inside B's TLS connection) or 02 ("udp": sealed UDP
    between the gateways). *peer_username*/*peer_password* are presented to B by A; they are
    only sent to A over socks5s://. *username*/*password* authenticate to A itself, and
    *ca_file*/*fingerprint* check A's certificate (socks5s://).

    Raises:
        ReplyError: A refused (``.reply``: 02 A's policy, 04/05 B unreachable or refused,
            B8 B rejected the credentials, B9 B's certificate failed, BA B refused, 01).
        AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as ``connect()``.
        ValueError: a SOCKS4 proxy, peer credentials over a plaintext proxy, half credentials.
    """
    url = _proxy(proxy)
    if url.version == 4:
        msg = "SOCKS4 has no SETUP_UDP_TUNNEL"
        raise ValueError(msg)
    code = PROTOS[proto] if isinstance(proto, str) else TunnelProto(proto)
    if bool(peer_username) != bool(peer_password):
        msg = "the peer username and password go together (RFC 1929 needs both)"
        raise ValueError(msg)
    if peer_username and not url.tls:
        msg = "peer credentials are only sent over TLS: use a socks5s:// proxy URL"
        raise ValueError(msg)
    request = TunnelRequest(
        Address(*peer) if not _is_ip(peer[0]) else Address.from_ip(*peer),
        code,
        (peer_username or "").encode(),
        (peer_password or "").encode(),
    )
    user = url.username if username is None else username
    secret = url.password if password is None else password
    credentials = (user.encode(), (secret or "").encode()) if user else None
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    udp: socket.socket | None = None
    try:
        session.send(RawRequest(request.to_bytes()))
        event = session.receive()
        assert isinstance(event, RawReply)
        if not event.data:
            msg = f"proxy {url.hostport} closed the connection instead of replying"
            raise ProxyConnectionError(msg)
        with session.errors():
            parsed = maybe_read_reply(event.data)
        if parsed is None:
            msg = f"proxy {url.hostport} sent a truncated reply"
            raise ProxyConnectionError(msg)
        reply = parsed[0]
        if not reply.ok:
            raise ReplyError(reply.rep)
        if not reply.address.is_ip:
            msg = f"proxy {url.hostport} named its relay by a host name: {reply.address}"
            raise ProxyConnectionError(msg)
        relay = (reply.address.host, reply.address.port)
        if ipaddress.ip_address(relay[0]).is_unspecified:
            relay = (Address.from_ip(*session.sock.getpeername()[:2]).host, relay[1])
        family = socket.AF_INET6 if ":" in relay[0] else socket.AF_INET
        with session.errors():
            local = session.sock.getsockname()[0]
            udp = socket.socket(family, socket.SOCK_DGRAM)
            # From the control connection's address when the family allows: A accepts
            # datagrams from the IP its client connected from.
            same = (":" in local) == (family == socket.AF_INET6)
            udp.bind((local if same else ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
    except BaseException:
        if udp is not None:
            udp.close()
        session.close()
        raise
    session.sock.settimeout(None)
    return Tunnel(session, udp, relay, peer, code)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
