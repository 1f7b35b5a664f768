"""proxychains4 (LD_PRELOAD socksification) of unmodified programs through the socksx server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.interop.conftest import PASSWORD, USER, WEB_BODY, need_binary, run, sessions_seen

pytestmark = pytest.mark.interop

#: The wrapped program for the second case: a plain-socket HTTP GET that prints the body.
PY_CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=10) as s:
    s.sendall(b"GET /py HTTP/1.0\\r\\nHost: %s:%d\\r\\n\\r\\n" % (host.encode(), port))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
sys.stdout.buffer.write(data.partition(b"\\r\\n\\r\\n")[2])
"""


@pytest.fixture
def proxychains() -> str:
    return need_binary("proxychains4", "proxychains4")


def write_conf(path: Path, server, auth: str = "") -> Path:
    host, port = server.address
    path.write_text(
        "strict_chain\nproxy_dns\nremote_dns_subnet 224\n"
        "tcp_read_time_out 10000\ntcp_connect_time_out 5000\n"
        f"[ProxyList]\nsocks5 {host} {port} {auth}\n"
    )
    return path


def wrapped(proxychains: str, conf: Path, *argv: str) -> tuple[int, bytes, str]:
    result = run([proxychains, "-q", "-f", str(conf), *argv], timeout=20)
    return result.returncode, result.stdout, result.stderr.decode(errors="replace")


def test_curl_by_address(proxychains, socks_server, web, tmp_path):
    curl = need_binary("curl", "curl")
    conf = write_conf(tmp_path / "proxychains.conf", socks_server)
    before = sessions_seen(socks_server)
    code, body, err = wrapped(
        proxychains, conf, curl, "-q", "-sS", "--noproxy", "*", f"http://127.0.0.1:{web.port}/pc"
    )
    assert code == 0, err
    assert body == WEB_BODY
    assert web.requests[-1]["path"] == "/pc"
    # the connection came through the proxy, not straight from curl
    assert sessions_seen(socks_server) >= before + 1


def test_curl_by_name_resolved_by_the_server(proxychains, named_server, web, tmp_path):
    # proxy_dns: proxychains hands curl a placeholder address and sends the name in CONNECT
    curl = need_binary("curl", "curl")
    conf = write_conf(tmp_path / "proxychains.conf", named_server)
    code, body, err = wrapped(
        proxychains, conf, curl, "-q", "-sS", "--noproxy", "*", f"http://web.test:{web.port}/n"
    )
    assert code == 0, err
    assert body == WEB_BODY
    assert web.requests[-1]["host"] == f"web.test:{web.port}"


def test_python_program(proxychains, named_server, web, tmp_path):
    conf = write_conf(tmp_path / "proxychains.conf", named_server)
    before = sessions_seen(named_server)
    code, body, err = wrapped(
        proxychains, conf, sys.executable, "-c", PY_CLIENT, "web.test", str(web.port)
    )
    assert code == 0, err
    assert body == WEB_BODY
    assert web.requests[-1]["path"] == "/py"
    assert sessions_seen(named_server) >= before + 1


def test_username_password(proxychains, userpass_server, web, tmp_path):
    conf = write_conf(tmp_path / "proxychains.conf", userpass_server, f"{USER} {PASSWORD}")
    code, body, err = wrapped(
        proxychains, conf, sys.executable, "-c", PY_CLIENT, "127.0.0.1", str(web.port)
    )
    assert code == 0, err
    assert body == WEB_BODY


def test_wrong_password_reaches_nothing(proxychains, userpass_server, web, tmp_path):
    conf = write_conf(tmp_path / "proxychains.conf", userpass_server, f"{USER} wrong")
    code, body, _ = wrapped(
        proxychains, conf, sys.executable, "-c", PY_CLIENT, "127.0.0.1", str(web.port)
    )
    assert code != 0
    assert body == b""
    assert web.requests == []
    assert userpass_server.call(lambda: userpass_server.server.stats.auth_failures) >= 1
