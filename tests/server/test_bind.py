"""BIND through the real server: two replies, peer filter, relay, timeout, client leaving."""

from __future__ import annotations

import socket
import struct

from tests.conftest import recv_all, recv_exactly
from tests.server.socks_raw import open_socks, read_reply, socks5_request


def test_bind_two_replies_and_relay(socks_server):
    control, (rep, host, port) = socks5_request(socks_server.address, 2, "127.0.0.1", 0)
    with control:
        assert rep == 0
        assert host == "127.0.0.1"
        assert port != 0
        with socket.create_connection((host, port), timeout=5) as peer:
            rep2, peer_host, peer_port = read_reply(control)
            assert rep2 == 0
            assert (peer_host, peer_port) == peer.getsockname()
            peer.sendall(b"from peer")
            assert recv_exactly(control, 9) == b"from peer"
            control.sendall(b"from client")
            control.shutdown(socket.SHUT_WR)
            assert recv_all(peer) == b"from client"


def test_bind_accepts_only_the_named_peer(make_server):
    server = make_server("[timeouts]\nbind = 5\n")
    # The request names 127.0.0.2 as the expected peer; a connection from 127.0.0.1 is turned away.
    control, (rep, host, port) = socks5_request(server.address, 2, "127.0.0.2", 0)
    with control:
        assert rep == 0
        with socket.create_connection((host, port), timeout=5) as stranger:
            stranger.settimeout(5)
            assert stranger.recv(1) == b""  # closed by the server
        with socket.socket() as expected:
            expected.bind(("127.0.0.2", 0))
            expected.settimeout(5)
            expected.connect((host, port))
            rep2, peer_host, _ = read_reply(control)
            assert (rep2, peer_host) == (0, "127.0.0.2")


def test_bind_timeout_sends_a_failure_reply(make_server):
    server = make_server("[timeouts]\nbind = 0.3\n")
    control, (rep, _, _) = socks5_request(server.address, 2, "0.0.0.0", 0)
    with control:
        assert rep == 0
        rep2, _, _ = read_reply(control)
        assert rep2 == 0x04
        assert control.recv(1) == b""


def test_bind_listener_is_freed_when_the_client_leaves(socks_server):
    control, (rep, host, port) = socks5_request(socks_server.address, 2, "0.0.0.0", 0)
    assert rep == 0
    control.close()
    # Wait (as an event, inside the server) for the session to end, then the port must be free.
    assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
    with socket.socket() as again:
        again.bind((host, port))


def test_socks4_bind(socks_server):
    with open_socks(socks_server.address) as control:
        control.sendall(b"\x04\x02" + struct.pack("!H", 0) + socket.inet_aton("0.0.0.0") + b"\0")
        first = recv_exactly(control, 8)
        assert first[:2] == b"\x00\x5a"
        port = struct.unpack("!H", first[2:4])[0]
        host = socket.inet_ntoa(first[4:8])
        with socket.create_connection((host, port), timeout=5) as peer:
            second = recv_exactly(control, 8)
            assert second[:2] == b"\x00\x5a"
            assert struct.unpack("!H", second[2:4])[0] == peer.getsockname()[1]
            peer.sendall(b"4bind")
            assert recv_exactly(control, 5) == b"4bind"


def test_bind_to_a_name_that_does_not_resolve_gives_rep_04(make_server):
    def resolver(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    server = make_server(resolver=resolver)
    control, (rep, _, _) = socks5_request(server.address, 2, "nowhere.test", 0)
    control.close()
    assert rep == 0x04
