"""Real SOCKS servers (Dante, microsocks) and local echo targets, all on loopback.

Dante and microsocks take a port number, not a listening socket, and give no readiness signal:
the fixtures pick a free port, start the daemon, and poll its port with a bounded, backing-off
connect loop (the one place polling is acceptable: an external daemon). Everything is torn down
at the end of the module that used it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3
READY_TIMEOUT = 10.0


@dataclass
class Daemon:
    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"socks5h://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port(host: str = LOOPBACK, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(process: subprocess.Popen[bytes], host: str, port: int) -> bool:
    """True once *port* accepts; False if the process died or time ran out."""
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.01
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(delay)  # external daemon without a readiness signal: bounded backoff
        delay = min(delay * 2, 0.2)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def start_daemon(
    name: str, tmp: Path, argv_for: Callable[[int], list[str]], **extra: str
) -> Daemon:
    log = tmp / f"{name}.log"
    for _ in range(START_ATTEMPTS):
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv_for(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if wait_for_port(process, LOOPBACK, port):
            return Daemon(name, LOOPBACK, port, process, log, **extra)
        stop(process)  # lost the port race or failed: try a fresh port
    pytest.fail(f"{name} did not start:\n{log.read_text(errors='replace')}")


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install dante-server microsocks)")
    return path


DANTE_CONF = """\
logoutput: {log}
internal: {host} port = {port}
external: {host}
clientmethod: none
socksmethod: none
{users}
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: error }}
socks pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    command: bind connect udpassociate bindreply udpreply
    log: error connect
}}
"""


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = require("danted")
    tmp = tmp_path_factory.mktemp("dante")
    # As root Dante wants to know whom to switch to; as a normal user those lines are errors.
    users = "user.privileged: root\nuser.unprivileged: nobody" if os.geteuid() == 0 else ""

    def argv(port: int) -> list[str]:
        conf = tmp / "danted.conf"
        conf.write_text(
            DANTE_CONF.format(log=tmp / "danted.out", host=LOOPBACK, port=port, users=users)
        )
        return [binary, "-f", str(conf), "-N", "1", "-p", str(tmp / "danted.pid")]

    daemon = start_daemon("danted", tmp, argv)
    yield daemon
    stop(daemon.process)


@pytest.fixture(scope="module")
def microsocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = require("microsocks")
    tmp = tmp_path_factory.mktemp("microsocks")
    daemon = start_daemon("microsocks", tmp, lambda port: [binary, "-i", LOOPBACK, "-p", str(port)])
    yield daemon
    stop(daemon.process)


@pytest.fixture(scope="module")
def microsocks_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = require("microsocks")
    tmp = tmp_path_factory.mktemp("microsocks-auth")
    user, password = "alice", "s3cret pass"
    daemon = start_daemon(
        "microsocks-auth",
        tmp,
        lambda port: [binary, "-i", LOOPBACK, "-p", str(port), "-u", user, "-P", password],
        username=user,
        password=password,
    )
    yield daemon
    stop(daemon.process)


# -- local targets ---------------------------------------------------------------------------


class TcpServer:
    """Accepts on loopback port 0; each connection runs *handler* in its own thread."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = LOOPBACK) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=5)


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then half-close: the client sees everything and then EOF."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def greet_then_echo(conn: socket.socket) -> None:
    conn.sendall(b"220 hello from the target\r\n")
    echo(conn)


@pytest.fixture
def make_tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    """Factory: a loopback TCP server running a handler per connection (closed at teardown)."""
    made: list[TcpServer] = []

    def make(handler: Callable[[socket.socket], None]) -> TcpServer:
        made.append(TcpServer(handler))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def echo_server() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


@pytest.fixture
def greeting_server() -> Iterator[TcpServer]:
    server = TcpServer(greet_then_echo)
    yield server
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound and released: refused, not filtered)."""
    return free_port()


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """Accepts connections (the kernel completes them) and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(16)
    yield listener.getsockname()
    listener.close()


class UdpEcho:
    def __init__(self, host: str = LOOPBACK) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
                if peer is None:  # shut down
                    return
                self.sock.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    server = UdpEcho()
    yield server
    server.close()


# -- a scripted SOCKS5 server, for byte-level behaviour real daemons cannot be made to show ------


class ScriptedProxy:
    """Serves one SOCKS5 client per connection: reads greeting and request, then sends *reply*.

    *reply* is written with one sendall, so "reply + data in one segment" is guaranteed.
    After it, the connection echoes (when *then_echo*) or closes.
    """

    def __init__(self, reply: bytes, *, method: bytes = b"\x05\x00", then_echo: bool = True):
        self.reply = reply
        self.method = method
        self.then_echo = then_echo
        self.requests: list[bytes] = []
        self.server = TcpServer(self._handle)

    @property
    def url(self) -> str:
        return f"socks5h://{self.server.host}:{self.server.port}"

    def _handle(self, conn: socket.socket) -> None:
        head = recv_exactly(conn, 2)
        recv_exactly(conn, head[1])
        conn.sendall(self.method)
        if self.method[1:] != b"\x00":
            return
        request = recv_exactly(conn, 4)
        atyp = request[3]
        size = {1: 6, 4: 18}.get(atyp)
        if size is None:
            length = recv_exactly(conn, 1)
            request += length
            size = length[0] + 2
        self.requests.append(request + recv_exactly(conn, size))
        conn.sendall(self.reply)
        if self.then_echo:
            echo(conn)

    def close(self) -> None:
        self.server.close()


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    return data


@pytest.fixture
def scripted_proxy() -> Iterator[Callable[..., ScriptedProxy]]:
    made: list[ScriptedProxy] = []

    def make(reply: bytes, **kwargs: object) -> ScriptedProxy:
        proxy = ScriptedProxy(reply, **kwargs)  # type: ignore[arg-type]
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


# -- TLS in front of microsocks (a stunnel-like terminator), for socks5s:// -------------------


class TlsFront:
    """Terminates TLS on loopback and forwards each connection to *backend*."""

    def __init__(self, context: ssl.SSLContext, backend: tuple[str, int]) -> None:
        self.context = context
        self.backend = backend
        self.server = TcpServer(self._handle)

    def _handle(self, raw: socket.socket) -> None:
        with (
            self.context.wrap_socket(raw, server_side=True) as tls,
            socket.create_connection(self.backend) as upstream,
        ):
            pump = threading.Thread(target=self._pump, args=(upstream, tls), daemon=True)
            pump.start()
            while data := tls.recv(65536):
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
            pump.join(timeout=10)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def tls_front(microsocks: Daemon, tmp_path: Path) -> Iterator[tuple[TlsFront, str, bytes]]:
    """(front, path of the CA certificate, DER of the server certificate)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", LOOPBACK)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    front = TlsFront(context, microsocks.address)
    yield front, str(ca_path), der
    front.close()
