"""Cooperative I/O on plain sockets, for the per-session hot path.

A gevent socket object costs two watchers, an ioctl, a ``getsockopt(SO_SNDBUF)`` per
``sendall`` and several Python frames per call; a short CONNECT session made about ten of those
calls, and they were half of the server's CPU time per session. ``RawStream`` wraps the kernel
socket itself: each call tries the system call first and only on ``EAGAIN`` parks the greenlet on
a libev watcher that it creates once and reuses. Commands that need the full gevent socket API
(BIND, UDP, the extensions, TLS, the copy relay) convert with ``to_gevent()``: that path is not
hot.
"""

from __future__ import annotations

# ``_socket``, not ``socket``: the command line monkey-patches ``socket`` into gevent's.
import _socket
import errno
import os
from typing import Any

from gevent import get_hub
from gevent import socket as gsocket
from greenlet import getcurrent

__all__ = ["RawStream", "connect_nonblocking"]

_READ, _WRITE = 1, 2  # libev event masks
_READY = object()
_TIMED_OUT = object()
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY})


class RawStream:
    """A connected, non-blocking stream socket driven from the hub directly.

    Offers the subset of the socket API the session and the splice relay use; everything else
    goes through ``to_gevent()``.
    """

    __slots__ = ("_reader", "_writer", "fd", "sock")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock  # already non-blocking
        self.fd = sock.fileno()
        self._reader: Any = None
        self._writer: Any = None

    def fileno(self) -> int:
        return self.fd

    def watcher(self, events: int) -> Any:
        """This socket's libev watcher for *events* (1 read, 2 write), made once and reused.

        The relay starts them with its own callbacks; ``close()`` closes them.
        """
        if events == _READ:
            if self._reader is None:
                self._reader = get_hub().loop.io(self.fd, _READ)
            return self._reader
        if self._writer is None:
            self._writer = get_hub().loop.io(self.fd, _WRITE)
        return self._writer

    def _wait(self, events: int) -> None:
        watcher = self.watcher(events)
        watcher.start(getcurrent().switch)
        try:
            get_hub().switch()
        finally:
            watcher.stop()

    def wait_writable(self, timeout: float) -> None:
        """Park until the socket is writable (a connect finished).

        Raises:
            TimeoutError: not writable within *timeout* seconds.
        """
        hub = get_hub()
        watcher = self.watcher(_WRITE)
        timer = hub.loop.timer(timeout)
        switch = getcurrent().switch
        try:
            watcher.start(switch, _READY)
            timer.start(switch, _TIMED_OUT)
            if hub.switch() is _TIMED_OUT:
                msg = "timed out"
                raise TimeoutError(msg)
        finally:
            watcher.stop()
            timer.stop()
            timer.close()

    def recv(self, size: int) -> bytes:
        recv = self.sock.recv
        while True:
            try:
                return recv(size)
            except BlockingIOError:
                self._wait(_READ)

    def sendall(self, data: bytes) -> None:
        send = self.sock.send
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(data):
            self._wait(_WRITE)
            try:
                sent += send(view[sent:])
            except BlockingIOError:
                continue

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.sock.setsockopt(level, option, value)

    def _drop_watchers(self) -> None:
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reader = self._writer = None

    def close(self) -> None:
        self._drop_watchers()
        self.sock.close()
        self.fd = -1

    def to_gevent(self) -> gsocket.socket:
        """The same connection as a gevent socket (this object lets go of it)."""
        self._drop_watchers()
        sock = self.sock
        gsock = gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.fd = -1
        return gsock


def connect_nonblocking(
    family: int, sockaddr: tuple, timeout: float, source: str | None = None
) -> RawStream:
    """A TCP connection to *sockaddr* (one wait for writability, then SO_ERROR).

    Raises:
        OSError: the connection failed; TimeoutError after *timeout* seconds.
    """
    sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
    stream = RawStream(sock)
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        err = sock.connect_ex(sockaddr)
        if err in _IN_PROGRESS:
            # The stream's own write watcher: the relay reuses it under back-pressure.
            stream.wait_writable(timeout)
            err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        stream.close()
        raise
    return stream
