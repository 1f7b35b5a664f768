from __future__ import annotations

import gc
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from socksx.client import bind, connect, raw_request, select_method, udp_associate
from socksx.client.proxyurl import ProxyURL
from socksx.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    ProxyConnectionError,
    ProxyTimeoutError,
    ReplyError,
    TLSVerificationError,
)
from socksx.protocol.constants import Method, ReplyCode

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send *payload* from a thread, half-close, read until EOF."""
    sender = threading.Thread(
        target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True
    )
    sender.start()
    received = recv_all(sock)
    sender.join(timeout=10)
    return received


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send and read the echo without half-closing (microsocks 1.0.3 drops data after an EOF)."""
    sock.sendall(payload)
    sock.settimeout(10)
    return sock.recv(len(payload), socket.MSG_WAITALL)


# -- CONNECT ---------------------------------------------------------------------------------


def test_connect_echo_dante_half_close(dante, echo_server):
    with connect(*echo_server.address, proxy=dante.url) as sock:
        assert sock.gettimeout() is None
        assert roundtrip(sock, b"hello through dante") == b"hello through dante"


def test_connect_echo_microsocks(microsocks, echo_server):
    with connect(*echo_server.address, proxy=microsocks.url) as sock:
        assert sock.gettimeout() is None
        assert exchange(sock, b"hello through microsocks") == b"hello through microsocks"


def test_connect_1mib_sha256(dante, echo_server):
    payload = os.urandom(MIB)
    with connect(*echo_server.address, proxy=dante.url) as sock:
        received = roundtrip(sock, payload)
    assert len(received) == MIB
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_connect_many_threads(microsocks, echo_server):
    results: dict[int, bytes] = {}

    def worker(i: int) -> None:
        with connect(*echo_server.address, proxy=microsocks.address) as sock:
            results[i] = exchange(sock, f"thread {i}".encode() * 100)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: f"thread {i}".encode() * 100 for i in range(16)}


def test_target_greeting_not_lost(dante, greeting_server):
    with connect(*greeting_server.address, proxy=dante.url) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"220 hello from the target\r\n"


def test_data_in_same_segment_as_reply_is_not_lost(scripted_proxy):
    reply = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x30\x39"
    proxy = scripted_proxy(reply + b"early bytes")
    with connect("example.com", 80, proxy=proxy.url) as sock:
        sock.settimeout(5)
        assert sock.recv(11, socket.MSG_WAITALL) == b"early bytes"
        sock.sendall(b"then echo")
        assert sock.recv(9, socket.MSG_WAITALL) == b"then echo"
    assert proxy.requests == [b"\x05\x01\x00\x03\x0bexample.com\x00\x50"]


def test_domain_reply_then_data(scripted_proxy):
    reply = b"\x05\x00\x00\x03\x09localhost\x00\x16"
    proxy = scripted_proxy(reply + b"SSH-2.0-x\r\n")
    with connect("::1", 22, proxy=proxy.url) as sock:
        sock.settimeout(5)
        assert sock.recv(11, socket.MSG_WAITALL) == b"SSH-2.0-x\r\n"
    assert proxy.requests == [b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16"]


def test_remote_dns_false_resolves_locally(scripted_proxy):
    proxy = scripted_proxy(b"\x05\x00\x00\x01" + bytes(6), then_echo=False)
    connect("localhost", 8080, proxy=proxy.url, remote_dns=False).close()
    assert proxy.requests == [b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"]


def test_socks5_scheme_resolves_locally(scripted_proxy):
    proxy = scripted_proxy(b"\x05\x00\x00\x01" + bytes(6), then_echo=False)
    url = proxy.url.replace("socks5h://", "socks5://")
    connect("localhost", 8080, proxy=url).close()
    assert proxy.requests[0][3] == 0x01


def test_connect_domain_through_dante(dante, echo_server):
    with connect("localhost", echo_server.port, proxy=dante.url) as sock:
        assert roundtrip(sock, b"by name") == b"by name"


def test_socks4_through_dante(dante, echo_server):
    url = f"socks4://someone@{dante.host}:{dante.port}"
    with connect(*echo_server.address, proxy=url) as sock:
        assert roundtrip(sock, b"socks4") == b"socks4"


def test_socks4_resolves_locally(dante, echo_server):
    url = f"socks4://{dante.host}:{dante.port}"
    with connect("localhost", echo_server.port, proxy=url) as sock:
        assert roundtrip(sock, b"socks4 by name") == b"socks4 by name"


def test_socks4a_sends_name_and_keeps_early_data(make_tcp_server):
    requests: list[bytes] = []

    def socks4a_server(conn: socket.socket) -> None:
        data = b""
        while data.count(b"\0") < 5:  # 3 in DSTIP 0.0.0.1, then USERID\0 HOSTNAME\0
            data += conn.recv(1)
        requests.append(data)
        conn.sendall(b"\x00\x5a\x00\x00\x00\x00\x00\x00early")

    server = make_tcp_server(socks4a_server)
    url = f"socks4a://bob@{server.host}:{server.port}"
    with connect("target.example", 443, proxy=url) as sock:
        assert recv_all(sock) == b"early"
    assert requests == [b"\x04\x01\x01\xbb\x00\x00\x00\x01bob\x00target.example\x00"]


# -- failures --------------------------------------------------------------------------------


def test_refused_target_dante(dante, closed_port):
    with pytest.raises(ReplyError) as info:
        connect("127.0.0.1", closed_port, proxy=dante.url)
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED
    assert str(info.value) == "connection refused (REP 0x05)"


def test_refused_target_microsocks(microsocks, closed_port):
    with pytest.raises(ReplyError) as info:
        connect("127.0.0.1", closed_port, proxy=microsocks.url)
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED


def test_refused_target_socks4(dante, closed_port):
    with pytest.raises(ReplyError) as info:
        connect("127.0.0.1", closed_port, proxy=f"socks4://{dante.host}:{dante.port}")
    assert info.value.reply == 0x5B
    assert "SOCKS4 CD 0x5b" in str(info.value)


def test_proxy_down(closed_port):
    with pytest.raises(ProxyConnectionError) as info:
        connect("127.0.0.1", 80, proxy=("127.0.0.1", closed_port))
    assert str(info.value) == f"cannot connect to proxy 127.0.0.1:{closed_port}: connection refused"


def test_handshake_timeout(silent_listener):
    with pytest.raises(ProxyTimeoutError, match="did not answer in time"):
        connect("127.0.0.1", 80, proxy=silent_listener, timeout=0.3)


def test_proxy_closes_mid_handshake(scripted_proxy):
    proxy = scripted_proxy(b"\x05\x00\x00", then_echo=False)
    with pytest.raises(ProxyConnectionError, match="closed"):
        connect("127.0.0.1", 80, proxy=proxy.url)


def test_malformed_reply(scripted_proxy):
    proxy = scripted_proxy(b"\x05\x00\x00\x09" + bytes(6))
    with pytest.raises(ProxyConnectionError, match="ATYP 0x09"):
        connect("127.0.0.1", 80, proxy=proxy.url)


def test_method_not_offered(scripted_proxy):
    proxy = scripted_proxy(b"", method=b"\x05\x02")
    with pytest.raises(ProxyConnectionError, match="not offered"):
        connect("127.0.0.1", 80, proxy=proxy.url)


@pytest.mark.parametrize(
    ("reply", "method", "exc"),
    [
        (b"\x05\x05\x00\x01" + bytes(6), b"\x05\x00", ReplyError),
        (b"\x05\x00\x00\x09" + bytes(6), b"\x05\x00", ProxyConnectionError),
        (b"\x05\x00", b"\x05\x00", ProxyConnectionError),
        (b"", b"\x05\xff", AuthenticationFailed),
        (b"", b"\x05\x02", ProxyConnectionError),
    ],
    ids=["refused", "malformed", "closed", "no-method", "not-offered"],
)
def test_failures_close_the_socket(scripted_proxy, reply, method, exc):
    proxy = scripted_proxy(reply, method=method, then_echo=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(exc):
            connect("127.0.0.1", 80, proxy=proxy.url)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_timeout_closes_the_socket(silent_listener):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ProxyTimeoutError):
            connect("127.0.0.1", 80, proxy=silent_listener, timeout=0.1)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_leak_detection_works():
    """The two tests above can fail: an unclosed socket does warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        socket.socket()
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def test_no_proxy_configured(monkeypatch):
    for name in ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="SOCKS_PROXY"):
        connect("127.0.0.1", 80)


def test_proxy_from_environment(monkeypatch, microsocks, echo_server):
    monkeypatch.delenv("SOCKS_PROXY", raising=False)
    monkeypatch.delenv("socks_proxy", raising=False)
    monkeypatch.setenv("ALL_PROXY", microsocks.url)
    with connect(*echo_server.address) as sock:
        assert exchange(sock, b"env") == b"env"


# -- authentication --------------------------------------------------------------------------


def test_userpass_right(microsocks_auth, echo_server):
    with connect(
        *echo_server.address,
        proxy=microsocks_auth.url,
        username=microsocks_auth.username,
        password=microsocks_auth.password,
    ) as sock:
        assert exchange(sock, b"authenticated") == b"authenticated"


def test_userpass_in_url_percent_encoded(microsocks_auth, echo_server):
    url = f"socks5h://alice:s3cret%20pass@{microsocks_auth.host}:{microsocks_auth.port}"
    with connect(*echo_server.address, proxy=url) as sock:
        assert exchange(sock, b"url creds") == b"url creds"


def test_userpass_wrong(microsocks_auth, echo_server):
    with pytest.raises(AuthenticationFailed, match="rejected the username/password"):
        connect(*echo_server.address, proxy=microsocks_auth.url, username="alice", password="no")


def test_credentials_needed(microsocks_auth, echo_server):
    with pytest.raises(AuthenticationFailed, match="no acceptable authentication method"):
        connect(*echo_server.address, proxy=microsocks_auth.url)


def test_select_method(microsocks, microsocks_auth):
    assert select_method((Method.NO_AUTH,), proxy=microsocks.url) == Method.NO_AUTH
    offered = (Method.USERNAME_PASSWORD,)
    assert select_method(offered, proxy=microsocks_auth.url) == Method.USERNAME_PASSWORD
    assert select_method((Method.NO_AUTH,), proxy=microsocks_auth.url) == Method.NO_ACCEPTABLE


# -- BIND ------------------------------------------------------------------------------------


def test_bind_through_dante(dante):
    with bind(proxy=dante.url) as handle:
        host, port = handle.bound
        assert host == "127.0.0.1"
        assert port != 0
        peer = socket.create_connection((host, port), timeout=5)
        with peer:
            sock, (peer_host, peer_port) = handle.accept(timeout=5)
            with sock:
                assert (peer_host, peer_port) == peer.getsockname()
                peer.sendall(b"from the peer")
                assert sock.recv(13, socket.MSG_WAITALL) == b"from the peer"
                sock.sendall(b"to the peer")
                assert peer.recv(11, socket.MSG_WAITALL) == b"to the peer"
        with pytest.raises(LocalProtocolError):
            handle.accept()


def test_socks4_bind_through_dante(dante):
    with bind(proxy=f"socks4://{dante.host}:{dante.port}") as handle:
        peer = socket.create_connection(handle.bound, timeout=5)
        with peer:
            sock, _ = handle.accept(timeout=5)
            with sock:
                peer.sendall(b"v4")
                assert sock.recv(2, socket.MSG_WAITALL) == b"v4"


def test_bind_accept_timeout(dante):
    handle = bind(proxy=dante.url)
    with pytest.raises(ProxyTimeoutError):
        handle.accept(timeout=0.2)


def test_bind_not_supported_by_microsocks(microsocks):
    with pytest.raises(ReplyError) as info:
        bind(proxy=microsocks.url)
    assert info.value.reply == ReplyCode.COMMAND_NOT_SUPPORTED


# -- UDP ASSOCIATE ---------------------------------------------------------------------------


def test_udp_roundtrip_through_dante(dante, udp_echo):
    with udp_associate(proxy=dante.url) as assoc:
        assert assoc.relay[0] == "127.0.0.1"
        for i in range(3):
            payload = f"datagram {i}".encode() * 50
            assert assoc.sendto(payload, udp_echo.address) == len(payload)
            data, source = assoc.recvfrom(timeout=5)
            assert data == payload
            assert source == udp_echo.address
        with pytest.raises(TimeoutError):
            assoc.recvfrom(timeout=0.2)


def test_udp_ignores_strangers(dante, udp_echo):
    with udp_associate(proxy=dante.url) as assoc:
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with stranger:
            forged = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x07forged"
            stranger.sendto(forged, assoc.socket.getsockname())
            fragment = b"\x00\x00\x01\x01\x7f\x00\x00\x01\x00\x07fragment"
            stranger.sendto(fragment, assoc.socket.getsockname())
        assoc.sendto(b"real", udp_echo.address)
        assert assoc.recvfrom(timeout=5) == (b"real", udp_echo.address)


def test_udp_truncates_to_bufsize(dante, udp_echo):
    with udp_associate(proxy=dante.url) as assoc:
        assoc.sendto(b"0123456789", udp_echo.address)
        assert assoc.recvfrom(4, timeout=5)[0] == b"0123"


def test_udp_close_closes_control(dante):
    assoc = udp_associate(proxy=dante.url)
    control = assoc.control
    assoc.close()
    assert control.fileno() == -1
    assert assoc.socket.fileno() == -1


def test_udp_not_supported_by_microsocks(microsocks):
    with pytest.raises(ReplyError) as info:
        udp_associate(proxy=microsocks.url)
    assert info.value.reply == ReplyCode.COMMAND_NOT_SUPPORTED


def test_udp_unspecified_relay_means_the_proxy(scripted_proxy):
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.settimeout(5)
    port = relay.getsockname()[1]
    proxy = scripted_proxy(b"\x05\x00\x00\x01\x00\x00\x00\x00" + port.to_bytes(2, "big"))
    with relay, udp_associate(proxy=proxy.url) as assoc:
        assert assoc.relay == ("127.0.0.1", port)
        local = assoc.socket.getsockname()
        # The request declared the UDP socket we send from.
        assert proxy.requests == [
            b"\x05\x03\x00\x01\x7f\x00\x00\x01" + local[1].to_bytes(2, "big")
        ]
        assoc.sendto(b"query", ("192.0.2.7", 53))  # only reaches the loopback "relay"
        dgram, source = relay.recvfrom(100)
        assert source == local
        assert dgram == b"\x00\x00\x00\x01\xc0\x00\x02\x07\x00\x35query"
        assoc.sendto(b"by name", ("name.example", 7))
        assert relay.recvfrom(100)[0] == b"\x00\x00\x00\x03\x0cname.example\x00\x07by name"
        relay.sendto(b"\x00\x00\x00\x01\xc0\x00\x02\x07\x00\x35answer", local)
        assert assoc.recvfrom(timeout=5) == (b"answer", ("192.0.2.7", 53))
        relay.sendto(b"\x00\x00", local)  # malformed: skipped
        relay.sendto(b"\x00\x00\x00\x04" + bytes(15) + b"\x01\x00\x07v6", local)
        assert assoc.recvfrom(timeout=5) == (b"v6", ("::1", 7))


def test_bind_unspecified_address_means_the_proxy(scripted_proxy):
    proxy = scripted_proxy(b"\x05\x00\x00\x01\x00\x00\x00\x00\x9c\x40")
    with bind(proxy=proxy.url) as handle:
        assert handle.bound == ("127.0.0.1", 40000)


# -- raw probes ------------------------------------------------------------------------------


def test_raw_request_unknown_command(dante, microsocks):
    probe = b"\x05\x08\x00\x01" + bytes(6) + b"\x00"
    assert raw_request(probe, proxy=dante.url) is None
    reply = raw_request(probe, proxy=microsocks.url)
    assert reply is not None
    assert reply[:2] == b"\x05\x07"


# -- TLS (socks5s://) ------------------------------------------------------------------------


def tls_url(front) -> str:
    return f"socks5s://localhost:{front.server.port}"


def test_tls_with_ca_file(tls_front, echo_server):
    front, ca_file, _ = tls_front
    with connect(*echo_server.address, proxy=tls_url(front), ca_file=ca_file) as sock:
        sock.sendall(b"over tls")
        assert sock.recv(8) == b"over tls"


def test_tls_untrusted_certificate(tls_front, echo_server):
    front, _, _ = tls_front
    with pytest.raises(TLSVerificationError, match="certificate verification failed"):
        connect(*echo_server.address, proxy=tls_url(front))


def test_tls_fingerprint_pin(tls_front, echo_server):
    front, _, der = tls_front
    pin = "sha256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    with connect(*echo_server.address, proxy=tls_url(front), fingerprint=pin) as sock:
        sock.sendall(b"pinned")
        assert sock.recv(6) == b"pinned"
    wrong = "sha256:" + "00" * 32
    with pytest.raises(TLSVerificationError, match="pinned fingerprint"):
        connect(*echo_server.address, proxy=tls_url(front), fingerprint=wrong)
    with pytest.raises(ValueError, match="sha256:HEX"):
        connect(*echo_server.address, proxy=tls_url(front), fingerprint="md5:00")


# -- under gevent ----------------------------------------------------------------------------

GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import sys, gevent
    from socksx.client import connect
    from socksx.errors import ProxyTimeoutError

    proxy, echo_port, silent_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    def stuck():
        try:
            connect("127.0.0.1", 80, proxy=("127.0.0.1", silent_port), timeout=0.5)
        except ProxyTimeoutError:
            return "timeout"

    def worker(i):
        with connect("127.0.0.1", echo_port, proxy=proxy) as sock:
            sock.sendall(b"greenlet %d" % i)
            return sock.recv(100)

    t = gevent.spawn(ticker)
    waiting = gevent.spawn(stuck)
    jobs = [gevent.spawn(worker, i) for i in range(20)]
    gevent.joinall(jobs + [waiting], timeout=20, raise_error=True)
    t.kill()
    assert [j.value for j in jobs] == [b"greenlet %d" % i for i in range(20)], jobs
    assert waiting.value == "timeout"
    assert len(ticks) >= 20, len(ticks)  # the hub kept running while a handshake waited
    print("ok")
    """
)


def test_connect_under_gevent(microsocks, echo_server, silent_listener):
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, microsocks.url, str(echo_server.port),
         str(silent_listener[1])],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_proxyurl_object_accepted(microsocks, echo_server):
    url = ProxyURL("socks5", microsocks.host, microsocks.port, remote_dns=False)
    with connect(*echo_server.address, proxy=url) as sock:
        assert exchange(sock, b"obj") == b"obj"
