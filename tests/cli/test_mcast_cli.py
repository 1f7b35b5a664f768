"""``socksx mcast-join`` / ``socksx mcast-send`` against a real server on loopback."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli.mcast import mcast_join, mcast_send
from socksx.client import join_group
from tests.server.test_mcast import (
    PublicSide,
    registered,
    relays,
    unique_group,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location(
    "socksx_tests_client_fixtures_mcast", ROOT / "tests" / "client" / "conftest.py"
)
assert _spec is not None
assert _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fixtures
_spec.loader.exec_module(fixtures)
dante = fixtures.dante
microsocks = fixtures.microsocks


def invoke(command, *args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(command, list(args), input=stdin, obj=App(), catch_exceptions=False)


def socksx(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "socksx", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, **kw,
    )


@pytest.fixture
def group():
    return unique_group()


@pytest.fixture
def target(group) -> str:
    return f"{group[0]}:{group[1]}"


def via(server) -> str:
    return "{}:{}".format(*server.address)


def join_in_background(*args: str) -> tuple[threading.Thread, list[Result]]:
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(invoke(mcast_join, *args)))
    thread.start()
    return thread, results


# -- the single-machine demo ------------------------------------------------------------------


def test_join_in_one_process_send_in_another(make_server, target):
    server = make_server()
    joiner = socksx("mcast-join", target, "--via", via(server), "--count", "2")
    assert joiner.stderr is not None
    started = joiner.stderr.readline().decode()
    assert "joined" in started
    assert "send and receive (REP 00)" in started
    assert "unicast mode, sealed" in started
    sender = subprocess.run(
        [sys.executable, "-m", "socksx", "mcast-send", target, "--via", via(server), "hello",
         "world"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert sender.returncode == 0, sender.stderr
    assert "sent 2 datagrams (10 octets)" in sender.stderr
    out, err = joiner.communicate(timeout=30)
    assert joiner.returncode == 0, err
    assert out.decode().splitlines() == ["hello", "world"]
    assert "received 2 datagrams" in err.decode()


def test_ctrl_c_leaves_then_exits_130(make_server, target, caplog):
    caplog.set_level(logging.INFO, logger="socksx")
    server = make_server()
    joiner = socksx("mcast-join", target, "--via", via(server))
    assert joiner.stderr is not None
    assert "joined" in joiner.stderr.readline().decode()
    joiner.send_signal(signal.SIGINT)
    _, err = joiner.communicate(timeout=30)
    assert joiner.returncode == ExitCode.INTERRUPTED, err
    assert err.decode().strip().endswith("socksx: interrupted")
    wait_until(lambda: relays(server) == {})
    ends = [r.fields["why"] for r in caplog.records if r.getMessage() == "mcast membership"]
    assert ends == ["left"]  # a LEAVE, not just a dropped connection


# -- output formats and forwarding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("text", "caf\u00e9 \\x1b[31m"),
        ("hex", "636166c3a9201b5b33316d"),
    ],
)
def test_text_and_hex_formats(make_server, group, target, fmt, expected):
    server = make_server()
    thread, results = join_in_background(target, "--via", via(server), "--count", "1",
                                         "--format", fmt)
    wait_until(registered(server, 1))
    with join_group(*group, proxy=server.address) as sender:
        sender.send("caf\u00e9 \x1b[31m".encode())
        thread.join(30)
    assert results[0].exit_code == 0, results[0].output
    assert results[0].stdout.splitlines() == [expected]


def test_json_and_raw_formats(make_server, group, target):
    server = make_server()
    public = PublicSide(*group)
    try:
        thread, results = join_in_background(target, "--via", via(server), "--count", "2",
                                             "--format", "json")
        wait_until(registered(server, 1))
        public.send(b"text")
        public.send(b"\xff\xfe")
        thread.join(30)
        lines = [json.loads(line) for line in results[0].stdout.splitlines()]
        assert [line.get("text") for line in lines] == ["text", None]
        assert lines[1]["base64"] == "//4="
        assert lines[0]["source"] == "{}:{}".format(*public.source_address)
        assert [line["size"] for line in lines] == [4, 2]
        thread, results = join_in_background(target, "--via", via(server), "--count", "2",
                                             "--format", "raw")
        wait_until(registered(server, 1))
        public.send(b"ab")
        public.send(b"\x00c")
        thread.join(30)
        assert results[0].stdout_bytes == b"ab\x00c"
    finally:
        public.close()


def test_forward_bridges_to_a_local_udp_port(make_server, group, target):
    server = make_server()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(10)
    try:
        forward = f"127.0.0.1:{sink.getsockname()[1]}"
        thread, results = join_in_background(target, "--via", via(server), "--count", "2",
                                             "--forward", forward)
        wait_until(registered(server, 1))
        with join_group(*group, proxy=server.address) as sender:
            sender.send(b"one")
            sender.send(b"two")
            assert [sink.recv(100), sink.recv(100)] == [b"one", b"two"]
            thread.join(30)
        assert results[0].exit_code == 0
        assert results[0].stdout == ""
        assert "forwarded 2 datagrams" in results[0].stderr
    finally:
        sink.close()


def test_duration_ends_a_quiet_join(make_server, target):
    server = make_server()
    result = invoke(mcast_join, target, "--via", via(server), "--duration", "300ms")
    assert result.exit_code == 0
    assert "received 0 datagrams" in result.stderr


# -- sending ----------------------------------------------------------------------------------


def test_send_stdin_lines(make_server, group, target):
    server = make_server()
    with join_group(*group, proxy=server.address) as listener:
        wait_until(registered(server, 1))
        result = invoke(mcast_send, target, "--via", via(server), stdin="first\nsecond\r\nlast")
        assert result.exit_code == 0, result.output
        got = [listener.recv(timeout=5)[0] for _ in range(3)]
    assert got == [b"first", b"second", b"last"]


def test_send_generated_load(make_server, group, target):
    server = make_server()
    with join_group(*group, proxy=server.address) as listener:
        wait_until(registered(server, 1))
        result = invoke(mcast_send, target, "--via", via(server), "--size", "200", "--count",
                        "20", "--rate", "0")
        assert result.exit_code == 0, result.output
        assert "sent 20 datagrams (4000 octets)" in result.stderr
        got = [listener.recv(timeout=5)[0] for _ in range(20)]
    assert all(len(data) == 200 for data in got)
    assert got[0].startswith(b"socksx mcast-send 1/20 ")
    assert got[19].startswith(b"socksx mcast-send 20/20 ")


def test_messages_and_generated_load_do_not_mix(make_server, target):
    server = make_server()
    result = invoke(mcast_send, target, "--via", via(server), "--count", "3", "hello")
    assert result.exit_code == ExitCode.USAGE


# -- refusals and endings ---------------------------------------------------------------------


def test_not_a_group_is_a_usage_error(make_server):
    server = make_server()
    result = invoke(mcast_join, "192.0.2.1:5000", "--via", via(server))
    assert result.exit_code == ExitCode.USAGE
    assert "not a multicast group address" in result.output


def test_b2_exits_6(make_server, target):
    server = make_server('[mcast]\n[[mcast.policy]]\npermission = "none"\n')
    result = invoke(mcast_join, target, "--via", via(server))
    assert result.exit_code == ExitCode.REFUSED
    assert result.stderr.startswith("socksx: proxy 127.0.0.1:")
    assert "not authorized to send or receive (REP 0xb2)" in result.stderr


def test_receive_only_cannot_mcast_send(make_server, target):
    server = make_server('[mcast]\ndefault_permission = "receive"\n')
    result = invoke(mcast_send, target, "--via", via(server), "hi")
    assert result.exit_code == ExitCode.REFUSED
    assert "receive only (REP B0)" in result.stderr


def test_send_only_cannot_mcast_join(make_server, target):
    server = make_server('[mcast]\ndefault_permission = "send"\n')
    result = invoke(mcast_join, target, "--via", via(server))
    assert result.exit_code == ExitCode.REFUSED
    assert "not authorized to receive" in result.stderr


def test_b3_exits_6(make_server, group, target):
    server = make_server('[mcast]\n[[mcast.policy]]\npermission = "both"\nmax_members = 1\n')
    with join_group(*group, proxy=server.address):
        result = invoke(mcast_join, target, "--via", via(server))
    assert result.exit_code == ExitCode.REFUSED
    assert "(REP 0xb3)" in result.stderr


def test_expired_membership_exits_7(make_server, target):
    server = make_server("[mcast]\nmember_timeout = 0.3\n")
    result = invoke(mcast_join, target, "--via", via(server))
    assert result.exit_code == ExitCode.ENDED
    assert "membership ended by the gateway" in result.stderr
    assert "(B4)" in result.stderr


def test_server_stop_exits_7(make_server, target):
    server = make_server()
    thread, results = join_in_background(target, "--via", via(server))
    wait_until(registered(server, 1))
    server.stop()
    thread.join(30)
    assert results[0].exit_code == ExitCode.ENDED
    assert "the relay shut down (B7)" in results[0].stderr


def test_disabled_multicast_says_so(make_server, target):
    server = make_server("[mcast]\nenabled = false\n")
    result = invoke(mcast_join, target, "--via", via(server))
    assert result.exit_code == ExitCode.REFUSED
    assert "this server has no multicast support" in result.stderr


@pytest.mark.interop
def test_other_servers_have_no_multicast(dante, microsocks, target):
    for daemon in (dante, microsocks):
        result = invoke(mcast_join, target, "--via", "{}:{}".format(*daemon.address))
        assert result.exit_code in (ExitCode.REFUSED, ExitCode.UNREACHABLE), result.output
        assert "no multicast support" in result.stderr
