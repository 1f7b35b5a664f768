"""Gateway B: the end that grants a tunnel to gateway A (docs/PROTOCOL.md "UDP tunnels").

The request comes in the gateway form (DST 0.0.0.0:0 or [::]:0), only on a TLS listener (on a
plain one: REP 02), without credentials in the request (A authenticated in RFC 1929 already:
REP 01 otherwise). B's rules must be able to allow command ``tunnel`` for this gateway and user
(``may_tunnel``: REP 02 otherwise); then every datagram's destination is judged on its own and a
denied one is dropped and counted while the tunnel goes on. B's limit gives REP BA.

PROTO 01: REP 00 with 0.0.0.0:0, and the frames follow in the TLS stream. PROTO 02: REP 00 with
the endpoint's address, then ``LEN=36 | TUNNEL_ID | KEY``. The endpoint is one UDP socket per
server and bind address, shared by all PROTO 02 tunnels and told apart by TUNNEL_ID; it closes
with its last tunnel. B->A datagrams go to the source of the latest A->B datagram that
authenticated and was fresh (so a NAT between the gateways may rebind), and are dropped
(counted) until there is one.

Answers from site B are relayed only from address:port pairs A's client has sent to, unless
``udp_inbound = "any"``, as for UDP ASSOCIATE.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections import OrderedDict
from time import monotonic
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import gevent
from gevent import socket as gsocket

from socksx.errors import PolicyDenied, UpstreamError
from socksx.log import logger
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.constants import ReplyCode, TunnelDir, TunnelProto
from socksx.protocol.errors import MalformedMessage
from socksx.protocol.sealed import KEY_SIZE, OVERHEAD
from socksx.protocol.tunnel import TunnelReply, TunnelRequest
from socksx.server.dgram import datagrams, family_of, norm_ip
from socksx.server.rules import DEFAULT_DENY, Decision, RuleSet
from socksx.server.tunnel._end import TunnelEnd
from socksx.server.tunnel._links import FrameLink, SealedLink

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["Endpoint", "FarTunnel", "may_tunnel", "serve_far"]

_ZERO = ZERO_V4
_ROUTE_CACHE = 256  # destinations whose verdict (and address) each tunnel remembers
_SENT_TO_LIMIT = 4096  # peers in site B an inbound answer is accepted from
_RESOLVING_LIMIT = 16  # names being resolved at once per tunnel
#: Rule id of the refusal of the gateway form on a plain listener.
RULE_NEEDS_TLS = "tunnel-gateway-form-needs-tls"
_ID_ATTEMPTS = 64  # random TUNNEL_IDs tried before giving up (the table is never that full)

#: server -> bind address -> its PROTO 02 endpoint (a weak key: a stopped server lets go).
_ENDPOINTS: WeakKeyDictionary[Any, dict[tuple[str, int], Endpoint]] = WeakKeyDictionary()


def may_tunnel(rules: RuleSet, client_ip: str, user: str | None) -> Decision:
    """Could any datagram of a tunnel from *client_ip* as *user* be allowed?

    Rules are read in order, as for a request whose destination is not known yet: the first rule
    for this client, user and command ``tunnel`` that allows something decides "yes"; a deny rule
    that names no destination and no port decides "no"; a deny rule limited to some destinations
    only removes those (each datagram is judged later). No rule: the default deny.
    """
    ip = ipaddress.ip_address(client_ip)
    for rule in rules.rules:
        if rule.commands and "tunnel" not in rule.commands:
            continue
        if rule.users and (user is None or user not in rule.users):
            continue
        if rule.sources and not any(
            net.version == ip.version and ip in net for net in rule.sources
        ):
            continue
        if rule.action == "allow":
            return Decision(True, rule.id)
        if not (rule.dst_nets or rule.dst_globs or rule.ports):
            return Decision(False, rule.id)
    return DEFAULT_DENY


class Endpoint:
    """B's PROTO 02 UDP socket: receives every tunnel's datagrams and hands each to its tunnel."""

    def __init__(self, server: Any, bind: tuple[str, int]) -> None:
        self.server = server
        self.bind = bind
        self.tunnels: dict[int, FarTunnel] = {}
        self.sock = gsocket.socket(family_of(bind[0]), gsocket.SOCK_DGRAM)
        try:
            self.sock.bind(bind)
        except OSError:
            self.sock.close()
            raise
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        # Owned by the endpoint, not by one session: it outlives the tunnel that made it and
        # is killed with the last one (``remove``).
        self.greenlet = gevent.spawn(self._serve)

    def add(self, tunnel: FarTunnel) -> int:
        """Register *tunnel* under a fresh random TUNNEL_ID."""
        for _ in range(_ID_ATTEMPTS):
            tunnel_id = secrets.randbits(32)
            if tunnel_id and tunnel_id not in self.tunnels:
                self.tunnels[tunnel_id] = tunnel
                return tunnel_id
        raise UpstreamError(ReplyCode.PEER_REFUSED, "no free TUNNEL_ID")

    def remove(self, tunnel_id: int) -> None:
        """Forget a tunnel; the last one closes the endpoint."""
        self.tunnels.pop(tunnel_id, None)
        if not self.tunnels:
            table = _ENDPOINTS.get(self.server, {})
            if table.get(self.bind) is self:
                del table[self.bind]
            self.greenlet.kill()
            self.sock.close()

    def _serve(self) -> None:
        dropped = self.server.stats.udp_dropped
        tunnels = self.tunnels
        for data, src in datagrams(self.sock):
            if len(data) < OVERHEAD:
                dropped["tunnel-malformed"] += 1
                continue
            tunnel = tunnels.get(int.from_bytes(data[1:5], "big"))
            if tunnel is None:
                dropped["tunnel-unknown-id"] += 1
                continue
            try:
                tunnel.on_sealed(data, src)
            except Exception:
                # One tunnel's bug must not stop the others' datagrams.
                logger.exception("tunnel %s: internal error", tunnel.id)
                tunnel.end("internal-error")


def _endpoint_for(server: Any, local_ip: str) -> Endpoint:
    bind = server.config.tunnel.udp_bind or (local_ip, 0)
    table = _ENDPOINTS.setdefault(server, {})
    endpoint = table.get(bind)
    if endpoint is None:
        endpoint = table[bind] = Endpoint(server, bind)
    return endpoint


class FarTunnel(TunnelEnd):
    """Gateway B's end: the link to A on one side, site B's UDP on the other."""

    role = "far"

    def __init__(self, session: Session, proto: TunnelProto) -> None:
        super().__init__(session, proto, f"{session.client_ip}:{session.client_port}")
        self.endpoint: Endpoint | None = None
        self.a_addr: tuple[Any, ...] | None = None
        self.outward: dict[int, Any] = {}
        self.routes: OrderedDict[Address, tuple[int, tuple[Any, ...]] | str] = OrderedDict()
        self.rules: RuleSet | None = None
        self.resolving: set[Address] = set()
        self.sent_to: set[tuple[str, int]] = set()
        self.sources: dict[tuple[str, int], bytes] = {}
        self.inbound_any = self.server.config.udp_inbound == "any"

    def start(self) -> None:
        """Reply to A (with the key for PROTO 02), register, start the loops."""
        session = self.session
        if self.proto == TunnelProto.TLS:
            self.link = FrameLink(self, session.sock, session.take_trailing())
            session.send_reply(ReplyCode.SUCCEEDED, _ZERO)
            self.spawn(self.link.read_loop)
        else:
            local_ip = norm_ip(session.sock.getsockname()[0])
            try:
                self.endpoint = _endpoint_for(self.server, local_ip)
            except OSError as exc:
                bind = self.server.config.tunnel.udp_bind
                logger.warning("cannot bind the tunnel endpoint %s: %s", bind, exc)
                msg = f"cannot bind the tunnel endpoint: {exc.strerror or exc}"
                raise UpstreamError(ReplyCode.GENERAL_FAILURE, msg) from exc
            self.tunnel_id = self.endpoint.add(self)
            key = secrets.token_bytes(KEY_SIZE)
            self.link = SealedLink(self, key, self.tunnel_id, TunnelDir.B_TO_A, self._transmit)
            host, port = self.endpoint.address
            if ipaddress.ip_address(host).is_unspecified:
                host = local_ip
            session.send(TunnelReply(Address.from_ip(host, port), self.tunnel_id, key))
            self.spawn(self.watch_control, session.sock, "peer-closed")
        self.server.tunnels[self.id] = self
        self.log_up()

    def close(self) -> None:
        """Stop the loops, leave the endpoint, close the outward sockets."""
        super().close()
        if self.endpoint is not None and self.tunnel_id is not None:
            self.endpoint.remove(self.tunnel_id)
        for sock in self.outward.values():
            with contextlib.suppress(OSError):
                sock.close()

    # -- A side ------------------------------------------------------------------------------

    def on_sealed(self, dgram: bytes, src: tuple[Any, ...]) -> None:
        """A datagram for this TUNNEL_ID arrived at the endpoint."""
        link = self.link
        assert isinstance(link, SealedLink)
        if link.open(dgram):
            self.a_addr = src  # the latest authentic, fresh A->B source (NAT may rebind)

    def _transmit(self, dgram: bytes) -> bool:
        if self.a_addr is None or self.endpoint is None:
            self.drop("no-peer-address")
            return False
        try:
            self.endpoint.sock.sendto(dgram, self.a_addr)
        except OSError:
            self.drop("send-error")
            return False
        return True

    def deliver(self, address: Address, data: bytes) -> None:
        """A datagram from A's client: judge its destination, then send it into site B."""
        rules = self.server.rules
        if rules is not self.rules:
            # A reload changed the rules: forget every verdict.
            self.routes.clear()
            self.rules = rules
        route = self.routes.get(address)
        if route is None:
            if not address.is_ip:
                self._resolve_later(address, data)
                return
            route = self._decide(address)
        self._send_out(route, data)

    def _decide(self, address: Address) -> tuple[int, tuple[Any, ...]] | str:
        """Rules (command "tunnel", A's address, the user) and resolution, remembered."""
        route: tuple[int, tuple[Any, ...]] | str
        try:
            route = self.session.resolve_and_check(address, "tunnel")[0]
        except PolicyDenied:
            route = "policy"
        except UpstreamError:
            route = "unresolved"
        self.routes[address] = route
        if len(self.routes) > _ROUTE_CACHE:
            self.routes.popitem(last=False)
        return route

    def _resolve_later(self, address: Address, data: bytes) -> None:
        # Resolving blocks: not in the link's reader (or the shared endpoint's), but aside.
        if address in self.resolving or len(self.resolving) >= _RESOLVING_LIMIT:
            self.drop("resolving")
            return
        self.resolving.add(address)
        self.spawn(self._resolve_then_send, address, data)

    def _resolve_then_send(self, address: Address, data: bytes) -> None:
        try:
            route = self._decide(address)
        finally:
            self.resolving.discard(address)
        self._send_out(route, data)

    def _send_out(self, route: tuple[int, tuple[Any, ...]] | str, data: bytes) -> None:
        if isinstance(route, str):
            self.drop(route)
            if route == "policy":
                self.server.stats.rule_denials += 1
            return
        family, sockaddr = route
        try:
            self._outward_socket(family).sendto(data, sockaddr)
        except OSError:
            self.drop("send-error")
            return
        if len(self.sent_to) < _SENT_TO_LIMIT:
            self.sent_to.add((norm_ip(sockaddr[0]), sockaddr[1]))
        size = len(data)
        self.datagrams_in += 1
        self.bytes_in += size
        self.session.bytes_up += size

    # -- site B side -------------------------------------------------------------------------

    def _outward_socket(self, family: int) -> Any:
        sock = self.outward.get(family)
        if sock is None:
            sock = gsocket.socket(family, gsocket.SOCK_DGRAM)
            outward = self.server.config.outward_address
            if outward and family_of(outward) == family:
                sock.bind((outward, 0))
            else:
                sock.bind(("::" if family == gsocket.AF_INET6 else "0.0.0.0", 0))
            self.outward[family] = sock
            self.spawn(self._outward_loop, sock)
        return sock

    def _outward_loop(self, sock: Any) -> None:
        session = self.session
        for data, src in datagrams(sock):
            key = (norm_ip(src[0]), src[1])
            if not self.inbound_any and key not in self.sent_to:
                self.drop("unsolicited")
                continue
            source = self.sources.get(key)
            if source is None:
                source = Address.from_ip(*key).to_bytes()
                if len(self.sources) < _SENT_TO_LIMIT:
                    self.sources[key] = source
            if self.link is not None and self.link.send(source, data):
                size = len(data)
                self.datagrams_out += 1
                self.bytes_out += size
                session.bytes_down += size
                self.last_tx = monotonic()


def serve_far(session: Session, request: TunnelRequest) -> None:
    """Gateway B: grant the tunnel and relay until A closes or falls silent.

    Raises:
        PolicyDenied: not a TLS listener, or the rules allow no tunnel for this gateway (REP 02).
        MalformedMessage: credentials in the gateway form (REP 01).
        UpstreamError: B's tunnel limit (REP BA), or the endpoint cannot be bound (REP 01).
    """
    server = session.server
    if not session.listener.tls:
        msg = "the gateway form of SETUP_UDP_TUNNEL is served on TLS listeners only"
        raise PolicyDenied(RULE_NEEDS_TLS, msg)
    if request.has_credentials:
        msg = "the gateway form carries no credentials (they travel in RFC 1929)"
        raise MalformedMessage(msg)
    decision = may_tunnel(server.rules, session.client_ip, session.user)
    if not decision.allowed:
        raise PolicyDenied(decision.rule_id)
    settings = server.config.tunnel
    if settings.max_tunnels and len(server.tunnels) >= settings.max_tunnels:
        raise UpstreamError(ReplyCode.PEER_REFUSED, "tunnel limit reached")
    session.dst = "gateway"
    end = FarTunnel(session, request.proto)
    reason = "setup-failed"
    try:
        end.start()
        reason = end.run()
        session.result = reason
    finally:
        server.tunnels.pop(end.id, None)
        end.close()
        end.log_down(reason)
