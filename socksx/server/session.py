"""One client connection: handshake through the codec, policy, dispatch, one log line.

The session is the only code that reads the control socket during the handshake; the command
handlers (connect, bind, udp and the extensions) get the parsed request and the session, and
raise ``PolicyDenied`` / ``UpstreamError`` / codec errors to refuse. Nothing escapes ``run()``:
expected failures become a reply code and a result string, bugs a logged traceback and REP 01.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket
from greenlet import getcurrent

from socksx.errors import HandshakeTimeout, PolicyDenied, UpstreamError
from socksx.log import logger
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.connection import NEED_DATA, ConnectionClosed, ServerConnection, State
from socksx.protocol.constants import (
    SOCKS4_VERSION,
    Command,
    Method,
    ReplyCode,
    Socks4Code,
    UserPassStatus,
)
from socksx.protocol.errors import ProtocolError, RemoteProtocolError
from socksx.protocol.messages import (
    Greeting,
    MethodSelection,
    Reply,
    UserPassReply,
    UserPassRequest,
)
from socksx.protocol.socks4 import Socks4Reply, Socks4Request
from socksx.server.auth import AuthResult
from socksx.server.rawio import RawStream
from socksx.server.relay import SPLICE_AVAILABLE, relay
from socksx.server.rules import COMMAND_NAMES

if TYPE_CHECKING:
    from socksx.server.server import Listener, Server

__all__ = ["COMMAND_NAMES", "HANDLERS", "Session"]

RECV_SIZE = 4096


#: Command byte -> handler(session, request). Extension packages add entries.
HANDLERS: dict[int, Callable[[Session, Any], None]] = {}

_ids = itertools.count(1)
_AUTH_OK = UserPassReply(UserPassStatus.SUCCESS)
_AUTH_FAILED = UserPassReply(UserPassStatus.FAILURE)


class _Refused(Exception):
    """The handshake ended with a refusal already sent (method 0xFF, RFC 1929 failure)."""


class Session:
    """State of one client connection, read by handlers, the log line and the stats API."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "client_ip",
        "client_port",
        "command",
        "conn",
        "dst",
        "ended",
        "greenlet",
        "id",
        "listener",
        "result",
        "server",
        "sock",
        "started",
        "user",
    )

    def __init__(self, server: Server, listener: Listener, sock: Any, peer: tuple) -> None:
        self.id = next(_ids)
        self.greenlet = getcurrent()  # what kill() ends; serves later sessions after this one
        self.ended = False
        self.server = server
        self.listener = listener
        self.sock = sock
        host = peer[0]
        if ":" in host:
            # IPv6: drop a scope id, canonicalise. (IPv4 from the kernel is canonical already.)
            host = Address.from_ip(host, peer[1]).host
        self.client_ip = host
        self.client_port = peer[1]
        self.conn = ServerConnection()
        self.user: str | None = None
        self.command = "-"
        self.dst = "-"
        self.result = "ok"
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = time.monotonic()

    # -- the run loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve the connection to its end. Never raises."""
        server = self.server
        try:
            # The handshake timeout: a bare libev timer that throws into this greenlet
            # (gevent.Timeout does the same with several more calls on every session).
            timer = gevent.get_hub().loop.timer(server.config.timeouts.handshake)
            timer.start(self.greenlet.throw, HandshakeTimeout)
            try:
                if self.listener.tls:
                    self.sock.do_handshake()
                request = self._handshake()
            finally:
                timer.stop()
                timer.close()
            if request is None:
                return
            command = self.conn.command or 0
            handler = HANDLERS.get(command)
            if handler is None:
                self._refuse(ReplyCode.COMMAND_NOT_SUPPORTED, "unsupported-command")
                return
            if command != Command.CONNECT and isinstance(self.sock, RawStream):
                # Only CONNECT stays on the raw socket; the other commands use gevent's API.
                self.sock = self.sock.to_gevent()
            handler(self, request)
        except HandshakeTimeout:
            self.result = "handshake-timeout"
        except _Refused:
            pass
        except PolicyDenied as exc:
            server.stats.rule_denials += 1
            self._refuse(exc.reply or ReplyCode.NOT_ALLOWED, f"denied rule={exc.rule_id}")
        except UpstreamError as exc:
            self._refuse(exc.reply or ReplyCode.GENERAL_FAILURE, f"failed: {exc}")
        except RemoteProtocolError as exc:
            self._refuse(exc.reply, f"protocol-error: {exc}")
        except ssl.SSLError as exc:
            self.result = f"tls-error: {exc.reason or exc}".lower()
        except OSError as exc:
            self.result = f"io-error: {(exc.strerror or str(exc) or type(exc).__name__).lower()}"
        except gevent.GreenletExit:
            self.result = "killed"
            raise
        except Exception:
            logger.exception("session %d: internal error", self.id)
            self._refuse(ReplyCode.GENERAL_FAILURE, "internal-error")
        finally:
            self._finish()

    def kill(self) -> None:
        """End the session from outside (its result becomes ``killed``); no-op once ended.

        The check runs in the hub just before the throw: the greenlet may have finished this
        session meanwhile and be serving another, which must not be hit.
        """

        def throw() -> None:
            if not self.ended:
                self.greenlet.throw(gevent.GreenletExit)

        gevent.get_hub().loop.run_callback(throw)

    def next_event(self) -> object:
        """The next message from the client (NEED_DATA handled here); ConnectionClosed at EOF."""
        conn = self.conn
        while (event := conn.next_event()) is NEED_DATA:
            conn.receive_data(self.sock.recv(RECV_SIZE))
        return event

    def _handshake(self) -> object | None:
        """Method negotiation and authentication; returns the request, or None on EOF."""
        event = self.next_event()
        if isinstance(event, ConnectionClosed):
            self.result = "closed-before-request"
            return None
        if isinstance(event, Socks4Request):
            return self._socks4(event)
        assert isinstance(event, Greeting)
        wanted = Method.USERNAME_PASSWORD if self.listener.auth == "userpass" else Method.NO_AUTH
        if wanted not in event.methods:
            self.sock.sendall(self.conn.send(MethodSelection(Method.NO_ACCEPTABLE)))
            self.result = "no-acceptable-method"
            raise _Refused
        self.sock.sendall(self.conn.send(MethodSelection(wanted)))
        if wanted == Method.USERNAME_PASSWORD:
            self._authenticate()
        event = self.next_event()
        if isinstance(event, ConnectionClosed):
            self.result = "closed-before-request"
            return None
        self._note_request(event)
        return event

    def _authenticate(self) -> None:
        event = self.next_event()
        if isinstance(event, ConnectionClosed):
            self.result = "closed-during-auth"
            raise _Refused
        assert isinstance(event, UserPassRequest)
        name = event.username.decode("utf-8", "replace")
        self.user = name
        self.server.refresh_users()
        outcome = self.server.authenticator.verify(self.client_ip, event.username, event.password)
        ok = outcome is AuthResult.OK
        self.sock.sendall(self.conn.send(_AUTH_OK if ok else _AUTH_FAILED))
        if not ok:
            self.server.stats.auth_failures += 1
            self.result = f"auth-failed: {outcome.value}"
            logger.warning(
                "authentication failed",
                extra={"fields": {"client": self.client_ip, "user": name, "why": outcome.value}},
            )
            raise _Refused

    def _socks4(self, request: Socks4Request) -> object:
        self._note_request(request)
        if self.listener.auth == "userpass" or not self.server.config.socks4:
            # A SOCKS4 USERID is not authentication: never serve it where credentials are required.
            self.user = None
            rule = "socks4-disabled"
            raise PolicyDenied(rule, "SOCKS4 is not accepted on this listener")
        return request

    def _note_request(self, request: object) -> None:
        command = getattr(request, "command", None)
        self.command = COMMAND_NAMES.get(int(command), "?") if command is not None else "?"
        address = getattr(request, "address", None)
        if address is not None:
            self.dst = str(address)

    # -- helpers for handlers -------------------------------------------------------------

    def send_reply(self, rep: ReplyCode, address: Address | None = None) -> None:
        """Send a reply in the client's protocol version (SOCKS4 gets 5A/5B)."""
        bound = address if address is not None else ZERO_V4
        if self.conn.version == SOCKS4_VERSION:
            code = Socks4Code.GRANTED if rep == ReplyCode.SUCCEEDED else Socks4Code.REJECTED
            self.sock.sendall(self.conn.send(Socks4Reply(code, bound)))
        else:
            self.sock.sendall(self.conn.send(Reply(rep, bound)))

    def send(self, message: object) -> None:
        """Send an extension reply or notice through the state machine."""
        self.sock.sendall(self.conn.send(message))

    def relay_with(self, upstream: Any, pending: bytes) -> None:
        """Relay the client and *upstream* to the end; the outcome becomes the result.

        *upstream* is a gevent socket or a ``RawStream``; the splice relay takes either, the
        copy relay (no splice, ``zero_copy = false``, TLS) wants gevent sockets.
        """
        config = self.server.config
        # splice(2) moves raw bytes: never through a TLS socket.
        zero_copy = config.zero_copy and not self.listener.tls and SPLICE_AVAILABLE
        if not zero_copy:
            if isinstance(self.sock, RawStream):
                self.sock = self.sock.to_gevent()
            if isinstance(upstream, RawStream):
                upstream = upstream.to_gevent()
        try:
            self.result = relay(self.sock, upstream, self, config.timeouts.idle, pending, zero_copy)
        finally:
            upstream.close()

    def take_trailing(self) -> bytes:
        """Client bytes that arrived after the request (pipelined data)."""
        return self.conn.trailing_data()

    def _refuse(self, rep: ReplyCode | None, result: str) -> None:
        self.result = result
        if rep is None:
            return
        if self.conn.state not in (State.REPLY, State.BIND_SECOND, State.CONTROL_REPLY):
            return
        # The client may be gone already: the result says enough then.
        with contextlib.suppress(OSError, ProtocolError):
            self.send_reply(rep)

    def resolve_and_check(self, address: Address, command: str) -> list[tuple[int, tuple]]:
        """Resolve *address* and check the rules against the name and every address.

        Raises:
            PolicyDenied: a rule (or the default) denies it.
            UpstreamError: the name does not resolve (REP 04).
        """
        server = self.server
        if address.is_ip:
            # Codec addresses are canonical: a colon means IPv6.
            family = gsocket.AF_INET6 if ":" in address.host else gsocket.AF_INET
            targets = [(family, (address.host, address.port))]
            resolved: tuple[str, ...] = ()
        else:
            decision = server.rules.decide(
                self.client_ip, self.user, command, address.host, address.port
            )
            if not decision.allowed and decision.rule_id != "default-deny":
                # Denied by the name alone: don't even look the name up.
                raise PolicyDenied(decision.rule_id)
            try:
                targets = server.resolve(address.host, address.port)
            except OSError as exc:
                from socksx.server.connect import errno_to_reply

                msg = f"cannot resolve {address.host}: {exc.strerror or exc}"
                raise UpstreamError(errno_to_reply(exc), msg) from exc
            resolved = tuple(sockaddr[0] for _, sockaddr in targets)
        decision = server.rules.decide(
            self.client_ip, self.user, command, address.host, address.port, resolved
        )
        if not decision.allowed:
            raise PolicyDenied(decision.rule_id)
        return targets

    def outward_for(self, targets: list[tuple[int, tuple]]) -> str | None:
        """The configured outward source address if it suits the targets' family."""
        outward = self.server.config.outward_address
        if not outward or not targets:
            return None
        want6 = targets[0][0] == gsocket.AF_INET6
        return outward if (":" in outward) == want6 else None

    # -- the end --------------------------------------------------------------------------

    def _finish(self) -> None:
        server = self.server
        duration = time.monotonic() - self.started
        server.stats.session_ended(
            self.command,
            self.result.split(":", 1)[0].split(" ", 1)[0],
            self.bytes_up,
            self.bytes_down,
        )
        if logger.isEnabledFor(20):
            logger.info(
                "session",
                extra={
                    "fields": {
                        "id": self.id,
                        "client": f"{self.client_ip}:{self.client_port}",
                        "user": self.user or "-",
                        "cmd": self.command,
                        "dst": self.dst,
                        "up": self.bytes_up,
                        "down": self.bytes_down,
                        "duration": round(duration, 3),
                        "result": self.result,
                    }
                },
            )
