"""SOCKS over TLS listeners: every command inside TLS, certificates checked on both sides."""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme

from socksx.client import connect as client_connect
from socksx.client import udp_associate
from socksx.errors import ProxyConnectionError
from tests.conftest import recv_exactly
from tests.server.socks_raw import addr_bytes, negotiate, read_reply


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_files(ca, tmp_path):
    cert = ca.issue_cert("gw.test", "127.0.0.1")
    chain = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return chain, key, ca_file


@pytest.fixture
def tls_server(make_server, tls_files):
    chain, key, _ = tls_files
    return make_server(f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{chain}"\nkey = "{key}"\n')


def tls_address(server):
    return server.addresses[1]  # plain listener first, then the TLS one


def socks_over_tls(address, context, target) -> bytes:
    """CONNECT through a TLS listener with *context*; return the echo of b"over tls"."""
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="gw.test") as tls,
    ):
        negotiate(tls)
        tls.sendall(b"\x05\x01\x00" + addr_bytes(*target))
        assert read_reply(tls)[0] == 0
        tls.sendall(b"over tls")
        return recv_exactly(tls, 8)


def test_connect_through_a_tls_listener(tls_server, tls_files, echo_server):
    context = ssl.create_default_context(cafile=str(tls_files[2]))
    assert socks_over_tls(tls_address(tls_server), context, echo_server.address) == b"over tls"


def test_client_library_socks5s_with_ca_file(tls_server, tls_files, echo_server):
    _, _, ca_file = tls_files
    port = tls_address(tls_server)[1]
    with client_connect(
        *echo_server.address, proxy=f"socks5s://127.0.0.1:{port}", ca_file=str(ca_file)
    ) as sock:
        sock.sendall(b"lib")
        assert recv_exactly(sock, 3) == b"lib"


def test_udp_associate_over_a_tls_control_connection(tls_server, tls_files, udp_echo):
    _, _, ca_file = tls_files
    port = tls_address(tls_server)[1]
    with udp_associate(proxy=f"socks5s://127.0.0.1:{port}", ca_file=str(ca_file)) as assoc:
        assoc.sendto(b"dgram", udp_echo.address)
        data, source = assoc.recvfrom(timeout=5)
    assert (data, source) == (b"dgram", udp_echo.address)


def test_wrong_ca_is_a_clear_client_error(tls_server, echo_server, tmp_path):
    other = trustme.CA()
    wrong = tmp_path / "wrong-ca.pem"
    other.cert_pem.write_to_path(str(wrong))
    port = tls_address(tls_server)[1]
    with pytest.raises(ProxyConnectionError, match="certificate"):
        client_connect(
            *echo_server.address, proxy=f"socks5s://127.0.0.1:{port}", ca_file=str(wrong)
        )


def test_plaintext_on_the_tls_listener_is_refused_cleanly(tls_server):
    with socket.create_connection(tls_address(tls_server), timeout=10) as raw:
        raw.sendall(b"\x05\x01\x00" + bytes(64))  # SOCKS in the clear, not a TLS hello
        try:
            answer = raw.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed, nothing sent back in the clear

    def results():
        tls_server.server.wait_idle(timeout=5)
        return dict(tls_server.server.stats.by_result)

    assert list(tls_server.call(results)) == ["tls-error"]


def test_client_certificate_required(make_server, tls_files, ca, echo_server):
    chain, key, ca_file = tls_files
    server = make_server(
        f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{chain}"\nkey = "{key}"\n'
        f'client_ca = "{ca_file}"\n'
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        socks_over_tls(tls_address(server), context, echo_server.address)
    ca.issue_cert("client.test").configure_cert(context)
    assert socks_over_tls(tls_address(server), context, echo_server.address) == b"over tls"


def test_tls_listener_without_cert_is_a_config_error(tmp_path):
    from socksx.config import loads
    from socksx.errors import ConfigError

    with pytest.raises(ConfigError, match=r"need tls\.cert and tls\.key"):
        loads('[tls]\nlisten = ["127.0.0.1:0"]\n', "x.toml")
