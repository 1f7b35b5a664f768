"""PySocks, python-socks and requests, unchanged, through the socksx server."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import recv_exactly
from tests.interop.conftest import PASSWORD, USER, WEB_BODY, closed_port

pytestmark = pytest.mark.interop

socks = pytest.importorskip("socks", reason="PySocks not installed (pip install PySocks)")
python_socks = pytest.importorskip(
    "python_socks", reason="python-socks not installed (pip install python-socks)"
)

TIMEOUT = 10


def echo_round_trip(sock: socket.socket, size: int = 4096) -> None:
    payload = os.urandom(size)
    sock.sendall(payload)
    assert recv_exactly(sock, size) == payload


# --- PySocks -------------------------------------------------------------------------------


def pysocks_socket(server, proxy_type: int, **kwargs) -> socket.socket:
    sock = socks.socksocket()
    sock.settimeout(TIMEOUT)
    sock.set_proxy(proxy_type, *server.address, **kwargs)
    return sock


def test_pysocks_socks5_remote_dns(named_server, echo_server):
    with pysocks_socket(named_server, socks.SOCKS5, rdns=True) as sock:
        sock.connect(("echo.test", echo_server.address[1]))
        # BND.ADDR/BND.PORT: the server's outward socket, which the echo server saw
        bound = sock.get_proxy_sockname()
        echo_round_trip(sock)
    assert bound in echo_server.peers


def test_pysocks_socks5_ip(socks_server, echo_server):
    with pysocks_socket(socks_server, socks.SOCKS5, rdns=False) as sock:
        sock.connect(echo_server.address)
        echo_round_trip(sock)


@pytest.mark.parametrize("rdns", [False, True], ids=["socks4", "socks4a"])
def test_pysocks_socks4(named_server, echo_server, rdns):
    host = "echo.test" if rdns else echo_server.address[0]
    with pysocks_socket(named_server, socks.SOCKS4, rdns=rdns) as sock:
        sock.connect((host, echo_server.address[1]))
        echo_round_trip(sock)


def test_pysocks_socks5_username_password(userpass_server, echo_server):
    with pysocks_socket(userpass_server, socks.SOCKS5, username=USER, password=PASSWORD) as sock:
        sock.connect(echo_server.address)
        echo_round_trip(sock)


def test_pysocks_socks5_wrong_password(userpass_server, echo_server):
    sock = pysocks_socket(userpass_server, socks.SOCKS5, username=USER, password="nope")
    with sock, pytest.raises(socks.GeneralProxyError) as info:
        sock.connect(echo_server.address)
    # PySocks wraps the RFC 1929 failure it read from the server
    assert isinstance(info.value.socket_err, socks.SOCKS5AuthError)
    assert echo_server.peers == []


def test_pysocks_refused_destination(socks_server):
    sock = pysocks_socket(socks_server, socks.SOCKS5)
    with sock, pytest.raises(socks.GeneralProxyError) as info:
        sock.connect(("127.0.0.1", closed_port()))
    assert isinstance(info.value.socket_err, socks.SOCKS5Error)
    assert str(info.value.socket_err).startswith("0x05")


@pytest.mark.parametrize("rdns", [False, True])
def test_pysocks_udp_round_trip(socks_server, udp_echo, rdns):
    # PySocks declares DST "0" and its local port; with rdns it sends "0" as a domain name.
    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.set_proxy(socks.SOCKS5, *socks_server.address, rdns=rdns)
        for i in range(3):
            payload = b"datagram %d " % i + os.urandom(32)
            sock.sendto(payload, udp_echo.address)
            data, source = sock.recvfrom(65535)
            assert data == payload
            assert source == udp_echo.address
    assert len(udp_echo.sources) == 3
    assert len(set(udp_echo.sources)) == 1


# --- python-socks (sync API) ----------------------------------------------------------------


def url(server, scheme: str = "socks5", userinfo: str = "") -> str:
    host, port = server.address
    return f"{scheme}://{userinfo}{host}:{port}"


def test_python_socks_socks5_no_auth(named_server, echo_server):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(named_server))
    # a name with rdns (python-socks' SOCKS5 default) goes to the server as ATYP 03
    with proxy.connect("echo.test", echo_server.address[1], timeout=TIMEOUT) as sock:
        echo_round_trip(sock)


def test_python_socks_socks5_username_password(userpass_server, echo_server):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(userpass_server, userinfo=f"{USER}:{PASSWORD}@"))
    with proxy.connect(*echo_server.address, timeout=TIMEOUT) as sock:
        echo_round_trip(sock)


def test_python_socks_wrong_password(userpass_server, echo_server):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(userpass_server, userinfo=f"{USER}:bad@"))
    with pytest.raises(python_socks.ProxyError):
        proxy.connect(*echo_server.address, timeout=TIMEOUT)
    assert echo_server.peers == []


@pytest.mark.parametrize("rdns", [False, True], ids=["socks4", "socks4a"])
def test_python_socks_socks4(named_server, echo_server, rdns):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(named_server, "socks4"), rdns=rdns)
    host = "echo.test" if rdns else echo_server.address[0]
    with proxy.connect(host, echo_server.address[1], timeout=TIMEOUT) as sock:
        echo_round_trip(sock)


def test_python_socks_refused_destination_carries_reply_05(socks_server):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(socks_server))
    with pytest.raises(python_socks.ProxyError) as info:
        proxy.connect("127.0.0.1", closed_port(), timeout=TIMEOUT)
    assert info.value.error_code == 0x05


def test_python_socks_denied_destination_carries_reply_02(deny_server, echo_server):
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(url(deny_server))
    with pytest.raises(python_socks.ProxyError) as info:
        proxy.connect(*echo_server.address, timeout=TIMEOUT)
    assert info.value.error_code == 0x02
    assert echo_server.peers == []


# --- requests (via PySocks) -----------------------------------------------------------------


def test_requests_socks5h_proxy(named_server, web):
    requests = pytest.importorskip("requests", reason="requests not installed")
    proxies = {"http": url(named_server, "socks5h")}
    with requests.Session() as session:
        session.trust_env = False  # ignore *_proxy variables and .netrc of the machine
        response = session.get(
            f"http://web.test:{web.port}/via-requests", proxies=proxies, timeout=TIMEOUT
        )
    assert response.status_code == 200
    assert response.content == WEB_BODY
    assert web.requests[-1]["host"] == f"web.test:{web.port}"
    assert web.requests[-1]["path"] == "/via-requests"


def test_requests_socks5h_proxy_with_credentials(userpass_server, web):
    requests = pytest.importorskip("requests", reason="requests not installed")
    proxies = {"http": url(userpass_server, "socks5h", f"{USER}:{PASSWORD}@")}
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(f"http://localhost:{web.port}/", proxies=proxies, timeout=TIMEOUT)
    assert response.content == WEB_BODY
