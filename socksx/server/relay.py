"""The full-duplex TCP relay: byte-exact, half-close propagated, idle timeout, bytes counted.

EOF on one side becomes ``shutdown(SHUT_WR)`` on the other and the opposite direction keeps
flowing; an error on either side ends both. The idle timer counts activity in both directions,
so a download with a silent client is not idle.

On Linux both directions are libev callbacks that move bytes with ``splice(2)`` through a pipe
(socket -> pipe -> socket): payload never enters Python, no greenlet exists per direction, and
the pipe is made on the first readable event, so an idle session holds no pipe and costs about
12 KiB. Elsewhere (or with ``zero_copy = false``, and always for TLS sockets) one greenlet per
direction copies through one buffer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from time import monotonic
from typing import Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event

__all__ = ["SPLICE_AVAILABLE", "Counters", "relay"]

CHUNK = 65536  #: user-space copy buffer, one per direction
PIPE_SIZE = 1048576  #: splice pipe capacity (F_SETPIPE_SZ) and the most moved per splice
ROUNDS_PER_EVENT = 8  #: splices a flow may do per readiness event before yielding
SPLICE_AVAILABLE = hasattr(os, "splice") and hasattr(os, "pipe2")
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
_READ, _WRITE = 1, 2  # libev event masks


class Counters(Protocol):
    """Whatever holds a session's byte counts (the Session object)."""

    bytes_up: int
    bytes_down: int


class _Shared:
    """What the two pumps share: last activity time and how the relay ended."""

    __slots__ = ("error", "idle", "last", "timed_out")

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.last = monotonic()
        self.error: BaseException | None = None
        self.timed_out = False

    def still_busy(self) -> bool:
        """After a quiet wait: was the other direction active within the idle time?"""
        if monotonic() - self.last < self.idle:
            return True
        self.timed_out = True
        return False


def _io_error(exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"io-error: {(reason or type(exc).__name__).lower()}"


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
        shared.last = monotonic()


class _Flow:
    """One direction of the splice relay, driven by libev callbacks (no greenlet of its own)."""

    __slots__ = (
        "buffered",
        "counters",
        "dfd",
        "done",
        "dst",
        "eof",
        "pipe_r",
        "pipe_w",
        "reader",
        "relay",
        "sfd",
        "upward",
        "writer",
    )

    def __init__(
        self, relay: _SpliceRelay, src: gsocket.socket, dst: gsocket.socket, upward: bool
    ) -> None:
        self.relay = relay
        self.dst = dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.counters = relay.counters
        self.upward = upward
        self.reader = relay.loop.io(self.sfd, _READ)
        self.writer = relay.loop.io(self.dfd, _WRITE)
        self.pipe_r = self.pipe_w = -1
        self.buffered = 0  # bytes in the pipe, not yet written to dst
        self.eof = False
        self.done = False

    def start(self) -> None:
        self.reader.start(self._on_readable)

    def _on_readable(self) -> None:
        try:
            if self.pipe_w < 0:
                # A pipe only while bytes are in flight: an idle session holds none (two
                # descriptors per session, not six), and the pool makes this cheap.
                self.pipe_r, self.pipe_w = _make_pipe()
            # A few rounds per wake-up while data keeps coming (fewer trips through the event
            # loop on bulk transfers); bounded, so one busy flow cannot starve the others.
            for _ in range(ROUNDS_PER_EVENT):
                try:
                    n = os.splice(self.sfd, self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    break
                if not n:
                    self.eof = True
                    self._finish()
                    return
                self.buffered = n
                if not self._push():
                    self.relay.last = monotonic()
                    return  # the pipe stays with us until dst drains it
                if n < PIPE_SIZE:
                    break  # the socket had less than a pipeful: it is probably empty now
            self.relay.last = monotonic()
            self._put_back_pipe()
        except OSError as exc:
            self.relay.fail(exc)

    def _push(self) -> bool:
        """Write the pipe out; False (and wait for writability) if dst would block."""
        while self.buffered:
            try:
                m = os.splice(self.pipe_r, self.dfd, self.buffered, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.reader.stop()
                self.writer.start(self._on_writable)
                return False
            self.buffered -= m
            if self.upward:
                self.counters.bytes_up += m
            else:
                self.counters.bytes_down += m
        return True

    def _put_back_pipe(self) -> None:
        _release_pipe(self.pipe_r, self.pipe_w, True)
        self.pipe_r = self.pipe_w = -1

    def _on_writable(self) -> None:
        try:
            if self._push():
                self._put_back_pipe()
                self.writer.stop()
                self.relay.last = monotonic()
                self.reader.start(self._on_readable)
        except OSError as exc:
            self.relay.fail(exc)

    def _finish(self) -> None:
        self.reader.stop()
        self.done = True
        # Propagate EOF; the destination may be gone already, then nobody is left to tell.
        with contextlib.suppress(OSError):
            self.dst.shutdown(gsocket.SHUT_WR)
        self.relay.flow_done()

    def close(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.reader.close()
        self.writer.close()
        if self.pipe_w >= 0:
            # Only a pipe known to be empty may serve another relay.
            _release_pipe(self.pipe_r, self.pipe_w, self.buffered == 0)
            self.pipe_r = self.pipe_w = -1


#: Empty pipes of finished relays, reused by new ones: a short session then costs no pipe2,
#: fcntl or close calls. Bounded, so a burst does not hold descriptors for ever.
_PIPE_POOL: list[tuple[int, int]] = []
PIPE_POOL_SIZE = 128


def _make_pipe() -> tuple[int, int]:
    if _PIPE_POOL:
        return _PIPE_POOL.pop()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _release_pipe(r: int, w: int, empty: bool) -> None:
    if empty and len(_PIPE_POOL) < PIPE_POOL_SIZE:
        _PIPE_POOL.append((r, w))
    else:
        os.close(r)
        os.close(w)


class _SpliceRelay:
    """Both directions as libev callbacks; the session greenlet only waits for the end."""

    __slots__ = (
        "counters",
        "done",
        "down",
        "error",
        "idle",
        "last",
        "loop",
        "result",
        "timer",
        "up",
    )

    def __init__(
        self, client: gsocket.socket, upstream: gsocket.socket, counters: Counters, idle: float
    ) -> None:
        self.loop = gevent.get_hub().loop
        self.counters = counters
        self.idle = idle
        self.last = monotonic()
        self.done = Event()
        self.result = "ok"
        self.up = _Flow(self, client, upstream, True)
        self.down = _Flow(self, upstream, client, False)
        self.timer = self.loop.timer(idle)

    def run(self) -> str:
        try:
            self.up.start()
            self.down.start()
            self.timer.start(self._on_timer)
            self.done.wait()
        finally:
            self.up.close()
            self.down.close()
            self.timer.stop()
            self.timer.close()
        return self.result

    def _on_timer(self) -> None:
        quiet = monotonic() - self.last
        if quiet >= self.idle:
            self.result = "idle-timeout"
            self.done.set()
            return
        # Activity since the timer was armed: sleep for the rest of the idle period.
        self.timer.close()
        self.timer = self.loop.timer(self.idle - quiet)
        self.timer.start(self._on_timer)

    def flow_done(self) -> None:
        if self.up.done and self.down.done:
            self.done.set()

    def fail(self, exc: OSError) -> None:
        if not self.done.is_set():
            self.result = _io_error(exc)
            self.done.set()


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
    if zero_copy and SPLICE_AVAILABLE:
        if pending:
            try:
                upstream.sendall(pending)
            except OSError as exc:
                return _io_error(exc)
            counters.bytes_up += len(pending)
        return _SpliceRelay(client, upstream, counters, idle).run()
    return _copy_relay(client, upstream, counters, idle, pending)


def _copy_relay(
    client: gsocket.socket,
    upstream: gsocket.socket,
    counters: Counters,
    idle: float,
    pending: bytes,
) -> str:
    """The portable relay: one greenlet per direction, copying through a buffer each."""
    shared = _Shared(idle)
    client.settimeout(idle)
    upstream.settimeout(idle)

    def pump(src: gsocket.socket, dst: gsocket.socket, upward: bool) -> None:
        try:
            _run_pump(_copy_pump, src, dst, counters, upward, shared)
        except OSError as exc:
            shared.error = exc

    try:
        if pending:
            upstream.sendall(pending)
            counters.bytes_up += len(pending)
    except OSError as exc:
        return _io_error(exc)
    pumps = {
        gevent.spawn(pump, client, upstream, True),
        gevent.spawn(pump, upstream, client, False),
    }
    try:
        # Both must reach EOF for a clean end; an error or the idle timeout ends both at once
        # (kill is explicit and synchronous: no exception is thrown into a socket wait).
        while pumps and shared.error is None and not shared.timed_out:
            for finished in gevent.wait(list(pumps), count=1):
                pumps.discard(finished)
    finally:
        gevent.killall(list(pumps))
    if shared.error is not None:
        return _io_error(shared.error)
    if shared.timed_out:
        return "idle-timeout"
    return "ok"
