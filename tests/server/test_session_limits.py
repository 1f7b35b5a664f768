"""Session limits through the real server: max sessions (total, per client), handshake and idle
timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import recv_exactly, wait_until
from tests.server.socks_raw import negotiate, read_until_closed, socks5_connect


def connect_from(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(address)
    return sock




def results(server) -> dict[str, int]:
    return server.call(server.server.stats.snapshot)["by_result"]


def test_third_session_of_a_client_is_closed_without_reply(make_server):
    server = make_server("[limits]\nmax_sessions_per_client = 2\n")
    first, second = connect_from(server.address), connect_from(server.address)
    try:
        negotiate(first)
        negotiate(second)
        with connect_from(server.address) as third:
            third.sendall(b"\x05\x01\x00")
            assert read_until_closed(third) == b""
        assert results(server).get("max_sessions_per_client") == 1
        # another client address is not limited by this client's sessions
        with connect_from(server.address, "127.0.0.2") as other:
            negotiate(other)
        # a finished session frees its slot
        first.close()
        limiter = server.server.limiter
        assert wait_until(lambda: server.call(lambda: limiter.count("127.0.0.1")) == 1)
        with connect_from(server.address) as again:
            negotiate(again)
    finally:
        first.close()
        second.close()


def test_sessions_beyond_max_sessions_are_closed_without_reply(make_server):
    server = make_server("[limits]\nmax_sessions = 2\nmax_sessions_per_client = 0\n")
    first, second = connect_from(server.address), connect_from(server.address, "127.0.0.2")
    try:
        negotiate(first)
        negotiate(second)
        with connect_from(server.address, "127.0.0.3") as third:
            third.sendall(b"\x05\x01\x00")
            assert read_until_closed(third) == b""
        assert results(server).get("max_sessions") == 1
        assert server.call(lambda: len(server.server.sessions)) == 2
    finally:
        first.close()
        second.close()


def test_silent_client_is_closed_by_the_handshake_timeout(make_server):
    server = make_server("[timeouts]\nhandshake = 0.5\n")
    with connect_from(server.address) as sock:
        started = time.monotonic()
        sock.sendall(b"\x05")
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= 0.3  # closed by the timeout, not at once
    assert wait_until(lambda: results(server).get("handshake-timeout") == 1)


def test_handshake_timeout_bounds_the_whole_handshake_not_each_byte(make_server):
    """Slowloris: a byte every 0.1 s never lets a 0.5 s handshake finish."""
    server = make_server("[timeouts]\nhandshake = 0.5\n")
    with connect_from(server.address) as sock:
        sock.sendall(b"\x05\xff")  # 255 methods announced
        closed = threading.Event()

        def trickle() -> None:
            for _ in range(50):  # 5 s at most
                if closed.wait(0.1):
                    return
                try:
                    sock.send(b"\x00")
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            assert read_until_closed(sock, within=3.0) == b""
        finally:
            closed.set()
            sender.join()
    assert wait_until(lambda: results(server).get("handshake-timeout") == 1)


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_idle_relay_is_closed(make_server, echo_server, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n[timeouts]\nidle = 0.5\n")
    with socks5_connect(server.address, *echo_server.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= 0.3
    assert wait_until(lambda: results(server).get("idle-timeout") == 1)


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_traffic_in_one_direction_keeps_a_relay_alive(make_server, zero_copy):
    """A download with a silent client is not idle."""
    server = make_server(f"zero_copy = {zero_copy}\n[timeouts]\nidle = 0.5\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socks5_connect(server.address, *listener.getsockname()) as sock:
            peer, _ = listener.accept()
            with peer:
                for i in range(8):  # 1.6 s of ticks, more than three idle periods
                    peer.sendall(bytes([i]))
                    assert recv_exactly(sock, 1) == bytes([i])
                    time.sleep(0.2)
                peer.shutdown(socket.SHUT_WR)
                sock.shutdown(socket.SHUT_WR)
                assert read_until_closed(sock) == b""
    assert wait_until(lambda: results(server).get("ok") == 1)
    assert "idle-timeout" not in results(server)


@pytest.mark.parametrize(
    "zero_copy",
    [
        "true",
        "false",
    ],
)
def test_idle_timeout_after_a_download_is_reported_as_idle(make_server, zero_copy):
    """The direction that was active last is the one whose timer fires first."""
    server = make_server(f"zero_copy = {zero_copy}\n[timeouts]\nidle = 0.5\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socks5_connect(server.address, *listener.getsockname()) as sock:
            peer, _ = listener.accept()
            with peer:
                time.sleep(0.25)  # the client's direction goes quiet first
                peer.sendall(b"last word")
                assert recv_exactly(sock, 9) == b"last word"
                assert read_until_closed(sock) == b""
    assert wait_until(lambda: sum(results(server).values()) == 1)
    assert results(server) == {"idle-timeout": 1}
