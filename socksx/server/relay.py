"""The full-duplex TCP relay: byte-exact, half-close propagated, idle timeout, bytes counted.

Two pumps, one per direction. The session's own greenlet runs client -> upstream, a child
greenlet runs upstream -> client. EOF on one side becomes ``shutdown(SHUT_WR)`` on the other and
the opposite direction keeps flowing; an error on either side ends both. The idle timer counts
activity in both directions, so a download with a silent client is not idle.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import gevent
from gevent import socket as gsocket

__all__ = ["Counters", "relay"]

CHUNK = 65536


class Counters(Protocol):
    """Whatever holds a session's byte counts (the Session object)."""

    bytes_up: int
    bytes_down: int


class _Shared:
    """What the two pumps share: last activity time and how the relay ended."""

    __slots__ = ("error", "last", "loop", "timed_out")

    def __init__(self) -> None:
        self.loop = gevent.get_hub().loop
        self.last = self.loop.now()
        self.error: BaseException | None = None
        self.timed_out = False


def _pump(
    src: gsocket.socket,
    dst: gsocket.socket,
    counters: Counters,
    upward: bool,
    shared: _Shared,
    idle: float,
) -> None:
    """Copy src -> dst until EOF; then half-close dst. Returns on EOF or idle timeout."""
    loop = shared.loop
    recv = src.recv
    sendall = dst.sendall
    while True:
        try:
            data = recv(CHUNK)
        except TimeoutError:
            # Quiet in this direction: idle only if the other direction is quiet too.
            if loop.now() - shared.last < idle:
                continue
            shared.timed_out = True
            return
        if not data:
            break
        sendall(data)
        if upward:
            counters.bytes_up += len(data)
        else:
            counters.bytes_down += len(data)
        shared.last = loop.now()
    # The destination may already be gone: then there is nobody left to tell.
    with contextlib.suppress(OSError):
        dst.shutdown(gsocket.SHUT_WR)


def relay(
    client: gsocket.socket,
    upstream: gsocket.socket,
    counters: Counters,
    idle: float,
    pending: bytes = b"",
) -> str:
    """Relay until both directions reach EOF, one side fails, or both are idle for *idle* s.

    *pending* is client data that arrived with the request (pipelined) and goes first.
    Returns the session result: "ok", "idle-timeout" or "io-error: ...". Never raises OSError.
    """
    shared = _Shared()
    client.settimeout(idle)
    upstream.settimeout(idle)

    def downward() -> None:
        try:
            _pump(upstream, client, counters, False, shared, idle)
        except OSError as exc:
            shared.error = exc
        else:
            if not shared.timed_out:
                return
        # Wake the session greenlet, blocked reading the client: shutting the socket down makes
        # its recv return EOF (no exception thrown across greenlets).
        with contextlib.suppress(OSError):
            client.shutdown(gsocket.SHUT_RDWR)

    child = gevent.spawn(downward)
    try:
        if pending:
            upstream.sendall(pending)
            counters.bytes_up += len(pending)
        _pump(client, upstream, counters, True, shared, idle)
        if shared.timed_out:
            child.kill()
        else:
            child.join()
    except OSError as exc:
        shared.error = exc
    finally:
        child.kill()
    if shared.error is not None:
        exc = shared.error
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"io-error: {reason or type(exc).__name__}"
    if shared.timed_out:
        return "idle-timeout"
    return "ok"
