"""Blocking SOCKS4/4a/5 client: ``connect``, ``bind``, ``udp_associate`` and probes.

Plain stdlib sockets, so it works in threads and cooperatively once gevent has monkey-patched.
Every call opens its own connection to the proxy; failures raise socksx.errors client errors
(ReplyError with the proxy's code, AuthenticationFailed, ProxyConnectionError,
ProxyTimeoutError) and never leave a socket open.

    sock = connect("example.com", 80, proxy="socks5h://127.0.0.1:1080")
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Final

from socksx.client._driver import Closing, Credentials, Session, open_session, open_socket
from socksx.client.mcast import Membership, MembershipEnded, join_group
from socksx.client.proxyurl import DEFAULT_PORT, ProxyURL, parse_proxy_url, proxy_from_env
from socksx.errors import LocalProtocolError, ReplyError
from socksx.protocol.address import Address
from socksx.protocol.client_connection import ClientEvent, RawReply, RawRequest
from socksx.protocol.constants import (
    UDP_RECV_SIZE,
    Atyp,
    Command,
    Method,
    Socks4Code,
    Socks4Command,
)
from socksx.protocol.datagram import decode_udp_datagram, encode_udp_datagram
from socksx.protocol.errors import ProtocolError
from socksx.protocol.messages import Greeting, MethodSelection, Reply, Request
from socksx.protocol.socks4 import Socks4Reply, Socks4Request

__all__ = [
    "DEFAULT_PORT",
    "BindHandle",
    "Membership",
    "MembershipEnded",
    "MultiBind",
    "ProxyURL",
    "Tunnel",
    "UdpAssociation",
    "bind",
    "connect",
    "join_group",
    "multi_bind",
    "open_tunnel",
    "parse_proxy_url",
    "probe_reachable",
    "proxy_from_env",
    "raw_request",
    "select_method",
    "udp_associate",
]

ProxyArg = ProxyURL | str | tuple[str, int] | None
HostPort = tuple[str, int]
DEFAULT_TIMEOUT: Final = 10.0

_SOCKS4_TEXT: Final = {
    Socks4Code.REJECTED: "request rejected or failed",
    Socks4Code.NO_IDENTD: "request rejected: client not running identd",
    Socks4Code.IDENTD_MISMATCH: "request rejected: identd user mismatch",
}


def connect(
    host: str,
    port: int,
    *,
    proxy: ProxyArg = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    remote_dns: bool | None = None,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> socket.socket:
    """A socket connected to *host*:*port* through the proxy, blocking (timeout None).

    *proxy* is a ProxyURL, a URL string, a (host, port) pair (socks5h) or None (SOCKS_PROXY,
    then ALL_PROXY). *username*/*password* override the URL's. *remote_dns* overrides the
    scheme: False resolves *host* here and sends the IP. *timeout* bounds the whole handshake.
    *ca_file*/*fingerprint* (``sha256:HEX``) apply to socks5s:// proxies.

    Raises:
        ReplyError: the proxy refused (``.reply`` holds REP, or the SOCKS4 CD).
        AuthenticationFailed: no acceptable method, or credentials rejected.
        ProxyConnectionError: proxy unreachable, closed early, or spoke garbage.
        ProxyTimeoutError: the handshake took longer than *timeout*.
        ValueError: no proxy configured, or bad arguments.
        OSError: local name resolution failed (remote_dns False).
    """
    url = _proxy_url(proxy)
    credentials, userid = _credentials(url, username, password)
    target = _target(host, port, url, remote_dns)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    with _closing_on_error(session):
        if url.version == 4:
            session.send(Socks4Request(Socks4Command.CONNECT, target, userid))
        else:
            session.send(Request(Command.CONNECT, target))
        _granted(session.receive())
    return _hand_over(session)


class BindHandle(Closing):
    """A BIND in progress: ``bound`` is where the peer must connect; ``accept()`` waits for it."""

    def __init__(self, session: Session, bound: HostPort) -> None:
        self._session = session
        self._done = False
        self.bound = bound

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, HostPort]:
        """Wait for the second reply: (socket relayed to the peer, the peer's address).

        Raises:
            ReplyError: the proxy reported a failure (refused peer, timeout on its side...).
            ProxyTimeoutError: no peer within *timeout* (the BIND is then closed).
            ProxyConnectionError: the proxy closed the connection.
            LocalProtocolError: accept() was already called.
        """
        if self._done:
            msg = "accept() was already called on this BIND"
            raise LocalProtocolError(msg)
        self._done = True
        session = self._session
        session.deadline = None if timeout is None else time.monotonic() + timeout
        with _closing_on_error(session):
            peer = _granted(session.receive())
        return _hand_over(session), (peer.host, peer.port)

    def close(self) -> None:
        """Give up on the BIND (closes the control connection unless accept() returned it)."""
        if not self._done:
            self._done = True
            self._session.close()


def bind(
    *,
    proxy: ProxyArg = None,
    expected_peer: HostPort = ("0.0.0.0", 0),
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> BindHandle:
    """Ask the proxy to listen for one connection from *expected_peer* (RFC 1928 §4 BIND).

    An unspecified bound address in the reply (0.0.0.0, ::) is replaced by the proxy's address.

    Raises:
        ReplyError, AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as connect().
        ValueError: SOCKS4 with a non-IPv4 *expected_peer*.
    """
    url = _proxy_url(proxy)
    credentials, userid = _credentials(url, username, password)
    peer = _literal(*expected_peer)
    if url.version == 4 and peer.atyp is not Atyp.IPV4:
        msg = f"SOCKS4 BIND needs an IPv4 expected peer, got {expected_peer[0]!r}"
        raise ValueError(msg)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    with _closing_on_error(session):
        if url.version == 4:
            session.send(Socks4Request(Socks4Command.BIND, peer, userid))
        else:
            session.send(Request(Command.BIND, peer))
        bound = _granted(session.receive())
        return BindHandle(session, _public(bound, session.sock))


class UdpAssociation(Closing):
    """A UDP ASSOCIATE: datagrams go through ``relay``; lives as long as the control connection."""

    def __init__(
        self, session: Session, udp: socket.socket, relay: HostPort, remote_dns: bool
    ) -> None:
        self._session = session
        self._udp = udp
        self._remote_dns = remote_dns
        self.relay = relay
        self._relay_key = _key(*relay)

    @property
    def control(self) -> socket.socket:
        """The TCP control connection (closing it ends the association)."""
        return self._session.sock

    @property
    def socket(self) -> socket.socket:
        """The local UDP socket (for select/poll)."""
        return self._udp

    def sendto(self, data: bytes, address: HostPort) -> int:
        """Send *data* to *address* through the relay; returns len(data).

        Raises:
            OSError: local send failure or local name resolution failure.
        """
        host, port = address
        target = _target(host, port, None, self._remote_dns, socket.SOCK_DGRAM)
        self._udp.sendto(encode_udp_datagram(target, data), self.relay)
        return len(data)

    def recvfrom(
        self, bufsize: int = UDP_RECV_SIZE, timeout: float | None = None
    ) -> tuple[bytes, HostPort]:
        """The next datagram from the relay: (data, (source host, source port)).

        Datagrams not from the relay, malformed ones and fragments (FRAG != 0, which socksx
        does not reassemble) are skipped. Data beyond *bufsize* is discarded, as recvfrom does.

        *timeout* 0 checks once without waiting.

        Raises:
            TimeoutError: nothing within *timeout*.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                self._udp.settimeout(None)
            else:
                self._udp.settimeout(max(deadline - time.monotonic(), 0.0))
            try:
                dgram, source = self._udp.recvfrom(UDP_RECV_SIZE)
            except (BlockingIOError, TimeoutError):
                msg = "no datagram from the relay in time"
                raise TimeoutError(msg) from None
            relayed = _unwrap_relayed(dgram, source, self._relay_key, bufsize)
            if relayed is not None:
                return relayed

    def close(self) -> None:
        """Close the UDP socket and the control connection (idempotent)."""
        self._udp.close()
        self._session.close()


def udp_associate(
    *,
    proxy: ProxyArg = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    remote_dns: bool | None = None,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> UdpAssociation:
    """Open a UDP association (RFC 1928 §4 UDP ASSOCIATE, §7 datagrams).

    The UDP socket is bound to the control connection's local IP and declared in the request,
    so the proxy can tell our datagrams apart. A relay address of 0.0.0.0 or :: in the reply
    means "the proxy's own address".

    Raises:
        ReplyError, AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as connect().
        ValueError: a SOCKS4 proxy (SOCKS4 has no UDP).
    """
    url = _proxy_url(proxy)
    if url.version == 4:
        msg = "SOCKS4 has no UDP ASSOCIATE"
        raise ValueError(msg)
    credentials, _ = _credentials(url, username, password)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    udp: socket.socket | None = None
    with _closing_on_error(session):
        with session.errors():
            local = session.sock.getsockname()
            udp = socket.socket(session.sock.family, socket.SOCK_DGRAM)
            udp.bind((local[0], 0))
        try:
            session.send(Request(Command.UDP_ASSOCIATE, Address.from_ip(*udp.getsockname()[:2])))
            relay = _public(_granted(session.receive()), session.sock)
            if _family(relay[0]) != udp.family:
                # The relay speaks another IP family than the control connection: our declared
                # address cannot be kept, so send from a socket of the relay's family.
                udp.close()
                udp = socket.socket(_family(relay[0]), socket.SOCK_DGRAM)
        except BaseException:
            udp.close()
            raise
    remote = url.remote_dns if remote_dns is None else remote_dns
    session.sock.settimeout(None)
    return UdpAssociation(session, udp, relay, remote)


def raw_request(
    data: bytes,
    *,
    proxy: ProxyArg = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> bytes | None:
    """Negotiate, send *data* as the request, return the reply's bytes (None if the proxy closed).

    The reply is framed by the RFC 1928 §6 shape (VER REP RSV ATYP ADDR PORT) without judging
    it, so extension commands can be probed before socksx can build them. The connection is
    closed afterwards.

    Raises:
        AuthenticationFailed, ProxyConnectionError, ProxyTimeoutError: as connect().
        ValueError: a SOCKS4 proxy.
    """
    url = _proxy_url(proxy)
    if url.version == 4:
        msg = "raw requests are SOCKS5 only"
        raise ValueError(msg)
    credentials, _ = _credentials(url, username, password)
    session = open_session(
        url, credentials=credentials, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint
    )
    try:
        session.send(RawRequest(data))
        event = session.receive()
    finally:
        session.close()
    assert isinstance(event, RawReply)
    return event.data or None


def select_method(
    methods: tuple[int, ...],
    *,
    proxy: ProxyArg = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> Method:
    """Offer exactly *methods* and return what the proxy selects (0xFF: none), then close.

    Raises:
        ProxyConnectionError: unreachable, closed, or not a SOCKS5 answer (which is how a
            SOCKS4-only server shows itself).
        ProxyTimeoutError: no answer within *timeout*.
    """
    url = _proxy_url(proxy)
    session = open_socket(url, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint)
    try:
        session.send(Greeting(methods))
        event = session.receive()
    finally:
        session.close()
    assert isinstance(event, MethodSelection)
    return event.method


def probe_reachable(
    *,
    proxy: ProxyArg = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> None:
    """Connect to the proxy (with TLS for socks5s://) and close again, saying nothing.

    Raises:
        ProxyConnectionError: nothing listens, or TLS failed (TLSVerificationError).
        ProxyTimeoutError: no connection within *timeout*.
    """
    url = _proxy_url(proxy)
    open_socket(url, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint).close()


# -- helpers ---------------------------------------------------------------------------------


def _proxy_url(proxy: ProxyArg) -> ProxyURL:
    if isinstance(proxy, ProxyURL):
        return proxy
    if isinstance(proxy, str):
        return parse_proxy_url(proxy)
    if isinstance(proxy, tuple):
        host, port = proxy
        return ProxyURL("socks5h", host, int(port))
    found = proxy_from_env()
    if found is None:
        msg = "no proxy given and neither SOCKS_PROXY nor ALL_PROXY names a SOCKS proxy"
        raise ValueError(msg)
    return found


def _credentials(
    url: ProxyURL, username: str | None, password: str | None
) -> tuple[Credentials | None, bytes]:
    """(RFC 1929 credentials or None, SOCKS4 USERID)."""
    user = url.username if username is None else username
    secret = url.password if password is None else password
    userid = (user or "").encode()
    if url.version == 4 or not user:
        return None, userid
    if not secret:
        msg = f"username {user!r} given without a password (RFC 1929 needs both)"
        raise ValueError(msg)
    return (user.encode(), secret.encode()), userid


def _literal(host: str, port: int) -> Address:
    """An IP literal as an Address (IPv4-mapped and scope ids normalised)."""
    try:
        return Address.from_ip(host, port)
    except ValueError:
        msg = f"{host!r} is not an IP address"
        raise ValueError(msg) from None


def _target(
    host: str,
    port: int,
    url: ProxyURL | None,
    remote_dns: bool | None,
    socktype: int = socket.SOCK_STREAM,
) -> Address:
    """What goes into DST: the name itself (remote DNS), or an IP resolved here."""
    with contextlib.suppress(ValueError):
        return _literal(host, port)
    remote = remote_dns if remote_dns is not None else (url is None or url.remote_dns)
    if remote:
        return Address(host, port)
    family = socket.AF_INET if url is not None and url.version == 4 else socket.AF_UNSPEC
    infos = socket.getaddrinfo(host, port, family, socktype)
    return Address.from_ip(str(infos[0][4][0]), port)


def _granted(event: ClientEvent) -> Address:
    """The reply's address, or ReplyError carrying the proxy's code."""
    if isinstance(event, Reply):
        if not event.ok:
            raise ReplyError(event.rep)
        return event.address
    assert isinstance(event, Socks4Reply)
    if not event.ok:
        text = _SOCKS4_TEXT.get(event.code, "request rejected")
        code = int(event.code)
        raise ReplyError(code, f"{text} (SOCKS4 CD {code:#04x})")
    return event.address


def _public(address: Address, control: socket.socket) -> HostPort:
    """Replace an unspecified reply address by the proxy's address on the control connection."""
    if address.is_ip and ipaddress.ip_address(address.host).is_unspecified:
        return Address.from_ip(*control.getpeername()[:2]).host, address.port
    return address.host, address.port


def _hand_over(session: Session) -> socket.socket:
    """The handshake is over: the caller gets a plain blocking socket."""
    assert not session.conn.trailing_data()
    session.sock.settimeout(None)
    return session.sock


def _unwrap_relayed(
    dgram: bytes, source: tuple[str, int], relay_key: tuple[str, int], bufsize: int
) -> tuple[bytes, tuple[str, int]] | None:
    """A UDP relay's datagram as (payload cut to *bufsize*, (source host, port)).

    None for what a client must skip: datagrams not from the relay, malformed ones and
    fragments (FRAG != 0, which socksx does not reassemble).
    """
    if _key(source[0], source[1]) != relay_key:
        return None
    try:
        header, offset = decode_udp_datagram(dgram)
    except ProtocolError:
        return None
    if header.frag:
        return None
    return dgram[offset : offset + bufsize], (header.address.host, header.address.port)


def _key(host: str, port: int) -> tuple[str, int]:
    return Address.from_ip(host, port).host, port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


@contextlib.contextmanager
def _closing_on_error(session: Session) -> Iterator[None]:
    try:
        yield
    except BaseException:
        session.close()
        raise


# Last: the extension clients build on the helpers above (an import at the top would be a cycle).
from socksx.client.multibind import MultiBind, multi_bind  # noqa: E402
from socksx.client.tunnel import Tunnel, open_tunnel  # noqa: E402 - it builds on UdpAssociation
