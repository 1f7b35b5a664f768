"""The one loop that moves bytes between a socket and a ClientConnection during a handshake.

Every public client call goes through ``open_session``: connect to the proxy (TLS if asked),
negotiate, then exchange one request and its replies with ``Session.send``/``Session.receive``.
Reads take exactly ``conn.bytes_needed()`` bytes, so nothing after a reply is taken from the
socket the caller gets back. All failures become socksx.errors client errors here, in one place,
and the socket is closed on every failure path.

Plain stdlib sockets: blocking in threads, cooperative once gevent has monkey-patched.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import ssl
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Final, Self

from socksx.client.proxyurl import ProxyURL
from socksx.errors import (
    AuthenticationFailed,
    ProtocolError,
    ProxyConnectionError,
    ProxyTimeoutError,
    TLSVerificationError,
)
from socksx.protocol.client_connection import (
    NEED_DATA,
    ClientConnection,
    ClientEvent,
    ClientMessage,
)
from socksx.protocol.constants import Method
from socksx.protocol.messages import Greeting, MethodSelection, UserPassReply, UserPassRequest

__all__ = ["Credentials", "Session", "open_session", "open_socket"]

Credentials = tuple[bytes, bytes]
_FINGERPRINT_PREFIX: Final = "sha256:"


class Closing:
    """The context-manager protocol for client objects that own sockets: ``with`` closes."""

    def close(self) -> None:
        """Release everything the object owns (idempotent); subclasses extend it."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Session:
    """A socket plus the client state machine, with an optional deadline for the handshake."""

    def __init__(self, sock: socket.socket, proxy: ProxyURL, deadline: float | None) -> None:
        self.sock = sock
        self.proxy = proxy
        self.conn = ClientConnection()
        self.deadline = deadline

    def send(self, message: ClientMessage) -> None:
        """Encode and send one message."""
        data = self.conn.send(message)
        with self.errors():
            self._arm_timeout()
            self.sock.sendall(data)

    def receive(self) -> ClientEvent:
        """Read exactly one message from the proxy."""
        with self.errors():
            while (event := self.conn.next_event()) is NEED_DATA:
                self._arm_timeout()
                self.conn.receive_data(self.sock.recv(self.conn.bytes_needed()))
        return event

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn I/O and codec failures into client errors, closing the socket."""
        try:
            yield
        except (ProxyConnectionError, ProxyTimeoutError):
            # Already ours (TLSVerificationError is also an OSError: do not wrap it again).
            self.close()
            raise
        except TimeoutError as exc:
            self.close()
            msg = f"proxy {self.proxy.hostport} did not answer in time"
            raise ProxyTimeoutError(msg) from exc
        except ssl.SSLError as exc:
            self.close()
            msg = f"TLS failure talking to proxy {self.proxy.hostport}: {exc}"
            raise ProxyConnectionError(msg) from exc
        except OSError as exc:
            self.close()
            msg = f"connection to proxy {self.proxy.hostport} failed: {_reason(exc)}"
            raise ProxyConnectionError(msg) from exc
        except ProtocolError as exc:
            self.close()
            msg = f"bad answer from proxy {self.proxy.hostport}: {exc}"
            raise ProxyConnectionError(msg) from exc

    def _arm_timeout(self) -> None:
        if self.deadline is None:
            self.sock.settimeout(None)
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)


def open_socket(
    proxy: ProxyURL,
    *,
    timeout: float | None,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> Session:
    """Connect to the proxy (and do TLS for socks5s://), without speaking SOCKS yet.

    Raises:
        ProxyConnectionError: cannot connect, or TLS failed (TLSVerificationError for certificates).
        ProxyTimeoutError: connecting took longer than *timeout*.
        ValueError: *fingerprint* is not ``sha256:HEX``.
    """
    pin = _parse_fingerprint(fingerprint) if fingerprint else None
    context = _tls_context(proxy, ca_file, pin) if proxy.tls else None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        sock = socket.create_connection(proxy.address, timeout=timeout)
    except TimeoutError as exc:
        msg = f"cannot connect to proxy {proxy.hostport}: timed out"
        raise ProxyTimeoutError(msg) from exc
    except OSError as exc:
        msg = f"cannot connect to proxy {proxy.hostport}: {_reason(exc)}"
        raise ProxyConnectionError(msg) from exc
    session = Session(sock, proxy, deadline)
    if context is not None:
        session.sock = _wrap_tls(session, context, pin)
    return session


def open_session(
    proxy: ProxyURL,
    *,
    credentials: Credentials | None,
    timeout: float | None,
    ca_file: str | None = None,
    fingerprint: str | None = None,
) -> Session:
    """Connect and, for SOCKS5, negotiate a method (and authenticate), ready for a request.

    Offers username/password only when *credentials* are given (RFC 1928 §3 leaves the choice
    to the server, and an offer we cannot follow through would only fail later).

    Raises:
        AuthenticationFailed: no acceptable method, or the credentials were rejected.
        ProxyConnectionError, ProxyTimeoutError: see ``open_socket``; also a bad handshake.
    """
    session = open_socket(proxy, timeout=timeout, ca_file=ca_file, fingerprint=fingerprint)
    if proxy.version == 4:
        return session
    methods = (Method.NO_AUTH, Method.USERNAME_PASSWORD) if credentials else (Method.NO_AUTH,)
    session.send(Greeting(methods))
    selection = session.receive()
    assert isinstance(selection, MethodSelection)
    if selection.method == Method.NO_ACCEPTABLE:
        session.close()
        hint = "" if credentials else " (the proxy may require a username and password)"
        msg = f"proxy {proxy.hostport}: no acceptable authentication method{hint}"
        raise AuthenticationFailed(msg)
    if selection.method == Method.USERNAME_PASSWORD and credentials is not None:
        session.send(UserPassRequest(*credentials))
        status = session.receive()
        assert isinstance(status, UserPassReply)
        if not status.ok:
            session.close()
            msg = f"proxy {proxy.hostport} rejected the username/password"
            raise AuthenticationFailed(msg)
    return session


def _tls_context(proxy: ProxyURL, ca_file: str | None, pin: bytes | None) -> ssl.SSLContext:
    """Chain + hostname verification by default; with a pin alone, the pin decides.

    A ``sha256:HEX`` fingerprint alone accepts exactly that certificate (self-signed proxies);
    together with *ca_file* both must hold.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        msg = f"proxy {proxy.hostport}: cannot load CA file {ca_file}: {_reason(exc)}"
        raise ProxyConnectionError(msg) from exc
    if pin is not None and ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _wrap_tls(session: Session, context: ssl.SSLContext, pin: bytes | None) -> ssl.SSLSocket:
    """Do the TLS handshake on the connected socket and check the pin, if any."""
    proxy = session.proxy
    with session.errors():
        session._arm_timeout()
        try:
            tls = context.wrap_socket(session.sock, server_hostname=proxy.host)
        except ssl.SSLCertVerificationError as exc:
            session.close()
            msg = f"proxy {proxy.hostport}: certificate verification failed: {exc.verify_message}"
            raise TLSVerificationError(msg) from exc
    if pin is not None:
        der = tls.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
            tls.close()
            msg = f"proxy {proxy.hostport}: certificate does not match the pinned fingerprint"
            raise TLSVerificationError(msg)
    return tls


def _parse_fingerprint(text: str) -> bytes:
    """``sha256:HEX`` (colons between octets allowed) -> 32 raw octets.

    Raises:
        ValueError: another algorithm or not 32 octets of hex.
    """
    if not text.lower().startswith(_FINGERPRINT_PREFIX):
        msg = f"fingerprint must look like sha256:HEX, got {text!r}"
        raise ValueError(msg)
    hexpart = text[len(_FINGERPRINT_PREFIX) :].replace(":", "")
    try:
        digest = bytes.fromhex(hexpart)
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        msg = f"fingerprint must be 32 octets of hex after 'sha256:', got {text!r}"
        raise ValueError(msg)
    return digest


def _reason(exc: OSError) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection refused``."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
