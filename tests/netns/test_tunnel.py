"""The paper's Figure 1 in namespaces: site A host - gateway A - "internet" - gateway B - site B.

    siteA 10.1.0.2 ── 10.1.0.1 gwA 198.51.100.1 ── 198.51.100.2 gwB 10.2.0.1 ── 10.2.0.5 siteB

The gateways do not forward (a new namespace's default), so there is no route between the
sites: without a tunnel site A cannot reach site B's UDP echo; through one (PROTO 01 and 02)
it can, both ways, data intact; closing the client ends the tunnel on both gateways. The
gateways are real ``socksx server`` processes; B requires a password, which the client hands
A over socks5s:// and A presents to B inside TLS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.server.test_server_auth import write_users

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.2.0.5", 7))
print("ready", flush=True)
while True:
    data, src = s.recvfrom(65535)
    s.sendto(data, src)
"""

DIRECT = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
try:
    s.sendto(b"direct", ("10.2.0.5", 7))
    s.recvfrom(100)
    print("reached")
except OSError as exc:
    print("unreachable", type(exc).__name__)
"""

THROUGH = r"""
import json, sys
from socksx.client.tunnel import open_tunnel
proto, ca = sys.argv[1], sys.argv[2]
payloads = [b"x", bytes(range(256)) * 4, b"\xff" * 1200, b"sip" * 2000]
out = {"echoes": [], "sources": []}
with open_tunnel(("198.51.100.2", 1443), proxy="socks5s://10.1.0.1:1081", ca_file=ca,
                 proto=proto, peer_username="alice", peer_password="s3cret", timeout=20) as t:
    for payload in payloads:
        t.sendto(payload, ("10.2.0.5", 7))
        data, source = t.recvfrom(timeout=10)
        out["echoes"].append(data == payload)
        out["sources"].append(list(source))
print(json.dumps(out))
"""


def link(left, left_if: str, left_ip: str, right, right_if: str, right_ip: str) -> None:
    left.ip("link", "add", left_if, "type", "veth", "peer", "name", right_if, "netns", right.name)
    left.ip("addr", "add", left_ip, "dev", left_if)
    right.ip("addr", "add", right_ip, "dev", right_if)
    left.ip("link", "set", left_if, "up")
    right.ip("link", "set", right_if, "up")


@pytest.fixture
def figure1(make_netns, start_server, tmp_path):
    site_a, gw_a, gw_b, site_b = (make_netns(r) for r in ("sa", "ga", "gb", "sb"))
    link(site_a, "a0", "10.1.0.2/24", gw_a, "a1", "10.1.0.1/24")
    link(gw_a, "i0", "198.51.100.1/24", gw_b, "i1", "198.51.100.2/24")
    link(gw_b, "b1", "10.2.0.1/24", site_b, "b0", "10.2.0.5/24")
    site_a.ip("route", "add", "default", "via", "10.1.0.1")
    site_b.ip("route", "add", "default", "via", "10.2.0.1")

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files = {}
    for name, ip in (("gw-a.test", "10.1.0.1"), ("gw-b.test", "198.51.100.2")):
        cert = ca.issue_cert(name, ip)
        files[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        cert.private_key_and_cert_chain_pem.write_to_path(str(files[name][0]))
        cert.private_key_pem.write_to_path(str(files[name][1]))
    users = write_users(tmp_path / "users", {"alice": b"s3cret"})

    echo = site_b.popen(sys.executable, "-c", ECHO, stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    assert echo.stdout.readline().strip() == "ready"

    b_cert, b_key = files["gw-b.test"]
    server_b = start_server(
        gw_b,
        f'listen = ["198.51.100.2:1080"]\nauth = "userpass"\nusers_file = "{users}"\n'
        f'[tls]\nlisten = ["198.51.100.2:1443"]\ncert = "{b_cert}"\nkey = "{b_key}"\n'
        "[admin]\nenabled = false\n"
        '[[rules]]\naction = "allow"\nfrom = ["198.51.100.0/24"]\nto = ["10.2.0.0/24"]\n',
    )
    a_cert, a_key = files["gw-a.test"]
    server_a = start_server(
        gw_a,
        f'listen = ["10.1.0.1:1080"]\n'
        f'[tls]\nlisten = ["10.1.0.1:1081"]\ncert = "{a_cert}"\nkey = "{a_key}"\n'
        "[admin]\nenabled = false\n"
        f'[[tunnel.peer]]\naddress = "198.51.100.2:1443"\nca = "{ca_file}"\n'
        '[[rules]]\naction = "allow"\nfrom = ["10.1.0.0/24"]\n',
    )
    try:
        yield site_a, server_a, server_b, ca_file
    finally:
        echo.kill()
        echo.wait()


def wait_for_line(server, text: str, count: int = 1, timeout: float = 15.0) -> None:
    """The server logs *text* *count* times (its log is read by a thread: poll, bounded)."""
    deadline = time.monotonic() + timeout
    while sum(text in line for line in server.lines) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the log: {''.join(server.lines[-20:])}")
        time.sleep(0.05)


def test_sites_are_not_connected_without_a_tunnel(figure1):
    site_a, _, _, _ = figure1
    result = site_a.run(sys.executable, "-c", DIRECT, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unreachable"), result.stdout


@pytest.mark.parametrize("proto", ["tls", "udp"])
def test_site_a_reaches_site_b_through_the_tunnel_and_teardown_reaches_both(figure1, proto):
    site_a, server_a, server_b, ca_file = figure1
    result = site_a.run(sys.executable, "-c", THROUGH, proto, str(ca_file), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["echoes"] == [True] * 4
    assert report["sources"] == [["10.2.0.5", 7]] * 4
    # The client closed its connection: A ends its end, which closes the TLS connection to B.
    wait_for_line(server_a, "reason=client-closed")
    wait_for_line(server_b, "reason=peer-closed")
    assert any("tunnel up" in line and "user=alice" in line for line in server_b.lines)
