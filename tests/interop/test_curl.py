"""curl, unchanged, through the socksx server: every SOCKS mode curl has, auth, refusals."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest

from tests.interop.conftest import (
    PASSWORD,
    USER,
    WEB_BODY,
    closed_port,
    need_binary,
    run,
    sessions_seen,
)

pytestmark = pytest.mark.interop

#: curl's CURLE_PROXY ("proxy handshake error"), used since 7.73 for every SOCKS refusal.
CURLE_PROXY = 97


@pytest.fixture
def curl() -> str:
    return need_binary("curl", "curl")


class Curl(NamedTuple):
    code: int
    body: bytes
    stderr: str


def curl_via(curl: str, proxy_args: list[str], url: str) -> Curl:
    """One curl GET through a proxy (never reading ~/.curlrc or the *_proxy variables)."""
    result = run([curl, "-q", "-sS", "--max-time", "10", "--noproxy", "", *proxy_args, url])
    return Curl(result.returncode, result.stdout, result.stderr.decode(errors="replace"))


def proxy(server) -> str:
    host, port = server.address
    return f"{host}:{port}"


def assert_ok(result: Curl) -> None:
    assert result.code == 0, result.stderr
    assert result.body == WEB_BODY


def assert_proxy_failure(result: Curl, message: str, web) -> None:
    """curl failed the proxy handshake with *message* (a regex) and the web server saw nothing."""
    assert result.code == CURLE_PROXY, result.stderr
    assert re.search(message, result.stderr, re.IGNORECASE), result.stderr
    assert result.body == b""
    assert web.requests == []


def test_socks5_hostname_sends_the_name_to_the_server(curl, named_server, web):
    result = curl_via(
        curl, ["--socks5-hostname", proxy(named_server)], f"http://web.test:{web.port}/remote"
    )
    assert_ok(result)
    assert web.requests[-1]["host"] == f"web.test:{web.port}"
    assert web.requests[-1]["path"] == "/remote"
    assert web.requests[-1]["peer"][0] == "127.0.0.1"


def test_socks5_local_resolution(curl, socks_server, web):
    before = sessions_seen(socks_server)
    result = curl_via(curl, ["--socks5", proxy(socks_server)], f"http://127.0.0.1:{web.port}/local")
    assert_ok(result)
    assert web.requests[-1]["path"] == "/local"
    assert sessions_seen(socks_server) >= before + 1


@pytest.mark.parametrize("flag", ["--socks4", "--socks4a"])
def test_socks4_and_socks4a(curl, socks_server, web, flag):
    # --socks4 resolves "localhost" itself (from /etc/hosts); --socks4a sends the name.
    before = sessions_seen(socks_server)
    result = curl_via(curl, [flag, proxy(socks_server)], f"http://localhost:{web.port}/4")
    assert_ok(result)
    assert web.requests[-1]["host"] == f"localhost:{web.port}"
    assert sessions_seen(socks_server) >= before + 1


def test_socks4a_sends_an_invented_name(curl, named_server, web):
    result = curl_via(curl, ["--socks4a", proxy(named_server)], f"http://web.test:{web.port}/4a")
    assert_ok(result)
    assert web.requests[-1]["host"] == f"web.test:{web.port}"


def test_socks5h_url_with_username_and_password(curl, userpass_server, web):
    url = f"socks5h://{USER}:{PASSWORD}@{proxy(userpass_server)}"
    result = curl_via(curl, ["--proxy", url], f"http://localhost:{web.port}/auth")
    assert_ok(result)
    assert web.requests[-1]["path"] == "/auth"


def test_socks5_with_proxy_user_option(curl, userpass_server, web):
    result = curl_via(
        curl,
        ["--socks5", proxy(userpass_server), "--proxy-user", f"{USER}:{PASSWORD}"],
        f"http://127.0.0.1:{web.port}/user-option",
    )
    assert_ok(result)


def test_wrong_password_is_a_proxy_handshake_failure(curl, userpass_server, web):
    url = f"socks5h://{USER}:wrong@{proxy(userpass_server)}"
    result = curl_via(curl, ["--proxy", url], f"http://localhost:{web.port}/")
    # curl prints the RFC 1929 reply it got: VER 1, STATUS 1
    assert_proxy_failure(result, r"user was rejected by the socks5 server \(1 1\)", web)


def test_no_credentials_against_userpass_server(curl, userpass_server, web):
    result = curl_via(
        curl, ["--socks5-hostname", proxy(userpass_server)], f"http://localhost:{web.port}/"
    )
    # The server answers method 0xFF: no acceptable method for a no-auth-only client.
    assert_proxy_failure(result, "no authentication method was acceptable", web)


def test_socks4a_refused_by_userpass_server(curl, userpass_server, web):
    result = curl_via(curl, ["--socks4a", proxy(userpass_server)], f"http://localhost:{web.port}/")
    # SOCKS4 reply 0x5B, "request rejected or failed"
    assert_proxy_failure(result, r"request rejected or failed", web)


def test_denied_destination_is_connection_not_allowed(curl, deny_server, web):
    result = curl_via(
        curl, ["--socks5-hostname", proxy(deny_server)], f"http://127.0.0.1:{web.port}/"
    )
    # REP 0x02, "connection not allowed by ruleset"; curl prints the code in parentheses
    assert_proxy_failure(result, r"complete socks5 connection to 127\.0\.0\.1\. \(2\)", web)


def test_refused_destination_is_connection_refused(curl, socks_server, web):
    result = curl_via(curl, ["--socks5", proxy(socks_server)], f"http://127.0.0.1:{closed_port()}/")
    assert_proxy_failure(result, r"complete socks5 connection to 127\.0\.0\.1\. \(5\)", web)
