"""socksx top's live mode in a real terminal: tmux runs it against a real server process.

tmux has no event for "the screen now shows X", so the test polls ``capture-pane`` in a loop
bounded in time (``wait_for_screen``); everything else is awaited on events.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from socksx.client import join_group
from tests.conftest import ROOT, recv_exactly
from tests.server.admin_helpers import admin_toml
from tests.server.socks_raw import socks5_connect
from tests.server.test_mcast import unique_group

pytestmark = [
    pytest.mark.tty,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed"),
]

PROMPT = "tty-test$ "


class ServerProcess:
    """`socksx server -c FILE` with its stderr read by a thread (so the pipe never fills)."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socksx", "server", "-c", str(config)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.address: tuple[str, int] | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        admin = False
        for line in self.proc.stderr:
            self.lines.append(line)
            if " info listening address=127.0.0.1:" in line and self.address is None:
                port = int(line.split("address=127.0.0.1:")[1].split()[0])
                self.address = ("127.0.0.1", port)
            admin = admin or " admin API serving " in line
            if admin and self.address is not None:
                self.ready.set()
        self.ready.set()  # exited: the waiter sees no address

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.thread.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Tmux:
    """A private tmux server (its own socket name) with one fixed-size window."""

    def __init__(self, width: int, height: int) -> None:
        self.socket = f"socksx-test-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX", "COLUMNS")}
        self.tmux(
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            str(width),
            "-y",
            str(height),
            f"env PS1='{PROMPT}' bash --norc --noprofile -i",
            env=env,
        )

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", os.devnull, *args],
            capture_output=True,
            text=True,
            timeout=15,
            env=env,
            check=True,
        )
        return result.stdout

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def alternate_on(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "top", "#{alternate_on}").strip() == "1"

    def wait_for_screen(
        self, *texts: str, absent: tuple[str, ...] = (), timeout: float = 20.0
    ) -> str:
        """Poll capture-pane until every text is on the screen and none of *absent* is
        (bounded: tmux has no event for it)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(t in screen for t in texts) and not any(t in screen for t in absent):
                return screen
            if time.monotonic() > deadline:
                msg = f"never saw {texts!r}; the screen was:\n{screen}"
                raise AssertionError(msg)
            time.sleep(0.1)

    def kill(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.tmux("kill-server")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    admin_socket = tmp_path / "admin.sock"
    config = tmp_path / "socksx.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\n'
        + admin_toml(listen=str(admin_socket))
        + '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    process = ServerProcess(config)
    try:
        assert process.ready.wait(30), "server did not start"
        assert process.address is not None, "".join(process.lines)
        yield process, admin_socket
    finally:
        process.stop()


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    terminal = Tmux(120, 40)
    try:
        yield terminal
    finally:
        terminal.kill()


def test_live_view_starts_shows_data_sorts_and_quits(server, tmux, echo_server):
    process, admin_socket = server
    assert process.address is not None
    small = socks5_connect(process.address, *echo_server.address)
    big = socks5_connect(process.address, *echo_server.address)
    group = unique_group()
    member = join_group(*group, proxy=process.address)
    with small, big, member:
        for sock, size in ((small, 1000), (big, 200_000)):
            sock.sendall(b"x" * size)
            assert recv_exactly(sock, size) == b"x" * size
        tmux.wait_for_screen(PROMPT.rstrip())  # capture-pane drops trailing spaces
        tmux.send(
            f"cd {ROOT} && {sys.executable} -m socksx top --admin {admin_socket} "
            "--interval 500ms; echo top-exit=$?",
            "Enter",
        )
        big_client = "{}:{}".format(*big.getsockname())
        screen = tmux.wait_for_screen(
            "sessions 3 open",
            "Busiest sessions (b)  3  sort: rate",
            big_client,
            "Multicast relays (r)  1",
            f"{group[0]}:{group[1]}",
            "q quit",
        )
        assert tmux.alternate_on()
        on_group = [line for line in screen.splitlines() if f"{group[0]}:{group[1]}" in line]
        assert len(on_group) == 2  # the relay, and the JOIN session whose destination it is
        assert "unicast" in on_group[0]  # the relay's mode column (a wide screen)
        assert " join " in on_group[1]
        rows = [line for line in screen.splitlines() if f":{echo_server.address[1]}" in line]
        assert len(rows) == 2  # the two CONNECT sessions (the JOIN's destination is the group)
        assert big_client in rows[0]  # the busiest first

        tmux.send("s")
        tmux.wait_for_screen("Busiest sessions (b)  3  sort: bytes", "s sort bytes")
        tmux.send("t")
        # Only the focused table.
        tmux.wait_for_screen("Tunnels (t)  0", absent=("Busiest sessions", "Multi-binds"))
        tmux.send("t")
        tmux.wait_for_screen("Busiest sessions (b)  3  sort: bytes")

        tmux.send("q")
        # The alternate screen is gone with everything top drew.
        tmux.wait_for_screen("top-exit=0", absent=("Busiest sessions",))
        assert not tmux.alternate_on()
        tmux.send("stty -a | tr ' ' '\\n' | grep -xE -- '-?(icanon|echo)'", "Enter")
        screen = tmux.wait_for_screen("icanon\necho")  # cbreak undone: the terminal is cooked
        assert "-icanon" not in screen


def test_server_going_away_is_shown_and_retried(server, tmux):
    process, admin_socket = server
    tmux.wait_for_screen(PROMPT.rstrip())  # capture-pane drops trailing spaces
    tmux.send(f"cd {ROOT} && {sys.executable} -m socksx top --admin {admin_socket}", "Enter")
    tmux.wait_for_screen("sessions 0 open", "q quit")
    process.stop()
    tmux.wait_for_screen("server went away, retrying in")
    tmux.send("q")
    tmux.wait_for_screen(PROMPT.rstrip())  # capture-pane drops trailing spaces
    assert not tmux.alternate_on()
