"""Multi-bind across a real gateway: a client inside, a media server outside, no route between.

    inside 10.1.0.2 ── 10.1.0.1 gw 198.51.100.1 ── 198.51.100.2 outside

The gateway (a ``socksx server`` process with ``outward_address = "198.51.100.1"``) does not
forward, so the media server cannot reach the client directly; through MULTI_BIND it connects
to the gateway's outward address (BND) and streams an RTP/RTCP pair there, and the client,
which only ever talks to 10.1.0.1 (REL), receives all of it intact and answers on every channel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.test_tunnel import link

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import hashlib, json, sys
from socksx.client import multi_bind
from socksx.client.multibind import PeerConnected
with multi_bind(proxy="10.1.0.1:1080", tcp=1, udp=2, rtp_pair=True,
                peer=("198.51.100.2", 0), timeout=20) as mb:
    print(json.dumps([c.to_json() for c in mb.channels]), flush=True)
    event = mb.next_event(timeout=20)
    assert isinstance(event, PeerConnected), event
    with mb.accept(event) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.sendall(b"thanks: " + hashlib.sha256(data).hexdigest().encode())
    rtp, rtcp = mb.udp_socket(1), mb.udp_socket(2)
    digest = hashlib.sha256()
    for channel in [rtp] * 20 + [rtcp] * 2:
        datagram, peer = channel.recvfrom(timeout=20)
        digest.update(datagram)
        channel.sendto(b"RR" + datagram[:4], peer)
    print(json.dumps({"peer": str(event.peer), "tcp": hashlib.sha256(data).hexdigest(),
                      "udp": digest.hexdigest()}), flush=True)
"""

MEDIA = r"""
import hashlib, json, os, socket, sys
tcp_port, rtp_port, rtcp_port = map(int, sys.argv[1:4])
gw = "198.51.100.1"
direct = socket.socket()
direct.settimeout(2)
try:
    direct.connect(("10.1.0.2", 9))
    reached = True
except OSError:
    reached = False
payload = os.urandom(300_000)
with socket.create_connection((gw, tcp_port), timeout=20) as conn:
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
packets = [bytes([0x80, 96]) + seq.to_bytes(2, "big") + os.urandom(180) for seq in range(20)]
reports = [b"\x80\xc8\x00\x06" + os.urandom(24) for _ in range(2)]
echoes = []
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp, \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
    for sock, port, batch in ((rtp, rtp_port, packets), (rtcp, rtcp_port, reports)):
        sock.settimeout(20)
        for datagram in batch:
            sock.sendto(datagram, (gw, port))
            echo, source = sock.recvfrom(100)
            echoes.append(echo == b"RR" + datagram[:4] and source == (gw, port))
print(json.dumps({
    "reached_directly": reached,
    "tcp": hashlib.sha256(payload).hexdigest(),
    "answer": answer.decode(),
    "udp": hashlib.sha256(b"".join(packets + reports)).hexdigest(),
    "echoes": all(echoes) and len(echoes) == 22,
}), flush=True)
"""


def test_media_server_outside_reaches_a_client_inside_through_multibind(
    make_netns, start_server
):
    inside, gateway, outside = (make_netns(role) for role in ("in", "gw", "out"))
    link(inside, "c0", "10.1.0.2/24", gateway, "g0", "10.1.0.1/24")
    link(gateway, "g1", "198.51.100.1/24", outside, "o0", "198.51.100.2/24")
    start_server(
        gateway,
        'listen = ["10.1.0.1:1080"]\noutward_address = "198.51.100.1"\n'
        "[admin]\nenabled = false\n"
        '[[rules]]\naction = "allow"\nfrom = ["10.1.0.0/24"]\n',
    )
    client = inside.popen(sys.executable, "-c", CLIENT, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        channels = json.loads(client.stdout.readline() or "null")
        assert channels is not None, client.stderr.read() if client.stderr else ""
        bound = [c["bound"].rsplit(":", 1) for c in channels]
        assert [host for host, _ in bound] == ["198.51.100.1"] * 3
        assert [c["relay"].rsplit(":", 1)[0] for c in channels[1:]] == ["10.1.0.1"] * 2
        ports = [int(port) for _, port in bound]
        assert (ports[1] % 2, ports[2] - ports[1]) == (0, 1)
        media = outside.run(sys.executable, "-c", MEDIA, *map(str, ports), cwd=ROOT, timeout=90)
        assert media.returncode == 0, media.stderr
        sent = json.loads(media.stdout)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        received = json.loads(out)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert sent["reached_directly"] is False
    assert received["peer"].startswith("198.51.100.2:")
    assert received["tcp"] == sent["tcp"]
    assert sent["answer"] == f"thanks: {sent['tcp']}"
    assert received["udp"] == sent["udp"]
    assert sent["echoes"] is True
