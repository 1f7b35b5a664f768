"""One multicast relay: a public group on one side, the members of the intranet on the other.

Sockets (all non-blocking, read by one greenlet each, batch-drained per wakeup):

* public receive: bound to (group, port), joined on ``public_interface`` only;
* public send: bound to an address of that interface, IP_MULTICAST_IF/TTL set on it. On a
  loopback interface the copies must loop back (there is no other host to hear them), so the
  relay drops datagrams from its own send socket's address: the public side never feeds the
  relay its own output.
* intranet, unicast mode: one socket on ``intranet_interface``; members send to it and the relay
  delivers to the endpoint each member registered with its datagrams (one copy per receiver,
  sealed with that member's key).
* intranet, multicast mode: a receive socket bound to (intranet group, port), joined on
  ``intranet_interface``, and a send socket there (TTL ``ttl_intranet``): one copy per datagram,
  sealed with the group key.

Members are keyed by MEMBER_ID (sealed) or by source endpoint (unencrypted). A member datagram
is accepted only from the IP of the member's control connection; in unicast mode its source
port becomes the member's delivery endpoint. Drops are counted by reason, never logged per
datagram. Membership ends (B4/B5/B7) are posted to the member's control channel, which sends
the notice; the relay itself never writes to a control connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import nacl.utils
from gevent import socket as gsocket
from gevent.pool import Group

from socksx.log import logger
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.constants import UDP_RECV_SIZE, McastDatagramType, Notice
from socksx.protocol.mcast import encode_relay_plain, open_member_datagram, seal_relay
from socksx.protocol.sealed import KEY_SIZE, UnsealError, peek_header
from socksx.server.dgram import norm_ip
from socksx.server.mcast.iface import (
    Interface,
    InterfaceError,
    drop_membership,
    find_interface,
    join_group,
    set_outgoing,
)
from socksx.server.mcast.member import Channel, Member, wall_time
from socksx.server.mcast.policy import McastPolicy, TokenBucket

if TYPE_CHECKING:
    from socksx.config import McastConfig

__all__ = ["DROP_REASONS", "Member", "Relay", "RelayError"]

#: Every reason a datagram is dropped; each is a counter in ``snapshot()["drops"]``.
DROP_REASONS = (
    "auth",  # failed authentication, or an unknown MEMBER_ID
    "replay",  # SEQ seen before or left of the window
    "rate",  # over a member's or the relay's rate
    "policy",  # from a member not allowed to send
    "endpoint",  # from an IP other than the member's control connection
    "unknown",  # unencrypted datagram from nobody's address
    "unsealed",  # TYPE 03 at a sealed relay
    "malformed",  # too short, or an unknown TYPE
    "denied-source",  # a public source on the deny list
    "send-error",  # the socket refused to send (buffer full, unreachable)
)
BATCH = 256  #: datagrams read per wakeup before yielding to other greenlets
CACHE_LIMIT = 4096
MAX_TICK = 1.0
MIN_TICK = 0.05
SOCKET_BUFFER = 4 << 20  #: octets asked for each relay socket's send and receive buffers
SO_SNDBUFFORCE = getattr(gsocket, "SO_SNDBUFFORCE", 32)  #: linux/socket.h
SO_RCVBUFFORCE = getattr(gsocket, "SO_RCVBUFFORCE", 33)  #: linux/socket.h
STREAK_GAP = 1.0  #: seconds without a rate drop that end a member's time over the limit
_MAX_ID = 0xFFFFFFFF


class RelayError(Exception):
    """The relay cannot start (no interface configured, bind or join refused)."""


class Relay:
    """The relay of one (public group, port), owned by the server's RelayManager."""

    def __init__(
        self,
        group: Address,
        config: McastConfig,
        intranet_group: str | None,
        on_stop: Callable[[Relay, str], None],
    ) -> None:
        self.id = str(group)
        self.group = group
        self.group_addr = (group.host, group.port)
        self.family = gsocket.AF_INET6 if ":" in group.host else gsocket.AF_INET
        self.config = config
        self.mode = config.mode
        self.sealed = config.encryption == "secretbox"
        self.intranet_group = intranet_group
        self._on_stop = on_stop
        self.members: dict[int, Member] = {}
        self.by_endpoint: dict[tuple[Any, ...], Member] = {}
        self.receivers: list[Member] = []
        self.key_id = 0
        self.group_key = bytes(KEY_SIZE)
        self.seq = 0
        self.key_since = 0.0
        self.rekeys = 0
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.running = False
        self.members_total = 0
        self.datagrams_in = 0
        self.bytes_in = 0
        self.datagrams_out = 0
        self.bytes_out = 0
        self.public_in = 0
        self.public_out = 0
        self.intranet_in = 0
        self.intranet_out = 0
        self.group_out = 0  # datagrams sent to the intranet group (multicast mode)
        self.group_out_bytes = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.relay_bucket: TokenBucket | None = None
        self.bandwidth_bucket: TokenBucket | None = None
        self.sockets: list[gsocket.socket] = []
        self._joined: list[tuple[gsocket.socket, str, Interface]] = []
        self.greenlets = Group()
        self._sources: dict[tuple[Any, ...], Address] = {}
        self._denied: dict[str, bool] = {}
        self._deny = tuple(config.deny_sources)
        self.public_iface: Interface | None = None
        self.intranet_iface: Interface | None = None
        self.endpoint = ZERO_V4
        self.stop_reason = ""

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Open and join everything, then start forwarding.

        Raises:
            RelayError: an interface is not configured or not found, or a socket call failed
                (everything opened so far is closed again).
        """
        config = self.config
        if not config.public_interface or not config.intranet_interface:
            msg = "mcast.public_interface and mcast.intranet_interface must both be set"
            raise RelayError(msg)
        try:
            self.public_iface = find_interface(config.public_interface)
            self.intranet_iface = find_interface(config.intranet_interface)
            self._open_public()
            self._open_intranet()
        except (InterfaceError, OSError) as exc:
            self._close_sockets()
            msg = f"cannot start the relay of {self.group}: {exc.strerror or exc}"
            raise RelayError(msg) from exc
        if self.sealed and self.mode == "multicast":
            self._new_group_key()
        self.running = True
        self.greenlets.spawn(self._public_loop)
        self.greenlets.spawn(self._intranet_loop, self.intranet_recv)
        self.greenlets.spawn(self._housekeeping)
        logger.info(
            "mcast relay started",
            extra={
                "fields": {
                    "group": self.id,
                    "mode": self.mode,
                    "encryption": config.encryption,
                    "endpoint": str(self.endpoint),
                    "public_interface": self.public_iface.name,
                    "intranet_interface": self.intranet_iface.name,
                }
            },
        )

    def _socket(self, family: int) -> gsocket.socket:
        sock = gsocket.socket(family, gsocket.SOCK_DGRAM)
        self.sockets.append(sock)
        sock.settimeout(0.0)  # never waits: the loops wait on readiness themselves
        # A unicast fan-out sends N datagrams per public one in a burst, and a datagram still
        # queued at a receiver counts against the sender's buffer: room for bursts, not drops.
        for forced, plain in (
            (SO_SNDBUFFORCE, gsocket.SO_SNDBUF),
            (SO_RCVBUFFORCE, gsocket.SO_RCVBUF),
        ):
            try:
                sock.setsockopt(gsocket.SOL_SOCKET, forced, SOCKET_BUFFER)
            except OSError:  # without CAP_NET_ADMIN: as much as the sysctl limits allow
                with contextlib.suppress(OSError):
                    sock.setsockopt(gsocket.SOL_SOCKET, plain, SOCKET_BUFFER)
        return sock

    def _open_public(self) -> None:
        iface = self.public_iface
        assert iface is not None
        host, port = self.group_addr
        recv = self._socket(self.family)
        recv.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        recv.bind((host, port))
        self._join(recv, host, iface)
        set_outgoing(recv, self.family, iface, self.config.ttl_public, iface.loopback)
        send = self._socket(self.family)
        local = self._local_address(iface, self.family)
        send.bind((local, 0))
        set_outgoing(send, self.family, iface, self.config.ttl_public, iface.loopback)
        self.public_recv = recv
        self.public_send = send
        self.public_ttl = self.config.ttl_public
        self.own_port = send.getsockname()[1]
        self.own_ips = frozenset(norm_ip(a) for a in iface.addresses)

    @staticmethod
    def _local_address(iface: Interface, family: int) -> str:
        if family == gsocket.AF_INET:
            if iface.ipv4 is None:
                msg = f"interface {iface.name} has no IPv4 address for an IPv4 group"
                raise InterfaceError(msg)
            return iface.ipv4
        return "::"  # IPV6_MULTICAST_IF picks the interface; the kernel the source address

    def _open_intranet(self) -> None:
        iface = self.intranet_iface
        assert iface is not None
        config = self.config
        ip = config.intranet_interface
        assert ip is not None
        family = gsocket.AF_INET6 if ":" in ip else gsocket.AF_INET
        if self.mode == "unicast":
            sock = self._socket(family)
            sock.bind((ip, 0))
            self.intranet_recv = self.intranet_send = sock
            self.endpoint = Address.from_ip(ip, sock.getsockname()[1])
            self.intranet_dest: tuple[Any, ...] | None = None
            return
        group = self.intranet_group
        assert group is not None
        port = self.group.port
        recv = self._socket(family)
        recv.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        recv.bind((group, port))
        self._join(recv, group, iface)
        set_outgoing(recv, family, iface, config.ttl_intranet, True)
        send = self._socket(family)
        send.bind((ip, 0))
        # Loop on: members on this very host (and the relay's tests) must hear the group too.
        set_outgoing(send, family, iface, config.ttl_intranet, True)
        self.intranet_recv = recv
        self.intranet_send = send
        self.intranet_dest = (group, port)
        self.endpoint = Address(group, port)

    def _join(self, sock: gsocket.socket, group: str, iface: Interface) -> None:
        join_group(sock, group, iface)
        self._joined.append((sock, group, iface))

    def _close_sockets(self) -> None:
        # Leave explicitly (IGMP leave / MLD done now), then close.
        for sock, group, iface in self._joined:
            drop_membership(sock, group, iface)
        self._joined = []
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def stop(self, why: str, code: Notice = Notice.MCAST_RELAY_DOWN) -> None:
        """End every membership with *code*, leave the groups, close everything (idempotent)."""
        if not self.running:
            return
        self.running = False
        self.stop_reason = why
        for member in list(self.members.values()):
            self._end(member, why, code, notify=True, last=False)
        # stop() may run inside one of the relay's own greenlets (the last member expired, the
        # bandwidth limit tripped): that one returns by itself once ``running`` is False.
        current = gevent.getcurrent()
        for greenlet in list(self.greenlets):
            if greenlet is not current:
                greenlet.kill(block=True)
        self._close_sockets()
        self._on_stop(self, why)
        logger.info(
            "mcast relay stopped",
            extra={
                "fields": {
                    "group": self.id,
                    "why": why,
                    "members_total": self.members_total,
                    "datagrams_in": self.datagrams_in,
                    "bytes_in": self.bytes_in,
                    "datagrams_out": self.datagrams_out,
                    "bytes_out": self.bytes_out,
                    "drops": sum(self.drops.values()),
                    "rekeys": self.rekeys,
                    "duration": round(time.monotonic() - self.started, 3),
                }
            },
        )

    def terminate(self) -> None:
        """End the relay now (the admin API's ``POST /relays/ID/terminate``): B7 to everyone."""
        self.stop("terminated by the administrator")

    # -- membership -----------------------------------------------------------------------

    @property
    def member_count(self) -> int:
        """Members right now."""
        return len(self.members)

    def add_member(
        self,
        channel: Channel,
        user: str | None,
        client_ip: str,
        client_port: int,
        policy: McastPolicy,
    ) -> Member:
        """Admit a member (the caller checked rules, permission and limits)."""
        member_id = 0
        while member_id == 0 or member_id in self.members:
            member_id = secrets.randbits(32)
        now = time.monotonic()
        idle = policy.idle_timeout or self.config.member_timeout
        ttl = min(self.config.ttl_public, policy.ttl)
        member = Member(member_id, channel, user, client_ip, client_port, policy, idle, ttl, now)
        member.group_out_base = (self.group_out, self.group_out_bytes)
        self.members[member_id] = member
        self.members_total += 1
        self._limits_changed()
        self._rebuild_receivers()
        return member

    def keys_for(self, member: Member) -> tuple[int, bytes]:
        """(KEY_ID, GROUP_KEY) for a JOIN reply: a group key only for multicast-mode receivers."""
        if self.mode == "multicast" and member.can_receive and self.sealed:
            return self.key_id, self.group_key
        return 0, bytes(KEY_SIZE)

    def remove_member(self, member: Member, why: str) -> None:
        """The member left (LEAVE, or its control channel closed): no notice is sent."""
        if not member.active:
            return
        # Datagrams the member sent before its LEAVE may still sit in the socket buffer: let
        # them through first, so "send, then leave" loses nothing.
        self._drain(self.intranet_recv)
        self._end(member, why, None, notify=False, last=True)

    def expire(self, member: Member, why: str, code: Notice) -> None:
        """End a membership by the relay's own decision, with notice *code* (B4 or B5)."""
        if member.active:
            self._end(member, why, code, notify=True, last=True)

    def _end(
        self, member: Member, why: str, code: Notice | None, *, notify: bool, last: bool
    ) -> None:
        member.active = False
        self.members.pop(member.member_id, None)
        if member.endpoint is not None and self.by_endpoint.get(member.endpoint) is member:
            del self.by_endpoint[member.endpoint]
        self._rebuild_receivers()
        if self.mode == "multicast":
            base_count, base_bytes = member.group_out_base
            if member.can_receive:
                member.datagrams_out = self.group_out - base_count
                member.bytes_out = self.group_out_bytes - base_bytes
        if notify and code is not None:
            member.channel.post(("ended", member, code, why))
        self._account(member, why)
        if not last:
            return
        if not self.members:
            self.stop("last member gone")
            return
        self._limits_changed()
        if member.can_receive:
            # A departed receiver must not read what the relay seals from now on.
            self.rekey("receiver left")

    def _account(self, member: Member, why: str) -> None:
        left = time.time()
        logger.info(
            "mcast membership",
            extra={
                "fields": {
                    "group": self.id,
                    "user": member.user or "-",
                    "client": member.client,
                    "permission": member.permission,
                    "datagrams_in": member.datagrams_in,
                    "bytes_in": member.bytes_in,
                    "datagrams_out": member.datagrams_out,
                    "bytes_out": member.bytes_out,
                    "drops": member.drops,
                    "joined": wall_time(member.joined_wall),
                    "left": wall_time(left),
                    "duration": round(left - member.joined_wall, 3),
                    "why": why,
                }
            },
        )

    def _rebuild_receivers(self) -> None:
        self.receivers = [
            m
            for m in self.members.values()
            if m.can_receive and (self.mode == "multicast" or m.endpoint is not None)
        ]

    def _limits_changed(self) -> None:
        """The strictest relay-wide limits among the members' policies apply."""
        now = time.monotonic()
        rates = [m.policy.relay_rate for m in self.members.values() if m.policy.relay_rate]
        bandwidth = [
            m.policy.relay_bandwidth_limit
            for m in self.members.values()
            if m.policy.relay_bandwidth_limit
        ]
        rate = min(rates, default=0.0)
        limit = min(bandwidth, default=0.0)
        if rate != (self.relay_bucket.rate if self.relay_bucket else 0.0):
            self.relay_bucket = TokenBucket(rate, rate, now) if rate else None
        if limit != (self.bandwidth_bucket.rate if self.bandwidth_bucket else 0.0):
            self.bandwidth_bucket = TokenBucket(limit, limit, now) if limit else None

    # -- keys -----------------------------------------------------------------------------

    def _new_group_key(self) -> None:
        self.key_id = self.key_id % _MAX_ID + 1  # non-zero, and never reused while we run
        self.group_key = nacl.utils.random(KEY_SIZE)
        self.seq = 0
        self.key_since = time.monotonic()

    def rekey(self, why: str) -> None:
        """New group key: B6 to every remaining receiver, then seal with it at once.

        Members hold a datagram with a KEY_ID they do not know yet until its B6 arrives, so
        switching without waiting costs nothing and leaves a departed member no window.
        """
        if not (self.sealed and self.mode == "multicast" and self.running):
            return
        self._new_group_key()
        self.rekeys += 1
        for member in self.members.values():
            if member.can_receive:
                member.channel.post(("rekey", member, self.key_id, self.group_key))

    # -- datagrams ------------------------------------------------------------------------

    def _wait_loop(self, sock: gsocket.socket, handle: Callable[[bytes, Any], None]) -> None:
        hub = gevent.get_hub()
        watcher = hub.loop.io(sock.fileno(), 1)
        recvfrom = sock.recvfrom
        try:
            while self.running:
                hub.wait(watcher)
                for _ in range(BATCH):
                    try:
                        data, src = recvfrom(UDP_RECV_SIZE)
                    except BlockingIOError:
                        break
                    except OSError:
                        # ICMP errors surface as ECONNREFUSED on some kernels: keep serving.
                        continue
                    handle(data, src)
                    if not self.running:
                        return
                else:
                    gevent.sleep(0)  # a flood must not starve the other greenlets
        finally:
            watcher.close()

    def _public_loop(self) -> None:
        self._wait_loop(self.public_recv, self._from_public)

    def _intranet_loop(self, sock: gsocket.socket) -> None:
        self._wait_loop(sock, self._from_intranet)

    def _drain(self, sock: gsocket.socket) -> None:
        for _ in range(BATCH):
            try:
                data, src = sock.recvfrom(UDP_RECV_SIZE)
            except OSError:
                return
            self._from_intranet(data, src)

    def _source(self, src: tuple[Any, ...]) -> Address:
        source = self._sources.get(src)
        if source is None:
            if len(self._sources) >= CACHE_LIMIT:
                self._sources.clear()
            source = self._sources[src] = Address.from_ip(src[0], src[1])
        return source

    def _is_denied(self, ip: str) -> bool:
        verdict = self._denied.get(ip)
        if verdict is None:
            address = ipaddress.ip_address(norm_ip(ip))
            verdict = any(address in net for net in self._deny if net.version == address.version)
            if len(self._denied) >= CACHE_LIMIT:
                self._denied.clear()
            self._denied[ip] = verdict
        return verdict

    def _drop(self, reason: str, member: Member | None = None) -> None:
        self.drops[reason] += 1
        if member is not None:
            member.drops += 1

    def _admit(self, size: int, now: float) -> bool:
        """Relay-wide limits: rate (drop) and bandwidth (terminate with B7)."""
        if self.relay_bucket is not None and not self.relay_bucket.take(now):
            self._drop("rate")
            return False
        if self.bandwidth_bucket is not None and not self.bandwidth_bucket.take(now, size):
            self._drop("rate")
            self.stop("relay bandwidth limit exceeded")
            return False
        return True

    def _from_public(self, data: bytes, src: tuple[Any, ...]) -> None:
        if src[1] == self.own_port and norm_ip(src[0]) in self.own_ips:
            return  # our own output, looped back: never forward it again
        if self._deny and self._is_denied(src[0]):
            self._drop("denied-source")
            return
        now = time.monotonic()
        self.public_in += 1
        self.datagrams_in += 1
        self.bytes_in += len(data)
        if not self._admit(len(data), now):
            return
        self._deliver(self._source(src), data, None)

    def _deliver(self, source: Address, data: bytes, sender: Member | None) -> None:
        """Send *data* (originally from *source*) to the intranet members."""
        if self.mode == "multicast":
            if not self.receivers:
                return
            if self.sealed:
                self.seq += 1
                dgram = seal_relay(self.group_key, self.key_id, self.seq, source, data)
            else:
                dgram = encode_relay_plain(source, data)
            assert self.intranet_dest is not None
            if self._send(self.intranet_send, dgram, self.intranet_dest):
                self.group_out += 1
                self.group_out_bytes += len(data)
                self.intranet_out += 1
            return
        plain = None if self.sealed else encode_relay_plain(source, data)
        sock = self.intranet_send
        for member in self.receivers:
            if member is sender:
                continue
            if plain is None:
                member.seq_out += 1
                dgram = seal_relay(member.key, 0, member.seq_out, source, data)
            else:
                dgram = plain
            assert member.endpoint is not None
            if self._send(sock, dgram, member.endpoint):
                member.datagrams_out += 1
                member.bytes_out += len(data)
                self.intranet_out += 1

    def _send(self, sock: gsocket.socket, dgram: bytes, address: tuple[Any, ...]) -> bool:
        try:
            sock.sendto(dgram, address)
        except OSError:
            self._drop("send-error")
            return False
        self.datagrams_out += 1
        self.bytes_out += len(dgram)
        return True

    def _from_intranet(self, data: bytes, src: tuple[Any, ...]) -> None:
        if not data:
            self._drop("malformed")
            return
        kind = data[0]
        member: Member | None
        if kind == McastDatagramType.MEMBER_SEALED:
            opened = self._open_sealed(data, src)
            if opened is None:
                return
            member, payload = opened
        elif kind == McastDatagramType.MEMBER_PLAIN:
            if self.sealed:
                self._drop("unsealed")  # nobody injects unauthenticated traffic next to sealed
                return
            member = self._plain_member(src)
            if member is None:
                return
            payload = data[1:]
        else:
            if kind not in (McastDatagramType.RELAY_SEALED, McastDatagramType.RELAY_PLAIN):
                self._drop("malformed")
            return  # relay output (ours, looped back in multicast mode) is never input
        now = time.monotonic()
        member.last_seen = now
        self.intranet_in += 1
        self.datagrams_in += 1
        self.bytes_in += len(data)
        if not payload:
            return  # a keepalive
        self._from_member(member, payload, src, now)

    def _open_sealed(self, data: bytes, src: tuple[Any, ...]) -> tuple[Member, bytes] | None:
        """Authenticate a TYPE 01 datagram: (its member, its plaintext), or None (dropped)."""
        if not self.sealed:
            self._drop("malformed")
            return None
        try:
            header = peek_header(data)
        except UnsealError:
            self._drop("malformed")
            return None
        member = self.members.get(header.id)
        if member is None:
            self._drop("auth")
            return None
        if not member.window.check(header.seq):
            self._drop("replay", member)
            return None
        try:
            _, plaintext = open_member_datagram(member.key, data)
        except UnsealError:
            self._drop("auth", member)
            return None
        member.window.accept(header.seq)
        if norm_ip(src[0]) != member.client_ip:
            # The right key from the wrong host: nobody may aim a group's stream elsewhere.
            self._drop("endpoint", member)
            return None
        if self.mode == "unicast" and member.endpoint != src:
            self._register(member, src)
        return member, plaintext

    def _register(self, member: Member, src: tuple[Any, ...]) -> None:
        if member.endpoint is not None and self.by_endpoint.get(member.endpoint) is member:
            del self.by_endpoint[member.endpoint]
        member.endpoint = src
        self.by_endpoint[src] = member
        self._rebuild_receivers()

    def _plain_member(self, src: tuple[Any, ...]) -> Member | None:
        """The member an unencrypted datagram is from: by its endpoint, else claim one by IP."""
        member = self.by_endpoint.get(src)
        if member is not None:
            return member
        ip = norm_ip(src[0])
        for candidate in self.members.values():
            if candidate.client_ip == ip and candidate.endpoint is None:
                self._register(candidate, src)
                return candidate
        self._drop("unknown")
        return None

    def _from_member(
        self, member: Member, payload: bytes, src: tuple[Any, ...], now: float
    ) -> None:
        if not member.can_send:
            self._drop("policy", member)
            return
        bucket = member.bucket
        if bucket is not None and not bucket.take(now):
            self._drop("rate", member)
            # Over the limit "for a while" = drops without a quiet second between them: a
            # flood keeps dropping even though the bucket lets a datagram through now and then.
            if now - member.last_drop > STREAK_GAP:
                member.over_since = now
            member.last_drop = now
            policy = member.policy
            expel = policy.over_limit_action == "expel"
            if expel and now - member.over_since >= policy.expel_after:
                self.expire(member, "over the send rate", Notice.MCAST_EXPELLED)
            return
        if not self._admit(len(payload), now):
            return
        member.datagrams_in += 1
        member.bytes_in += len(payload)
        if member.ttl != self.public_ttl:
            self._set_public_ttl(member.ttl)
        if self._send(self.public_send, payload, self.group_addr):
            self.public_out += 1
        self._deliver(self._source(src), payload, member)

    def _set_public_ttl(self, ttl: int) -> None:
        option = (
            (gsocket.IPPROTO_IPV6, gsocket.IPV6_MULTICAST_HOPS)
            if self.family == gsocket.AF_INET6
            else (gsocket.IPPROTO_IP, gsocket.IP_MULTICAST_TTL)
        )
        with contextlib.suppress(OSError):
            self.public_send.setsockopt(*option, ttl)
            self.public_ttl = ttl

    # -- timers ---------------------------------------------------------------------------

    def _tick(self) -> float:
        limits = [self.config.rekey_interval or MAX_TICK]
        for member in self.members.values():
            limits.append(member.idle_limit)
            if member.policy.max_time:
                limits.append(member.policy.max_time)
            if member.policy.over_limit_action == "expel" and member.policy.expel_after:
                limits.append(member.policy.expel_after)
        return max(MIN_TICK, min(MAX_TICK, min(limits) / 4))

    def _housekeeping(self) -> None:
        while self.running:
            gevent.sleep(self._tick())
            now = time.monotonic()
            for member in list(self.members.values()):
                max_time = member.policy.max_time
                if max_time and now - member.joined >= max_time:
                    self.expire(member, "time in group limit", Notice.MCAST_EXPIRED)
                elif now - member.last_seen >= member.idle_limit:
                    self.expire(member, "inactive", Notice.MCAST_EXPIRED)
                if not self.running:
                    return
            interval = self.config.rekey_interval
            if interval and now - self.key_since >= interval:
                self.rekey("interval")

    # -- stats ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the stats API: counters, keys' epoch, members."""
        now = time.monotonic()
        group_out = (self.group_out, self.group_out_bytes) if self.mode == "multicast" else None
        return {
            "id": self.id,
            "group": self.group.host,
            "port": self.group.port,
            "mode": self.mode,
            "encryption": self.config.encryption,
            "endpoint": str(self.endpoint),
            "age": round(now - self.started, 3),
            "members_total": self.members_total,
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "datagrams_out": self.datagrams_out,
            "bytes_out": self.bytes_out,
            "public_in": self.public_in,
            "public_out": self.public_out,
            "intranet_in": self.intranet_in,
            "intranet_out": self.intranet_out,
            "drops": dict(self.drops),
            "rekeys": self.rekeys,
            "key_id": self.key_id,
            "members": [m.snapshot(now, group_out) for m in self.members.values()],
        }
