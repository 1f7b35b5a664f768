"""Gateway A: the client-facing end of a UDP tunnel (docs/PROTOCOL.md "UDP tunnels").

1. Policy. Credentials on a plaintext client connection are refused (REP 02: B's password must
   not cross site A in the clear). The destination must be a configured ``[[tunnel.peer]]``
   unless ``tunnel.allow_any_peer`` (REP 02: no open relay to arbitrary TLS endpoints), and A's
   own rules must allow command ``tunnel`` to it (REP 02).
2. Dial B. TCP (refused: REP 05; anything else: 04), TLS verified against the peer's CA and
   name or its pinned SHA-256 (failure: B9), RFC 1929 with the client's credentials (rejected,
   or B wants credentials the client did not give: B8), then the gateway-form request (B
   refuses: BA). A malformed answer or another TLS failure: REP 01.
3. Reply to the client with the client-facing UDP socket, exactly as for UDP ASSOCIATE: the
   client sends RFC 1928 §7 datagrams to it (DST = the final destination in site B) and gets the
   answers back with the header naming their source.
4. Relay until the client's connection closes, B closes, B falls silent, or a reload removes
   the peer.

Table of the reply codes (one place; the doc copies it):

    credentials on a plaintext connection, peer not configured, rules    02
    TCP connection to B refused                                          05
    B unreachable, TCP or TLS timeout, reset during TLS                  04
    B's certificate (chain, name or pin) failed verification             B9
    B rejected the credentials, or wants credentials not given           B8
    B refused the request (its rules, its limits, tunnels disabled)      BA
    anything else (malformed answer, other TLS failure, A's limit)       01
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl

from socksx.errors import PolicyDenied, UpstreamError
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.constants import UDP_RECV_SIZE, Method, ReplyCode, TunnelDir, TunnelProto
from socksx.protocol.datagram import decode_udp_datagram
from socksx.protocol.errors import ProtocolError
from socksx.protocol.messages import (
    Greeting,
    Reply,
    UserPassRequest,
    maybe_read_method_selection,
    maybe_read_userpass_reply,
)
from socksx.protocol.tunnel import (
    TunnelReply,
    TunnelRequest,
    maybe_read_tunnel_reply,
    parse_fingerprint,
)
from socksx.server.connect import open_upstream
from socksx.server.dgram import datagrams, family_of, norm_ip
from socksx.server.tunnel._end import TunnelEnd
from socksx.server.tunnel._links import FrameLink, SealedLink

if TYPE_CHECKING:
    from socksx.config import Config, TunnelPeer
    from socksx.server.session import Session

__all__ = ["Dialed", "NearTunnel", "dial_peer", "find_peer", "serve_near"]

_ZERO = ZERO_V4
_HEADER_CACHE = 4096  # distinct sources whose RFC 1928 header is kept ready
_RSV_FRAG = b"\x00\x00\x00"
#: Rule ids of A's own refusals (log lines and the session result name them).
RULE_CREDENTIALS_IN_CLEAR = "tunnel-credentials-in-clear"
RULE_PEER_NOT_CONFIGURED = "tunnel-peer-not-configured"


def find_peer(config: Config, address: Address) -> TunnelPeer | None:
    """The configured peer a client's destination names: its address, or its name and port."""
    host = address.host.lower().rstrip(".")
    for peer in config.tunnel.peer:
        peer_host, port = peer.address
        if port != address.port:
            continue
        if host == peer_host or (peer.name is not None and host == peer.name.lower()):
            return peer
    return None


def peer_allowed(config: Config, address: Address) -> bool:
    """May a tunnel to *address* run under *config* (reload check)?"""
    settings = config.tunnel
    return settings.enabled and (settings.allow_any_peer or find_peer(config, address) is not None)


@dataclass
class Dialed:
    """An established gateway-form tunnel with B: its TLS connection and B's reply."""

    tls: Any
    reply: Reply | TunnelReply
    pending: bytes
    peer_ip: str


class _Stream:
    """Reads whole messages from B with the codec's parsers, keeping what follows them."""

    def __init__(self, sock: Any, gateway: Address) -> None:
        self.sock = sock
        self.gateway = gateway
        self.buf = b""

    def read(self, parse: Callable[[bytes], tuple[Any, int] | None], what: str) -> Any:
        while True:
            try:
                parsed = parse(self.buf)
            except ProtocolError as exc:
                msg = f"gateway {self.gateway} sent a malformed {what}: {exc}"
                raise UpstreamError(ReplyCode.GENERAL_FAILURE, msg) from exc
            if parsed is not None:
                message, used = parsed
                self.buf = self.buf[used:]
                return message
            data = self.sock.recv(4096)
            if not data:
                msg = f"gateway {self.gateway} closed the connection instead of a {what}"
                raise UpstreamError(ReplyCode.PEER_REFUSED, msg)
            self.buf += data


def _tls_context(peer: TunnelPeer | None) -> tuple[ssl.SSLContext, bytes | None]:
    """Chain and name checked against the peer's CA (or the system's); a pin alone decides alone."""
    pin = parse_fingerprint(peer.fingerprint) if peer is not None and peer.fingerprint else None
    ca = peer.ca if peer is not None else None
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    try:
        if ca:
            context.load_verify_locations(ca)
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        msg = f"cannot load the tunnel peer CA {ca}: {exc}"
        raise UpstreamError(ReplyCode.GENERAL_FAILURE, msg) from exc
    if pin is not None and not ca:
        context.check_hostname = False
        context.verify_mode = gssl.CERT_NONE
    return context, pin


def _server_name(peer: TunnelPeer | None, address: Address) -> str:
    if peer is None:
        return address.host
    return peer.name or peer.address[0]


def _handshake(sock: Any, peer: TunnelPeer | None, address: Address) -> Any:
    """TLS with B, certificate checked; returns the TLS socket (which now owns the fd)."""
    context, pin = _tls_context(peer)
    tls = context.wrap_socket(
        sock, server_hostname=_server_name(peer, address), do_handshake_on_connect=False
    )
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        msg = f"gateway {address}: certificate verification failed: {exc.verify_message}"
        raise UpstreamError(ReplyCode.PEER_CERT_FAILED, msg) from exc
    except ssl.SSLError as exc:
        tls.close()
        msg = f"gateway {address}: TLS failed: {exc.reason or exc}"
        raise UpstreamError(ReplyCode.GENERAL_FAILURE, msg) from exc
    except OSError as exc:
        tls.close()
        msg = f"gateway {address}: connection lost during TLS: {exc.strerror or exc}"
        raise UpstreamError(ReplyCode.HOST_UNREACHABLE, msg) from exc
    if pin is not None:
        der = tls.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
            tls.close()
            msg = f"gateway {address}: certificate does not match the pinned fingerprint"
            raise UpstreamError(ReplyCode.PEER_CERT_FAILED, msg)
    return tls


def _negotiate(
    tls: Any, address: Address, proto: TunnelProto, credentials: tuple[bytes, bytes] | None
) -> tuple[Reply | TunnelReply, bytes]:
    """Method selection, RFC 1929 with the client's credentials, the gateway-form request."""
    stream = _Stream(tls, address)
    methods = (Method.NO_AUTH, Method.USERNAME_PASSWORD) if credentials else (Method.NO_AUTH,)
    tls.sendall(Greeting(methods).to_bytes())
    selection = stream.read(maybe_read_method_selection, "method selection")
    if selection.method == Method.USERNAME_PASSWORD and credentials is not None:
        tls.sendall(UserPassRequest(*credentials).to_bytes())
        status = stream.read(maybe_read_userpass_reply, "RFC 1929 status")
        if not status.ok:
            msg = f"gateway {address} rejected the credentials"
            raise UpstreamError(ReplyCode.PEER_AUTH_FAILED, msg)
    elif selection.method != Method.NO_AUTH:
        msg = f"gateway {address} accepts none of the offered methods (it wants credentials)"
        raise UpstreamError(ReplyCode.PEER_AUTH_FAILED, msg)
    tls.sendall(TunnelRequest(_ZERO, proto).to_bytes())
    reply = stream.read(lambda buf: maybe_read_tunnel_reply(buf, proto), "tunnel reply")
    if not reply.ok:
        msg = f"gateway {address} refused the tunnel (REP {reply.rep:#04x})"
        raise UpstreamError(ReplyCode.PEER_REFUSED, msg)
    return reply, stream.buf


def dial_peer(
    session: Session,
    address: Address,
    peer: TunnelPeer | None,
    proto: TunnelProto,
    credentials: tuple[bytes, bytes] | None,
) -> Dialed:
    """Connect to gateway B and open a gateway-form tunnel there.

    Raises:
        PolicyDenied: A's rules refuse command ``tunnel`` to *address* (REP 02).
        UpstreamError: with the reply code of the module's table.
    """
    config = session.server.config
    targets = session.resolve_and_check(address, "tunnel")
    try:
        raw = open_upstream(targets, config.timeouts.connect, session.outward_for(targets))
        sock = raw.to_gevent()
    except UpstreamError as exc:
        refused = exc.reply == ReplyCode.CONNECTION_REFUSED
        code = ReplyCode.CONNECTION_REFUSED if refused else ReplyCode.HOST_UNREACHABLE
        msg = f"gateway {address}: {exc}"
        raise UpstreamError(code, msg) from exc
    conn = sock
    timer = gevent.Timeout(config.timeouts.handshake)
    timer.start()
    try:
        sock.settimeout(None)
        peer_ip = norm_ip(sock.getpeername()[0])
        conn = _handshake(sock, peer, address)
        reply, pending = _negotiate(conn, address, proto, credentials)
    except gevent.Timeout as exc:
        conn.close()
        if exc is not timer:
            raise
        msg = f"gateway {address} did not complete TLS and the tunnel request in time"
        raise UpstreamError(ReplyCode.HOST_UNREACHABLE, msg) from None
    except OSError as exc:
        conn.close()
        msg = f"gateway {address}: connection lost: {exc.strerror or exc}"
        raise UpstreamError(ReplyCode.HOST_UNREACHABLE, msg) from exc
    except BaseException:
        conn.close()
        raise
    finally:
        timer.close()
    return Dialed(conn, reply, pending, peer_ip)


class NearTunnel(TunnelEnd):
    """Gateway A's end: the client's UDP socket on one side, the link to B on the other."""

    role = "near"

    def __init__(self, session: Session, request: TunnelRequest, dialed: Dialed) -> None:
        super().__init__(session, request.proto, str(request.address))
        self.address = request.address
        self.tls = dialed.tls
        local_ip = session.sock.getsockname()[0]
        self.client_sock = gsocket.socket(family_of(local_ip), gsocket.SOCK_DGRAM)
        self.peer_sock: Any = None
        self.client_addr: tuple[Any, ...] | None = None
        self.headers: dict[Address, bytes] = {}
        try:
            self.client_sock.bind((local_ip, 0))
            if request.proto == TunnelProto.TLS:
                self.link = FrameLink(self, dialed.tls, dialed.pending)
            else:
                self._setup_sealed(dialed)
        except BaseException:
            self.client_sock.close()
            raise

    def _setup_sealed(self, dialed: Dialed) -> None:
        reply = dialed.reply
        assert isinstance(reply, TunnelReply)
        host = reply.address.host
        if not reply.address.is_ip or ipaddress.ip_address(host).is_unspecified:
            # B did not name a usable address: its endpoint is on the address we reached it at.
            host = dialed.peer_ip
        self.endpoint = (host, reply.address.port)
        family = family_of(host)
        self.peer_sock = gsocket.socket(family, gsocket.SOCK_DGRAM)
        outward = self.server.config.outward_address
        if outward and family_of(outward) == family:
            self.peer_sock.bind((outward, 0))
        self.tunnel_id = reply.tunnel_id
        self.link = SealedLink(self, reply.key, reply.tunnel_id, TunnelDir.A_TO_B, self._transmit)

    def _transmit(self, dgram: bytes) -> bool:
        try:
            self.peer_sock.sendto(dgram, self.endpoint)
        except OSError:
            self.drop("send-error")
            return False
        return True

    def start(self) -> None:
        """Keepalive to B (PROTO 02), reply to the client, register, start the loops."""
        session = self.session
        if isinstance(self.link, SealedLink):
            # Right after B's reply, so B learns where A's datagrams come from (NAT included).
            self.link.keepalive()
            self.keepalives_sent += 1
            self.last_tx = monotonic()
        bound = self.client_sock.getsockname()
        host = self.server.config.udp_public_address or norm_ip(bound[0])
        if ipaddress.ip_address(host).is_unspecified:
            host = norm_ip(session.sock.getsockname()[0])
        session.send_reply(ReplyCode.SUCCEEDED, Address(host, bound[1]))
        self.server.tunnels[self.id] = self
        self.log_up()
        self.spawn(self._client_loop)
        self.spawn(self.watch_control, session.sock, "client-closed")
        if isinstance(self.link, FrameLink):
            self.spawn(self.link.read_loop)
        else:
            self.spawn(self._peer_loop)
            self.spawn(self.watch_control, self.tls, "peer-closed")

    def close(self) -> None:
        """Stop the loops and close the UDP sockets and the TLS connection to B."""
        super().close()
        for sock in (self.client_sock, self.peer_sock, self.tls):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # -- client side --------------------------------------------------------------------------

    def _is_client(self, src: tuple[Any, ...]) -> bool:
        if norm_ip(src[0]) != self.session.client_ip:
            return False
        if self.client_addr is None:
            # As UDP ASSOCIATE with DST 0.0.0.0:0: the first datagram fixes the client's port.
            self.client_addr = src
            return True
        return bool(src[1] == self.client_addr[1])

    def _client_loop(self) -> None:
        sock = self.client_sock
        session = self.session
        for data, src in datagrams(sock):
            if not self._is_client(src):
                self.drop("foreign-source")
                continue
            try:
                header, offset = decode_udp_datagram(data)
            except ProtocolError:
                self.drop("malformed")
                continue
            if header.frag:
                self.drop("fragment")
                continue
            payload = memoryview(data)[offset:]
            # ATYP | ADDR | PORT exactly as the client wrote it: B parses and judges it.
            if self.link is not None and self.link.send(data[3:offset], payload):
                size = len(payload)
                self.datagrams_out += 1
                self.bytes_out += size
                session.bytes_up += size
                self.last_tx = monotonic()

    def deliver(self, address: Address, data: bytes) -> None:
        """An answer from site B: to the client, with the header naming its source."""
        if self.client_addr is None:
            self.drop("no-client-yet")
            return
        header = self.headers.get(address)
        if header is None:
            header = _RSV_FRAG + address.to_bytes()
            if len(self.headers) < _HEADER_CACHE:
                self.headers[address] = header
        try:
            self.client_sock.sendto(header + data, self.client_addr)
        except OSError:
            self.drop("send-error")
            return
        size = len(data)
        self.datagrams_in += 1
        self.bytes_in += size
        self.session.bytes_down += size

    # -- B side (PROTO 02) --------------------------------------------------------------------

    def _peer_loop(self) -> None:
        sock = self.peer_sock
        link = self.link
        assert isinstance(link, SealedLink)
        while True:
            try:
                data, _ = sock.recvfrom(UDP_RECV_SIZE)
            except OSError:
                if sock.fileno() < 0:
                    return
                continue
            link.open(data)


def serve_near(session: Session, request: TunnelRequest) -> None:
    """Gateway A: check policy, dial B, relay until either side ends the tunnel.

    Raises:
        PolicyDenied, UpstreamError: refusals (REP 02, or the table in the module docstring).
    """
    server = session.server
    config = server.config
    settings = config.tunnel
    if request.has_credentials and not session.listener.tls:
        msg = "tunnel credentials refused on a plaintext client connection"
        raise PolicyDenied(RULE_CREDENTIALS_IN_CLEAR, msg)
    peer = find_peer(config, request.address)
    if peer is None and not settings.allow_any_peer:
        msg = f"{request.address} is not a configured tunnel peer"
        raise PolicyDenied(RULE_PEER_NOT_CONFIGURED, msg)
    if settings.max_tunnels and len(server.tunnels) >= settings.max_tunnels:
        raise UpstreamError(ReplyCode.GENERAL_FAILURE, "tunnel limit reached")
    with contextlib.suppress(OSError):
        session.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
    credentials = (request.username, request.password) if request.has_credentials else None
    dialed = dial_peer(session, request.address, peer, request.proto, credentials)
    try:
        end = NearTunnel(session, request, dialed)
    except BaseException:
        dialed.tls.close()
        raise
    reason = "setup-failed"
    try:
        end.start()
        reason = end.run()
        session.result = reason
    finally:
        server.tunnels.pop(end.id, None)
        end.close()
        end.log_down(reason)
