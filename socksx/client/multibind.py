"""Blocking client of MULTI_BIND and ACCEPT: several reverse channels through one proxy.

    with multi_bind(proxy="127.0.0.1:1080", tcp=1, udp=2, rtp_pair=True) as mb:
        tell_the_peer(mb.channels)                 # BND addresses, e.g. in an RTSP SETUP
        for event in mb.events():
            if isinstance(event, PeerConnected):
                sock = mb.accept(event)            # a new connection, relayed to the peer
            ...
        data, peer = mb.udp_socket(1).recvfrom(timeout=5)

The control connection stays open as long as the MultiBind: closing it (``close()``, or the
``with`` block's end) closes every channel on the proxy. UDP channels get their local socket and
are registered with the proxy (docs/PROTOCOL.md 10.5) before ``multi_bind`` returns, so no
datagram of an eager peer is lost. Plain stdlib sockets: usable from threads, and cooperative
once gevent has monkey-patched; ``next_event`` may run in one thread while others accept and
exchange datagrams.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from socksx.client import (
    DEFAULT_TIMEOUT,
    HostPort,
    ProxyArg,
    _closing_on_error,
    _credentials,
    _key,
    _proxy_url,
    _unwrap_relayed,
)
from socksx.client._driver import Closing, Credentials, Session, open_session
from socksx.client.proxyurl import ProxyURL
from socksx.errors import LocalProtocolError, ProxyConnectionError, ReplyError
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.client_connection import RawReply, RawRequest
from socksx.protocol.constants import (
    UDP_RECV_SIZE,
    ChannelFlag,
    ChannelType,
    ReplyCode,
)
from socksx.protocol.datagram import encode_udp_datagram
from socksx.protocol.errors import ProtocolError
from socksx.protocol.messages import Reply, maybe_read_reply
from socksx.protocol.multibind import (
    AcceptExpired,
    AcceptRequest,
    ChannelClosed,
    ChannelRequest,
    MultiBindEvent,
    MultiBindReply,
    MultiBindRequest,
    PeerConnected,
    maybe_read_event,
    maybe_read_multibind_reply,
)

__all__ = [
    "AcceptExpired",
    "ChannelClosed",
    "ChannelInfo",
    "ChannelSocket",
    "MultiBind",
    "MultiBindEvent",
    "PeerConnected",
    "channel_requests",
    "multi_bind",
]

RECV_SIZE: Final = 4096


@dataclass(frozen=True)
class _Login:
    """What every ACCEPT connection repeats: the MULTI_BIND's credentials and TLS settings."""

    credentials: Credentials | None
    ca_file: str | None
    fingerprint: str | None


_REGISTER: Final = encode_udp_datagram(ZERO_V4)


@dataclass(frozen=True)
class ChannelInfo:
    """One granted channel: where the peer reaches it and, for UDP, the proxy's relay address."""

    id: int
    type: str  #: "tcp" or "udp"
    bound: HostPort  #: the outward address the peer connects or sends to (BND)
    relay: HostPort | None  #: UDP only: where this client exchanges the channel's datagrams
    rtp_pair: bool = False  #: True for the first (RTP, even port) channel of an RTP/RTCP pair

    def to_json(self) -> dict[str, object]:
        """The channel as JSON-ready data."""
        return {
            "id": self.id,
            "type": self.type,
            "bound": _text(self.bound),
            "relay": None if self.relay is None else _text(self.relay),
            "rtp_pair": self.rtp_pair,
        }


def channel_requests(
    tcp: int = 0, udp: int = 0, rtp_pair: bool = False
) -> tuple[ChannelRequest, ...]:
    """TCP channels first, then UDP channels; with *rtp_pair* the first two UDP ones are a pair.

    Raises:
        ValueError: no channel, more than 16, or a pair without two UDP channels.
    """
    if tcp < 0 or udp < 0 or not 1 <= tcp + udp <= 16:
        msg = f"ask for 1 to 16 channels in all (got {tcp} TCP + {udp} UDP)"
        raise ValueError(msg)
    if rtp_pair and udp < 2:
        msg = "an RTP/RTCP pair needs at least two UDP channels"
        raise ValueError(msg)
    out = [ChannelRequest(ChannelType.TCP)] * tcp
    for index in range(udp):
        flags = ChannelFlag.RTP_PAIR if rtp_pair and index == 0 else ChannelFlag(0)
        out.append(ChannelRequest(ChannelType.UDP, flags))
    return tuple(out)


class ChannelSocket:
    """The local end of one UDP channel: datagrams to and from remote peers, via REL."""

    def __init__(self, channel: ChannelInfo, sock: socket.socket, relay: HostPort) -> None:
        self.channel = channel
        self._sock = sock
        self._relay = relay
        self._relay_key = _key(*relay)

    @property
    def socket(self) -> socket.socket:
        """The local UDP socket (for select/poll)."""
        return self._sock

    def register(self) -> None:
        """(Re)send the registration datagram (DST 0.0.0.0:0, no data)."""
        self._sock.sendto(_REGISTER, self._relay)

    def sendto(self, data: bytes, address: HostPort) -> int:
        """Send *data* to the remote peer *address* (from the channel's BND); returns len(data).

        Raises:
            OSError: local send failure.
            socksx.errors.LocalProtocolError: an address that cannot be encoded.
        """
        host, port = address
        try:
            target = Address.from_ip(host, port)
        except ValueError:
            target = Address(host, port)
        self._sock.sendto(encode_udp_datagram(target, data), self._relay)
        return len(data)

    def recvfrom(
        self, bufsize: int = UDP_RECV_SIZE, timeout: float | None = None
    ) -> tuple[bytes, HostPort]:
        """The next datagram a peer sent to the channel: (data, (peer host, peer port)).

        Datagrams not from REL, malformed ones and fragments are skipped.

        Raises:
            TimeoutError: nothing within *timeout*.
            OSError: the socket was closed (also by ``close()`` in another thread).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"no datagram on channel {self.channel.id} in time"
                    raise TimeoutError(msg)
                self._sock.settimeout(remaining)
            dgram, source = self._sock.recvfrom(UDP_RECV_SIZE)
            if not source:  # shut down by close() in another thread
                raise OSError(errno.EBADF, "the channel socket was closed")
            relayed = _unwrap_relayed(dgram, source, self._relay_key, bufsize)
            if relayed is not None:
                return relayed

    def close(self) -> None:
        """Close the local socket (the channel itself lives until the MultiBind closes)."""
        _shutdown(self._sock)
        self._sock.close()


class MultiBind(Closing):
    """Granted channels and the control connection that owns them on the proxy."""

    def __init__(
        self,
        session: Session,
        reply: MultiBindReply,
        requested: Sequence[ChannelRequest],
        *,
        login: _Login,
        pending: bytes,
    ) -> None:
        self._session = session
        self._login = login
        self._buffer = bytearray(pending)
        self._events_lock = threading.Lock()
        self._eof = False
        self._closed = False
        control = session.sock
        self.channels: list[ChannelInfo] = [
            ChannelInfo(
                entry.chan_id,
                entry.type.name.lower(),
                _public(entry.bound, control),
                None if entry.relay is None else _public(entry.relay, control),
                requested[entry.chan_id].rtp_pair,
            )
            for entry in reply.channels
        ]
        self._udp: dict[int, ChannelSocket] = {}

    @property
    def proxy(self) -> ProxyURL:
        """The proxy this MultiBind lives on."""
        return self._session.proxy

    @property
    def control(self) -> socket.socket:
        """The control connection (closing it closes every channel on the proxy)."""
        return self._session.sock

    def _open_udp(self) -> None:
        local = self._session.sock.getsockname()[0]
        for channel in self.channels:
            if channel.relay is None:
                continue
            family = _family(channel.relay[0])
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((local if _family(local) == family else _any(family), 0))
                handle = ChannelSocket(channel, sock, channel.relay)
                handle.register()
            except OSError:
                sock.close()
                raise
            self._udp[channel.id] = handle

    def udp_socket(self, chan: int | ChannelInfo) -> ChannelSocket:
        """The local socket of UDP channel *chan* (registered with the proxy already).

        Raises:
            ValueError: *chan* is not a UDP channel of this MultiBind.
        """
        chan_id = chan.id if isinstance(chan, ChannelInfo) else chan
        try:
            return self._udp[chan_id]
        except KeyError:
            msg = f"channel {chan_id} is not a UDP channel of this multi-bind"
            raise ValueError(msg) from None

    def next_event(self, timeout: float | None = None) -> MultiBindEvent | None:
        """The next C0/C1/C2 event; None once the proxy has closed the control connection.

        Raises:
            TimeoutError: no event within *timeout* (the MultiBind stays usable).
            ProxyConnectionError: the control connection broke or carried garbage.
        """
        with self._events_lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            sock = self._session.sock
            while True:
                try:
                    parsed = maybe_read_event(self._buffer)
                except ProtocolError as exc:
                    self.close()
                    msg = f"bad event from proxy {self.proxy.hostport}: {exc}"
                    raise ProxyConnectionError(msg) from exc
                if parsed is not None:
                    event, consumed = parsed
                    del self._buffer[:consumed]
                    return event
                if self._eof or self._closed:
                    return None
                if deadline is None:
                    sock.settimeout(None)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        msg = "no multi-bind event in time"
                        raise TimeoutError(msg)
                    sock.settimeout(remaining)
                try:
                    data = sock.recv(RECV_SIZE)
                except TimeoutError:
                    continue  # the deadline check above raises
                except OSError as exc:
                    if self._closed:
                        return None
                    msg = f"multi-bind control connection to {self.proxy.hostport} lost: {exc}"
                    raise ProxyConnectionError(msg) from exc
                if not data:
                    self._eof = True
                    if self._buffer:
                        msg = f"proxy {self.proxy.hostport} closed in the middle of an event"
                        raise ProxyConnectionError(msg)
                    return None
                self._buffer += data

    def events(self) -> Iterator[MultiBindEvent]:
        """Every event until the proxy closes the control connection."""
        while (event := self.next_event()) is not None:
            yield event

    def accept(
        self, token: bytes | PeerConnected, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> socket.socket:
        """Claim a waiting peer (ACCEPT on a new connection, same credentials): a socket
        relayed to the peer.

        Raises:
            ReplyError: the proxy refused (REP 02: unknown, used, expired or foreign token).
            AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as connect().
        """
        raw = token.token if isinstance(token, PeerConnected) else token
        request = AcceptRequest(raw)
        login = self._login
        session = open_session(
            self.proxy,
            credentials=login.credentials,
            timeout=timeout,
            ca_file=login.ca_file,
            fingerprint=login.fingerprint,
        )
        with _closing_on_error(session):
            session.send(RawRequest(request.to_bytes()))
            event = session.receive()
            assert isinstance(event, RawReply)
            if not event.data:
                proxy = self.proxy.hostport
                msg = f"proxy {proxy} closed the connection instead of answering ACCEPT"
                raise ProxyConnectionError(msg)
            with session.errors():
                parsed = maybe_read_reply(event.data)
            assert parsed is not None  # the driver framed a whole reply
            reply = parsed[0]
            if not reply.ok:
                raise _refused(reply, self.proxy, "ACCEPT")
        session.sock.settimeout(None)
        return session.sock

    def close(self) -> None:
        """Close the control connection (the proxy closes every channel) and the UDP sockets."""
        self._closed = True
        for handle in self._udp.values():
            handle.close()
        # shutdown first: a thread blocked in next_event() wakes up (close alone would not
        # release the descriptor, nor send the FIN, while a recv is in progress).
        _shutdown(self._session.sock)
        self._session.close()


def multi_bind(
    *,
    proxy: ProxyArg = None,
    tcp: int = 0,
    udp: int = 0,
    rtp_pair: bool = False,
    channels: Sequence[ChannelRequest] | None = None,
    peer: HostPort | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> MultiBind:
    """Ask the proxy for *tcp* TCP listeners and *udp* UDP relays (docs/PROTOCOL.md 10).

    *channels* gives the exact channel list instead (``channel_requests`` builds one).
    *peer* is the expected remote peer, (host, port) with port 0 for any port; None: any peer.
    *timeout* bounds the handshake (and each later ACCEPT's).

    Raises:
        ReplyError: the proxy refused; REP 07 means it has no multi-bind support.
        AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as connect().
        ValueError: bad channel counts, a SOCKS4 proxy, no proxy configured.
    """
    url = _proxy_url(proxy)
    if url.version == 4:
        msg = "MULTI_BIND needs a SOCKS5 proxy"
        raise ValueError(msg)
    requested = tuple(channels) if channels is not None else channel_requests(tcp, udp, rtp_pair)
    expected = _peer_address(peer)
    try:
        request = MultiBindRequest(expected, requested)
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from None
    credentials, _ = _credentials(url, username, password)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    with _closing_on_error(session):
        with session.errors():
            _send_deadline(session, timeout)
            session.sock.sendall(request.to_bytes())
            reply, pending = _read_reply(session, timeout)
        if isinstance(reply, Reply):
            raise _refused(reply, url, "MULTI_BIND")
        login = _Login(credentials, ca_file, fingerprint)
        handle = MultiBind(session, reply, requested, login=login, pending=pending)
        try:
            with session.errors():
                handle._open_udp()
        except BaseException:
            handle.close()
            raise
    session.sock.settimeout(None)
    return handle


# -- helpers ---------------------------------------------------------------------------------


def _peer_address(peer: HostPort | None) -> Address:
    if peer is None:
        return ZERO_V4
    host, port = peer
    try:
        return Address.from_ip(host, port)
    except ValueError:
        try:
            return Address(host, port)
        except LocalProtocolError as exc:
            raise ValueError(str(exc)) from None


def _send_deadline(session: Session, timeout: float | None) -> None:
    session.deadline = None if timeout is None else time.monotonic() + timeout
    session.sock.settimeout(timeout)


def _read_reply(session: Session, timeout: float | None) -> tuple[MultiBindReply | Reply, bytes]:
    """The answer to MULTI_BIND, and whatever followed it (the first events) in the buffer."""
    buffer = bytearray()
    while (parsed := maybe_read_multibind_reply(buffer)) is None:
        if session.deadline is not None:
            remaining = session.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            session.sock.settimeout(remaining)
        data = session.sock.recv(RECV_SIZE)
        if not data:
            proxy = session.proxy.hostport
            msg = (
                f"proxy {proxy} closed the connection instead of answering MULTI_BIND "
                "(no multi-bind support?)"
            )
            raise ProxyConnectionError(msg)
        buffer += data
    reply, consumed = parsed
    return reply, bytes(buffer[consumed:])


def _refused(reply: Reply, url: ProxyURL, what: str) -> ReplyError:
    code = int(reply.rep)
    if code == ReplyCode.COMMAND_NOT_SUPPORTED:
        text = f"proxy {url.hostport} has no multi-bind support (REP 0x07 command not supported)"
    elif code == ReplyCode.NOT_ALLOWED and what == "ACCEPT":
        text = (
            f"proxy {url.hostport} refused ACCEPT: the token is unknown, used, expired or "
            "not ours (REP 0x02)"
        )
    else:
        return ReplyError(code, f"proxy {url.hostport} refused {what}: {ReplyError(code)}")
    return ReplyError(code, text)


def _public(address: Address, control: socket.socket) -> HostPort:
    """An unspecified reply address means the proxy's own address on the control connection."""
    if address.is_ip and address.host in ("0.0.0.0", "::"):
        return Address.from_ip(*control.getpeername()[:2]).host, address.port
    return address.host, address.port


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _any(family: socket.AddressFamily) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _text(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
