"""RawStream: the session's socket on the hot path (system call first, wait only on EAGAIN)."""

from __future__ import annotations

import _socket
import socket

import gevent
import pytest

from socksx.server.rawio import RawStream, connect_nonblocking


def _pair() -> tuple[RawStream, socket.socket]:
    a, b = _socket.socketpair()
    a.setblocking(False)
    return RawStream(a), socket.socket(fileno=b.detach())


def test_sendall_waits_out_back_pressure_and_keeps_the_order():
    stream, peer = _pair()
    data = bytes(range(256)) * 32768  # 8 MiB: far more than the socket buffers hold
    peer.setblocking(False)
    received = bytearray()

    def read_slowly() -> None:
        while len(received) < len(data):
            gevent.sleep(0.001)
            try:
                received.extend(peer.recv(65536))
            except BlockingIOError:
                continue

    with peer:
        reader = gevent.spawn(read_slowly)
        stream.sendall(data)
        reader.join(timeout=30)
        stream.close()
    assert bytes(received) == data


def test_recv_parks_until_data_arrives():
    stream, peer = _pair()
    with peer:
        reader = gevent.spawn(stream.recv, 100)
        gevent.idle()  # the reader has found nothing and parked on its watcher
        assert not reader.ready()
        peer.sendall(b"hello")
        assert reader.get(timeout=5) == b"hello"
        peer.close()
        assert stream.recv(100) == b""  # EOF
    stream.close()


def test_connect_reaches_a_listener_and_reports_refusal():
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        stream = connect_nonblocking(socket.AF_INET, listener.getsockname(), 5)
        accepted, _ = listener.accept()
        with accepted:
            stream.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
        stream.close()
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
        connect_nonblocking(socket.AF_INET, ("127.0.0.1", port), 5)


def test_connect_times_out_when_the_listener_drops_syns():
    # A full accept queue makes the kernel drop further SYNs: the connect never completes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    waiting = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(listener.getsockname())
            waiting.append(sock)
        with pytest.raises(TimeoutError):
            connect_nonblocking(socket.AF_INET, listener.getsockname(), 0.3)
    finally:
        for sock in waiting:
            sock.close()
        listener.close()


def test_to_gevent_hands_over_the_same_connection():
    stream, peer = _pair()
    with peer:
        converted = stream.to_gevent()
        assert stream.fileno() == -1
        with converted:
            converted.sendall(b"over")
            assert peer.recv(4) == b"over"
            peer.sendall(b"back")
            assert converted.recv(4) == b"back"
