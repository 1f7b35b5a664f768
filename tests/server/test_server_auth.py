"""Username/password (RFC 1929) through the real server: logins, refusals, user rules, limits."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest

from socksx.server.auth import hash_password
from tests.conftest import recv_exactly
from tests.server.socks_raw import (
    addr_bytes,
    open_socks,
    read_reply,
    read_until_closed,
    socks5_connect,
)


def fast_hash(password: bytes) -> bytes:
    return hash_password(password, opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)


def write_users(path: Path, users: dict[str, bytes]) -> Path:
    path.write_bytes(
        b"".join(name.encode() + b":" + fast_hash(pw) + b"\n" for name, pw in users.items())
    )
    return path


def userpass_toml(users: Path, extra: str = "") -> str:
    return f'auth = "userpass"\nusers_file = "{users}"\n{extra}'


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users", {"alice": b"pw", "bob": b"builder"})


@pytest.fixture
def records(socksx_records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return socksx_records




def login(
    address: tuple[str, int], user: bytes, password: bytes, source: str = "127.0.0.1"
) -> tuple[socket.socket, bytes]:
    """Offer 02, send credentials; return the socket and the 2-byte RFC 1929 reply."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(address)
    sock.sendall(b"\x05\x01\x02")
    assert recv_exactly(sock, 2) == b"\x05\x02"
    sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    return sock, recv_exactly(sock, 2)


def assert_login_refused(address, user: bytes, password: bytes, source: str = "127.0.0.1"):
    sock, status = login(address, user, password, source)
    with sock:
        assert status[0] == 0x01, status
        assert status[1] != 0x00, "login should have failed"
        assert read_until_closed(sock) == b""


def session_results(records: list[logging.LogRecord]) -> list[str]:
    return [r.fields["result"] for r in records if r.getMessage() == "session"]  # type: ignore[attr-defined]


def test_login_then_connect(make_server, echo_server, users_file):
    server = make_server(userpass_toml(users_file))
    with socks5_connect(server.address, *echo_server.address, user=b"alice", password=b"pw") as s:
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"


def test_wrong_password_is_refused_and_closed(make_server, users_file, records):
    server = make_server(userpass_toml(users_file))
    assert_login_refused(server.address, b"alice", b"wrong")
    assert_login_refused(server.address, b"mallory", b"pw")
    snap = server.call(server.server.stats.snapshot)
    assert snap["auth_failures"] == 2
    assert server.call(lambda: len(server.server.sessions)) == 0
    assert session_results(records) == [
        "auth-failed: bad-credentials",
        "auth-failed: unknown-user",
    ]
    # the password is never logged
    assert not [r for r in records if "wrong" in r.getMessage() or "wrong" in str(r.__dict__)]


def test_offering_only_no_auth_gets_ff(make_server, users_file):
    server = make_server(userpass_toml(users_file))
    with open_socks(server.address) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\xff"
        assert read_until_closed(sock) == b""


def test_offering_both_selects_userpass(make_server, users_file):
    server = make_server(userpass_toml(users_file))
    with open_socks(server.address) as sock:
        sock.sendall(b"\x05\x02\x00\x02")
        assert recv_exactly(sock, 2) == b"\x05\x02"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"\x00\x00\x00\x01alice\x00localhost\x00", id="socks4a"),
        pytest.param(socket.inet_aton("127.0.0.1") + b"alice\x00", id="socks4"),
    ],
)
def test_socks4_is_refused_on_a_userpass_listener(
    make_server, echo_server, users_file, request_bytes
):
    server = make_server(userpass_toml(users_file))
    with open_socks(server.address) as sock:
        sock.sendall(b"\x04\x01" + struct.pack("!H", echo_server.address[1]) + request_bytes)
        reply = recv_exactly(sock, 8)
        assert reply[:2] == b"\x00\x5b", reply
        assert read_until_closed(sock) == b""
    assert echo_server.peers == []


def alice_only_rule(port: int) -> str:
    return (
        '[[rules]]\nid = "alice-echo"\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
        f'ports = [{port}]\nusers = ["alice"]\n'
    )


def test_user_rule_applies_to_that_user_only(make_server, echo_server, users_file, records):
    server = make_server(userpass_toml(users_file), rules=alice_only_rule(echo_server.address[1]))
    with socks5_connect(server.address, *echo_server.address, user=b"alice", password=b"pw") as s:
        s.sendall(b"ok")
        assert recv_exactly(s, 2) == b"ok"
    sock, status = login(server.address, b"bob", b"builder")
    with sock:
        assert status == b"\x01\x00"
        sock.sendall(b"\x05\x01\x00" + addr_bytes(*echo_server.address))
        assert read_reply(sock)[0] == 0x02
        assert read_until_closed(sock) == b""
    assert len(echo_server.peers) == 1
    assert "denied rule=default-deny" in session_results(records)
    assert server.call(server.server.stats.snapshot)["rule_denials"] == 1


def test_socks4_userid_never_matches_a_user_rule(make_server, echo_server):
    server = make_server(rules=alice_only_rule(echo_server.address[1]))
    with open_socks(server.address) as sock:
        sock.sendall(
            b"\x04\x01"
            + struct.pack("!H", echo_server.address[1])
            + socket.inet_aton("127.0.0.1")
            + b"alice\x00"
        )
        assert recv_exactly(sock, 8)[:2] == b"\x00\x5b"
    assert echo_server.peers == []


def test_failures_are_rate_limited_per_address_before_verification(
    make_server, echo_server, users_file, records
):
    server = make_server(userpass_toml(users_file, "[limits]\nauth_failures_per_minute = 2\n"))
    assert_login_refused(server.address, b"alice", b"wrong1")
    assert_login_refused(server.address, b"alice", b"wrong2")
    # Over the limit the password is not even checked: the right one is refused too.
    assert_login_refused(server.address, b"alice", b"pw")
    results = session_results(records)
    assert results[-1] == "auth-failed: rate-limited"
    # another client address still gets in
    sock, status = login(server.address, b"alice", b"pw", source="127.0.0.2")
    with sock:
        assert status == b"\x01\x00"
    snap = server.call(server.server.stats.snapshot)
    assert snap["auth_failures"] == 3
    auth_stats = server.call(lambda: server.server.authenticator.stats)
    assert auth_stats["rate_limited"] == 1
    assert auth_stats["verifications"] == 3  # two wrong, one from 127.0.0.2; none while limited


def test_reload_picks_up_the_users_file(make_server, users_file):
    server = make_server(userpass_toml(users_file))
    sock, status = login(server.address, b"alice", b"pw")
    sock.close()
    assert status == b"\x01\x00"
    write_users(users_file, {"carol": b"new"})
    assert server.call(server.server.reload) is True
    assert_login_refused(server.address, b"alice", b"pw")  # removed: the success cache is gone
    sock, status = login(server.address, b"carol", b"new")
    sock.close()
    assert status == b"\x01\x00"


def test_a_changed_users_file_is_read_again_without_a_reload(make_server, users_file, records):
    # `socksx passwd` rewrites the file; the server notices on a later login (no SIGHUP).
    server = make_server(userpass_toml(users_file))
    server.server.users_check_interval = 0.0  # look at every login (the default: once a second)
    sock, status = login(server.address, b"alice", b"pw")
    sock.close()
    assert status == b"\x01\x00"  # alice's login is now cached
    write_users(users_file, {"alice": b"changed", "carol": b"new"})
    assert_login_refused(server.address, b"alice", b"pw")  # the old password, cached, is gone
    for user, password in ((b"alice", b"changed"), (b"carol", b"new")):
        sock, status = login(server.address, user, password)
        sock.close()
        assert status == b"\x01\x00", user
    assert any(r.getMessage() == "users file changed: reloaded" for r in records)


def test_a_broken_users_file_change_keeps_the_users_read_before(make_server, users_file, records):
    server = make_server(userpass_toml(users_file))
    server.server.users_check_interval = 0.0
    users_file.write_text("alice:not-an-argon2id-hash\n")
    sock, status = login(server.address, b"bob", b"builder")
    sock.close()
    assert status == b"\x01\x00"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("users file changed, keeping the users read before" in w for w in warnings)
    write_users(users_file, {"dave": b"fixed"})  # repaired: read again
    sock, status = login(server.address, b"dave", b"fixed")
    sock.close()
    assert status == b"\x01\x00"


def test_login_flood_is_bounded_and_overflow_fails_cleanly(make_server, tmp_path: Path):
    """At most workers + queue verifications at once; the rest get an RFC 1929 failure."""
    users = tmp_path / "users"
    users.write_bytes(b"alice:" + hash_password(b"pw") + b"\n")  # production cost: ~0.1 s
    server = make_server(
        userpass_toml(
            users, "[limits]\nauth_workers = 1\nauth_queue = 1\nauth_failures_per_minute = 0\n"
        )
    )
    flood = 12
    socks = []
    try:
        for _ in range(flood):
            sock = open_socks(server.address)
            socks.append(sock)
            sock.sendall(b"\x05\x01\x02")
            assert recv_exactly(sock, 2) == b"\x05\x02"
        # every request lands well within one verification's time; distinct passwords, since
        # identical attempts from one address would share a single check
        for i, sock in enumerate(socks):
            sock.sendall(b"\x01\x05alice\x03" + b"p%02d" % i)
        statuses = [recv_exactly(sock, 2) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [b"\x01\x01"] * flood  # wrong or not checked: the same on the wire
    auth_stats = server.call(lambda: server.server.authenticator.stats)
    assert auth_stats["overloaded"] >= 1
    assert auth_stats["overloaded"] + auth_stats["failures"] == flood
    assert auth_stats["verifications"] == auth_stats["failures"]
    # the flood is over: logins work again
    sock, status = login(server.address, b"alice", b"pw")
    sock.close()
    assert status == b"\x01\x00"


def test_a_burst_of_correct_logins_is_not_rate_limited(make_server, tmp_path: Path):
    users = tmp_path / "users"
    users.write_bytes(b"alice:" + hash_password(b"pw") + b"\n")  # production cost: ~0.1 s
    server = make_server(userpass_toml(users, "[limits]\nauth_failures_per_minute = 4\n"))
    socks = []
    try:
        for _ in range(8):
            sock = open_socks(server.address)
            socks.append(sock)
            sock.sendall(b"\x05\x01\x02")
            assert recv_exactly(sock, 2) == b"\x05\x02"
        for sock in socks:
            sock.sendall(b"\x01\x05alice\x02pw")
        statuses = [recv_exactly(sock, 2) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [b"\x01\x00"] * 8
