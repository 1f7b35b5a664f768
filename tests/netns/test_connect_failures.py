"""CONNECT failures that need routes: each errno reaches the client as its documented REP.

Everything happens inside a namespace made by the test: the server listens on that namespace's
loopback, and the unreachable destinations are documentation prefixes routed nowhere (or to a
veth pair where nobody answers), so nothing leaves the machine.
"""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.netns

CLIENT = r"""
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", 1080), timeout=20)
s.sendall(b"\x05\x01\x00")
assert s.recv(2) == b"\x05\x00"
s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
reply = s.recv(10)
print(reply[1])
"""

CONFIG = """
listen = ["127.0.0.1:1080"]
[timeouts]
connect = 1.0
[[rules]]
action = "allow"
"""


@pytest.fixture
def gateway(make_netns, start_server):
    ns = make_netns("gw")
    ns.ip("route", "add", "unreachable", "198.51.100.0/24")
    ns.ip("route", "add", "prohibit", "192.0.2.0/24")
    # A veth pair whose far end has no address, and a permanent neighbour entry: SYNs to
    # 203.0.113.2 leave sink0 and are never answered (a silent drop, so connect times out).
    ns.ip("link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
    ns.ip("addr", "add", "203.0.113.1/24", "dev", "sink0")
    ns.ip("link", "set", "sink0", "up")
    ns.ip("link", "set", "sink1", "up")
    ns.ip(
        "neigh",
        "add",
        "203.0.113.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "sink0",
        "nud",
        "permanent",
    )
    start_server(ns, CONFIG)
    return ns


@pytest.mark.parametrize(
    ("host", "rep", "why"),
    [
        ("198.51.100.7", 0x04, "unreachable route: EHOSTUNREACH"),
        ("100.64.0.1", 0x03, "no route at all: ENETUNREACH"),
        ("192.0.2.7", 0x02, "prohibit route: EACCES"),
        ("203.0.113.2", 0x04, "no answer: connect timeout"),
    ],
)
def test_errno_maps_to_reply(gateway, host, rep, why):
    result = gateway.run(sys.executable, "-c", CLIENT, host, "80")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == rep, why
