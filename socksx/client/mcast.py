"""Join a multicast group through a socksx gateway: ``join_group()`` -> ``Membership``.

    with join_group("239.1.1.1", 5000, proxy="socks5h://gw:1080") as group:
        group.send(b"hello")                    # if the gateway lets us send
        data, (host, port) = group.recv(timeout=5)

One control connection per membership (docs/PROTOCOL.md "Multicast"): the JOIN reply gives the
relay's intranet endpoint and the keys; a thread reads the control connection (B6 rekeys are
applied there, B4/B5/B7 end the membership and wake ``recv``), another sends a keepalive every
25 s (also at once on joining: in unicast mode it tells the relay where to deliver). Datagrams
are checked here as the relay checks them: sealed ones must authenticate under a key we hold and
be fresh in their key's replay window; a datagram under a KEY_ID not known yet is held up to a
second while its B6 is on the way, and the previous group key stays valid for ``key_grace``
seconds after a rekey.

Blocking, thread-safe, stdlib sockets: works in threads, and cooperatively once gevent has
monkey-patched (the socksx CLI).
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Final

from socksx.client._driver import Closing, open_session
from socksx.client.proxyurl import ProxyURL
from socksx.errors import ProxyConnectionError, ProxyTimeoutError, ReplyError, SocksError
from socksx.protocol.address import Address
from socksx.protocol.constants import (
    UDP_RECV_SIZE,
    Command,
    McastDatagramType,
    Notice,
    ReplyCode,
)
from socksx.protocol.errors import MalformedMessage, ProtocolError
from socksx.protocol.mcast import (
    GroupKeys,
    JoinReply,
    JoinRequest,
    LeaveRequest,
    McastNotice,
    RekeyNotice,
    decode_relay_plain,
    encode_member_plain,
    group_problem,
    maybe_read_control_message,
    open_relay_datagram,
    seal_member,
)
from socksx.protocol.messages import Reply
from socksx.protocol.sealed import ReplayWindow, UnsealError, peek_header

__all__ = [
    "HOLD_TIME",
    "KEEPALIVE_INTERVAL",
    "Membership",
    "MembershipEnded",
    "join_group",
]

KEEPALIVE_INTERVAL: Final = 25.0  #: PROTOCOL.md "Multicast": members send one every 25 s
HOLD_TIME: Final = 1.0  #: a datagram under an unknown, newer KEY_ID waits this long for its B6
KEY_GRACE: Final = 2.0  #: the previous group key stays valid this long after a rekey
HOLD_LIMIT: Final = 256
INTRANET_TTL: Final = 1  #: PROTOCOL.md "Multicast": members send with TTL 1 on the intranet
NO_SUPPORT: Final = "this server has no multicast support"
_PERMISSIONS: Final = {
    ReplyCode.SUCCEEDED: "both",
    ReplyCode.MCAST_RECEIVE_ONLY: "receive",
    ReplyCode.MCAST_SEND_ONLY: "send",
}
_ENDED_TEXT: Final = {
    Notice.MCAST_EXPIRED: "membership expired (B4)",
    Notice.MCAST_EXPELLED: "expelled by the gateway's policy (B5)",
    Notice.MCAST_RELAY_DOWN: "the relay shut down (B7)",
}
IF_INET6: Final = "/proc/net/if_inet6"
IP_MULTICAST_ALL: Final = getattr(socket, "IP_MULTICAST_ALL", 49)


class MembershipEnded(SocksError):
    """The membership is over: ``notice`` is B4/B5/B7 when the server ended it, else None."""

    def __init__(self, message: str, notice: Notice | None = None) -> None:
        self.notice = notice
        super().__init__(message)


def _ipv6_index(ip: str) -> int:
    """The interface index of a local IPv6 address (0 when unknown)."""
    packed = ipaddress.IPv6Address(ip.split("%", 1)[0]).packed.hex()
    with contextlib.suppress(OSError), open(IF_INET6, encoding="ascii") as stream:
        for line in stream:
            fields = line.split()
            if fields and fields[0] == packed:
                return int(fields[1], 16)
    return 0


class Membership(Closing):
    """A joined group: ``recv``, ``send``, ``leave``, ``close``; ends on B4/B5/B7."""

    def __init__(
        self,
        control: socket.socket,
        group: Address,
        reply: JoinReply,
        proxy: ProxyURL,
        key_grace: float,
    ) -> None:
        self.group = group
        self.reply = reply
        self.proxy = proxy
        self.permission = _PERMISSIONS[reply.rep]
        self.can_send = reply.can_send
        self.can_receive = reply.can_receive
        self.endpoint = (reply.address.host, reply.address.port)
        self.keys: GroupKeys | None = reply.keys
        self.sealed = reply.keys is not None
        self.mode = (
            "multicast" if ipaddress.ip_address(reply.address.host).is_multicast else "unicast"
        )
        self.rekeys = 0
        self.received = 0
        self.dropped = 0
        self.notice: Notice | None = None
        self._control = control
        self._key_grace = key_grace
        self._lock = threading.Lock()
        self._seq = 0
        self._current = reply.keys.key_id if reply.keys is not None else 0
        self._group_keys: dict[int, bytes] = {}
        self._expires: dict[int, float] = {}
        self._windows: dict[int, ReplayWindow] = {}
        if reply.keys is not None:
            key = reply.keys.member_key if self.mode == "unicast" else reply.keys.group_key
            if self.mode == "unicast" or reply.keys.key_id:
                self._group_keys[self._current] = key
                self._windows[self._current] = ReplayWindow()
        self._held: deque[tuple[float, bytes, tuple[str, int]]] = deque()
        self._replies: queue.Queue[object] = queue.Queue()
        self._awaiting: Command | None = None
        self._ended: MembershipEnded | None = None
        self._closed = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._rx, self._tx, self._dest = self._open_sockets(control)
        self._own = self._tx.getsockname()[:2]
        self._threads = [
            threading.Thread(target=self._control_loop, name="mcast-control", daemon=True),
            threading.Thread(target=self._keepalive_loop, name="mcast-keepalive", daemon=True),
        ]

    # -- set-up ---------------------------------------------------------------------------

    def _open_sockets(
        self, control: socket.socket
    ) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
        """(receive socket, send socket, where to send), per the relay's mode."""
        local = control.getsockname()[0]
        host, port = self.endpoint
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family != control.family:
            if self.mode == "multicast":
                # The interface to join on is the one that reaches the gateway; in another
                # family there is no telling which, and "any interface" is never used.
                msg = f"the relay's intranet group {host} is not in the control connection's family"
                raise ProxyConnectionError(msg)
            local = "::" if family == socket.AF_INET6 else "0.0.0.0"
        if self.mode == "unicast":
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((local, 0))
                sock.connect((host, port))  # the kernel drops datagrams from anyone else
            except OSError:
                sock.close()
                raise
            return sock, sock, (host, port)
        rx = socket.socket(family, socket.SOCK_DGRAM)
        tx = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rx.bind((host, port))
            tx.bind((local, 0))
            if family == socket.AF_INET6:
                index = _ipv6_index(local)
                mreq = socket.inet_pton(socket.AF_INET6, host) + struct.pack("@I", index)
                rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                for sock in (rx, tx):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, INTRANET_TTL)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            else:
                # Join on the interface that reaches the gateway (by its address), never "any".
                mreq = socket.inet_aton(host) + socket.inet_aton(local) + struct.pack("@i", 0)
                with contextlib.suppress(OSError):
                    rx.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                outgoing = socket.inet_aton("0.0.0.0") + socket.inet_aton(local) + bytes(4)
                for sock in (rx, tx):
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, outgoing)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, INTRANET_TTL)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except OSError:
            rx.close()
            tx.close()
            raise
        return rx, tx, (host, port)

    def _start(self) -> None:
        self._keepalive()
        for thread in self._threads:
            thread.start()

    # -- sending --------------------------------------------------------------------------

    def _datagram(self, data: bytes) -> bytes:
        keys = self.keys
        if keys is None:
            return encode_member_plain(data)
        with self._lock:
            self._seq += 1
            seq = self._seq
        return seal_member(keys.member_key, keys.member_id, seq, data)

    def _keepalive(self) -> None:
        with contextlib.suppress(OSError):
            self._tx.sendto(self._datagram(b""), self._dest)

    def send(self, data: bytes) -> int:
        """Send *data* to the group (through the relay); returns len(data).

        Raises:
            PermissionError: the gateway granted no send permission (B0).
            MembershipEnded: the membership is over.
            OSError: the local send failed.
        """
        if self._ended is not None:
            raise self._ended
        if not self.can_send:
            msg = f"not authorized to send to {self.group} (permission: {self.permission})"
            raise PermissionError(msg)
        self._tx.sendto(self._datagram(bytes(data)), self._dest)
        return len(data)

    # -- receiving ------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """The next datagram of the group: (DATA, (original sender host, port)).

        Raises:
            TimeoutError: nothing within *timeout*.
            MembershipEnded: the server ended the membership, or it was closed.
            PermissionError: a send-only membership (B1) receives nothing.
        """
        if not self.can_receive:
            msg = f"not authorized to receive from {self.group} (permission: {self.permission})"
            raise PermissionError(msg)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ended is not None:
                raise self._ended
            now = time.monotonic()
            released = self._release_held(now)
            if released is not None:
                return released
            if deadline is not None and now >= deadline:
                msg = f"no datagram from {self.group} in time"
                raise TimeoutError(msg)
            wait = None if deadline is None else deadline - now
            if self._held:  # wake up when the oldest held datagram's time is up
                until_expiry = max(0.0, self._held[0][0] + HOLD_TIME - now)
                wait = until_expiry if wait is None else min(wait, until_expiry)
            try:
                ready, _, _ = select.select([self._rx, self._wake_r], [], [], wait)
            except (OSError, ValueError) as exc:  # closed under us
                raise self._ended or MembershipEnded("membership closed") from exc
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
                continue
            if self._rx not in ready:
                continue
            try:
                data, src = self._rx.recvfrom(UDP_RECV_SIZE)
            except OSError:
                continue
            accepted = self._accept(data, src[:2], time.monotonic())
            if accepted is not None:
                self.received += 1
                return accepted

    def _accept(
        self, data: bytes, src: tuple[str, int], now: float
    ) -> tuple[bytes, tuple[str, int]] | None:
        """Check one datagram from the relay side; None when it is dropped or held."""
        if not data:
            return None
        if self.keys is None:
            if data[0] != McastDatagramType.RELAY_PLAIN:
                return None  # member datagrams (ours included) and sealed ones: not for us
            try:
                source, payload = decode_relay_plain(data)
            except MalformedMessage:
                self.dropped += 1
                return None
            return self._deliver(source, payload)
        if data[0] != McastDatagramType.RELAY_SEALED:
            return None  # TYPE 01/03 are member traffic; TYPE 04 never sits next to sealed
        try:
            header = peek_header(data)
        except UnsealError:
            self.dropped += 1
            return None
        with self._lock:
            key = self._key(header.id, now)
            window = self._windows.get(header.id)
            if key is None:
                if header.id > self._current and len(self._held) < HOLD_LIMIT:
                    self._held.append((now, data, src))  # its B6 may still be on the way
                else:
                    self.dropped += 1
                return None
            assert window is not None
            if not window.check(header.seq):
                self.dropped += 1
                return None
        try:
            _, source, payload = open_relay_datagram(key, data)
        except (UnsealError, MalformedMessage):
            self.dropped += 1
            return None
        with self._lock:
            if not window.accept(header.seq):
                self.dropped += 1
                return None
        return self._deliver(source, payload)

    def _deliver(self, source: Address, payload: bytes) -> tuple[bytes, tuple[str, int]] | None:
        if self.mode == "multicast" and (source.host, source.port) == _norm(self._own):
            return None  # our own datagram, relayed back to the whole group
        return payload, (source.host, source.port)

    def _key(self, key_id: int, now: float) -> bytes | None:
        key = self._group_keys.get(key_id)
        expires = self._expires.get(key_id)
        if key is not None and expires is not None and now >= expires:
            del self._group_keys[key_id]
            del self._expires[key_id]
            self._windows.pop(key_id, None)
            return None
        return key

    def _release_held(self, now: float) -> tuple[bytes, tuple[str, int]] | None:
        while self._held:
            stamp, data, src = self._held[0]
            with self._lock:
                known = peek_header(data).id in self._group_keys
            if not known and now - stamp < HOLD_TIME:
                return None
            self._held.popleft()
            if not known:
                self.dropped += 1  # its key never came
                continue
            accepted = self._accept(data, src, now)
            if accepted is not None:
                self.received += 1
                return accepted
        return None

    # -- the control connection -----------------------------------------------------------

    def _control_loop(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self._control.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._finish(None, "the gateway closed the control connection")
                return
            buf += data
            try:
                while (parsed := maybe_read_control_message(buf, self._awaiting)) is not None:
                    message, used = parsed
                    del buf[:used]
                    self._on_message(message)
            except ProtocolError as exc:
                self._finish(None, f"bad message from the gateway: {exc}")
                return
            if self._ended is not None:
                return

    def _on_message(self, message: object) -> None:
        if isinstance(message, RekeyNotice):
            with self._lock:
                now = time.monotonic()
                if self._current in self._group_keys:
                    self._expires[self._current] = now + self._key_grace
                self._group_keys[message.key_id] = message.group_key
                self._windows[message.key_id] = ReplayWindow()
                self._current = max(self._current, message.key_id)
                self.rekeys += 1
            self._wake()
        elif isinstance(message, McastNotice):
            self._finish(message.code, _ENDED_TEXT[message.code])
        else:
            self._awaiting = None
            self._replies.put(message)

    def _finish(self, notice: Notice | None, text: str) -> None:
        if self._ended is None:
            self.notice = notice
            self._ended = MembershipEnded(f"{self.group}: {text}", notice)
        self._replies.put(None)
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _keepalive_loop(self) -> None:
        while not self._stop.wait(KEEPALIVE_INTERVAL):
            self._keepalive()

    # -- the end --------------------------------------------------------------------------

    @property
    def ended(self) -> MembershipEnded | None:
        """Why the membership is over, or None while it lasts."""
        return self._ended

    def wait(self, timeout: float | None = None) -> MembershipEnded | None:
        """Block until the membership ends (or *timeout*); return why, or None."""
        self._stop.wait(timeout)
        return self._ended

    def leave(self, timeout: float = 10.0) -> bool:
        """LEAVE the group, then close; True when the gateway confirmed (REP 00)."""
        confirmed = False
        if self._ended is None and not self._closed:
            self._awaiting = Command.LEAVE_MCAST_GROUP
            try:
                self._control.sendall(LeaveRequest(self.group).to_bytes())
                reply = self._replies.get(timeout=timeout)
            except (OSError, queue.Empty):
                reply = None
            confirmed = isinstance(reply, Reply) and reply.ok
        self.close()
        return confirmed

    def close(self) -> None:
        """Close everything without a LEAVE (closing the control connection leaves too)."""
        if self._closed:
            return
        self._closed = True
        if self._ended is None:
            self._ended = MembershipEnded(f"{self.group}: membership closed")
        self._stop.set()
        self._wake()
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        for sock in (self._control, self._rx, self._tx):
            sock.close()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=2)
        self._wake_r.close()
        self._wake_w.close()

    def __repr__(self) -> str:
        return (
            f"Membership(group={self.group}, permission={self.permission!r}, mode={self.mode!r},"
            f" sealed={self.sealed}, ended={self._ended is not None})"
        )


def _norm(address: tuple[str, int]) -> tuple[str, int]:
    return Address.from_ip(address[0], address[1]).host, address[1]


def join_group(
    group: str,
    port: int,
    *,
    proxy: ProxyURL | str | tuple[str, int] | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = 10.0,
    ca_file: str | None = None,
    fingerprint: str | None = None,
    forward: tuple[str, int] | None = None,
    key_grace: float = KEY_GRACE,
) -> Membership:
    """JOIN *group*:*port* through the gateway *proxy* and return the membership.

    *forward* (host, port) starts a thread that sends every datagram received to that local
    UDP port, so an unmodified application can consume the stream (then do not call recv).
    *timeout* bounds connecting, the handshake and the JOIN.

    Raises:
        ReplyError: the gateway refused: 02 (rules or TLS required), B2, B3, 08, 01, or 07
            ("this server has no multicast support").
        AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as socksx.client.connect.
        ValueError: *group* is not a multicast address, or a SOCKS4 proxy.
    """
    from socksx.client import _credentials, _proxy_url

    address = Address(group, port)
    problem = group_problem(address)
    if problem is not None:
        raise ValueError(problem)
    url = _proxy_url(proxy)
    if url.version == 4:
        msg = "multicast needs a SOCKS5 proxy"
        raise ValueError(msg)
    credentials, _ = _credentials(url, username, password)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    try:
        reply = _request_join(session.sock, address, session.deadline, url)
        session.sock.settimeout(None)
        membership = Membership(session.sock, address, reply, url, key_grace)
    except BaseException:
        session.close()
        raise
    membership._start()
    if forward is not None:
        threading.Thread(
            target=_forward_loop, args=(membership, forward), name="mcast-forward", daemon=True
        ).start()
    return membership


def _request_join(
    sock: socket.socket, group: Address, deadline: float | None, url: ProxyURL
) -> JoinReply:
    buf = bytearray()
    try:
        sock.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
        sock.sendall(JoinRequest(group).to_bytes())
        while (parsed := maybe_read_control_message(buf, Command.JOIN_MCAST_GROUP)) is None:
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(4096)
            if not data:
                msg = (
                    f"proxy {url.hostport} closed the connection instead of answering the JOIN"
                    f" ({NO_SUPPORT}?)"
                )
                raise ProxyConnectionError(msg)
            buf += data
    except TimeoutError as exc:
        msg = f"proxy {url.hostport} did not answer the JOIN in time"
        raise ProxyTimeoutError(msg) from exc
    except ProtocolError as exc:
        msg = f"bad answer from proxy {url.hostport}: {exc}"
        raise ProxyConnectionError(msg) from exc
    except OSError as exc:
        if isinstance(exc, ProxyConnectionError):
            raise
        msg = f"connection to proxy {url.hostport} failed: {exc.strerror or exc}"
        raise ProxyConnectionError(msg) from exc
    message = parsed[0]
    if isinstance(message, McastNotice | RekeyNotice):
        msg = f"proxy {url.hostport} sent a notice before answering the JOIN"
        raise ProxyConnectionError(msg)
    if message.rep == ReplyCode.COMMAND_NOT_SUPPORTED:
        raise ReplyError(message.rep, f"{NO_SUPPORT} (REP 0x07)")
    if not isinstance(message, JoinReply) or not message.ok:
        raise ReplyError(message.rep)
    return message


def _forward_loop(membership: Membership, target: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as out:
        while True:
            try:
                data, _ = membership.recv()
            except (MembershipEnded, PermissionError):
                return
            with contextlib.suppress(OSError):
                out.sendto(data, target)
