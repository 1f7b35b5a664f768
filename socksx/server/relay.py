"""The full-duplex TCP relay: byte-exact, half-close propagated, idle timeout, bytes counted.

Two pumps, one per direction. The session's own greenlet runs client -> upstream, a child
greenlet runs upstream -> client. EOF on one side becomes ``shutdown(SHUT_WR)`` on the other and
the opposite direction keeps flowing; an error on either side ends both. The idle timer counts
activity in both directions, so a download with a silent client is not idle.

On Linux the pumps move bytes with ``splice(2)`` through a pipe (socket -> pipe -> socket), so
payload never enters Python; the pipe is made on the first readable event, so an idle session
holds no pipe. Elsewhere (or with ``zero_copy = false``) each pump copies through one buffer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent import socket as gsocket

__all__ = ["SPLICE_AVAILABLE", "Counters", "relay"]

CHUNK = 65536
SPLICE_AVAILABLE = hasattr(os, "splice") and hasattr(os, "pipe2")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
_READ, _WRITE = 1, 2  # libev event masks


class Counters(Protocol):
    """Whatever holds a session's byte counts (the Session object)."""

    bytes_up: int
    bytes_down: int


class _Idle(Exception):
    """Raised by a wait that outlived the idle timeout."""


class _Shared:
    """What the two pumps share: last activity time and how the relay ended."""

    __slots__ = ("error", "idle", "last", "loop", "timed_out")

    def __init__(self, idle: float) -> None:
        self.loop = gevent.get_hub().loop
        self.idle = idle
        self.last = self.loop.now()
        self.error: BaseException | None = None
        self.timed_out = False

    def still_busy(self) -> bool:
        """After a quiet wait: was the other direction active within the idle time?"""
        if self.loop.now() - self.last < self.idle:
            return True
        self.timed_out = True
        return False


def _count(counters: Counters, upward: bool, n: int) -> None:
    if upward:
        counters.bytes_up += n
    else:
        counters.bytes_down += n


def _copy_pump(
    src: gsocket.socket, dst: gsocket.socket, counters: Counters, upward: bool, shared: _Shared
) -> None:
    """Copy src -> dst through one buffer until EOF (or idle: shared.timed_out)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    recv_into = src.recv_into
    sendall = dst.sendall
    loop = shared.loop
    while True:
        try:
            n = recv_into(buf)
        except TimeoutError:
            if shared.still_busy():
                continue
            return
        if not n:
            return
        sendall(view[:n])
        _count(counters, upward, n)
        shared.last = loop.now()


def _splice_pump(
    src: gsocket.socket, dst: gsocket.socket, counters: Counters, upward: bool, shared: _Shared
) -> None:
    """Move src -> dst with splice(2) through a pipe until EOF (or idle)."""
    loop = shared.loop
    sfd, dfd = src.fileno(), dst.fileno()
    readable = loop.io(sfd, _READ)
    writable = loop.io(dfd, _WRITE)
    wait = gsocket.wait
    splice = os.splice
    flags = _SPLICE_FLAGS
    idle = shared.idle
    pipe_r = pipe_w = -1
    try:
        while True:
            if pipe_w < 0:
                # No pipe until there is something to move: idle sessions hold no pipe.
                try:
                    wait(readable, idle, _Idle)
                except _Idle:
                    if shared.still_busy():
                        continue
                    return
                pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                n = splice(sfd, pipe_w, CHUNK, flags=flags)
            except BlockingIOError:
                try:
                    wait(readable, idle, _Idle)
                except _Idle:
                    if shared.still_busy():
                        continue
                    return
                continue
            if not n:
                return
            left = n
            while left:
                try:
                    left -= splice(pipe_r, dfd, left, flags=flags)
                except BlockingIOError:
                    try:
                        wait(writable, idle, _Idle)
                    except _Idle:
                        # The destination has not drained for the whole idle time: give up.
                        shared.timed_out = True
                        return
            _count(counters, upward, n)
            shared.last = loop.now()
    finally:
        readable.close()
        writable.close()
        if pipe_w >= 0:
            os.close(pipe_r)
            os.close(pipe_w)


Pump = Callable[[gsocket.socket, gsocket.socket, Counters, bool, _Shared], None]


def _run_pump(
    pump: Pump,
    src: gsocket.socket,
    dst: gsocket.socket,
    counters: Counters,
    upward: bool,
    shared: _Shared,
) -> None:
    pump(src, dst, counters, upward, shared)
    if not shared.timed_out:
        # Propagate EOF; the destination may already be gone, then nobody is left to tell.
        with contextlib.suppress(OSError):
            dst.shutdown(gsocket.SHUT_WR)


def relay(
    client: gsocket.socket,
    upstream: gsocket.socket,
    counters: Counters,
    idle: float,
    pending: bytes = b"",
    zero_copy: bool = True,
) -> str:
    """Relay until both directions reach EOF, one side fails, or both are idle for *idle* s.

    *pending* is client data that arrived with the request (pipelined) and goes first.
    Returns the session result: "ok", "idle-timeout" or "io-error: ...". Never raises OSError.
    """
    shared = _Shared(idle)
    pump: Pump = _splice_pump if zero_copy and SPLICE_AVAILABLE else _copy_pump
    client.settimeout(idle)
    upstream.settimeout(idle)

    def downward() -> None:
        try:
            _run_pump(pump, upstream, client, counters, False, shared)
        except OSError as exc:
            shared.error = exc
        else:
            if not shared.timed_out:
                return
        # Wake the session greenlet, blocked reading the client: shutting the socket down makes
        # its read see EOF (no exception thrown across greenlets).
        with contextlib.suppress(OSError):
            client.shutdown(gsocket.SHUT_RDWR)

    child = gevent.spawn(downward)
    try:
        if pending:
            upstream.sendall(pending)
            counters.bytes_up += len(pending)
        _run_pump(pump, client, upstream, counters, True, shared)
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
        return f"io-error: {(reason or type(exc).__name__).lower()}"
    if shared.timed_out:
        return "idle-timeout"
    return "ok"
