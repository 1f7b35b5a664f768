"""The listening socket and the accept path (no gevent socket objects on the hot path)."""

from __future__ import annotations

import gc
import socket

import gevent
import gevent.event

from socksx.server.server import IDLE_GREENLETS, bind_listen_socket
from tests.conftest import EchoServer, recv_exactly
from tests.server.socks_raw import socks5_connect


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


def _echo_through(proxy: tuple[str, int], echo: EchoServer, payload: bytes) -> socket.socket:
    sock = socks5_connect(proxy, *echo.address)
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return sock


def _kill_and_run_callbacks(session) -> None:
    """In the server's hub: kill, then wait for a callback queued after the kill's (the loop
    runs callbacks in order), so the kill has been carried out when this returns."""
    session.kill()
    done = gevent.event.Event()
    gevent.get_hub().loop.run_callback(done.set)
    assert done.wait(5)


def test_a_late_kill_of_an_ended_session_spares_the_next_one(socks_server, echo_server):
    # Session greenlets serve one connection after another: ending session A from outside
    # after it is over must not touch B, which its greenlet now serves.
    first = _echo_through(socks_server.address, echo_server, b"first")
    (session_a,) = socks_server.call(lambda: list(socks_server.server.sessions))
    first.close()
    assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
    second = _echo_through(socks_server.address, echo_server, b"second")
    with second:
        (session_b,) = socks_server.call(lambda: list(socks_server.server.sessions))
        assert session_b.greenlet is session_a.greenlet  # reused: the case under test
        socks_server.call(lambda: _kill_and_run_callbacks(session_a))
        second.sendall(b"still here")
        assert recv_exactly(second, 10) == b"still here"
        assert socks_server.call(lambda: session_b.result) == "ok"


def test_killing_a_running_session_ends_it_and_logs_killed(socks_server, echo_server):
    sock = _echo_through(socks_server.address, echo_server, b"x")
    with sock:
        (session,) = socks_server.call(lambda: list(socks_server.server.sessions))
        socks_server.call(session.kill)
        assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
        assert session.result == "killed"
        assert sock.recv(10) == b""  # the server closed the client connection


def test_relayed_sessions_leave_no_cyclic_garbage(socks_server, echo_server):
    # Sessions are freed by reference counting alone: at thousands a second, garbage cycles
    # would make the collector run constantly.
    for _ in range(3):  # warm up pools and caches
        _echo_through(socks_server.address, echo_server, b"warm").close()
    assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            _echo_through(socks_server.address, echo_server, b"payload").close()
        assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=5))
        gc.collect()
        ours = [type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("socksx")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []


def test_finished_sessions_leave_a_bounded_set_of_waiting_greenlets(socks_server, echo_server):
    # More sessions at once than greenlets are kept: the extra ones end with their session.
    count = IDLE_GREENLETS + 16
    clients = [_echo_through(socks_server.address, echo_server, b"%d" % i) for i in range(count)]
    for sock in clients:
        sock.close()
    assert socks_server.call(lambda: socks_server.server.wait_idle(timeout=10))
    (listener,) = socks_server.server.listeners
    assert socks_server.call(lambda: len(listener._idle)) == IDLE_GREENLETS
    _echo_through(socks_server.address, echo_server, b"after").close()  # a kept one serves
