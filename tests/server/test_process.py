"""The server as its user runs it: privilege drop after binding, logging to syslog."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import recv_exactly
from tests.server.socks_raw import socks5_connect
from tests.server.test_lifecycle import run_server  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_privileges_are_dropped_after_binding(run_server, echo_server):  # noqa: F811
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    server = run_server(top='user = "nobody"\n')
    server.wait_for(lambda line: "privileges dropped" in line)
    assert _uids(server.proc.pid) == [nobody] * 4  # real, effective, saved, filesystem
    with socks5_connect(server.address, *echo_server.address) as sock:
        sock.sendall(b"still serving")
        assert recv_exactly(sock, 13) == b"still serving"


def test_unknown_user_is_one_line_and_exit_3(tmp_path):
    config = tmp_path / "bad-user.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\nuser = "no-such-user-xyz"\n[admin]\nenabled = false\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "socksx", "server", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("socksx:")]
    assert len(errors) == 1
    assert "no-such-user-xyz" in errors[0]
    assert "Traceback" not in result.stderr


def test_session_lines_reach_a_syslog_receiver(tmp_path, echo_server):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(30)
    config = tmp_path / "syslog.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\n'
        f'[log]\ntarget = "syslog"\nsyslog_address = "127.0.0.1:{receiver.getsockname()[1]}"\n'
        "[limits]\nmax_sessions = 100\n[admin]\nenabled = false\n"
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "socksx", "server", "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Each datagram is an event; the "listening" line is among the first few.
        first = next(
            line
            for line in (receiver.recv(4096).decode() for _ in range(20))
            if "listening" in line
        )
        assert first.startswith("<30>")  # facility daemon (3), severity info (6)
        port = int(first.split("address=127.0.0.1:", 1)[1].split()[0].rstrip("\x00"))
        with socks5_connect(("127.0.0.1", port), *echo_server.address) as sock:
            sock.sendall(b"x")
            recv_exactly(sock, 1)
        line = receiver.recv(4096).decode()
        assert " session " in f" {line} "
        assert "cmd=connect" in line
    finally:
        proc.terminate()
        proc.wait(15)
        receiver.close()


def test_running_out_of_descriptors_is_one_line_not_a_traceback(tmp_path, echo_server):
    import resource
    import threading

    config = tmp_path / "tight.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\n[admin]\nenabled = false\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )

    def tight() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    proc = subprocess.Popen(
        [sys.executable, "-m", "socksx", "server", "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=tight,
    )
    lines: list[str] = []
    listening = threading.Event()
    refused = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening" in line:
                listening.set()
            if "too many open files" in line:
                refused.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    clients = []
    try:
        assert listening.wait(30), "".join(lines)
        port = int(next(x for x in lines if "listening" in x).split("127.0.0.1:")[1].split()[0])
        for _ in range(60):  # more connections than the server has descriptors
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert refused.wait(30), "".join(lines)
        for sock in clients:
            sock.close()
        clients.clear()
        # descriptors came back: the server serves again (it retries accept within a second)
        with socks5_connect(("127.0.0.1", port), *echo_server.address) as sock:
            sock.sendall(b"again")
            assert recv_exactly(sock, 5) == b"again"
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(15)
        reader.join(5)
    assert not any("Traceback" in line for line in lines), "".join(lines)
