from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli.check import check
from socksx.cli.connect import connect

ROOT = Path(__file__).resolve().parents[2]

# The daemons and echo servers live in tests/client/conftest.py; load them under a private name
# (two modules called "conftest" cannot share sys.modules).
_spec = importlib.util.spec_from_file_location(
    "socksx_tests_client_fixtures", ROOT / "tests" / "client" / "conftest.py"
)
assert _spec is not None
assert _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fixtures
_spec.loader.exec_module(fixtures)
dante = fixtures.dante
microsocks = fixtures.microsocks
microsocks_auth = fixtures.microsocks_auth
echo_server = fixtures.echo_server
greeting_server = fixtures.greeting_server
closed_port = fixtures.closed_port

pytestmark = pytest.mark.integration

ENV_PROXIES = ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in ENV_PROXIES:
        monkeypatch.delenv(name, raising=False)


def run(command, *args: str, stdin: bytes = b"") -> Result:
    return CliRunner().invoke(command, list(args), input=stdin, obj=App(), catch_exceptions=False)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_PROXIES}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    env.pop("SOCKSX_DEBUG", None)
    env.update(extra)
    return env


def socksx(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "socksx", *args],
        input=stdin, capture_output=True, env=child_env(**env), timeout=60, check=False,
    )


def password_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "password"
    path.write_text(text + "\n")
    return str(path)


# -- socksx connect --------------------------------------------------------------------------


def test_connect_pipes_1mib_with_half_close_under_gevent(dante, echo_server):
    """python -m socksx (gevent-patched): all of stdin, then EOF, then all of the echo."""
    payload = os.urandom(1024 * 1024)
    result = socksx("connect", f"127.0.0.1:{echo_server.port}", "--via", dante.url, stdin=payload)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()
    assert result.stderr == b""


def test_connect_in_process_threads(dante, echo_server):
    payload = bytes(range(256)) * 64
    result = run(connect, f"127.0.0.1:{echo_server.port}", "--via", dante.url, stdin=payload)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == payload


def test_connect_target_speaks_first(dante, greeting_server):
    result = socksx("connect", f"localhost:{greeting_server.port}", "--via", dante.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"220 hello from the target\r\n"


def read_exactly(stream, n: int, timeout: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < n and time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(stream.fileno(), n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_connect_interactive_through_microsocks(microsocks, echo_server):
    """Like ssh: talk, read the answer, then close stdin; the process ends when the remote does.

    (microsocks 1.0.3 closes both directions on the first EOF, so the answer is read first.)
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "socksx", "connect", f"127.0.0.1:{echo_server.port}",
         "--via", microsocks.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    try:
        for line in (b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00\x01binary\xff\r\n"):
            process.stdin.write(line)
            process.stdin.flush()
            assert read_exactly(process.stdout, len(line)) == line
        process.stdin.close()
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == b""
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            stream.close()


def test_connect_with_password_file(microsocks_auth, echo_server, tmp_path):
    secret = password_file(tmp_path, microsocks_auth.password)
    process = subprocess.Popen(
        [sys.executable, "-m", "socksx", "connect", f"127.0.0.1:{echo_server.port}",
         "--via", microsocks_auth.url, "--user", microsocks_auth.username,
         "--password-file", secret],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    try:
        process.stdin.write(b"authenticated\n")
        process.stdin.flush()
        assert read_exactly(process.stdout, 14) == b"authenticated\n"
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            stream.close()


def test_connect_via_environment(dante, echo_server):
    result = socksx("connect", f"127.0.0.1:{echo_server.port}", stdin=b"env proxy",
                    SOCKS_PROXY=f"{dante.host}:{dante.port}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"env proxy"


def test_connect_refused(dante, closed_port):
    result = run(connect, f"127.0.0.1:{closed_port}", "--via", f"127.0.0.1:{dante.port}")
    assert result.exit_code == ExitCode.REFUSED
    assert result.stderr == (
        f"socksx: proxy 127.0.0.1:{dante.port} refused CONNECT to 127.0.0.1:{closed_port}: "
        "connection refused (REP 0x05)\n"
    )
    assert result.stdout == ""


def test_connect_refused_exit_code_from_main(dante, closed_port):
    result = socksx("connect", f"127.0.0.1:{closed_port}", "--via", dante.url)
    assert result.returncode == ExitCode.REFUSED
    assert result.stderr.decode().endswith("connection refused (REP 0x05)\n")
    assert b"Traceback" not in result.stderr


def test_connect_proxy_unreachable(closed_port):
    result = run(connect, "127.0.0.1:80", "--via", f"127.0.0.1:{closed_port}")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stderr == (
        f"socksx: cannot connect to proxy 127.0.0.1:{closed_port}: connection refused\n"
    )


def test_connect_wrong_password(microsocks_auth, echo_server, tmp_path):
    result = run(connect, f"127.0.0.1:{echo_server.port}", "--via", microsocks_auth.url,
                 "--user", "alice", "--password-file", password_file(tmp_path, "wrong"))
    assert result.exit_code == ExitCode.AUTH
    assert result.stderr == (
        f"socksx: proxy 127.0.0.1:{microsocks_auth.port} rejected the username/password\n"
    )


def test_connect_credentials_required(microsocks_auth, echo_server):
    result = run(connect, f"127.0.0.1:{echo_server.port}", "--via", microsocks_auth.url)
    assert result.exit_code == ExitCode.AUTH
    assert "no acceptable authentication method" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1:80"], "no proxy: pass --via PROXY or set SOCKS_PROXY"),
        (["127.0.0.1:80", "--via", "http://web:3128"], "unsupported proxy scheme"),
        (["127.0.0.1", "--via", "gw"], "missing port"),
        (["127.0.0.1:80", "--via", "gw", "--password-file", "/nonexistent"],
         "--password-file needs --user"),
        (["127.0.0.1:80", "--via", "gw", "--user", "bob"], "--user needs --password-file"),
    ],
)
def test_connect_usage_errors(args, message):
    result = run(connect, *args)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.output


# -- socksx check ----------------------------------------------------------------------------


def check_json(*args: str) -> tuple[int, dict]:
    result = run(check, "--json", "--timeout", "3", *args)
    return result.exit_code, json.loads(result.stdout)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_check_dante(dante):
    code, report = check_json("--via", dante.url)
    assert code == ExitCode.OK
    assert report["reachable"] is True
    assert report["result"] == "ok"
    assert report["socks5"] is True
    assert report["socks4"] is True
    assert report["auth"] == {"none": True, "username_password": False}
    assert report["commands"] == {
        "connect": True, "bind": True, "udp_associate": True, "udp_roundtrip": True,
    }
    assert report["address_types"]["ipv4"] is True
    assert report["address_types"]["domain"] is True
    # Dante's external address is 127.0.0.1 only: IPv6 targets get REP 08.
    assert report["address_types"]["ipv6"] is (False if ipv6_loopback() else None)
    assert report["extensions"] == dict.fromkeys(
        ("join", "leave", "setup_udp_tunnel", "multi_bind", "accept"), False
    )
    probes = {p["probe"]: p for p in report["probes"]}
    assert probes["join"]["detail"] == "closed without a reply"
    assert all(p["rtt_ms"] > 0 for p in report["probes"] if p["status"] != "skipped")


def test_check_microsocks(microsocks):
    code, report = check_json("--via", microsocks.url)
    assert code == ExitCode.OK
    assert report["socks5"] is True
    assert report["socks4"] is False
    assert report["auth"] == {"none": True, "username_password": False}
    assert report["commands"] == {
        "connect": True, "bind": False, "udp_associate": False, "udp_roundtrip": None,
    }
    assert report["address_types"]["ipv4"] is True
    assert report["address_types"]["domain"] is True
    assert report["address_types"]["ipv6"] is (True if ipv6_loopback() else None)
    probes = {p["probe"]: p for p in report["probes"]}
    for key in ("join", "leave", "setup_udp_tunnel", "multi_bind", "accept"):
        assert probes[key]["status"] == "unsupported"
        assert probes[key]["detail"] == "REP 0x07 command not supported"


def test_check_credentials(microsocks_auth, tmp_path):
    url = microsocks_auth.url
    code, report = check_json("--via", url)
    assert code == ExitCode.AUTH
    assert report["result"] == "credentials-required"
    assert report["auth"] == {"none": False, "username_password": True}
    assert report["commands"]["connect"] is None

    code, report = check_json("--via", url, "--user", "alice",
                              "--password-file", password_file(tmp_path, "wrong"))
    assert code == ExitCode.AUTH
    assert report["result"] == "auth-failed"

    code, report = check_json("--via", url, "--user", "alice",
                              "--password-file", password_file(tmp_path, "s3cret pass"))
    assert code == ExitCode.OK
    assert report["commands"]["connect"] is True


def test_check_credentials_messages(microsocks_auth):
    result = run(check, "--via", microsocks_auth.url)
    assert result.exit_code == ExitCode.AUTH
    assert result.stderr == (
        f"socksx: proxy 127.0.0.1:{microsocks_auth.port} requires a username and password "
        "(--user)\n"
    )


def test_check_unreachable(closed_port):
    code, report = check_json("--via", f"127.0.0.1:{closed_port}")
    assert code == ExitCode.UNREACHABLE
    assert report["reachable"] is False
    assert report["result"] == "unreachable"
    result = run(check, "--via", f"127.0.0.1:{closed_port}")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stdout == ""
    assert result.stderr == (
        f"socksx: cannot connect to proxy 127.0.0.1:{closed_port}: connection refused\n"
    )


def test_check_not_socks(echo_server):
    """An echo server sends our own bytes back: neither a SOCKS5 nor a SOCKS4 answer."""
    code, report = check_json("--via", f"127.0.0.1:{echo_server.port}")
    assert code == ExitCode.UNREACHABLE
    assert report["result"] == "not-socks"
    assert report["socks5"] is False
    assert report["socks4"] is False


def test_check_plain_text_table(dante):
    result = run(check, "--via", dante.url, "--timeout", "3")
    assert result.exit_code == ExitCode.OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"socksx check socks5h://127.0.0.1:{dante.port}"
    rows = {line.split("  ")[0]: line for line in lines[1:]}
    assert "granted; echo round trip ok" in rows["CONNECT"]
    assert " ok " in rows["UDP datagram"]
    assert "unsupported" in rows["ACCEPT 0x09"]
    assert "\x1b[" not in result.stdout


def test_check_via_main_under_gevent(microsocks):
    result = socksx("check", "--json", "--timeout", "3", "--via", microsocks.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["commands"]["connect"] is True
