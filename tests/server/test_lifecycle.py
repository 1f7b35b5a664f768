"""The server as a real process (`python -m socksx server -c FILE`): readiness, SIGHUP reload,
SIGTERM/SIGINT drain, SIGUSR1 state dump, start-up failures and the JSON log format."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest

from socksx.server.auth import hash_password
from tests.conftest import ROOT, EchoServer, recv_exactly
from tests.server.socks_raw import addr_bytes, negotiate, open_socks, read_reply, socks5_connect

START_WITHIN = 20.0
LINE_WITHIN = 10.0

BASE_TOML = """\
listen = ["127.0.0.1:{port}"]
{top}
[timeouts]
shutdown_grace = {grace}
[limits]
max_sessions = 100
[admin]
listen = "127.0.0.1:0"
"""

ALLOW_LOOPBACK = '[[rules]]\nid = "loopback"\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def socksx_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "socksx", *args]


class ServerProcess:
    """`socksx server -c FILE` on a free loopback port, its stderr read line by line."""

    def __init__(
        self, config: Path, *, grace: float, rules: str, top: str = "", extra_args: tuple = ()
    ) -> None:
        self.config = config
        self.top = top
        self.grace = grace
        self.rules = rules
        self.extra_args = extra_args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._eof = False

    def write_config(self, rules: str | None = None, *, broken: bool = False) -> None:
        text = BASE_TOML.format(port=self.port, grace=self.grace, top=self.top) + (
            rules or self.rules
        )
        if broken:
            text += "this is [not toml\n"
        # a reader must see the old or the new file, never half of one
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def start(self) -> None:
        for attempt in range(2):
            self.port = free_port()
            self.write_config()
            self.lines = []
            self._eof = False
            self.proc = subprocess.Popen(
                socksx_command("server", "-c", str(self.config), *self.extra_args),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
            try:
                self.wait_for(lambda line: "listening" in line, within=START_WITHIN)
            except AssertionError:
                self.proc.wait(5)
                in_use = any("address already in use" in line for line in self.lines)
                if in_use and attempt == 0:
                    continue  # someone took the port between our probe and the server's bind
                raise
            return

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True  # the process closed stderr: no line will come any more
            self._changed.notify_all()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def wait_for(
        self, predicate: Callable[[str], bool], *, after: int = 0, within: float = LINE_WITHIN
    ) -> int:
        """Index of the first line from *after* on that satisfies *predicate* (bounded wait)."""
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if predicate(self.lines[index]):
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    msg = "expected log line not seen; stderr was:\n" + "\n".join(self.lines)
                    raise AssertionError(msg)
                self._changed.wait(min(left, 0.2))

    def signal(self, signum: int) -> int:
        """Send *signum*; return the index the next log line will have."""
        with self._changed:
            mark = len(self.lines)
        assert self.proc is not None
        self.proc.send_signal(signum)
        return mark

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(
        *, grace: float = 3, rules: str = ALLOW_LOOPBACK, top: str = "", args: tuple = ()
    ) -> ServerProcess:
        server = ServerProcess(
            tmp_path / f"socksx-{len(started)}.toml",
            grace=grace,
            rules=rules,
            top=top,
            extra_args=args,
        )
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def second_echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def echo_roundtrip(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data


def connect_rep(proxy: tuple[str, int], target: tuple[str, int]) -> int:
    with open_socks(proxy) as sock:
        negotiate(sock)
        sock.sendall(b"\x05\x01\x00" + addr_bytes(*target))
        return read_reply(sock)[0]


def test_sighup_reload_keeps_sessions_and_refuses_a_broken_config(
    run_server, echo_server, second_echo
):
    server = run_server()
    with socks5_connect(server.address, *echo_server.address) as established:
        echo_roundtrip(established, b"before reload")
        deny_echo = (
            f'[[rules]]\nid = "no-echo"\naction = "deny"\nports = [{echo_server.address[1]}]\n'
            + ALLOW_LOOPBACK
        )
        server.write_config(deny_echo)
        mark = server.signal(signal.SIGHUP)
        server.wait_for(lambda line: "config reloaded" in line, after=mark)
        # new sessions follow the new rules...
        assert connect_rep(server.address, echo_server.address) == 0x02
        assert connect_rep(server.address, second_echo.address) == 0x00
        server.wait_for(lambda line: 'result="denied rule=no-echo"' in line, after=mark)
        # ...while the established one keeps relaying
        echo_roundtrip(established, b"after reload")

        server.write_config(deny_echo, broken=True)
        mark = server.signal(signal.SIGHUP)
        refused = server.wait_for(lambda line: "reload refused" in line, after=mark)
        assert str(server.config) in server.lines[refused]
        # the running rules stay in force
        assert connect_rep(server.address, echo_server.address) == 0x02
        assert connect_rep(server.address, second_echo.address) == 0x00
        echo_roundtrip(established, b"after refused reload")
    assert server.proc.poll() is None
    mark = server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert not [line for line in server.lines if "Traceback" in line]


def assert_not_served(address: tuple[str, int]) -> None:
    """A connection is refused, or accepted by the closing listener and closed unanswered."""
    try:
        sock = open_socks(address, timeout=5)
    except ConnectionRefusedError:
        return
    with sock:
        try:
            sock.sendall(b"\x05\x01\x00")
            assert sock.recv(16) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass


def test_sigterm_stops_accepting_and_lets_a_session_finish_its_grace(run_server, echo_server):
    server = run_server(grace=3)
    with socks5_connect(server.address, *echo_server.address) as open_session:
        echo_roundtrip(open_session, b"before")
        mark = server.signal(signal.SIGTERM)
        server.wait_for(lambda line: "stopping" in line, after=mark)
        assert_not_served(server.address)
        # the open session still works during the grace period
        echo_roundtrip(open_session, b"during grace")
        assert server.proc.poll() is None
        # then the server ends it and exits 0
        open_session.settimeout(10)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert open_session.recv(16) == b""
        assert time.monotonic() - started < 8
    assert server.proc.wait(10) == 0
    server.wait_for(lambda line: "ending 1 sessions" in line, after=mark)
    # the ended session still writes its one session line
    server.wait_for(lambda line: " info session " in line and "result=killed" in line, after=mark)
    server.wait_for(lambda line: line.endswith(" stopped"), after=mark)


def test_sigint_exits_as_soon_as_the_last_session_ends(run_server, echo_server):
    server = run_server(grace=60)
    with socks5_connect(server.address, *echo_server.address) as open_session:
        echo_roundtrip(open_session, b"x")
        mark = server.signal(signal.SIGINT)
        server.wait_for(lambda line: "stopping" in line, after=mark)
        echo_roundtrip(open_session, b"still here")
        assert server.proc.poll() is None
    # well before the 60 s grace
    assert server.proc.wait(10) == 0
    assert not any("ending" in line for line in server.lines[mark:])


def test_sigusr1_logs_the_state(run_server, echo_server):
    server = run_server()
    with socks5_connect(server.address, *echo_server.address) as open_session:
        echo_roundtrip(open_session, b"12345")
        mark = server.signal(signal.SIGUSR1)
        state = server.wait_for(lambda line: " info state " in line, after=mark)
        assert " open=1 " in server.lines[state]
        session = server.wait_for(lambda line: " info state session " in line, after=mark)
        assert f"dst=127.0.0.1:{echo_server.address[1]}" in server.lines[session]
        assert " up=5 down=5 " in server.lines[session]
    assert server.proc.poll() is None


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        socksx_command(*args),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_missing_config_exits_3_with_one_line(tmp_path: Path):
    missing = tmp_path / "missing.toml"
    result = run_to_exit("server", "-c", str(missing))
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [f"socksx: {missing}: file not found"]
    assert result.stdout == ""


def test_unbindable_listen_address_exits_3_with_one_line(tmp_path: Path):
    config = tmp_path / "unbindable.toml"
    # an address of no interface here: bind() fails locally (EADDRNOTAVAIL), nothing is sent
    config.write_text(
        BASE_TOML.format(port=1080, grace=1, top="").replace(
            'listen = ["127.0.0.1', 'listen = ["192.0.2.1'
        )
    )
    result = run_to_exit("server", "-c", str(config))
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        f"socksx: {config}: listen: cannot listen on 192.0.2.1:1080: "
        "cannot assign requested address"
    ]


def test_port_in_use_exits_1_with_one_line(tmp_path: Path):
    """A port in use is a runtime failure (1), not a config error (3): a supervisor may retry."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "in-use.toml"
        config.write_text(BASE_TOML.format(port=port, grace=1, top=""))
        result = run_to_exit("server", "-c", str(config))
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"socksx: {config}: listen: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in line


def test_json_log_format(run_server, echo_server):
    server = run_server(args=("--log-format", "json"))
    payload = os.urandom(1000)
    with socks5_connect(server.address, *echo_server.address) as sock:
        local = sock.getsockname()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert got == payload
    index = server.wait_for(lambda line: '"msg": "session"' in line)
    record = json.loads(server.lines[index])
    assert {"client", "user", "cmd", "dst", "up", "down", "duration", "result"} <= set(record)
    assert record["client"] == f"{local[0]}:{local[1]}"
    assert record["user"] == "-"
    assert record["cmd"] == "connect"
    assert record["dst"] == f"127.0.0.1:{echo_server.address[1]}"
    assert (record["up"], record["down"]) == (1000, 1000)
    assert record["result"] == "ok"
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    for line in server.lines:
        json.loads(line)  # every line, not only the session line, is JSON


# -- userpass in a real process: users file reload, exit with the hashing threads started ------


def write_users(path: Path, users: dict[str, bytes]) -> None:
    lines = [name.encode() + b":" + fast_hash(password) + b"\n" for name, password in users.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(lines))
    os.replace(tmp, path)


def fast_hash(password: bytes) -> bytes:
    return hash_password(password, opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)


def login_status(proxy: tuple[str, int], user: bytes, password: bytes) -> bytes:
    with open_socks(proxy) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exactly(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        return recv_exactly(sock, 2)


def test_sighup_reloads_the_users_file_and_sigterm_exits_after_logins(
    run_server, echo_server, tmp_path: Path
):
    users = tmp_path / "users"
    write_users(users, {"alice": b"pw"})
    server = run_server(top=f'auth = "userpass"\nusers_file = "{users}"')
    with socks5_connect(
        server.address, *echo_server.address, user=b"alice", password=b"pw"
    ) as established:
        echo_roundtrip(established, b"alice's session")
        write_users(users, {"bob": b"builder"})
        mark = server.signal(signal.SIGHUP)
        server.wait_for(lambda line: "config reloaded" in line, after=mark)
        assert login_status(server.address, b"alice", b"pw") == b"\x01\x01"
        assert login_status(server.address, b"bob", b"builder") == b"\x01\x00"
        echo_roundtrip(established, b"still relaying")
        mark = server.signal(signal.SIGTERM)
        server.wait_for(lambda line: "stopping" in line, after=mark)
    # the password-hashing threads do not keep the process alive
    assert server.proc.wait(10) == 0


# -- reload inside one process: what a new config changes for new sessions --------------------


def rewrite(server, old: str, new: str) -> None:
    """Edit the running server's config file (the fixture's text) for the next reload."""
    assert old in server.toml_text
    server.toml_text = server.toml_text.replace(old, new, 1)
    Path(server.source).write_text(server.toml_text)




def test_reload_applies_new_session_limits_and_keeps_open_sessions(make_server, echo_server):
    server = make_server("[limits]\nmax_sessions_per_client = 0\n")
    first, second = open_socks(server.address), open_socks(server.address)
    with first, second:
        negotiate(first)
        negotiate(second)
        rewrite(server, "max_sessions_per_client = 0", "max_sessions_per_client = 1")
        assert server.call(server.server.reload) is True
        with open_socks(server.address) as third:
            third.sendall(b"\x05\x01\x00")
            with contextlib.suppress(ConnectionResetError):
                assert third.recv(16) == b""
        # both open sessions (over the new limit) go on and can still CONNECT
        for sock in (first, second):
            sock.sendall(b"\x05\x01\x00" + addr_bytes(*echo_server.address))
            assert read_reply(sock)[0] == 0
            echo_roundtrip(sock, b"kept")


def test_reload_warns_that_a_listen_change_needs_a_restart(make_server, socksx_records):
    server = make_server()
    rewrite(server, '"127.0.0.1:0"', f'"127.0.0.1:{free_port()}"')
    assert server.call(server.server.reload) is True
    assert any("listen addresses changed" in r.getMessage() for r in socksx_records)


def test_reload_to_userpass_requires_credentials_from_new_sessions(make_server, tmp_path: Path):
    users = tmp_path / "users"
    write_users(users, {"alice": b"pw"})
    server = make_server()
    rewrite(server, "listen = ", f'auth = "userpass"\nusers_file = "{users}"\nlisten = ')
    assert server.call(server.server.reload) is True
    with open_socks(server.address) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\xff"


def test_reload_applies_a_new_auth_failure_limit(make_server, tmp_path: Path):
    users = tmp_path / "users"
    write_users(users, {"alice": b"pw"})
    server = make_server(
        f'auth = "userpass"\nusers_file = "{users}"\n[limits]\nauth_failures_per_minute = 0\n'
    )
    rewrite(server, "auth_failures_per_minute = 0", "auth_failures_per_minute = 1")
    assert server.call(server.server.reload) is True
    assert login_status(server.address, b"alice", b"wrong") == b"\x01\x01"
    # one failure a minute: the next attempt is refused before its password is checked
    assert login_status(server.address, b"alice", b"pw") == b"\x01\x01"


def test_state_dump_reports_each_sessions_age(make_server, echo_server, socksx_records):
    server = make_server()
    with socks5_connect(server.address, *echo_server.address) as sock:
        echo_roundtrip(sock, b"abc")
        server.call(server.server.dump_state)
    (state,) = [r for r in socksx_records if r.getMessage() == "state"]
    assert state.fields["open"] == 1  # type: ignore[attr-defined]
    (session,) = [r for r in socksx_records if r.getMessage() == "state session"]
    assert (session.fields["up"], session.fields["down"]) == (3, 3)  # type: ignore[attr-defined]
    assert 0 <= session.fields["age"] < 60  # type: ignore[attr-defined]


def test_reload_with_a_broken_users_file_keeps_the_old_users(
    make_server, tmp_path: Path, socksx_records
):
    users = tmp_path / "users"
    write_users(users, {"alice": b"pw"})
    server = make_server(f'auth = "userpass"\nusers_file = "{users}"\n')
    users.write_text("alice:not-a-hash\n")
    assert server.call(server.server.reload) is False
    refused = [r.getMessage() for r in socksx_records if "reload refused" in r.getMessage()]
    assert len(refused) == 1
    assert str(users) in refused[0]
    assert login_status(server.address, b"alice", b"pw") == b"\x01\x00"
