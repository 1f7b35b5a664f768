"""The admin API on a real server: counts of real traffic, sessions, checks, actions, sockets."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.pwhash import argon2id

from socksx.client import join_group
from socksx.client.admin import AdminClient, AdminHTTPError, parse_admin_target
from socksx.config import loads
from socksx.errors import ConfigError
from socksx.log import TextFormatter
from socksx.protocol.constants import Notice
from socksx.server.admin import host_checker
from socksx.server.auth import hash_password
from socksx.server.snapshot import (
    RateSampler,
    ThroughputHistory,
    Totals,
    counters_of,
    merge_sessions,
    merge_stats,
)
from tests.conftest import ROOT, recv_exactly
from tests.server.admin_helpers import admin_toml, extensions_off, request, wait_for
from tests.server.socks_raw import addr_bytes, open_socks, socks5_connect, socks5_request
from tests.server.test_mcast import PublicSide, unique_group

TOKEN = "s3cret-admin-token"


def client_of(server, token: str | None = None) -> AdminClient:
    address = server.server.admin_address
    target = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    return AdminClient(target, token=token)


def echo_once(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


@pytest.fixture
def admin_server(make_server):
    return make_server(admin_toml())


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(f"  {TOKEN}\n")
    return path


@pytest.fixture
def token_server(make_server, token_file):
    return make_server(admin_toml(token_file=token_file))


# --------------------------------------------------------------------------- real traffic


def test_stats_count_sessions_and_bytes_of_real_traffic(admin_server, echo_server):
    client = client_of(admin_server)
    sizes = [1, 1000, 65536, 200_000, 7]
    for size in sizes:
        with socks5_connect(admin_server.address, *echo_server.address) as sock:
            echo_once(sock, os.urandom(size))
    stats = wait_for(
        lambda: (
            (s := client.stats())["sessions"]["open"] == 0 and s["sessions"]["total"] == 5 and s
        ),
        "five ended sessions",
    )
    assert stats["sessions"]["by_command"] == {"connect": 5}
    assert stats["sessions"]["by_result"] == {"ok": 5}
    assert stats["bytes"] == {"up": sum(sizes), "down": sum(sizes)}
    assert stats["version"]
    assert stats["workers"] == 1
    assert stats["config_source"].endswith(".toml")
    assert stats["uptime"] >= 0
    assert stats["relays"] == stats["tunnels"] == stats["multibinds"] == []


def test_open_sessions_count_their_bytes_so_far(admin_server, echo_server):
    client = client_of(admin_server)
    with socks5_connect(admin_server.address, *echo_server.address) as sock:
        echo_once(sock, b"x" * 5000)
        stats = client.stats()
        assert stats["sessions"]["open"] == 1
        assert stats["sessions"]["open_by_command"] == {"connect": 1}
        assert stats["bytes"] == {"up": 5000, "down": 5000}


def test_sessions_list_sorts_and_limits(admin_server, echo_server):
    client = client_of(admin_server)
    socks = [socks5_connect(admin_server.address, *echo_server.address) for _ in range(3)]
    try:
        for sock, size in zip(socks, (10, 30_000, 500), strict=True):
            echo_once(sock, b"y" * size)
        answer = client.sessions(limit=2, sort="bytes")
        assert answer["open"] == 3
        assert answer["sort"] == "bytes"
        rows = answer["sessions"]
        assert [row["bytes_up"] for row in rows] == [30_000, 500]
        busiest = rows[0]
        local = socks[1].getsockname()
        assert busiest["client"] == f"{local[0]}:{local[1]}"
        assert busiest["dst"] == f"{echo_server.address[0]}:{echo_server.address[1]}"
        assert busiest["command"] == "connect"
        assert busiest["user"] is None
        assert busiest["bytes_down"] == 30_000
        assert busiest["rate"] > 0
        assert busiest["age"] >= 0
        by_rate = client.sessions(sort="rate")["sessions"]
        assert by_rate[0]["id"] == busiest["id"]
        assert len(by_rate) == 3
        by_age = client.sessions(sort="age")["sessions"]
        assert [row["id"] for row in by_age] == sorted(
            (row["id"] for row in by_age), key=int
        )  # oldest (lowest id) first
    finally:
        for sock in socks:
            sock.close()


def test_sessions_query_is_validated(admin_server):
    address = admin_server.server.admin_address
    for query in ("?sort=nope", "?limit=0", "?limit=x", "?limit=100001"):
        status, _, body = request(address, "GET", "/sessions" + query)
        assert status == 400, query
        assert "error" in json.loads(body)


def udp_header(host: str, port: int, frag: int = 0) -> bytes:
    return b"\0\0" + bytes([frag]) + addr_bytes(host, port)


def test_udp_datagrams_and_drops_are_counted(admin_server, udp_echo):
    client = client_of(admin_server)
    control, (rep, host, port) = socks5_request(admin_server.address, 3, "0.0.0.0", 0)
    assert rep == 0
    with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        for i in range(7):
            sock.sendto(udp_header(*udp_echo.address) + b"d%d" % i, (host, port))
            assert sock.recvfrom(65535)[0].endswith(b"d%d" % i)
        sock.sendto(udp_header(*udp_echo.address, frag=1) + b"fragment", (host, port))
        sock.sendto(udp_header(*udp_echo.address) + b"last", (host, port))
        assert sock.recvfrom(65535)[0].endswith(b"last")
        udp = client.stats()["udp"]
        assert udp == {
            "associations": 1,
            "datagrams_up": 8,
            "datagrams_down": 8,
            "dropped": {"fragment": 1},
        }
        (row,) = client.sessions()["sessions"]
        assert row["command"] == "udp"
        assert (row["datagrams_up"], row["datagrams_down"], row["dropped"]) == (8, 8, 1)


def test_auth_failures_and_rule_denials_are_counted(make_server, echo_server, tmp_path):
    users = tmp_path / "users"
    stored = hash_password(b"pw", opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
    users.write_bytes(b"alice:" + stored + b"\n")
    rules = (
        '[[rules]]\nid = "no-discard"\naction = "deny"\nports = [9]\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    server = make_server(f'auth = "userpass"\nusers_file = "{users}"\n' + admin_toml(), rules=rules)
    client = client_of(server)
    for _ in range(2):
        with open_socks(server.address) as sock:
            sock.sendall(b"\x05\x01\x02")
            assert recv_exactly(sock, 2) == b"\x05\x02"
            sock.sendall(b"\x01\x05alice\x05wrong")
            assert recv_exactly(sock, 2) == b"\x01\x01"
    denied, (rep, _, _) = socks5_request(
        server.address, 1, "127.0.0.1", 9, user=b"alice", password=b"pw"
    )
    denied.close()
    assert rep == 2
    with socks5_connect(server.address, *echo_server.address, user=b"alice", password=b"pw") as s:
        echo_once(s, b"ok")
        (row,) = [r for r in client.sessions()["sessions"] if r["command"] == "connect"]
        assert row["user"] == "alice"
    stats = wait_for(
        lambda: (
            (s := client.stats())["sessions"]["total"] == 4 and s["sessions"]["open"] == 0 and s
        ),
        "four ended sessions",
    )
    assert stats["auth"]["failures"] == 2
    assert stats["rule_denials"] == 1
    assert stats["sessions"]["by_result"] == {"auth-failed": 2, "denied": 1, "ok": 1}


def test_history_fills_once_a_second(admin_server, echo_server):
    client = client_of(admin_server)
    with socks5_connect(admin_server.address, *echo_server.address) as sock:
        echo_once(sock, b"z" * 100_000)
        history = wait_for(
            lambda: len((h := client.stats()["history"])["up"]) >= 2 and h, "two samples"
        )
    assert history["interval"] == 1.0
    assert len(history["up"]) == len(history["down"]) <= 60
    assert all(isinstance(v, int) and v >= 0 for v in history["up"] + history["down"])


# --------------------------------------------------------------------------- request checks


def test_token_is_required_when_configured(token_server):
    address = token_server.server.admin_address
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, got, body = request(address, "GET", "/stats", headers)
        assert status == 401, headers
        assert got["WWW-Authenticate"] == "Bearer"
        assert json.loads(body) == {"error": "bearer token required"}
    status, _, body = request(address, "GET", "/stats", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert json.loads(body)["sessions"]["open"] == 0
    assert client_of(token_server, TOKEN).metrics().startswith("# HELP")
    with pytest.raises(AdminHTTPError) as info:
        client_of(token_server).stats()
    assert info.value.status == 401


def test_token_file_change_takes_effect(token_server, token_file):
    token_file.write_text("rotated-token-value\n")
    assert client_of(token_server, "rotated-token-value").stats()["workers"] == 1
    with pytest.raises(AdminHTTPError):
        client_of(token_server, TOKEN).stats()


@pytest.mark.parametrize(
    "host",
    [None, "evil.example", "evil.example:{port}", "127.0.0.2:{port}", "127.0.0.1:1", "localhost"],
)
def test_foreign_host_header_is_forbidden(admin_server, host):
    address = admin_server.server.admin_address
    value = None if host is None else host.format(port=address[1])
    status, _, body = request(address, "GET", "/stats", host=value)
    assert status == 403
    assert json.loads(body) == {"error": "Host is not this listener's address"}


def test_own_address_and_localhost_are_accepted_hosts(admin_server):
    address = admin_server.server.admin_address
    for host in (f"127.0.0.1:{address[1]}", f"LOCALHOST:{address[1]}"):
        assert request(address, "GET", "/stats", host=host)[0] == 200


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1", "https://evil.example"])
def test_any_origin_is_forbidden(token_server, origin):
    address = token_server.server.admin_address
    headers = {"Origin": origin, "Authorization": f"Bearer {TOKEN}"}
    assert request(address, "GET", "/stats", headers)[0] == 403
    assert request(address, "POST", "/sessions/1/close", headers)[0] == 403


def test_host_checker_rules():
    own = host_checker(("127.0.0.1", 1081))
    assert own("127.0.0.1:1081")
    assert own("localhost:1081")
    assert not own("127.0.0.1")
    assert not own("rebind.example:1081")
    assert not own(None)
    six = host_checker(("::1", 1081))
    assert six("[::1]:1081")
    assert six("localhost:1081")
    assert not six("[::2]:1081")
    anywhere = host_checker(("0.0.0.0", 8080))
    assert anywhere("192.0.2.1:8080")
    assert anywhere("[2001:db8::1]:8080")
    assert not anywhere("gateway.example:8080")
    assert not anywhere("192.0.2.1:80")
    web = host_checker(("192.0.2.1", 80))
    assert web("192.0.2.1")
    assert web("192.0.2.1:80")
    assert not web("localhost")
    assert host_checker("/run/socksx/admin.sock")("anything")


def test_actions_do_not_exist_without_a_token(admin_server, echo_server):
    address = admin_server.server.admin_address
    with socks5_connect(admin_server.address, *echo_server.address):
        (row,) = client_of(admin_server).sessions()["sessions"]
        for method in ("POST", "GET"):
            for path in (f"/sessions/{row['id']}/close", "/relays/r1/terminate"):
                assert request(address, method, path)[0] == 404, (method, path)
        assert client_of(admin_server).stats()["sessions"]["open"] == 1


def test_methods_and_unknown_paths(token_server):
    address = token_server.server.admin_address
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, _ = request(address, "POST", "/stats", auth)
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, _ = request(address, "GET", "/sessions/1/close", auth)
    assert (status, headers["Allow"]) == (405, "POST")
    for path in ("/", "/stats/", "/sessions/1/terminate", "/relays/1/close", "/nope"):
        assert request(address, "GET", path, auth)[0] == 404, path
    assert request(address, "POST", "/sessions/999999/close", auth)[0] == 404
    assert request(address, "POST", "/relays/none/terminate", auth)[0] == 404


# --------------------------------------------------------------------------- actions


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(TextFormatter(with_time=False))

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


@pytest.fixture
def log_lines():
    capture = LogCapture()
    logger = logging.getLogger("socksx")
    saved = logger.level
    logger.addHandler(capture.handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(capture.handler)
        logger.setLevel(saved)


def test_session_close_ends_the_session_and_is_logged(token_server, echo_server, log_lines):
    client = client_of(token_server, TOKEN)
    with (
        socks5_connect(token_server.address, *echo_server.address) as victim,
        socks5_connect(token_server.address, *echo_server.address) as bystander,
    ):
        echo_once(victim, b"before")
        local = victim.getsockname()
        (row,) = [
            r for r in client.sessions()["sessions"] if r["client"] == f"{local[0]}:{local[1]}"
        ]
        answer = client.close_session(row["id"])
        assert answer == {
            "closed": {
                "id": row["id"],
                "client": row["client"],
                "command": "connect",
                "dst": row["dst"],
            }
        }
        victim.settimeout(5)
        assert victim.recv(100) == b""
        echo_once(bystander, b"still here")
        wait_for(lambda: client.stats()["sessions"]["open"] == 1, "the closed session gone")
    admin_line = wait_for(
        lambda: [line for line in log_lines.lines() if "admin: session closed" in line],
        "the admin log line",
    )
    assert f"id={row['id']}" in admin_line[0]
    assert "by=127.0.0.1" in admin_line[0]
    session_line = wait_for(
        lambda: [
            line
            for line in log_lines.lines()
            if line.startswith("info session ") and f" id={row['id']} " in line
        ],
        "the session's own line",
    )
    assert "result=killed" in session_line[0]


def test_real_multicast_relay_is_listed_and_terminated(token_server, log_lines):
    group = unique_group()
    public = PublicSide(*group)
    client = client_of(token_server, TOKEN)
    try:
        with join_group(*group, proxy=token_server.address) as member:
            relay_id = f"{group[0]}:{group[1]}"
            wait_for(
                lambda: [r for r in client.stats()["relays"] if r["members"][0]["endpoint"]],
                "a registered member",
            )
            for i in range(3):
                public.send(b"public %d" % i)
                assert member.recv(timeout=3)[0] == b"public %d" % i
            (relay,) = client.stats()["relays"]
            assert relay["id"] == relay_id
            assert (relay["group"], relay["port"]) == group
            assert [m["permission"] for m in relay["members"]] == ["both"]
            assert relay["public_in"] == 3
            assert relay["datagrams_in"] >= 3
            assert relay["rates"].keys() >= {"datagrams_in", "datagrams_out", "bytes_in"}
            totals = client.stats()["totals"]["relays"]
            assert totals["datagrams"]["in"] >= 3
            assert set(totals["dropped"]) >= {"auth", "replay", "rate", "policy"}

            answer = client.terminate_relay(relay_id)
            assert answer == {"terminated": {"id": relay_id}}
            ended = member.wait(5)
            assert ended is not None
            assert ended.notice == Notice.MCAST_RELAY_DOWN
        stats = wait_for(lambda: (s := client.stats())["relays"] == [] and s, "the relay gone")
        # What was reported stays counted after the relay is gone.
        assert stats["totals"]["relays"]["datagrams"]["in"] >= 3
        assert f"admin: relay terminated id={relay_id}" in " ".join(log_lines.lines())
        assert (
            request(
                token_server.server.admin_address,
                "POST",
                f"/relays/{relay_id}/terminate",
                {"Authorization": f"Bearer {TOKEN}"},
            )[0]
            == 404
        )
    finally:
        public.close()


# --------------------------------------------------------------------------- sockets, config


def test_unix_socket_is_0600_and_removed_on_stop(make_server, tmp_path):
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: replaced
    server = make_server(admin_toml(listen=str(path)))
    assert server.server.admin_address == str(path)
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert AdminClient(str(path)).stats()["sessions"]["open"] == 0
    assert AdminClient(f"unix:{path}").sessions()["open"] == 0
    server.stop()
    assert not path.exists()


def test_unix_path_that_is_not_a_socket_is_a_config_error(make_server, tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(ConfigError) as info:
        make_server(admin_toml(listen=str(path)))
    (problem,) = info.value.problems
    assert problem.key == "admin.listen"
    assert "exists and is not a socket" in problem.problem
    assert path.read_text() == "keep me"


def test_address_in_use_leaves_the_proxy_running(make_server, echo_server, log_lines):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = make_server(admin_toml(listen=f"127.0.0.1:{port}"))
        assert server.server.admin_address is None
        with socks5_connect(server.address, *echo_server.address) as sock:
            echo_once(sock, b"works")
    assert any("admin listener not started: address in use" in line for line in log_lines.lines())


def test_disabled_admin_serves_nothing(make_server):
    server = make_server(admin_toml(enabled=False))
    assert server.server.admin_address is None


@pytest.mark.parametrize(
    ("listen", "allow_remote", "problem"),
    [
        ("0.0.0.0:1081", False, "0.0.0.0 is not a loopback address"),
        ("[::]:1081", False, ":: is not a loopback address"),
        ("192.0.2.1:1081", False, "192.0.2.1 is not a loopback address"),
        ("admin.sock", False, "neither HOST:PORT nor an absolute UNIX socket path"),
        ("run/admin.sock", False, "a UNIX socket path must be absolute"),
        ("localhost:1081", False, "not an IP address"),
    ],
)
def test_admin_listen_config_errors(listen, allow_remote, problem):
    text = admin_toml(listen=listen, allow_remote=allow_remote)
    with pytest.raises(ConfigError) as info:
        loads(text, "t.toml")
    (found,) = info.value.problems
    assert found.key == "admin.listen"
    assert problem in found.problem


def test_admin_listen_config_accepted():
    assert loads(admin_toml(listen="0.0.0.0:1081", allow_remote=True), "t").admin.listen == (
        "0.0.0.0:1081"
    )
    assert loads(admin_toml(listen="[::1]:0"), "t").admin.listen == "[::1]:0"
    assert loads(admin_toml(listen="/run/x/../admin.sock"), "t").admin.listen == "/run/admin.sock"
    assert loads(admin_toml(listen="0.0.0.0:1", enabled=False), "t").admin.enabled is False


def test_empty_token_file_is_a_config_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(ConfigError) as info:
        loads(admin_toml(token_file=empty), str(tmp_path / "t.toml"), str(tmp_path))
    (found,) = info.value.problems
    assert (found.key, found.problem) == ("admin.token_file", "the token file is empty")


def test_admin_targets():
    assert parse_admin_target("127.0.0.1:1081").port == 1081
    assert parse_admin_target("http://[::1]:9/").host == "::1"
    assert parse_admin_target("/run/a.sock").path == "/run/a.sock"
    assert parse_admin_target("./a.sock").path == "./a.sock"
    assert parse_admin_target("unix:a.sock").path == "a.sock"
    for bad in ("nope", "https://127.0.0.1:1", "http://h:1/x", "h:0", "unix:"):
        with pytest.raises(ValueError, match=r"."):
            parse_admin_target(bad)


# --------------------------------------------------------------------------- workers


def test_supervisor_sums_its_workers(tmp_path, echo_server):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    sock_path = tmp_path / "admin.sock"
    config = tmp_path / "workers.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\nworkers = 2\n'
        + admin_toml(listen=str(sock_path), token_file=token_file)
        + extensions_off()
        + '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "socksx", "server", "-c", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proxy = None
        started = 0
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded by the test timeout; the server logs as it starts
            if " listening address=127.0.0.1:" in line:
                proxy = ("127.0.0.1", int(line.split("address=127.0.0.1:")[1].split()[0]))
                started += 1
                if started == 2:
                    break
        assert proxy is not None
        client = AdminClient(str(sock_path), token=TOKEN)
        sizes = [10, 20, 30, 40, 50, 60]
        for size in sizes:
            with socks5_connect(proxy, *echo_server.address) as sock:
                echo_once(sock, b"w" * size)
        stats = wait_for(
            lambda: (
                (s := client.stats())["sessions"]["total"] == 6 and s["sessions"]["open"] == 0 and s
            ),
            "six ended sessions over the workers",
        )
        assert stats["workers"] == stats["workers_reporting"] == 2
        assert stats["pid"] == proc.pid
        assert stats["bytes"] == {"up": sum(sizes), "down": sum(sizes)}
        assert stats["sessions"]["by_command"] == {"connect": 6}
        with socks5_connect(proxy, *echo_server.address) as held:
            echo_once(held, b"held")
            (row,) = client.sessions()["sessions"]
            worker, _, local_id = row["id"].partition("-")
            assert worker in {"0", "1"}
            assert local_id.isdigit()
            assert client.close_session(row["id"])["closed"]["id"] == row["id"]
            held.settimeout(5)
            assert held.recv(10) == b""
        metrics = client.metrics()
        assert "socksx_workers 2.0" in metrics
        assert 'socksx_sessions_total{command="connect"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr is not None:
                proc.stderr.close()
    assert proc.returncode == 0
    assert not sock_path.exists()


# --------------------------------------------------------------------------- pure parts


def test_rate_sampler():
    rates = RateSampler(min_interval=0.5)
    assert rates.rate("k", 1000, now=10.0, since=8.0) == 500.0  # first sight: the average
    assert rates.rate("k", 5000, now=10.2) == 500.0  # too soon: the previous rate
    assert rates.rate("k", 5000, now=12.0) == 2000.0
    assert rates.rate("k", 10, now=13.0) == 0.0  # a counter that fell restarts
    assert rates.rate("new", 7, now=13.0) == 0.0
    rates.prune(100.0)
    assert len(rates) == 0


def test_throughput_history_keeps_a_minute():
    history = ThroughputHistory()
    assert history.current() == (0.0, 0.0)
    for second in range(100):
        history.tick(float(second), up=second * 10, down=second * 20)
    assert history.current() == (10.0, 20.0)
    data = history.to_json()
    assert len(data["up"]) == len(data["down"]) == 60
    assert set(data["up"]) == {10}
    assert set(data["down"]) == {20}


def test_counters_of_follow_the_naming_convention():
    assert counters_of(
        {
            "datagrams_in": 1,
            "packets_x": 3,
            "drops": 4,
            "rekeys": 5,
            "port": 6,
            "open": True,
            "members": [{"datagrams_in": 100, "bytes_in": 7}, {"bytes_in": 8}],
        }
    ) == {
        "datagrams": {"in": 1},
        "bytes": {"in": 15},
        "packets": {"x": 3},
        "dropped": {"unspecified": 4},
        "rekeys": {"": 5},
    }


def test_totals_keep_departed_objects():
    totals = Totals()
    assert totals.update({"a": {"datagrams": {"in": 5}}, "b": {"datagrams": {"in": 1}}}) == {
        "datagrams": {"in": 6}
    }
    assert totals.update({"b": {"datagrams": {"in": 2}}}) == {"datagrams": {"in": 7}}
    assert totals.update({}) == {"datagrams": {"in": 7}}


def test_merge_stats_and_sessions():
    one = {
        "version": "1",
        "pid": 11,
        "sessions": {"open": 1, "by_command": {"connect": 2}},
        "bytes": {"up": 5, "down": 6},
        "history": {"interval": 1.0, "up": [1, 2, 3], "down": [0, 0, 0]},
        "relays": [{"id": "r", "datagrams_in": 1}],
        "flag": True,
    }
    two = {
        "version": "1",
        "pid": 12,
        "sessions": {"open": 2, "by_command": {"connect": 1, "udp": 4}},
        "bytes": {"up": 1, "down": 1},
        "history": {"interval": 1.0, "up": [10], "down": [5]},
        "relays": [],
    }
    merged = merge_stats({"0": one, "1": two})
    assert "pid" not in merged
    assert "version" not in merged
    assert merged["sessions"] == {"open": 3, "by_command": {"connect": 3, "udp": 4}}
    assert merged["bytes"] == {"up": 6, "down": 7}
    assert merged["history"] == {"interval": 1.0, "up": [1, 2, 13], "down": [0, 0, 5]}
    assert merged["relays"] == [{"id": "0-r", "datagrams_in": 1}]
    assert merged["flag"] is True
    rows = merge_sessions(
        {
            "0": {
                "open": 1,
                "sessions": [{"id": "4", "rate": 1.0, "bytes_up": 0, "bytes_down": 0}],
            },
            "1": {
                "open": 1,
                "sessions": [{"id": "4", "rate": 9.0, "bytes_up": 0, "bytes_down": 0}],
            },
        },
        "rate",
        None,
    )
    assert rows["open"] == 2
    assert [row["id"] for row in rows["sessions"]] == ["1-4", "0-4"]


def test_reload_applies_the_token_and_warns_about_the_address(make_server, tmp_path, log_lines):
    token = tmp_path / "token"
    token.write_text("first-token")
    server = make_server(admin_toml())
    client = client_of(server)
    assert client.stats()["workers"] == 1
    config = Path(server.source)
    config.write_text(
        config.read_text().replace(
            '[admin]\nlisten = "127.0.0.1:0"\n',
            f'[admin]\nlisten = "127.0.0.1:1"\ntoken_file = "{token}"\n',
        )
    )
    assert server.call(lambda: server.server.reload())
    with pytest.raises(AdminHTTPError) as info:
        client.stats()  # same listener, now with a token
    assert info.value.status == 401
    assert client_of(server, "first-token").stats()["workers"] == 1
    assert any("admin listener changed: restart to apply it" in line for line in log_lines.lines())


def test_head_sends_the_headers_of_get_without_a_body(admin_server):
    address = admin_server.server.admin_address
    status, headers, body = request(address, "HEAD", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) > 100
    assert body == b""
