"""MULTI_BIND (CMD 08) and ACCEPT (CMD 09): several reverse channels on one control connection.

docs/PROTOCOL.md section 10 is the specification. One MULTI_BIND opens up to 16 channels on the
server's outward side (``outward_address``, else the control connection's local address):

* a TCP channel is a listener. A peer that connects (from the expected peer, and allowed by
  the rules) waits, with a fresh 16-octet token, and the client hears C0 on the control
  connection. The client claims it with ACCEPT on a new connection (same user, same client
  address); the two connections are then relayed like CONNECT. A peer not claimed within
  ``multibind.accept_timeout`` is closed and the client hears C2. At most
  ``multibind.max_pending`` peers wait per channel; the rest are closed and counted.
* a UDP channel is two sockets: BND (peer side, on the outward address) and REL (client side,
  on the control connection's local address). Datagrams between the client and REL carry the
  RFC 1928 §7 header; the client's endpoint is the source of its first datagram to REL from the
  control connection's IP. An RTP/RTCP pair gets two consecutive BND ports, the first even.

The control connection owns everything: when it closes (or breaks), every listener, socket,
waiting peer and token goes with it. Accepted connections are sessions of their own and live
on. A channel with no traffic for ``multibind.idle_timeout`` closes (C1 01); a config reload
whose rules refuse the request closes all channels (C1 02); a socket failure closes one (C1
03); server shutdown sends C1 04. When no channel is left the server closes the connection.

Server-wide state: ``server.multibinds`` (id -> MultiBind, with ``snapshot()`` for the stats
API) and a token table per server (``tokens_of``). Tokens are looked up by their SHA-256, so the
time a lookup takes says nothing about the token's octets.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import ipaddress
import secrets
import time
import weakref
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from gevent.pool import Group

from socksx.errors import PolicyDenied, UpstreamError
from socksx.log import logger
from socksx.protocol.address import Address
from socksx.protocol.connection import ConnectionClosed
from socksx.protocol.constants import (
    TOKEN_SIZE,
    UDP_RECV_SIZE,
    ChannelCloseReason,
    ChannelType,
    ReplyCode,
)
from socksx.protocol.datagram import decode_udp_datagram
from socksx.protocol.errors import ProtocolError, RemoteProtocolError
from socksx.protocol.messages import Reply
from socksx.protocol.multibind import (
    AcceptExpired,
    AcceptRequest,
    BoundChannel,
    ChannelClosed,
    MultiBindReply,
    MultiBindRequest,
    PeerConnected,
)
from socksx.server.dgram import datagrams, family_of, norm_ip

if TYPE_CHECKING:
    from socksx.config import MultiBindConfig
    from socksx.server.server import Server
    from socksx.server.session import Session

__all__ = ["MultiBind", "TokenTable", "handle_accept", "handle_multibind", "tokens_of"]

PAIR_ATTEMPTS = 64  #: tries to find two free consecutive UDP ports, the first even
LISTEN_BACKLOG = 128  #: kernel queue of a TCP channel (peers are accepted at once anyway)
CACHE_LIMIT = 4096  #: remembered peer verdicts / headers per MULTI_BIND (bounded memory)
ROUTE_CACHE_SIZE = 256  #: remembered client datagram destinations per MULTI_BIND
DRAIN_LIMIT = 64  #: REL datagrams handled inline when a peer datagram finds no client yet
SHUTDOWN_NOTICE_TIME = 1.0  #: seconds to tell the client about a shutdown before closing
_ANY_PEER = frozenset({Address("0.0.0.0", 0), Address("::", 0)})
#: accept() failures that say "out of resources for now", not "this listener is broken".
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


# -- tokens ------------------------------------------------------------------------------------


class Waiting:
    """A peer connection waiting to be claimed with ACCEPT."""

    __slots__ = ("channel", "digest", "peer", "sock", "timer", "token")

    def __init__(self, channel: TcpChannel, sock: gsocket.socket, peer: Address) -> None:
        self.channel = channel
        self.sock = sock
        self.peer = peer
        self.token = secrets.token_bytes(TOKEN_SIZE)
        self.digest = _digest(self.token)
        self.timer: gevent.Greenlet | None = None


class TokenTable:
    """Every waiting peer of a server, by the SHA-256 of its token (tokens are single use)."""

    def __init__(self) -> None:
        self._by_digest: dict[bytes, Waiting] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, waiting: Waiting) -> None:
        """Make a token claimable."""
        self._by_digest[waiting.digest] = waiting

    def find(self, token: bytes) -> Waiting | None:
        """The waiting peer a token names, or None (unknown, used or expired)."""
        return self._by_digest.get(_digest(token))

    def discard(self, waiting: Waiting) -> None:
        """Void a token (claimed, expired or its channel closed)."""
        if self._by_digest.get(waiting.digest) is waiting:
            del self._by_digest[waiting.digest]


_TABLES: weakref.WeakKeyDictionary[Server, TokenTable] = weakref.WeakKeyDictionary()


def tokens_of(server: Server) -> TokenTable:
    """The token table of *server* (one per server, made on first use)."""
    table = _TABLES.get(server)
    if table is None:
        table = _TABLES[server] = TokenTable()
    return table


# -- channels ----------------------------------------------------------------------------------


class Channel(abc.ABC):
    """What TCP and UDP channels share: identity, openness, the idle clock."""

    type: ChannelType

    def __init__(self, owner: MultiBind, chan_id: int) -> None:
        self.owner = owner
        self.chan_id = chan_id
        self.open = True
        self.closed_reason: ChannelCloseReason | None = None
        self.last = time.monotonic()
        self.dropped: Counter[str] = Counter()

    @abc.abstractmethod
    def start(self, group: Group) -> None:
        """Spawn the channel's loops into *group*."""

    def busy(self) -> bool:
        """True while something the idle clock must not cut is going on."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Close every socket of the channel (idempotent)."""

    @abc.abstractmethod
    def entry(self) -> BoundChannel:
        """The reply entry."""

    def snapshot(self) -> dict[str, Any]:
        """JSON-able counters for the stats API."""
        entry = self.entry()
        return {
            "id": self.chan_id,
            "type": self.type.name.lower(),
            "bound": str(entry.bound),
            "relay": None if entry.relay is None else str(entry.relay),
            "open": self.open,
            "closed_reason": self.closed_reason.name.lower() if self.closed_reason else None,
            "idle": round(time.monotonic() - self.last, 3),
            "dropped": dict(self.dropped),
        }


class TcpChannel(Channel):
    """A listener whose peers wait (with a token) until the client ACCEPTs them."""

    type = ChannelType.TCP

    def __init__(self, owner: MultiBind, chan_id: int, listener: gsocket.socket) -> None:
        super().__init__(owner, chan_id)
        self.listener = listener
        self.bound = Address.from_ip(*listener.getsockname()[:2])
        self.waiting: dict[bytes, Waiting] = {}
        self.active: set[Session] = set()
        self.peers = 0
        self.accepted = 0
        self.expired = 0
        self.foreign_accepts = 0
        self.done_up = 0
        self.done_down = 0

    def entry(self) -> BoundChannel:
        """CHAN_ID | 01 | BND."""
        return BoundChannel(self.chan_id, ChannelType.TCP, self.bound)

    def start(self, group: Group) -> None:
        """The accept loop."""
        group.spawn(self._serve)

    def busy(self) -> bool:
        """Waiting or accepted connections keep a TCP channel alive."""
        return bool(self.waiting or self.active)

    def _serve(self) -> None:
        owner = self.owner
        limit = owner.config.max_pending
        while True:
            try:
                conn, addr = self.listener.accept()
            except OSError as exc:
                if not self.open or self.listener.fileno() < 0:
                    return
                if exc.errno in _TRANSIENT_ACCEPT_ERRORS:
                    gevent.sleep(0.1)  # out of descriptors/memory: let others finish first
                    continue
                logger.warning(
                    "multi-bind %s channel %d: accept failed: %s", owner.id, self.chan_id, exc
                )
                owner.close_channel(self, ChannelCloseReason.ERROR)
                return
            key = (norm_ip(addr[0]), addr[1])
            verdict = owner.peer_verdict(key)
            if verdict:
                conn.close()
                self.dropped[verdict] += 1
                continue
            if len(self.waiting) >= limit:
                conn.close()
                self.dropped["overflow"] += 1
                continue
            self.peers += 1
            self.last = time.monotonic()
            waiting = Waiting(self, conn, Address.from_ip(*key))
            self.waiting[waiting.digest] = waiting
            owner.tokens.add(waiting)
            waiting.timer = owner.group.spawn(self._expire, waiting)
            owner.notify(PeerConnected(self.chan_id, waiting.token, waiting.peer))

    def _expire(self, waiting: Waiting) -> None:
        gevent.sleep(self.owner.config.accept_timeout)
        if self.waiting.pop(waiting.digest, None) is None:
            return  # claimed meanwhile
        self.owner.tokens.discard(waiting)
        waiting.sock.close()
        self.expired += 1
        self.last = time.monotonic()
        self.owner.notify(AcceptExpired(self.chan_id, waiting.token))

    def claim(self, waiting: Waiting, session: Session) -> None:
        """ACCEPT took *waiting*: it leaves the channel (its socket now belongs to *session*)."""
        self.waiting.pop(waiting.digest, None)
        self.owner.tokens.discard(waiting)
        if waiting.timer is not None:
            waiting.timer.kill(block=False)
        self.accepted += 1
        self.active.add(session)
        self.last = time.monotonic()

    def release(self, session: Session) -> None:
        """The accepted connection's relay ended: fold its counts in."""
        self.active.discard(session)
        self.done_up += session.bytes_up
        self.done_down += session.bytes_down
        self.last = time.monotonic()

    def close(self) -> None:
        """Close the listener and every waiting peer; void their tokens."""
        self.open = False
        self.listener.close()
        for waiting in list(self.waiting.values()):
            self.owner.tokens.discard(waiting)
            waiting.sock.close()
        self.waiting.clear()

    def snapshot(self) -> dict[str, Any]:
        """Peers, waiting, accepted, expired, and bytes of the accepted connections."""
        out = super().snapshot()
        out.update(
            peers=self.peers,
            waiting=len(self.waiting),
            accepted=self.accepted,
            active=len(self.active),
            expired=self.expired,
            foreign_accepts=self.foreign_accepts,
            bytes_up=self.done_up + sum(s.bytes_up for s in self.active),
            bytes_down=self.done_down + sum(s.bytes_down for s in self.active),
        )
        return out


class UdpChannel(Channel):
    """A UDP relay: BND faces the peers, REL faces the client; RFC 1928 headers on REL."""

    type = ChannelType.UDP

    def __init__(
        self, owner: MultiBind, chan_id: int, peer_sock: gsocket.socket, rel_sock: gsocket.socket
    ) -> None:
        super().__init__(owner, chan_id)
        self.peer_sock = peer_sock
        self.rel_sock = rel_sock
        self.bound = Address.from_ip(*peer_sock.getsockname()[:2])
        self.relay = Address.from_ip(*rel_sock.getsockname()[:2])
        self.client_addr: tuple[Any, ...] | None = None
        self.headers: dict[tuple[str, int], bytes] = {}
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def entry(self) -> BoundChannel:
        """CHAN_ID | 02 | BND | REL."""
        return BoundChannel(self.chan_id, ChannelType.UDP, self.bound, self.relay)

    def start(self, group: Group) -> None:
        """One loop per socket (the client's first: its registration goes before peers)."""
        group.spawn(self._serve_client)
        group.spawn(self._serve_peers)

    def close(self) -> None:
        """Close both sockets."""
        self.open = False
        self.peer_sock.close()
        self.rel_sock.close()

    def _serve_peers(self) -> None:
        """Peer -> client: filter, rules, then REL -> the registered client endpoint."""
        sock, rel, owner = self.peer_sock, self.rel_sock, self.owner
        session, headers, dropped = owner.session, self.headers, self.dropped
        sendto, verdict_of = rel.sendto, owner.peer_verdict
        for data, src in datagrams(sock):
            key = (norm_ip(src[0]), src[1])
            verdict = verdict_of(key)
            if verdict:
                dropped[verdict] += 1
                continue
            if self.client_addr is None:
                self._drain_client()
                if self.client_addr is None:
                    dropped["unregistered"] += 1
                    continue
            header = headers.get(key)
            if header is None:
                header = b"\0\0\0" + Address.from_ip(*key).to_bytes()
                if len(headers) < CACHE_LIMIT:
                    headers[key] = header
            try:
                sendto(header + data, self.client_addr)
            except OSError:
                dropped["send-error"] += 1
                continue
            size = len(data)
            self.datagrams_down += 1
            self.bytes_down += size
            session.bytes_down += size
            self.last = time.monotonic()

    def _serve_client(self) -> None:
        """Client -> peer: every datagram REL receives."""
        sock, handle = self.rel_sock, self._from_client
        for data, src in datagrams(sock):
            handle(data, src)

    def _drain_client(self) -> None:
        """Handle what REL has already received, without waiting.

        A peer datagram found before the client registered may have raced a registration that
        is already in REL's queue (the two sockets are served by different greenlets): reading
        REL first keeps "before registration" meaning what the client sees. The reads are
        non-blocking and never yield, so the greenlet that serves REL is not disturbed.
        """
        sock = self.rel_sock
        sock.settimeout(0.0)
        try:
            for _ in range(DRAIN_LIMIT):
                try:
                    data, src = sock.recvfrom(UDP_RECV_SIZE)
                except OSError:
                    return  # nothing queued (or closed)
                self._from_client(data, src)
                if self.client_addr is not None:
                    return
        finally:
            if sock.fileno() >= 0:
                sock.settimeout(None)

    def _from_client(self, data: bytes, src: tuple[Any, ...]) -> None:
        """One datagram at REL: the first from the client's IP registers it; then routed."""
        dropped = self.dropped
        if norm_ip(src[0]) != self.owner.client_ip:
            dropped["foreign-source"] += 1
            return
        if self.client_addr is None:
            self.client_addr = src
        elif src[1] != self.client_addr[1]:
            dropped["foreign-source"] += 1
            return
        self.last = time.monotonic()
        try:
            header, offset = decode_udp_datagram(data)
        except ProtocolError:
            dropped["malformed"] += 1
            return
        if header.frag:
            dropped["fragment"] += 1
            return
        if header.address in _ANY_PEER:
            # 0.0.0.0:0 without data only registers the endpoint (done above).
            if len(data) > offset:
                dropped["no-destination"] += 1
            return
        route = self.owner.route(header.address, self.peer_sock.family)
        if isinstance(route, str):
            dropped[route] += 1
            return
        try:
            self.peer_sock.sendto(memoryview(data)[offset:], route)
        except OSError:
            dropped["send-error"] += 1
            return
        size = len(data) - offset
        self.datagrams_up += 1
        self.bytes_up += size
        self.owner.session.bytes_up += size

    def snapshot(self) -> dict[str, Any]:
        """Datagrams and bytes both ways, and whether the client has registered."""
        out = super().snapshot()
        out.update(
            registered=self.client_addr is not None,
            datagrams_up=self.datagrams_up,
            datagrams_down=self.datagrams_down,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
        )
        return out


# -- sockets -----------------------------------------------------------------------------------


def _udp_socket(ip: str, port: int) -> gsocket.socket:
    sock = gsocket.socket(family_of(ip), gsocket.SOCK_DGRAM)
    try:
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def _udp_pair(ip: str) -> tuple[gsocket.socket, gsocket.socket]:
    """Two UDP sockets on consecutive ports, the first even (RTP, then RTCP).

    Raises:
        OSError: no such pair was found in PAIR_ATTEMPTS tries.
    """
    for _ in range(PAIR_ATTEMPTS):
        first = _udp_socket(ip, 0)
        port = first.getsockname()[1]
        # The kernel's port is one half of the pair; try to get the other half next to it.
        partner_port = port + 1 if port % 2 == 0 else port - 1
        try:
            partner = _udp_socket(ip, partner_port)
        except OSError:
            first.close()
            continue
        return (first, partner) if port % 2 == 0 else (partner, first)
    msg = f"no two consecutive free UDP ports on {ip} after {PAIR_ATTEMPTS} tries"
    raise OSError(errno.EADDRINUSE, msg)


def _tcp_listener(ip: str) -> gsocket.socket:
    sock = gsocket.socket(family_of(ip), gsocket.SOCK_STREAM)
    try:
        # Peer connections closed by us linger in TIME_WAIT on this port; with SO_REUSEADDR on
        # the listener they inherit it, so the port can be bound again as soon as we close.
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        sock.bind((ip, 0))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


# -- one MULTI_BIND ----------------------------------------------------------------------------


class MultiBind:
    """The channels of one control connection, its event stream and its bookkeeping."""

    def __init__(self, session: Session, request: MultiBindRequest) -> None:
        server = session.server
        self.session = session
        self.server = server
        self.config: MultiBindConfig = server.config.multibind
        self.id = f"mb{session.id}"
        self.request = request
        self.client_ip = session.client_ip
        self.user = session.user
        self.started = time.monotonic()
        self.tokens = tokens_of(server)
        self.channels: list[TcpChannel | UdpChannel] = []
        self.group = Group()
        self.lock = Semaphore()
        self.done: AsyncResult = AsyncResult()
        self.expected: frozenset[str] | None = None
        self.expected_port = request.address.port
        self._rules = server.rules
        self._verdicts: dict[tuple[str, int], str] = {}
        self._routes: OrderedDict[tuple[str, int, int], tuple[Any, ...] | str] = OrderedDict()
        local = session.sock.getsockname()[0]
        self.local_ip = norm_ip(local)
        outward = server.config.outward_address
        unset = not outward or ipaddress.ip_address(outward).is_unspecified
        self.outward_ip = self.local_ip if unset else str(outward)

    # -- setup ---------------------------------------------------------------------------------

    def check_request(self) -> None:
        """Rules on the expected peer (resolved when it is a name), and the channel limits.

        Raises:
            PolicyDenied: a rule or a limit refuses (REP 02).
            UpstreamError: the peer's name does not resolve (REP 04).
        """
        address = self.request.address
        targets = self.session.resolve_and_check(address, "multibind")
        if address in _ANY_PEER:
            self.expected = None
        elif address.is_ip and ipaddress.ip_address(address.host).is_unspecified:
            self.expected = None  # [::]:port or 0.0.0.0:port: any address, that port
        else:
            self.expected = frozenset(norm_ip(sockaddr[0]) for _, sockaddr in targets)
        wanted = len(self.request.channels)
        config = self.config
        if wanted > config.max_channels_per_request:
            rule = "multibind-max-channels-per-request"
            raise PolicyDenied(
                rule,
                f"{wanted} channels asked, at most {config.max_channels_per_request} per request",
            )
        mine = [mb for mb in self.server.multibinds.values() if isinstance(mb, MultiBind)]
        if self.user is not None and config.max_channels_per_user:
            used = sum(mb.open_channels for mb in mine if mb.user == self.user)
            if used + wanted > config.max_channels_per_user:
                rule = "multibind-max-channels-per-user"
                raise PolicyDenied(rule, f"user has {used} channels open")
        if config.max_channels_per_client:
            used = sum(mb.open_channels for mb in mine if mb.client_ip == self.client_ip)
            if used + wanted > config.max_channels_per_client:
                rule = "multibind-max-channels-per-client"
                raise PolicyDenied(rule, f"client has {used} channels open")

    def allocate(self) -> MultiBindReply:
        """Open every channel's sockets; the reply that names them.

        Raises:
            UpstreamError: a socket could not be opened (REP 01); nothing stays open.
        """
        requested = self.request.channels
        try:
            index = 0
            while index < len(requested):
                wanted = requested[index]
                if wanted.type is ChannelType.TCP:
                    self.channels.append(TcpChannel(self, index, _tcp_listener(self.outward_ip)))
                    index += 1
                    continue
                if wanted.rtp_pair:
                    rtp, rtcp = _udp_pair(self.outward_ip)
                    self.channels.append(self._udp_channel(index, rtp))
                    self.channels.append(self._udp_channel(index + 1, rtcp))
                    index += 2
                    continue
                self.channels.append(self._udp_channel(index, _udp_socket(self.outward_ip, 0)))
                index += 1
        except OSError as exc:
            self.close()
            msg = f"cannot open channel {len(self.channels)}: {(exc.strerror or exc)}"
            raise UpstreamError(ReplyCode.GENERAL_FAILURE, msg) from exc
        return MultiBindReply(tuple(channel.entry() for channel in self.channels))

    def _udp_channel(self, chan_id: int, peer_sock: gsocket.socket) -> UdpChannel:
        try:
            rel = _udp_socket(self.local_ip, 0)
        except OSError:
            peer_sock.close()
            raise
        return UdpChannel(self, chan_id, peer_sock, rel)

    # -- running -------------------------------------------------------------------------------

    @property
    def open_channels(self) -> int:
        """Channels not closed yet (what the limits count)."""
        return sum(1 for channel in self.channels if channel.open)

    def run(self) -> str:
        """Serve until the client leaves, breaks the protocol, or every channel is closed.

        Raises:
            RemoteProtocolError: the client sent garbage on the control connection (its REP is
                sent by the session).
        """
        for channel in self.channels:
            channel.start(self.group)
        self.group.spawn(self._read_control)
        self.group.spawn(self._housekeep)
        try:
            return str(self.done.get())
        except gevent.GreenletExit:
            self._shutdown()
            raise

    def _finish(self, value: object) -> None:
        if not self.done.ready():
            self.done.set(value)

    def _read_control(self) -> None:
        """Only EOF is expected from the client; anything else is refused and ends it all."""
        session = self.session
        try:
            event = session.next_event()
        except RemoteProtocolError as exc:
            if not self.done.ready():
                self.done.set_exception(exc)
            return
        except OSError as exc:
            self._finish(f"io-error: {(exc.strerror or str(exc)).lower()}")
            return
        if isinstance(event, ConnectionClosed):
            self._finish("ok")
            return
        # One MULTI_BIND per control connection, and nothing else travels on it.
        self.notify(Reply(ReplyCode.GENERAL_FAILURE))
        self._finish("protocol-error: a second request on the multi-bind control connection")

    def _housekeep(self) -> None:
        """Idle channels, rules changed by a reload, and the end when no channel is left."""
        idle = self.config.idle_timeout
        tick = min(1.0, idle / 4)
        while True:
            gevent.sleep(tick)
            if self.server.rules is not self._rules:
                self._rules = self.server.rules
                self._verdicts.clear()
                self._routes.clear()
                try:
                    self.session.resolve_and_check(self.request.address, "multibind")
                except (PolicyDenied, UpstreamError):
                    for channel in self.channels:
                        self.close_channel(channel, ChannelCloseReason.POLICY)
            now = time.monotonic()
            for channel in self.channels:
                if channel.open and not channel.busy() and now - channel.last >= idle:
                    self.close_channel(channel, ChannelCloseReason.IDLE)
            if not self.open_channels:
                reasons = {c.closed_reason for c in self.channels if c.closed_reason}
                why = ",".join(sorted(r.name.lower() for r in reasons)) or "closed"
                self._finish(f"channels-closed: {why}")
                return

    def close_channel(self, channel: TcpChannel | UdpChannel, reason: ChannelCloseReason) -> None:
        """Close one channel and tell the client (C1)."""
        if not channel.open:
            return
        channel.closed_reason = reason
        channel.close()
        self.notify(ChannelClosed(channel.chan_id, reason))

    def notify(self, message: object) -> None:
        """Send an event (or the refusal of a stray request) on the control connection.

        Serialised by a lock: several greenlets produce events, and a message must never be
        interleaved with another. A broken connection is noticed by the reader; here the
        failure is only swallowed.
        """
        with self.lock, contextlib.suppress(OSError, ProtocolError):
            self.session.send(message)

    def _shutdown(self) -> None:
        """The server is stopping: C1 04 for every open channel, as far as time allows."""
        self.group.kill()
        with gevent.Timeout(SHUTDOWN_NOTICE_TIME, False):
            for channel in self.channels:
                self.close_channel(channel, ChannelCloseReason.SHUTDOWN)

    def close(self) -> None:
        """Stop every loop, close every socket and waiting peer, void every token."""
        self.group.kill()
        for channel in self.channels:
            channel.close()

    # -- decisions (cached per MULTI_BIND; cleared when a reload changes the rules) ----------

    def expected_peer(self, ip: str, port: int) -> bool:
        """The DST filter: the expected address(es), and the port when DST.PORT is not 0."""
        if self.expected is not None and ip not in self.expected:
            return False
        return not self.expected_port or port == self.expected_port

    def peer_verdict(self, key: tuple[str, int]) -> str:
        """Why a peer (IP, port) is refused: "filtered" (not DST), "policy" (rules); "" = ok."""
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        if not self.expected_peer(*key):
            verdict = "filtered"
        else:
            ip, port = key
            decision = self.server.rules.decide(self.client_ip, self.user, "multibind", ip, port)
            verdict = "" if decision.allowed else "policy"
            if not decision.allowed:
                self.server.stats.rule_denials += 1
        if len(self._verdicts) < CACHE_LIMIT:
            self._verdicts[key] = verdict
        return verdict

    def route(self, address: Address, family: int) -> tuple[Any, ...] | str:
        """Where a client datagram to *address* goes (a sockaddr), or why it is dropped."""
        key = (address.host, address.port, family)
        route = self._routes.get(key)
        if route is not None:
            return route
        try:
            targets = self.session.resolve_and_check(address, "multibind")
        except PolicyDenied:
            self.server.stats.rule_denials += 1
            route = "policy"
        except UpstreamError:
            route = "unresolved"
        else:
            sockaddr = next((s for f, s in targets if f == family), targets[0][1])
            ip = norm_ip(sockaddr[0])
            route = (ip, sockaddr[1]) if self.expected_peer(ip, sockaddr[1]) else "filtered"
        self._routes[key] = route
        if len(self._routes) > ROUTE_CACHE_SIZE:
            self._routes.popitem(last=False)
        return route

    # -- stats ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the stats API (counters read now)."""
        session = self.session
        return {
            "id": self.id,
            "session": session.id,
            "client": f"{session.client_ip}:{session.client_port}",
            "user": self.user,
            "peer": str(self.request.address),
            "age": round(time.monotonic() - self.started, 3),
            "open_channels": self.open_channels,
            "channels": [channel.snapshot() for channel in self.channels],
        }


# -- handlers ----------------------------------------------------------------------------------


def handle_multibind(session: Session, request: MultiBindRequest) -> None:
    """Serve one MULTI_BIND to the end of its control connection."""
    server = session.server
    if not server.config.multibind.enabled:
        raise UpstreamError(ReplyCode.COMMAND_NOT_SUPPORTED, "multi-bind is disabled")
    with contextlib.suppress(OSError):
        session.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
    multibind = MultiBind(session, request)
    multibind.check_request()
    try:
        reply = multibind.allocate()
        server.multibinds[multibind.id] = multibind
        session.send(reply)
        session.result = multibind.run()
    finally:
        # Closed first: once it is gone from the registry, its ports are free.
        multibind.close()
        server.multibinds.pop(multibind.id, None)


def handle_accept(session: Session, request: AcceptRequest) -> None:
    """Pair the client's new connection with the waiting peer its token names, then relay."""
    server = session.server
    if not server.config.multibind.enabled:
        raise UpstreamError(ReplyCode.COMMAND_NOT_SUPPORTED, "multi-bind is disabled")
    waiting = tokens_of(server).find(request.token)
    if waiting is None:
        _refuse_token(session, "unknown, used or expired token")
        return
    channel = waiting.channel
    owner = channel.owner
    if owner.user != session.user or owner.client_ip != session.client_ip:
        # Not the client that holds the channel: refused, and the token stays valid for it.
        channel.foreign_accepts += 1
        _refuse_token(session, "token of another client")
        return
    peer = waiting.peer
    decision = server.rules.decide(session.client_ip, session.user, "accept", peer.host, peer.port)
    if not decision.allowed:
        raise PolicyDenied(decision.rule_id)
    channel.claim(waiting, session)
    try:
        session.dst = f"{peer} (multi-bind {owner.id} channel {channel.chan_id})"
        session.send_reply(ReplyCode.SUCCEEDED, peer)
        session.relay_with(waiting.sock, session.take_trailing())
    finally:
        waiting.sock.close()
        channel.release(session)


def _refuse_token(session: Session, why: str) -> None:
    session.result = f"accept-refused: {why}"
    session.send_reply(ReplyCode.NOT_ALLOWED)
