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
from socket import SHUT_WR
from time import monotonic
from typing import Any, Protocol

import gevent
from gevent import get_hub
from gevent import socket as gsocket
from greenlet import getcurrent

from socksx.server.rawio import RawStream

__all__ = ["SPLICE_AVAILABLE", "Counters", "relay"]

CHUNK = 65536  #: user-space copy buffer, one per direction
PIPE_SIZE = 1048576  #: splice pipe capacity (F_SETPIPE_SZ) and the most moved per splice
ROUNDS_PER_EVENT = 8  #: splices a flow may do per readiness event before yielding
#: a splice that moved less than this ends the round (bulk flows keep going while it pays)
SMALL_READ = 65536
SPLICE_AVAILABLE = hasattr(os, "splice") and hasattr(os, "pipe2")
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
splice = getattr(os, "splice", None)
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
        if upward:
            counters.bytes_up += n
        else:
            counters.bytes_down += n
        shared.last = monotonic()


class _Flow:
    """One direction of the splice relay, driven by libev callbacks (no greenlet of its own)."""

    __slots__ = (
        "buffered",
        "counters",
        "dfd",
        "done",
        "dst",
        "pipe_r",
        "pipe_w",
        "reader",
        "relay",
        "sfd",
        "src",
        "upward",
        "writer",
    )

    def __init__(self, relay: _SpliceRelay, src: Any, dst: Any, upward: bool) -> None:
        self.relay: _SpliceRelay | None = relay
        self.src = src
        self.dst = dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.counters = relay.counters
        self.upward = upward
        self.reader = _watcher(relay.loop, src, self.sfd, _READ)
        self.writer: Any = None  # made on the first write that would block
        self.pipe_r = self.pipe_w = -1
        self.buffered = 0  # bytes in the pipe, not yet written to dst
        self.done = False

    def start(self) -> None:
        self.reader.start(self._on_readable)

    def _on_readable(self) -> None:
        relay = self.relay
        assert relay is not None
        try:
            if self.pipe_w < 0:
                # A pipe only while bytes are in flight: an idle session holds none (two
                # descriptors per session, not six), and the pool makes this cheap.
                self.pipe_r, self.pipe_w = _PIPE_POOL.pop() if _PIPE_POOL else _new_pipe()
            # A few rounds per wake-up while data keeps coming (fewer trips through the event
            # loop on bulk transfers); bounded, so one busy flow cannot starve the others.
            for _ in range(ROUNDS_PER_EVENT):
                try:
                    n = splice(self.sfd, self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    break
                if not n:
                    self._put_back_pipe()
                    self._finish(relay)  # may switch to the session: nothing after it
                    return
                self.buffered = n
                if not self._push():
                    relay.last = monotonic()
                    return  # the pipe stays with us until dst drains it
                if n < SMALL_READ:
                    break  # a small read drained the socket, most likely: no EAGAIN splice
            relay.last = monotonic()
            self._put_back_pipe()
        except OSError as exc:
            relay.fail(exc)  # may switch to the session: nothing after it

    def _push(self) -> bool:
        """Write the pipe out; False (and wait for writability) if dst would block."""
        while self.buffered:
            try:
                m = splice(self.pipe_r, self.dfd, self.buffered, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.reader.stop()
                if self.writer is None:
                    assert self.relay is not None
                    self.writer = _watcher(self.relay.loop, self.dst, self.dfd, _WRITE)
                self.writer.start(self._on_writable)
                return False
            self.buffered -= m
            if self.upward:
                self.counters.bytes_up += m
            else:
                self.counters.bytes_down += m
        return True

    def _put_back_pipe(self) -> None:
        if len(_PIPE_POOL) < PIPE_POOL_SIZE:
            _PIPE_POOL.append((self.pipe_r, self.pipe_w))
        else:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
        self.pipe_r = self.pipe_w = -1

    def _on_writable(self) -> None:
        relay = self.relay
        assert relay is not None
        try:
            if self._push():
                self._put_back_pipe()
                self.writer.stop()
                relay.last = monotonic()
                self.reader.start(self._on_readable)
        except OSError as exc:
            relay.fail(exc)

    def _finish(self, relay: _SpliceRelay) -> None:
        self.reader.stop()
        self.done = True
        other = relay.down if self.upward else relay.up
        if not other.done:
            # Propagate EOF; the other direction keeps flowing. (After the last EOF the
            # close that follows sends the FIN: no shutdown call needed.) The destination may
            # be gone already, then nobody is left to tell.
            try:  # noqa: SIM105 (per session: suppress() would cost three calls)
                self.dst.shutdown(SHUT_WR)
            except OSError:
                pass
            return
        relay.end("ok")

    def close(self) -> None:
        """Stop both watchers, close the ones this flow made, let go of the relay."""
        self.reader.stop()
        if self.writer is not None:
            self.writer.stop()
        # A RawStream's watchers are its own (reused, closed with it); the others were made here.
        if not isinstance(self.src, RawStream):
            self.reader.close()
        if self.writer is not None and not isinstance(self.dst, RawStream):
            self.writer.close()
        self.writer = None
        if self.pipe_w >= 0:
            # Only a pipe known to be empty may serve another relay.
            if self.buffered == 0:
                self._put_back_pipe()
            else:
                os.close(self.pipe_r)
                os.close(self.pipe_w)
                self.pipe_r = self.pipe_w = -1
        self.relay = None  # no cycle left for the garbage collector


def _watcher(loop: Any, sock: Any, fd: int, events: int) -> Any:
    """The socket's own reusable watcher for a RawStream, else a new one."""
    if isinstance(sock, RawStream):
        return sock.watcher(events)
    return loop.io(fd, events)


#: Empty pipes of finished relays, reused by new ones: a short session then costs no pipe2,
#: fcntl or close calls. Bounded, so a burst does not hold descriptors for ever.
_PIPE_POOL: list[tuple[int, int]] = []
PIPE_POOL_SIZE = 128


def _new_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # A smaller pipe works too (the limit is /proc/sys/fs/pipe-max-size).
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


class _SpliceRelay:
    """Both directions as libev callbacks; the session greenlet only waits for the end."""

    __slots__ = (
        "counters",
        "down",
        "finished",
        "greenlet",
        "idle",
        "last",
        "loop",
        "result",
        "timer",
        "up",
    )

    def __init__(self, client: Any, upstream: Any, counters: Counters, idle: float) -> None:
        self.loop = get_hub().loop
        self.counters = counters
        self.idle = idle
        self.last = monotonic()
        self.finished = False
        self.greenlet: Any = None
        self.result = "ok"
        self.up = _Flow(self, client, upstream, True)
        self.down = _Flow(self, upstream, client, False)
        self.timer = self.loop.timer(idle)

    def run(self) -> str:
        self.greenlet = getcurrent()
        switch = get_hub().switch
        try:
            self.up.start()
            self.down.start()
            self.timer.start(self._on_timer)
            while not self.finished:
                switch()
        finally:
            self.up.close()
            self.down.close()
            self.timer.stop()
            self.timer.close()
            self.greenlet = None
        return self.result

    def _on_timer(self) -> None:
        quiet = monotonic() - self.last
        if quiet >= self.idle:
            self.end("idle-timeout")
            return
        # Activity since the timer was armed: sleep for the rest of the idle period.
        self.timer.close()
        self.timer = self.loop.timer(self.idle - quiet)
        self.timer.start(self._on_timer)

    def end(self, result: str) -> None:
        """Wake the session greenlet with *result* (the first end wins).

        Called from a libev callback, as its last action: the switch runs the session, which
        closes the flows before control comes back here.
        """
        if not self.finished:
            self.finished = True
            self.result = result
            self.greenlet.switch()

    def fail(self, exc: OSError) -> None:
        self.end(_io_error(exc))


def relay(
    client: Any,
    upstream: Any,
    counters: Counters,
    idle: float,
    pending: bytes = b"",
    zero_copy: bool = True,
) -> str:
    """Relay until both directions reach EOF, one side fails, or both are idle for *idle* s.

    *pending* is client data that arrived with the request (pipelined) and goes first.
    Returns the session result: "ok", "idle-timeout" or "io-error: ...". Never raises OSError.
    """
    splice = zero_copy and SPLICE_AVAILABLE
    if not splice:
        # The copy relay's sockets time out (the pending data's send included); the splice
        # relay keeps its own idle timer.
        client.settimeout(idle)
        upstream.settimeout(idle)
    if pending:
        try:
            upstream.sendall(pending)
        except OSError as exc:
            return _io_error(exc)
        counters.bytes_up += len(pending)
    if splice:
        return _SpliceRelay(client, upstream, counters, idle).run()
    return _copy_relay(client, upstream, counters, idle)


def _copy_relay(client: Any, upstream: Any, counters: Counters, idle: float) -> str:
    """The portable relay: one greenlet per direction, copying through a buffer each."""
    shared = _Shared(idle)

    def pump(src: gsocket.socket, dst: gsocket.socket, upward: bool) -> None:
        try:
            _copy_pump(src, dst, counters, upward, shared)
            if not shared.timed_out:
                # Propagate EOF; the destination may already be gone, then nobody is left.
                with contextlib.suppress(OSError):
                    dst.shutdown(gsocket.SHUT_WR)
        except OSError as exc:
            shared.error = exc

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
