"""CONNECT through the real server: data, half-close, names, failures, SOCKS4/4a, IPv6."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from tests.conftest import EchoServer, have_ipv6_loopback, recv_all, recv_exactly, sha256
from tests.server.socks_raw import (
    addr_bytes,
    open_socks,
    read_reply,
    socks5_connect,
    socks5_request,
)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_ipv4_echo(socks_server, echo_server):
    with socks5_connect(socks_server.address, *echo_server.address) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"


def test_reply_names_the_outgoing_address(socks_server, echo_server):
    sock, (rep, host, port) = socks5_request(socks_server.address, 1, *echo_server.address)
    with sock:
        assert rep == 0
        assert host == "127.0.0.1"
        assert port != 0
        sock.sendall(b"x")
        recv_exactly(sock, 1)
    assert ("127.0.0.1", port) in echo_server.peers


def test_one_mebibyte_each_way_is_byte_exact(socks_server, echo_server):
    payload = os.urandom(1 << 20)
    with socks5_connect(socks_server.address, *echo_server.address) as sock:
        sender = threading.Thread(
            target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR))
        )
        sender.start()
        received = recv_all(sock)
        sender.join()
    assert sha256(received) == sha256(payload)


def test_pipelined_greeting_request_and_data(socks_server, echo_server):
    with open_socks(socks_server.address) as sock:
        sock.sendall(
            b"\x05\x01\x00" + b"\x05\x01\x00" + addr_bytes(*echo_server.address) + b"early"
        )
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert read_reply(sock)[0] == 0
        assert recv_exactly(sock, 5) == b"early"


def test_half_close_keeps_the_other_direction_open(socks_server):
    """Client EOF reaches the target as EOF; the target's answer still comes back."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socks5_connect(socks_server.address, *listener.getsockname()) as sock:
            peer, _ = listener.accept()
            with peer:
                sock.sendall(b"request")
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(peer) == b"request"  # EOF propagated
                peer.sendall(b"response after client EOF")
                peer.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b"response after client EOF"


def test_refused_target_gives_rep_05(socks_server):
    sock, (rep, _, _) = socks5_request(socks_server.address, 1, "127.0.0.1", closed_port())
    sock.close()
    assert rep == 0x05


def test_domain_name_through_injected_resolver(make_server, echo_server):
    def resolver(host, port):
        assert host == "echo.test"
        return [(socket.AF_INET, ("127.0.0.1", port))]

    server = make_server(resolver=resolver)
    with socks5_connect(server.address, "echo.test", echo_server.address[1]) as sock:
        sock.sendall(b"named")
        assert recv_exactly(sock, 5) == b"named"


def test_nxdomain_gives_rep_04(make_server):
    def resolver(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    server = make_server(resolver=resolver)
    sock, (rep, _, _) = socks5_request(server.address, 1, "no-such-name.test", 80)
    sock.close()
    assert rep == 0x04


def test_tries_each_address_in_turn(make_server, echo_server):
    def resolver(host, port):
        return [
            (socket.AF_INET, ("127.0.0.1", closed_port())),
            (socket.AF_INET, ("127.0.0.1", port)),
        ]

    server = make_server(resolver=resolver)
    with socks5_connect(server.address, "two.test", echo_server.address[1]) as sock:
        sock.sendall(b"second")
        assert recv_exactly(sock, 6) == b"second"


def test_denied_destination_gives_rep_02(make_server, echo_server):
    rules = (
        f'[[rules]]\nid = "no-echo"\naction = "deny"\nports = [{echo_server.address[1]}]\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    server = make_server(rules=rules)
    sock, (rep, _, _) = socks5_request(server.address, 1, *echo_server.address)
    sock.close()
    assert rep == 0x02


def test_name_resolving_to_a_denied_address_is_denied(make_server, echo_server):
    rules = (
        '[[rules]]\nid = "no-loopback-target"\naction = "deny"\nto = ["127.0.0.0/8"]\n'
        '[[rules]]\naction = "allow"\nto = ["*.test"]\n'
    )
    server = make_server(rules=rules, resolver=lambda h, p: [(socket.AF_INET, ("127.0.0.1", p))])
    sock, (rep, _, _) = socks5_request(server.address, 1, "sneaky.test", echo_server.address[1])
    sock.close()
    assert rep == 0x02


def test_unknown_command_gives_rep_07(socks_server):
    sock, (rep, _, _) = socks5_request(socks_server.address, 0x0A, "127.0.0.1", 1)
    sock.close()
    assert rep == 0x07


def test_bad_atyp_gives_rep_08(socks_server):
    with open_socks(socks_server.address) as sock:
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x02\x00\x00\x00\x00\x00\x50")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert read_reply(sock)[0] == 0x08
        assert sock.recv(1) == b""


def test_no_acceptable_method(socks_server):
    with open_socks(socks_server.address) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exactly(sock, 2) == b"\x05\xff"
        assert sock.recv(1) == b""


def test_socks4_connect(socks_server, echo_server):
    host, port = echo_server.address
    with open_socks(socks_server.address) as sock:
        sock.sendall(b"\x04\x01" + struct.pack("!H", port) + socket.inet_aton(host) + b"bob\0")
        reply = recv_exactly(sock, 8)
        assert reply[:2] == b"\x00\x5a"
        sock.sendall(b"four")
        assert recv_exactly(sock, 4) == b"four"


def test_socks4a_connect_by_name(make_server, echo_server):
    server = make_server(resolver=lambda h, p: [(socket.AF_INET, ("127.0.0.1", p))])
    port = echo_server.address[1]
    with open_socks(server.address) as sock:
        sock.sendall(b"\x04\x01" + struct.pack("!H", port) + b"\0\0\0\x01" + b"\0" + b"echo.test\0")
        assert recv_exactly(sock, 8)[:2] == b"\x00\x5a"
        sock.sendall(b"4a")
        assert recv_exactly(sock, 2) == b"4a"


def test_socks4_refused_target_gives_5b(socks_server):
    with open_socks(socks_server.address) as sock:
        sock.sendall(
            b"\x04\x01" + struct.pack("!H", closed_port()) + socket.inet_aton("127.0.0.1") + b"\0"
        )
        assert recv_exactly(sock, 8)[:2] == b"\x00\x5b"


@pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_listener_and_target(make_server):
    server = make_server(listen=["[::1]:0"])
    echo6 = EchoServer("::1")
    try:
        with socks5_connect(server.address, *echo6.address) as sock:
            sock.sendall(b"six")
            assert recv_exactly(sock, 3) == b"six"
    finally:
        echo6.close()


def test_client_outside_the_rules_is_denied(make_server, echo_server):
    server = make_server(rules='[[rules]]\naction = "allow"\nfrom = ["10.0.0.0/8"]\n')
    sock, (rep, _, _) = socks5_request(server.address, 1, *echo_server.address)
    sock.close()
    assert rep == 0x02
