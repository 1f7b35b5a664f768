"""UDP ASSOCIATE through the real server: relay, headers, filters, lifetime, big datagrams."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import UdpEcho
from tests.server.socks_raw import addr_bytes, socks5_request


def header(host: str, port: int, frag: int = 0) -> bytes:
    return b"\0\0" + bytes([frag]) + addr_bytes(host, port)


def associate(proxy, declared=("0.0.0.0", 0)):
    control, (rep, host, port) = socks5_request(proxy, 3, *declared)
    assert rep == 0, f"REP {rep:#04x}"
    return control, (host, port)


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def stats(server):
    return server.call(lambda: server.server.stats.snapshot())


def test_round_trip_names_the_real_source(socks_server, udp_echo):
    control, relay = associate(socks_server.address)
    with control, client_socket() as sock:
        assert relay[0] == "127.0.0.1"  # never 0.0.0.0
        sock.sendto(header(*udp_echo.address) + b"ping", relay)
        data, src = sock.recvfrom(65535)
        assert src == relay
        assert data == header(*udp_echo.address) + b"ping"


def test_declared_port_is_enforced(socks_server, udp_echo):
    with client_socket() as good, client_socket() as other:
        control, relay = associate(socks_server.address, good.getsockname())
        with control:
            other.sendto(header(*udp_echo.address) + b"wrong port", relay)
            good.sendto(header(*udp_echo.address) + b"right port", relay)
            data, _ = good.recvfrom(65535)
            assert data.endswith(b"right port")
            assert udp_echo.sources == [tuple(udp_echo.sources[0])]
            assert stats(socks_server)["udp_dropped"].get("foreign-source") == 1


def test_unspecified_declaration_binds_to_the_first_source_port(socks_server, udp_echo):
    with client_socket() as first, client_socket() as second:
        control, relay = associate(socks_server.address)
        with control:
            first.sendto(header(*udp_echo.address) + b"one", relay)
            assert first.recvfrom(65535)[0].endswith(b"one")
            second.sendto(header(*udp_echo.address) + b"two", relay)
            first.sendto(header(*udp_echo.address) + b"three", relay)
            assert first.recvfrom(65535)[0].endswith(b"three")
            assert stats(socks_server)["udp_dropped"].get("foreign-source") == 1


def test_fragments_are_dropped(socks_server, udp_echo):
    control, relay = associate(socks_server.address)
    with control, client_socket() as sock:
        sock.sendto(header(*udp_echo.address, frag=1) + b"fragment", relay)
        sock.sendto(header(*udp_echo.address) + b"whole", relay)
        assert sock.recvfrom(65535)[0].endswith(b"whole")
        assert stats(socks_server)["udp_dropped"].get("fragment") == 1


def test_unsolicited_inbound_is_dropped_unless_inbound_any(make_server, udp_echo):
    for inbound, delivered in (("replied", False), ("any", True)):
        server = make_server(f'udp_inbound = "{inbound}"\n')
        control, relay = associate(server.address)
        with control, client_socket() as sock, client_socket() as stranger:
            sock.sendto(header(*udp_echo.address) + b"hello", relay)
            sock.recvfrom(65535)
            outward = udp_echo.sources[-1]
            stranger.sendto(b"unsolicited", ("127.0.0.1", outward[1]))
            sock.sendto(header(*udp_echo.address) + b"marker", relay)
            first = sock.recvfrom(65535)[0]
            if delivered:
                assert first == header(*stranger.getsockname()) + b"unsolicited"
            else:
                assert first.endswith(b"marker")
                assert stats(server)["udp_dropped"].get("unsolicited") == 1


def test_rules_apply_to_every_datagram(make_server):
    allowed, denied = UdpEcho(), UdpEcho()
    try:
        rules = (
            f'[[rules]]\nid = "no-port"\naction = "deny"\ncommands = ["udp"]\n'
            f"ports = [{denied.address[1]}]\n"
            '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
        )
        server = make_server(rules=rules)
        control, relay = associate(server.address)
        with control, client_socket() as sock:
            sock.sendto(header(*denied.address) + b"no", relay)
            sock.sendto(header(*allowed.address) + b"yes", relay)
            assert sock.recvfrom(65535)[0].endswith(b"yes")
            assert denied.sources == []
            snap = stats(server)
            assert snap["udp_dropped"].get("policy") == 1
            assert snap["rule_denials"] == 1
    finally:
        allowed.close()
        denied.close()


def test_domain_destination(make_server, udp_echo):
    server = make_server(resolver=lambda h, p: [(socket.AF_INET, ("127.0.0.1", p))])
    control, relay = associate(server.address)
    with control, client_socket() as sock:
        sock.sendto(header("echo.test", udp_echo.address[1]) + b"named", relay)
        data, _ = sock.recvfrom(65535)
        assert data == header(*udp_echo.address) + b"named"


@pytest.mark.parametrize("size", [1, 1200, 8193, 65507 - 10])
def test_large_datagrams_pass_whole(socks_server, udp_echo, size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    control, relay = associate(socks_server.address)
    with control, client_socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.sendto(header(*udp_echo.address) + payload, relay)
        data, _ = sock.recvfrom(65535)
        assert data == header(*udp_echo.address) + payload


def test_association_ends_with_its_control_connection(socks_server, udp_echo):
    control, relay = associate(socks_server.address)
    control.close()
    assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(relay)  # the client-facing port was released


def test_idle_association_ends(make_server):
    server = make_server("[timeouts]\nudp_idle = 0.3\n")
    control, _ = associate(server.address)
    with control:
        control.settimeout(5)
        assert control.recv(1) == b""
