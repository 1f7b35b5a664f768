"""Raw-byte SOCKS helpers for server tests: what goes on the wire is spelled out in each test."""

from __future__ import annotations

import socket
import struct
import time

from tests.conftest import recv_exactly


def open_socks(address: tuple[str, int], timeout: float = 10) -> socket.socket:
    """A TCP connection to the proxy."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def addr_bytes(host: str, port: int) -> bytes:
    """ATYP | ADDR | PORT for an IP literal or a name."""
    try:
        return b"\x01" + socket.inet_pton(socket.AF_INET, host) + struct.pack("!H", port)
    except OSError:
        pass
    try:
        return b"\x04" + socket.inet_pton(socket.AF_INET6, host) + struct.pack("!H", port)
    except OSError:
        name = host.encode()
        return b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port)


def read_reply(sock: socket.socket) -> tuple[int, str, int]:
    """Read a plain-shape SOCKS5 reply: (REP, host, port)."""
    head = recv_exactly(sock, 4)
    assert head[0] == 5, head
    assert head[2] == 0, head
    atyp = head[3]
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, recv_exactly(sock, 4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, recv_exactly(sock, 16))
    else:
        assert atyp == 3, head
        host = recv_exactly(sock, recv_exactly(sock, 1)[0]).decode()
    (port,) = struct.unpack("!H", recv_exactly(sock, 2))
    return head[1], host, port


def negotiate(
    sock: socket.socket, user: bytes | None = None, password: bytes | None = None
) -> None:
    """Method negotiation (and RFC 1929 when credentials are given); asserts success."""
    if user is None:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        return
    assert password is not None
    sock.sendall(b"\x05\x01\x02")
    assert recv_exactly(sock, 2) == b"\x05\x02"
    sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    status = recv_exactly(sock, 2)
    assert status == b"\x01\x00", status


def socks5_request(
    proxy: tuple[str, int], cmd: int, host: str, port: int, **auth: bytes
) -> tuple[socket.socket, tuple[int, str, int]]:
    """Open, negotiate, send one request; return the socket and the first reply."""
    sock = open_socks(proxy)
    negotiate(sock, auth.get("user"), auth.get("password"))
    sock.sendall(b"\x05" + bytes([cmd, 0]) + addr_bytes(host, port))
    return sock, read_reply(sock)


def socks5_connect(proxy: tuple[str, int], host: str, port: int, **auth: bytes) -> socket.socket:
    """CONNECT and assert success; return the relay socket."""
    sock, (rep, _, _) = socks5_request(proxy, 1, host, port, **auth)
    assert rep == 0, f"REP {rep:#04x}"
    return sock


def read_until_closed(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    deadline = time.monotonic() + within
    out = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            msg = f"server did not close within {within} s (got {bytes(out)!r})"
            raise AssertionError(msg)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            # closing with unread client bytes makes the kernel send RST: still a close
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk
