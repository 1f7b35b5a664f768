"""200 concurrent CONNECT sessions, each moving 1 MiB both ways, byte-exact (SHA-256).

The client side is one thread with a selector: all 200 sessions are established first (so they
are open at the same time), then every socket is pumped until the echo comes back and EOF.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import socket
import time

import pytest

from tests.server.socks_raw import socks5_connect

SESSIONS = 200
SIZE = 1 << 20
STRIDE = 4099  # payload i starts at i * STRIDE in a shared random pool: every session differs
DEADLINE = 90.0


class Flow:
    """One session's progress: what is left to send, and the digest of what came back."""

    def __init__(self, sock: socket.socket, payload: memoryview) -> None:
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.received = 0
        self.digest = hashlib.sha256()
        self.eof = False


def pump(flows: list[Flow], deadline: float) -> None:
    selector = selectors.DefaultSelector()
    for flow in flows:
        flow.sock.setblocking(False)
        selector.register(flow.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, flow)
    open_flows = len(flows)
    while open_flows:
        left = deadline - time.monotonic()
        assert left > 0, f"{open_flows} sessions unfinished at the deadline"
        for key, events in selector.select(timeout=min(left, 1.0)):
            flow: Flow = key.data
            if events & selectors.EVENT_WRITE and flow.sent < SIZE:
                with contextlib.suppress(BlockingIOError):
                    flow.sent += flow.sock.send(flow.payload[flow.sent : flow.sent + 65536])
                if flow.sent == SIZE:
                    flow.sock.shutdown(socket.SHUT_WR)
                    selector.modify(flow.sock, selectors.EVENT_READ, flow)
            if events & selectors.EVENT_READ:
                try:
                    chunk = flow.sock.recv(262144)
                except BlockingIOError:
                    continue
                if chunk:
                    flow.digest.update(chunk)
                    flow.received += len(chunk)
                    continue
                assert flow.sent == SIZE, f"EOF after sending only {flow.sent} bytes"
                flow.eof = True
                selector.unregister(flow.sock)
                open_flows -= 1
    selector.close()


def wait_for_stats(server, sessions: int, within: float = 10.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        snap = server.call(server.server.stats.snapshot)
        if snap["sessions_total"] >= sessions or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_200_sessions_one_mebibyte_each_way(make_server, echo_server, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n[limits]\nmax_sessions_per_client = 0\n")
    pool = memoryview(os.urandom(SIZE + SESSIONS * STRIDE))
    deadline = time.monotonic() + DEADLINE
    flows = [
        Flow(socks5_connect(server.address, *echo_server.address), pool[i * STRIDE :][:SIZE])
        for i in range(SESSIONS)
    ]
    try:
        assert server.call(lambda: len(server.server.sessions)) == SESSIONS
        pump(flows, deadline)
    finally:
        for flow in flows:
            flow.sock.close()
    for i, flow in enumerate(flows):
        expected = hashlib.sha256(flow.payload).hexdigest()
        assert flow.received == SIZE, f"session {i}: {flow.received} bytes back"
        assert flow.digest.hexdigest() == expected, f"session {i}: data differs"
    snap = wait_for_stats(server, SESSIONS)
    assert snap["sessions_total"] == SESSIONS
    assert snap["by_command"] == {"connect": SESSIONS}
    assert snap["by_result"] == {"ok": SESSIONS}
    assert snap["bytes_up"] == SESSIONS * SIZE
    assert snap["bytes_down"] == SESSIONS * SIZE
