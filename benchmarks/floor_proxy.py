"""The floor: the least a SOCKS5 CONNECT relay can do in Python on gevent's loop.

A benchmark reference, not a server to deploy: no authentication, rules, limits, timeouts,
statistics or logging; IPv4 CONNECT only; the handshake parsed by slicing bytes. It does what
socksx's hot path does (accept in a libev callback, raw sockets, one greenlet per connection,
splice through a pipe driven by libev callbacks) and nothing else, so the gap between it and
socksx in ``bench.py --floor`` is the price of socksx's features, and the gap between it and a C
server is the price of Python.

    python benchmarks/floor_proxy.py --port 18090
"""

from __future__ import annotations

import _socket
import argparse
import contextlib
import errno
import os

from gevent import get_hub
from greenlet import getcurrent, greenlet

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPES: list[tuple[int, int]] = []
REFUSED = b"\x05\x05\x00\x01\0\0\0\0\0\0"
UNSUPPORTED = b"\x05\x08\x00\x01\0\0\0\0\0\0"


def wait(fd: int, events: int) -> None:
    watcher = get_hub().loop.io(fd, events)
    watcher.start(getcurrent().switch)
    try:
        get_hub().switch()
    finally:
        watcher.stop()
        watcher.close()


def recv_some(sock: _socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(4096)
        except BlockingIOError:
            wait(sock.fileno(), 1)


class Flow:
    """One direction: splice src -> pipe -> dst on every readable event."""

    def __init__(self, relay: Relay, src: _socket.socket, dst: _socket.socket) -> None:
        self.relay, self.sfd, self.dst = relay, src.fileno(), dst
        loop = get_hub().loop
        self.reader = loop.io(self.sfd, 1)
        self.writer = loop.io(dst.fileno(), 2)
        self.pipe: tuple[int, int] | None = None
        self.pending = 0
        self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        self.pipe = PIPES.pop() if PIPES else os.pipe2(os.O_NONBLOCK)
        try:
            n = os.splice(self.sfd, self.pipe[1], 1 << 20, flags=SPLICE_FLAGS)
        except BlockingIOError:
            self.release()
            return
        except OSError:
            self.relay.end()
            return
        if not n:
            self.release()
            self.reader.stop()
            self.relay.eof(self)
            return
        self.pending = n
        self.push()

    def push(self) -> None:
        assert self.pipe is not None
        while self.pending:
            try:
                self.pending -= os.splice(
                    self.pipe[0], self.dst.fileno(), self.pending, flags=SPLICE_FLAGS
                )
            except BlockingIOError:
                self.reader.stop()
                self.writer.start(self.on_writable)
                return
            except OSError:
                self.relay.end()
                return
        self.release()

    def on_writable(self) -> None:
        self.push()
        if not self.pending:
            self.writer.stop()
            self.reader.start(self.on_readable)

    def release(self) -> None:
        if self.pipe is not None:
            if self.pending:
                os.close(self.pipe[0])
                os.close(self.pipe[1])
            else:
                PIPES.append(self.pipe)
            self.pipe = None

    def close(self) -> None:
        for watcher in (self.reader, self.writer):
            watcher.stop()
            watcher.close()
        self.release()


class Relay:
    def __init__(self, client: _socket.socket, upstream: _socket.socket) -> None:
        self.greenlet = getcurrent()
        self.open = 2
        self.flows = [Flow(self, client, upstream), Flow(self, upstream, client)]

    def eof(self, flow: Flow) -> None:
        self.open -= 1
        if self.open:
            try:
                flow.dst.shutdown(_socket.SHUT_WR)
            except OSError:
                self.end()
        else:
            self.end()

    def end(self) -> None:
        if not self.flows:
            return
        for flow in self.flows:
            flow.close()
        self.flows = []
        get_hub().loop.run_callback(self.greenlet.switch)


def serve(client: _socket.socket) -> None:
    try:
        data = recv_some(client)
        if len(data) < 3 or data[0] != 5:
            return
        client.send(b"\x05\x00")
        data = data[2 + data[1] :]
        while len(data) < 10:
            more = recv_some(client)
            if not more:
                return
            data += more
        if data[3] != 1:
            client.send(UNSUPPORTED)
            return
        target = (_socket.inet_ntoa(data[4:8]), int.from_bytes(data[8:10], "big"))
        upstream = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        try:
            upstream.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            err = upstream.connect_ex(target)
            if err == errno.EINPROGRESS:
                wait(upstream.fileno(), 2)
                err = upstream.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if err:
                client.send(REFUSED)
                return
            host, port = upstream.getsockname()
            client.send(b"\x05\x00\x00\x01" + _socket.inet_aton(host) + port.to_bytes(2, "big"))
            if data[10:]:
                upstream.send(data[10:])
            Relay(client, upstream)
            get_hub().switch()
        finally:
            upstream.close()
    except OSError:
        pass
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    hub = get_hub()

    def on_accept() -> None:
        for _ in range(32):
            try:
                fd, _ = listener._accept()
            except BlockingIOError:
                return
            except OSError:
                return
            client = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
            client.setblocking(False)
            greenlet(serve, parent=hub).switch(client)

    watcher = hub.loop.io(listener.fileno(), 1)
    watcher.start(on_accept)
    with contextlib.suppress(KeyboardInterrupt):
        hub.join()


if __name__ == "__main__":
    main()
