"""The listening socket and the accept path (no gevent socket objects on the hot path)."""

from __future__ import annotations

import socket

from socksx.server.server import bind_listen_socket


def test_accepted_connections_inherit_tcp_nodelay():
    listener = bind_listen_socket("127.0.0.1", 0, "<test>")
    try:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        listener.setblocking(True)
        fd, _ = listener._accept()
        accepted = socket.socket(fileno=fd)
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        listener.close()
