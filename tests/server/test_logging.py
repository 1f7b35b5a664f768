"""The session log line: one per finished session, exact byte counts, text and JSON formats."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from socksx.log import JsonFormatter, TextFormatter
from tests.conftest import recv_all, recv_exactly
from tests.server.socks_raw import addr_bytes, negotiate, open_socks, read_reply, socks5_connect

SESSION_FIELDS = ("id", "client", "user", "cmd", "dst", "up", "down", "duration", "result")


class Capture:
    """The ``socksx`` logger's output, formatted as the server would write it."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.handler.setLevel(logging.INFO)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def session_lines(self, count: int, within: float = 5.0) -> list[str]:
        """Wait (bounded) until *count* session lines were written; return them."""
        deadline = time.monotonic() + within
        while True:
            found = [line for line in self.lines() if is_session_line(line)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def is_session_line(line: str) -> bool:
    if line.startswith("{"):
        return json.loads(line)["msg"] == "session"
    return " info session id=" in line


def text_fields(line: str) -> dict[str, str]:
    """key=value pairs of a text line (values with spaces are JSON-quoted, shlex reads them)."""
    return dict(part.split("=", 1) for part in shlex.split(line) if "=" in part)


def attach(formatter: logging.Formatter) -> Iterator[Capture]:
    cap = Capture(formatter)
    logger = logging.getLogger("socksx")
    saved = logger.level
    logger.addHandler(cap.handler)
    logger.setLevel(logging.INFO)
    try:
        yield cap
    finally:
        logger.removeHandler(cap.handler)
        logger.setLevel(saved)


@pytest.fixture(params=["text", "json"])
def capture(request) -> Iterator[Capture]:
    yield from attach(TextFormatter() if request.param == "text" else JsonFormatter())


@pytest.fixture
def json_capture() -> Iterator[Capture]:
    yield from attach(JsonFormatter())


@pytest.fixture
def text_capture() -> Iterator[Capture]:
    yield from attach(TextFormatter())


def fields_of(line: str) -> dict:
    if line.startswith("{"):
        return json.loads(line)
    return text_fields(line)


def exchange_1000_each_way(proxy: tuple[str, int], echo: tuple[str, int]) -> tuple[str, int]:
    payload = os.urandom(1000)
    with socks5_connect(proxy, *echo) as sock:
        local = sock.getsockname()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == payload
    return local


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_one_line_with_exact_counts(make_server, echo_server, capture, zero_copy):
    server = make_server(f"zero_copy = {zero_copy}\n")
    local = exchange_1000_each_way(server.address, echo_server.address)
    (line,) = capture.session_lines(1)
    fields = fields_of(line)
    assert set(SESSION_FIELDS) <= set(fields)
    assert str(fields["up"]) == "1000"
    assert str(fields["down"]) == "1000"
    assert fields["client"] == f"{local[0]}:{local[1]}"
    assert fields["user"] == "-"
    assert fields["cmd"] == "connect"
    assert fields["dst"] == f"{echo_server.address[0]}:{echo_server.address[1]}"
    assert fields["result"] == "ok"
    assert float(fields["duration"]) >= 0


def test_json_line_is_one_json_object(socks_server, echo_server, json_capture):
    exchange_1000_each_way(socks_server.address, echo_server.address)
    (line,) = json_capture.session_lines(1)
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["msg"] == "session"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert isinstance(record["up"], int)
    assert isinstance(record["down"], int)
    assert isinstance(record["duration"], float | int)


def test_text_line_shape(socks_server, echo_server, text_capture):
    exchange_1000_each_way(socks_server.address, echo_server.address)
    (line,) = text_capture.session_lines(1)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info session id=\d+ client=", line)
    assert " up=1000 down=1000 " in line


def test_pipelined_bytes_are_counted(socks_server, echo_server, capture):
    with open_socks(socks_server.address) as sock:
        sock.sendall(
            b"\x05\x01\x00" + b"\x05\x01\x00" + addr_bytes(*echo_server.address) + b"early"
        )
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert read_reply(sock)[0] == 0
        assert recv_exactly(sock, 5) == b"early"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    (line,) = capture.session_lines(1)
    fields = fields_of(line)
    assert (str(fields["up"]), str(fields["down"])) == ("5", "5")


def test_every_kind_of_ending_logs_exactly_one_line(make_server, echo_server, capture):
    server = make_server(
        rules='[[rules]]\nid = "echo-only"\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
        f"ports = [{echo_server.address[1]}]\n"
    )
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]
    # 1. ok
    exchange_1000_each_way(server.address, echo_server.address)
    # 2. denied by the rules
    with open_socks(server.address) as sock:
        negotiate(sock)
        sock.sendall(b"\x05\x01\x00" + addr_bytes("127.0.0.1", closed_port))
        assert read_reply(sock)[0] == 0x02
    # 3. closed before any request
    with open_socks(server.address) as sock:
        negotiate(sock)
    # 4. a protocol error (unknown command)
    with open_socks(server.address) as sock:
        negotiate(sock)
        sock.sendall(b"\x05\x7f\x00" + addr_bytes(*echo_server.address))
        assert read_reply(sock)[0] == 0x07
    # a session writes its line before it leaves the server's set: once the set is empty,
    # every line there will be is written
    assert server.call(lambda: server.server.wait_idle(timeout=5))
    lines = capture.session_lines(4)
    assert len(lines) == 4, lines
    results = [str(fields_of(line)["result"]) for line in lines]
    assert results[0] == "ok"
    assert results[1] == "denied rule=default-deny"
    assert results[2] == "closed-before-request"
    assert results[3].startswith("protocol-error")
    ids = [int(fields_of(line)["id"]) for line in lines]
    assert len(set(ids)) == 4


def test_concurrent_sessions_each_log_their_own_counts(socks_server, echo_server, capture):
    sizes = [1, 10, 100, 1000, 10000, 100000]

    def run(size: int) -> None:
        with socks5_connect(socks_server.address, *echo_server.address) as sock:
            sock.sendall(b"z" * size)
            sock.shutdown(socket.SHUT_WR)
            assert len(recv_all(sock)) == size

    threads = [threading.Thread(target=run, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    lines = capture.session_lines(len(sizes))
    counts = sorted((int(fields_of(x)["up"]), int(fields_of(x)["down"])) for x in lines)
    assert counts == [(size, size) for size in sizes]


@pytest.mark.parametrize("username", [b"bob\rforged", b"\x1b[2Jbob", b"bob\x07"])
def test_client_chosen_usernames_cannot_inject_control_characters(
    make_server, tmp_path, text_capture, username
):
    users = tmp_path / "users"
    users.write_bytes(b"")
    server = make_server(f'auth = "userpass"\nusers_file = "{users}"\n')
    with open_socks(server.address) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exactly(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(username)]) + username + b"\x02pw")
        assert recv_exactly(sock, 2) == b"\x01\x01"
    text_capture.session_lines(1)
    written = text_capture.stream.getvalue()
    assert "authentication failed" in written
    assert not [c for c in written if (ord(c) < 0x20 and c != "\n") or c == "\x7f"]
