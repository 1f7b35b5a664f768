"""Shared fixtures: a real socksx server on loopback (port 0) in its own thread, echo peers.

The server runs in a thread with its own gevent hub, so tests use plain blocking sockets,
threads, third-party clients and subprocesses exactly as users do (nothing is monkey-patched).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOOPBACK_RULE = '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8", "::1/128"]\n'


def have_ipv6_loopback() -> bool:
    """True when ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class ServerThread:
    """A socksx Server running in a background thread with its own gevent hub."""

    def __init__(self, toml_text: str, source: str, resolver: Any = None) -> None:
        self.toml_text = toml_text
        self.source = source
        self.resolver = resolver
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: Any = None
        self.thread = threading.Thread(target=self._main, name="socksx-server", daemon=True)
        self.thread.start()
        if not self._ready.wait(20):
            msg = "server thread did not start"
            raise RuntimeError(msg)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        from gevent import socket as gsocket

        from socksx.config import loads
        from socksx.server.server import Server

        try:
            config = loads(
                self.toml_text, self.source, base_dir=os.path.dirname(self.source) or "."
            )
            self.server = Server(config, resolver=self.resolver)
            self.server.start()
        except BaseException as exc:  # report to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        wake = gsocket.socket(fileno=os.dup(self._wake_r.fileno()))
        try:
            while True:
                data = wake.recv(64)
                if not data:
                    break
                while not self._calls.empty():
                    fn, reply = self._calls.get()
                    try:
                        reply.put((True, fn()))
                    except BaseException as exc:
                        reply.put((False, exc))
                    if fn == self._stop_marker:
                        return
        finally:
            wake.close()

    def _stop_marker(self) -> None:
        self.server.stop(grace=2)

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run *fn* in the server's thread (inside its hub) and return its result."""
        reply: queue.Queue[Any] = queue.Queue()
        self._calls.put((fn, reply))
        self._wake_w.send(b"x")
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    @property
    def address(self) -> tuple[str, int]:
        """The first listener's (host, port)."""
        return self.server.addresses[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every listener's (host, port)."""
        return list(self.server.addresses)

    def stop(self) -> None:
        """Stop the server (grace 2 s) and join the thread."""
        if self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.call(self._stop_marker, timeout=15)
            self.thread.join(15)
        self._wake_r.close()
        self._wake_w.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``make_server(extra_toml="", listen=["127.0.0.1:0"], rules=LOOPBACK_RULE)``."""
    servers: list[ServerThread] = []

    def factory(
        extra_toml: str = "",
        *,
        listen: list[str] | None = None,
        rules: str = LOOPBACK_RULE,
        resolver: Any = None,
    ) -> ServerThread:
        listen = listen or ["127.0.0.1:0"]
        listen_toml = "listen = [" + ", ".join(f'"{a}"' for a in listen) + "]\n"
        # The admin API's default port is fixed (1081): tests give it port 0 unless they
        # configure it themselves.
        admin = "" if "[admin]" in extra_toml else '\n[admin]\nlisten = "127.0.0.1:0"\n'
        text = listen_toml + extra_toml + admin + '\n[log]\nlevel = "warning"\n' + rules
        path = tmp_path / f"socksx-{len(servers)}.toml"
        path.write_text(text)
        server = ServerThread(text, str(path), resolver)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def socks_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    """A default server: loopback clients, no auth."""
    return make_server()


class EchoServer:
    """A threaded TCP echo server on loopback (echoes until EOF, then half-closes)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        # Ports in TIME_WAIT (from earlier tests or a benchmark) are fine for a new listener.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.address = self.sock.getsockname()[:2]
        self.peers: list[tuple] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A TCP echo server on 127.0.0.1."""
    server = EchoServer()
    yield server
    server.close()


class UdpEcho:
    """A threaded UDP echo server on loopback."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()[:2]
        self.sources: list[tuple] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, src = self.sock.recvfrom(65535)
            except OSError:
                return
            if src is None:  # shut down
                return
            self.sources.append(src)
            with contextlib.suppress(OSError):
                self.sock.sendto(data, src)

    def close(self) -> None:
        """Stop."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    """A UDP echo server on 127.0.0.1."""
    server = UdpEcho()
    yield server
    server.close()


def wait_until(
    check: Callable[[], bool], what: str = "condition", *, timeout: float = 10.0
) -> bool:
    """Poll *check* until true (bounded): for state with no event to await, such as a server's
    internals in another thread or a kernel table in /proc. Raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            msg = f"{what} not reached within {timeout} s"
            raise AssertionError(msg)
        time.sleep(0.01)
    return True


def sha256(data: bytes) -> str:
    """Hex digest (tests compare digests, not megabytes, in failure messages)."""
    return hashlib.sha256(data).hexdigest()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes or fail."""
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            msg = f"EOF after {len(out)} of {n} bytes"
            raise AssertionError(msg)
        out += chunk
    return bytes(out)


def recv_all(sock: socket.socket) -> bytes:
    """Read until EOF."""
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)
