"""``socksx tunnel peer`` and ``tunnel list`` end to end through two local servers, and the
server's ``--peer`` flags."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from socksx.cli import cli
from socksx.cli._exit import ExitCode
from socksx.client.tunnel import open_tunnel
from tests.server.test_tunnel import ca, peer_table, pki, tls_section  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
UP = re.compile(r"tunnel up: (\S+):(\d+) -> ")


class Forwarder:
    """``python -m socksx tunnel peer ...`` with its stderr read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socksx", "tunnel", "peer", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # blocks until the forwarder says something
            self.lines.append(line)
            match = UP.search(line)
            if match:
                self.port = int(match.group(2))
                break
        self.drain = threading.Thread(target=self._rest, daemon=True)
        self.drain.start()

    def _rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def finish(self, sig: int | None = None, timeout: float = 20) -> tuple[int, str, str]:
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
            assert self.proc.stdout is not None
            out = self.proc.stdout.read()  # a few hundred octets: never fills the pipe
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.drain.join(5)
        return self.proc.returncode, out, "".join(self.lines)


@pytest.fixture
def forwarders():
    started: list[Forwarder] = []

    def start(*args: str) -> Forwarder:
        forwarder = Forwarder(*args)
        started.append(forwarder)
        return forwarder

    yield start
    for forwarder in started:
        if forwarder.proc.poll() is None:
            forwarder.proc.kill()
            forwarder.proc.wait()


@pytest.fixture
def pair(make_server, pki):  # noqa: F811
    b = make_server(tls_section(pki, "gw-b.test"))
    a = make_server('[admin]\nlisten = "127.0.0.1:0"\n' + peer_table(b.addresses[1][1], pki["ca"]))
    return a, b


def tunnel_args(a, b, echo, proto="tls", *extra: str) -> list[str]:
    return [
        f"127.0.0.1:{b.addresses[1][1]}",
        "--via",
        f"socks5h://127.0.0.1:{a.address[1]}",
        "--proto",
        proto,
        "--listen",
        "127.0.0.1:0",
        "--to",
        f"127.0.0.1:{echo.address[1]}",
        *extra,
    ]


def exchange(port: int, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
        app.settimeout(10)
        for payload in payloads:
            app.sendto(payload, ("127.0.0.1", port))
            data, source = app.recvfrom(65535)
            assert (data, source) == (payload, ("127.0.0.1", port))


@pytest.mark.parametrize("proto", ["tls", "udp"])
def test_peer_forwards_and_stops_cleanly_on_sigterm(pair, udp_echo, forwarders, proto):
    a, b = pair
    forwarder = forwarders(*tunnel_args(a, b, udp_echo, proto, "--json"))
    assert forwarder.port
    payloads = [b"hello", bytes(range(256)) * 4, b"\x00" * 1200]
    exchange(forwarder.port, payloads)
    code, out, err = forwarder.finish(signal.SIGTERM)
    assert code == ExitCode.OK, err
    report = json.loads(out)
    assert report["result"] == "stopped"
    assert report["proto"] == proto
    assert (report["datagrams_up"], report["datagrams_down"]) == (3, 3)
    assert report["bytes_up"] == report["bytes_down"] == sum(map(len, payloads))
    assert "tunnel closed: up 3 datagrams" in err


def test_peer_exits_7_when_the_gateway_ends_the_tunnel(pair, udp_echo, forwarders):
    a, b = pair
    forwarder = forwarders(*tunnel_args(a, b, udp_echo, "udp"))
    exchange(forwarder.port, [b"x"])
    b.stop()  # B goes away: A ends the tunnel and closes the forwarder's connection
    code, _, err = forwarder.finish()
    assert code == ExitCode.ENDED, err
    assert err.strip().splitlines()[-1].startswith("socksx: the tunnel was ended by gateway")


def test_peer_stops_after_duration(pair, udp_echo, forwarders):
    a, b = pair
    forwarder = forwarders(*tunnel_args(a, b, udp_echo, "tls", "--duration", "300ms"))
    code, out, err = forwarder.finish()
    assert (code, out) == (ExitCode.OK, ""), err


def test_peer_interrupted_exits_130(pair, udp_echo, forwarders):
    a, b = pair
    forwarder = forwarders(*tunnel_args(a, b, udp_echo))
    code, _, err = forwarder.finish(signal.SIGINT)
    assert code == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err


def test_refused_tunnel_exits_6_with_the_reply_code(pair, udp_echo, forwarders):
    a, b = pair
    args = tunnel_args(a, b, udp_echo)
    args[0] = f"127.0.0.1:{b.address[1]}"  # B's plain listener: not a configured peer
    code, _, err = forwarders(*args).finish()
    assert code == ExitCode.REFUSED
    assert err.strip().splitlines() == [
        f"socksx: gateway 127.0.0.1:{a.address[1]} refused the tunnel to 127.0.0.1:"
        f"{b.address[1]}: connection not allowed by ruleset (REP 0x02)"
    ]


def test_unreachable_gateway_exits_4(udp_echo, forwarders):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = ["127.0.0.1:1443", "--via", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0"]
    code, _, err = forwarders(*args, "--to", f"127.0.0.1:{udp_echo.address[1]}").finish()
    assert code == ExitCode.UNREACHABLE
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--peer-user", "alice"], "--peer-user and --peer-password-file go together"),
        (["--peer-user", "alice", "--peer-password-file", "PW"], "use a socks5s:// proxy URL"),
    ],
)
def test_usage_errors_exit_2(tmp_path, extra, message):
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    extra = [str(password) if arg == "PW" else arg for arg in extra]
    args = [
        "tunnel",
        "peer",
        "127.0.0.1:1443",
        "--via",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "10.2.0.5:5060",
        *extra,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.output


def test_listen_address_in_use_exits_1(forwarders):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        args = ["127.0.0.1:1443", "--via", "127.0.0.1:9", "--listen", f"127.0.0.1:{port}"]
        code, _, err = forwarders(*args, "--to", "10.2.0.5:5060").finish()
    assert code == ExitCode.FAILURE
    assert err.strip().splitlines() == [
        f"socksx: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


def test_list_shows_both_roles_through_the_admin_api(pair, udp_echo, make_server, pki):  # noqa: F811
    a, b = pair
    admin = a.call(lambda: a.server.admin_address)
    with open_tunnel(
        b.addresses[1], proxy=f"socks5h://127.0.0.1:{a.address[1]}", proto="udp", timeout=15
    ) as tunnel:
        tunnel.sendto(b"x", udp_echo.address)
        tunnel.recvfrom(timeout=10)
        runner = CliRunner()
        result = runner.invoke(
            cli,
            ["tunnel", "list", "--admin", f"{admin[0]}:{admin[1]}", "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        (near,) = json.loads(result.output)
        assert (near["role"], near["proto"], near["peer"]) == (
            "near",
            "udp",
            f"127.0.0.1:{b.addresses[1][1]}",
        )
        assert (near["datagrams_out"], near["datagrams_in"]) == (1, 1)
        table = runner.invoke(
            cli, ["tunnel", "list", "--admin", f"{admin[0]}:{admin[1]}"], catch_exceptions=False
        )
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["id", "role", "proto", "peer"]
    assert lines[1].split()[1:4] == ["near", "udp", f"127.0.0.1:{b.addresses[1][1]}"]


def test_list_without_an_admin_api_exits_1():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = CliRunner().invoke(
        cli, ["tunnel", "list", "--admin", f"127.0.0.1:{port}"], catch_exceptions=False
    )
    assert result.exit_code == ExitCode.FAILURE
    assert result.output.startswith("socksx: cannot reach the admin API")


def test_server_peer_flags_make_a_gateway_a(make_server, pki, udp_echo, tmp_path):  # noqa: F811
    b = make_server(tls_section(pki, "gw-b.test"))
    config = tmp_path / "a.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\n[admin]\nenabled = false\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "socksx",
            "server",
            "-c",
            str(config),
            "--peer",
            f"127.0.0.1:{b.addresses[1][1]}",
            "--peer-ca",
            str(pki["ca"]),
            "--peer-name",
            "gw-b.test",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            match = re.search(r"listening address=127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "server did not start"
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        with open_tunnel(b.addresses[1], proxy=f"socks5h://127.0.0.1:{port}", timeout=15) as t:
            t.sendto(b"flags", udp_echo.address)
            assert t.recvfrom(timeout=10) == (b"flags", udp_echo.address)
    finally:
        proc.terminate()
        proc.wait(15)
