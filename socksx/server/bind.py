"""BIND (RFC 1928 §4, SOCKS4): listen on the outward side, two replies, then relay.

The listener binds the configured outward address (or the control connection's local address)
on an ephemeral port; the first reply names it. Only a connection from the address named in the
request is accepted, unless that address is unspecified (0.0.0.0 / ::); connections from other
hosts are closed and waiting goes on. The second reply names the peer. The wait is bounded by
``timeouts.bind``; a client that closes its control connection ends the wait at once.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from gevent import select as gselect
from gevent import socket as gsocket

from socksx.errors import PolicyDenied, UpstreamError
from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode
from socksx.server.connect import errno_to_reply

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["handle"]

EARLY_DATA_LIMIT = 65536


def _expected_peers(session: Session, address: Address) -> set[str] | None:
    """The peer IPs to accept, or None for any."""
    if address.is_ip:
        if ipaddress.ip_address(address.host).is_unspecified:
            return None
        return {address.host}
    try:
        targets = session.server.resolve(address.host, address.port)
    except OSError as exc:
        msg = f"cannot resolve {address.host}: {exc.strerror or exc}"
        raise UpstreamError(errno_to_reply(exc), msg) from exc
    return {Address.from_ip(sockaddr[0], 0).host for _, sockaddr in targets}


def handle(session: Session, request: object) -> None:
    """Serve one BIND."""
    address: Address = request.address  # type: ignore[attr-defined]
    server = session.server
    decision = server.rules.decide(
        session.client_ip, session.user, "bind", address.host, address.port
    )
    if not decision.allowed:
        raise PolicyDenied(decision.rule_id)
    expected = _expected_peers(session, address)
    local_ip = server.config.outward_address or session.sock.getsockname()[0]
    family = gsocket.AF_INET6 if ":" in local_ip else gsocket.AF_INET
    listener = gsocket.socket(family, gsocket.SOCK_STREAM)
    early = bytearray(session.take_trailing())
    try:
        listener.bind((local_ip, 0))
        listener.listen(1)
        bound = listener.getsockname()
        session.send_reply(ReplyCode.SUCCEEDED, Address.from_ip(bound[0], bound[1]))
        peer_sock = _accept(session, listener, expected, early)
    finally:
        listener.close()
    if peer_sock is None:
        return
    try:
        peer = peer_sock.getpeername()
        peer_address = Address.from_ip(peer[0], peer[1])
        session.dst = f"{session.dst} <- {peer_address}"
        session.send_reply(ReplyCode.SUCCEEDED, peer_address)
        session.relay_with(peer_sock, bytes(early))
    finally:
        peer_sock.close()


def _accept(
    session: Session, listener: gsocket.socket, expected: set[str] | None, early: bytearray
) -> gsocket.socket | None:
    """Wait for the expected peer; None (result set) if the client left first.

    Client bytes that arrive while waiting are appended to *early*.
    """
    timeout = session.server.config.timeouts.bind
    deadline = session.server.now() + timeout
    watching_client = True
    while True:
        remaining = deadline - session.server.now()
        if remaining <= 0:
            msg = "no connection to the BIND port in time"
            raise UpstreamError(ReplyCode.HOST_UNREACHABLE, msg)
        watch = [listener, session.sock] if watching_client else [listener]
        readable, _, _ = gselect.select(watch, [], [], remaining)
        if session.sock in readable:
            data = session.sock.recv(4096)
            if not data:
                session.result = "closed-while-binding"
                return None
            # Early client data for the future peer: keep it (bounded) for the relay.
            early += data
            if len(early) >= EARLY_DATA_LIMIT:
                watching_client = False
        if listener in readable:
            conn, peer = listener.accept()
            ip = Address.from_ip(peer[0], peer[1]).host
            if expected is None or ip in expected:
                return conn
            conn.close()
