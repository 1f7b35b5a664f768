"""httpx (through httpcore and socksio), unchanged, through the socksx server.

httpx hands the URL's host to the proxy as written for both socks5:// and socks5h://: a name
goes as ATYP 03 (the server resolves it), an IP literal as ATYP 01. The recording resolver shows
which of the two the server received.
"""

from __future__ import annotations

import pytest

from tests.interop.conftest import PASSWORD, USER, WEB_BODY, sessions_seen

pytestmark = pytest.mark.interop

httpx = pytest.importorskip("httpx", reason="httpx not installed (pip install 'httpx[socks]')")
pytest.importorskip("socksio", reason="socksio not installed (pip install 'httpx[socks]')")

TIMEOUT = 10


def proxy_url(server, scheme: str, userinfo: str = "") -> str:
    host, port = server.address
    return f"{scheme}://{userinfo}{host}:{port}"


def get(proxy: str, url: str):
    """One GET through *proxy*, ignoring the machine's *_proxy variables and .netrc."""
    with httpx.Client(proxy=proxy, trust_env=False, timeout=TIMEOUT) as client:
        return client.get(url)


def test_socks5h_sends_the_name_to_the_server(recording_server, web):
    before = sessions_seen(recording_server)
    response = get(proxy_url(recording_server, "socks5h"), f"http://web.test:{web.port}/via-httpx")
    assert response.status_code == 200
    assert response.content == WEB_BODY
    assert response.headers["X-Seen-Host"] == f"web.test:{web.port}"
    assert web.requests[-1]["host"] == f"web.test:{web.port}"
    assert web.requests[-1]["path"] == "/via-httpx"
    assert recording_server.resolver.names == ["web.test"]
    assert sessions_seen(recording_server) >= before + 1


def test_socks5_to_an_ip_literal(recording_server, web):
    before = sessions_seen(recording_server)
    response = get(proxy_url(recording_server, "socks5"), f"http://127.0.0.1:{web.port}/ip")
    assert response.status_code == 200
    assert response.content == WEB_BODY
    assert web.requests[-1]["host"] == f"127.0.0.1:{web.port}"
    assert web.requests[-1]["path"] == "/ip"
    # ATYP 01: the server had no name to look up
    assert recording_server.resolver.names == []
    assert sessions_seen(recording_server) >= before + 1


def test_username_and_password_in_the_proxy_url(userpass_server, web):
    response = get(
        proxy_url(userpass_server, "socks5h", f"{USER}:{PASSWORD}@"),
        f"http://localhost:{web.port}/auth",
    )
    assert response.status_code == 200
    assert response.content == WEB_BODY
    assert web.requests[-1]["path"] == "/auth"


def test_wrong_password_is_a_proxy_error(userpass_server, web):
    with pytest.raises(httpx.ProxyError) as info:
        get(
            proxy_url(userpass_server, "socks5h", f"{USER}:wrong@"),
            f"http://localhost:{web.port}/",
        )
    # exactly httpx's ProxyError (not a subclass or a bare transport error), with
    # httpcore's message for an RFC 1929 STATUS != 0
    assert type(info.value) is httpx.ProxyError
    assert str(info.value) == "Invalid username/password"
    assert web.requests == []
