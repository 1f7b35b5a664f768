"""The relay in both modes (splice and user-space copy): byte-exact, half-close, idle rules."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.conftest import recv_all, sha256
from tests.server.socks_raw import socks5_connect

MODES = pytest.mark.parametrize("zero_copy", ["true", "false"])


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


@MODES
def test_four_mebibytes_each_way_concurrently(make_server, listener, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n")
    up, down = os.urandom(4 << 20), os.urandom(4 << 20)
    with socks5_connect(server.address, *listener.getsockname()) as client:
        peer, _ = listener.accept()
        with peer:
            threads = [
                threading.Thread(
                    target=lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR))
                ),
                threading.Thread(
                    target=lambda: (peer.sendall(down), peer.shutdown(socket.SHUT_WR))
                ),
            ]
            for t in threads:
                t.start()
            got_down = recv_all(client)
            got_up = recv_all(peer)
            for t in threads:
                t.join()
    assert sha256(got_up) == sha256(up)
    assert sha256(got_down) == sha256(down)
    snap = server.call(
        lambda: server.server.wait_idle(timeout=5) and server.server.stats.snapshot()
    )
    assert (snap["bytes_up"], snap["bytes_down"]) == (len(up), len(down))


@MODES
def test_half_close_each_way(make_server, listener, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n")
    with socks5_connect(server.address, *listener.getsockname()) as client:
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"banner")
            peer.shutdown(socket.SHUT_WR)  # the target is done talking first
            assert recv_all(client) == b"banner"
            client.sendall(b"still flowing up")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(peer) == b"still flowing up"


@MODES
def test_silent_relay_is_closed_after_idle_timeout(make_server, listener, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n[timeouts]\nidle = 0.4\n")
    with socks5_connect(server.address, *listener.getsockname()) as client:
        peer, _ = listener.accept()
        with peer:
            client.settimeout(10)
            assert client.recv(1) == b""
    server.call(lambda: server.server.wait_idle(timeout=5))
    assert server.call(lambda: dict(server.server.stats.by_result)) == {"idle-timeout": 1}


@MODES
def test_one_busy_direction_keeps_the_relay_alive(make_server, listener, zero_copy):
    """A download to a silent client is not idle: activity counts in both directions."""
    server = make_server(f"zero_copy = {zero_copy}\n[timeouts]\nidle = 0.5\n")
    with socks5_connect(server.address, *listener.getsockname()) as client:
        peer, _ = listener.accept()
        with peer:

            def trickle():
                for _ in range(12):  # 1.2 s of traffic, longer than the idle timeout
                    peer.sendall(b"x")
                    time.sleep(0.1)  # pacing the traffic, not synchronisation
                peer.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=trickle)
            sender.start()
            assert recv_all(client) == b"x" * 12
            sender.join()
