"""Truncated and garbage input at every byte offset never crashes the server.

Every conversation here is a valid SOCKS exchange cut short (and, separately, cut short and
followed by random bytes). The server must answer what it can, then close; no session may end
in an internal error, and the server must still serve a normal CONNECT afterwards.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest

from socksx.server.auth import hash_password
from tests.conftest import recv_exactly
from tests.server.socks_raw import (
    addr_bytes,
    negotiate,
    open_socks,
    read_reply,
    read_until_closed,
    socks5_connect,
)

ECHO_NAME = "echo.test"
SEED = 20240601
RANDOM_BLOBS = 200
CLOSE_WITHIN = 5.0


class Records(logging.Handler):
    """Collects every record of the ``socksx`` logger during a test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def session_lines(self) -> int:
        return sum(1 for r in self.records if r.getMessage() == "session")

    def internal_errors(self) -> list[str]:
        return [
            f"{r.levelname} {r.getMessage()}"
            for r in self.records
            if r.exc_info or "internal error" in r.getMessage()
        ]


@pytest.fixture
def socksx_records() -> Iterator[Records]:
    logger = logging.getLogger("socksx")
    handler = Records()
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def resolver_for(echo_address: tuple[str, int]):
    """Only ECHO_NAME resolves (to the echo server); never the host's DNS."""

    def resolve(host: str, port: int) -> list[tuple[int, tuple]]:
        if host == ECHO_NAME:
            return [(socket.AF_INET, (echo_address[0], port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


def only_echo_rule(echo_port: int) -> str:
    # Garbage can complete a request to a random address: only the echo server is allowed,
    # so nothing ever leaves loopback (and nothing else on loopback is touched).
    return (
        '[[rules]]\nid = "echo-only"\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
        f'to = ["127.0.0.1/32"]\nports = [{echo_port}]\ncommands = ["connect"]\n'
    )


def socks4_connect_bytes(port: int, ip: bytes, userid: bytes, name: bytes | None) -> bytes:
    head = b"\x04\x01" + struct.pack("!H", port)
    if name is None:
        return head + ip + userid + b"\x00"
    return head + b"\x00\x00\x00\x01" + userid + b"\x00" + name + b"\x00"


def conversations(echo: tuple[str, int]) -> dict[str, tuple[str, bytes]]:
    """name -> (which server, the client's whole byte stream up to the end of the request)."""
    host, port = echo
    request = b"\x05\x01\x00" + addr_bytes(host, port)
    return {
        "socks5-noauth": ("noauth", b"\x05\x01\x00" + request),
        "socks5-name": ("noauth", b"\x05\x01\x00" + b"\x05\x01\x00" + addr_bytes(ECHO_NAME, port)),
        "socks5-userpass": (
            "userpass",
            b"\x05\x01\x02" + b"\x01\x05alice\x02pw" + request,
        ),
        "socks4": ("noauth", socks4_connect_bytes(port, socket.inet_aton(host), b"me", None)),
        "socks4a": ("noauth", socks4_connect_bytes(port, b"", b"me", ECHO_NAME.encode())),
    }




def send_and_expect_close(address: tuple[str, int], data: bytes) -> bytes:
    with open_socks(address) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # the server may already have refused and closed while we were still writing
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        return read_until_closed(sock)


@pytest.fixture
def servers(make_server, echo_server, tmp_path: Path):
    users = tmp_path / "users"
    stored = hash_password(b"pw", opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
    users.write_bytes(b"alice:" + stored + b"\n")
    rules = only_echo_rule(echo_server.address[1])
    resolver = resolver_for(echo_server.address)
    noauth = make_server(rules=rules, resolver=resolver)
    userpass = make_server(
        f'auth = "userpass"\nusers_file = "{users}"\n[limits]\nauth_failures_per_minute = 0\n',
        rules=rules,
        resolver=resolver,
    )
    return {"noauth": noauth, "userpass": userpass}


def assert_still_serves(servers, echo_server) -> None:
    with socks5_connect(servers["noauth"].address, *echo_server.address) as sock:
        sock.sendall(b"still alive")
        assert recv_exactly(sock, 11) == b"still alive"
    with socks5_connect(
        servers["userpass"].address, *echo_server.address, user=b"alice", password=b"pw"
    ) as sock:
        sock.sendall(b"still alive")
        assert recv_exactly(sock, 11) == b"still alive"


def assert_no_sessions_left(servers) -> None:
    for server in servers.values():
        idle = server.call(lambda s=server: s.server.wait_idle(timeout=CLOSE_WITHIN))
        left = server.call(lambda s=server: len(s.server.sessions))
        assert idle, f"{left} sessions still open"


def run_all(cases: list[tuple[str, str, bytes]], servers) -> list[str]:
    """Run every (label, server, bytes) case concurrently; return the failures."""

    def one(case: tuple[str, str, bytes]) -> str | None:
        label, which, data = case
        try:
            send_and_expect_close(servers[which].address, data)
        except (AssertionError, OSError) as exc:
            return f"{label}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [failure for failure in pool.map(one, cases) if failure is not None]


def test_every_truncation_is_answered_or_closed(servers, echo_server, socksx_records):
    cases = [
        (f"{name}[:{cut}]", which, stream[:cut])
        for name, (which, stream) in conversations(echo_server.address).items()
        for cut in range(len(stream))
    ]
    assert len(cases) > 60
    failures = run_all(cases, servers)
    assert not failures, failures[:10]
    assert not socksx_records.internal_errors()
    assert_still_serves(servers, echo_server)
    assert_no_sessions_left(servers)
    # every session ended through the normal path: one session line each
    assert socksx_records.session_lines() == len(cases) + 2


def test_every_truncation_followed_by_garbage(servers, echo_server, socksx_records):
    rng = random.Random(SEED)
    cases = [
        (f"{name}[:{cut}]+garbage", which, stream[:cut] + rng.randbytes(rng.randint(1, 64)))
        for name, (which, stream) in conversations(echo_server.address).items()
        for cut in range(len(stream))
    ]
    failures = run_all(cases, servers)
    assert not failures, failures[:10]
    assert not socksx_records.internal_errors()
    assert_still_serves(servers, echo_server)
    assert_no_sessions_left(servers)
    # every session ended through the normal path: one session line each
    assert socksx_records.session_lines() == len(cases) + 2


def test_random_blobs(servers, echo_server, socksx_records):
    rng = random.Random(SEED + 1)
    cases = []
    for i in range(RANDOM_BLOBS):
        blob = rng.randbytes(rng.randint(1, 600))
        # a third look like SOCKS5, a third like SOCKS4, so the parsers past byte 0 get fed
        if i % 3 == 0:
            blob = b"\x05" + blob
        elif i % 3 == 1:
            blob = b"\x04" + blob
        cases.append((f"blob#{i}", "noauth" if i % 2 else "userpass", blob))
    failures = run_all(cases, servers)
    assert not failures, failures[:10]
    assert not socksx_records.internal_errors()
    assert_still_serves(servers, echo_server)
    assert_no_sessions_left(servers)
    # every session ended through the normal path: one session line each
    assert socksx_records.session_lines() == len(cases) + 2


# -- documented refusals of malformed requests ------------------------------------------------


def request_after_greeting(address: tuple[str, int], request: bytes) -> bytes:
    with open_socks(address) as sock:
        negotiate(sock)
        sock.sendall(request)
        return read_until_closed(sock)


@pytest.mark.parametrize(
    ("request_bytes", "rep"),
    [
        pytest.param(b"\x05\x7f\x00\x01\x7f\x00\x00\x01\x00\x50", 0x07, id="unknown-cmd"),
        pytest.param(b"\x05\xff\x00\x01\x7f\x00\x00\x01\x00\x50", 0x07, id="cmd-ff"),
        pytest.param(b"\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50", 0x08, id="bad-atyp"),
        pytest.param(b"\x05\x01\x00\x00\x7f\x00\x00\x01\x00\x50", 0x08, id="atyp-zero"),
        pytest.param(b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", 0x01, id="rsv-nonzero"),
    ],
)
def test_malformed_request_gets_documented_reply_then_close(
    servers, request_bytes, rep, socksx_records
):
    answer = request_after_greeting(servers["noauth"].address, request_bytes)
    assert len(answer) >= 4, answer
    assert answer[0] == 5
    assert answer[1] == rep, f"REP {answer[1]:#04x}, want {rep:#04x}"
    assert answer[2] == 0
    assert not socksx_records.internal_errors()


def test_malformed_request_reply_is_a_whole_reply(servers):
    with open_socks(servers["noauth"].address) as sock:
        negotiate(sock)
        sock.sendall(b"\x05\x7f\x00\x01\x7f\x00\x00\x01\x00\x50")
        assert read_reply(sock)[0] == 0x07
        assert read_until_closed(sock) == b""


def test_version_6_greeting_is_closed_without_reply(servers, socksx_records):
    assert send_and_expect_close(servers["noauth"].address, b"\x06\x01\x00") == b""
    assert not socksx_records.internal_errors()


def test_version_6_request_is_closed_without_reply(servers, socksx_records):
    answer = request_after_greeting(
        servers["noauth"].address, b"\x06\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    )
    assert answer == b""
    assert not socksx_records.internal_errors()


def test_socks4_garbage_command_gets_5b(servers, echo_server):
    port = echo_server.address[1]
    data = b"\x04\x09" + struct.pack("!H", port) + socket.inet_aton("127.0.0.1") + b"\x00"
    answer = send_and_expect_close(servers["noauth"].address, data)
    assert answer[:2] == b"\x00\x5b", answer


def test_oversized_socks4_userid_is_refused_and_closed(servers):
    data = b"\x04\x01\x00\x50" + socket.inet_aton("127.0.0.1") + b"u" * 70000
    answer = send_and_expect_close(servers["noauth"].address, data)
    # the reply may be lost to the RST that closing with unread bytes causes; a close is enough
    assert answer == b"" or answer[:2] == b"\x00\x5b", answer


# -- connections that die mid-relay ------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def relay_to_listener(server, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socks5_connect(server.address, *listener.getsockname())
    peer, _ = listener.accept()
    peer.settimeout(10)
    client.sendall(b"ping")
    assert recv_exactly(peer, 4) == b"ping"
    peer.sendall(b"pong")
    assert recv_exactly(client, 4) == b"pong"
    return client, peer


@pytest.mark.parametrize(
    ("who", "zero_copy"),
    [
        ("upstream", "true"),
        ("upstream", "false"),
        ("client", "true"),
        ("client", "false"),
    ],
)
def test_reset_mid_relay_ends_the_session_cleanly(make_server, socksx_records, who, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client, peer = relay_to_listener(server, listener)
        survivor = client if who == "upstream" else peer
        with survivor:
            reset(peer if who == "upstream" else client)
            read_until_closed(survivor)  # the other side is closed too, promptly
    assert_no_sessions_left({"server": server})
    (line,) = [r for r in socksx_records.records if r.getMessage() == "session"]
    assert line.fields["result"] == "io-error: connection reset by peer"  # type: ignore[attr-defined]
    assert not socksx_records.internal_errors()
