"""``workers = N``: a supervisor with N SO_REUSEPORT worker processes, restarts, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import recv_exactly
from tests.server.socks_raw import socks5_connect

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervised:
    """``python -m socksx server`` with workers; stderr lines are collected as they come."""

    def __init__(self, tmp_path: Path, workers: int) -> None:
        self.port = free_port()
        conf = tmp_path / "workers.toml"
        conf.write_text(
            f'listen = ["127.0.0.1:{self.port}"]\nworkers = {workers}\n'
            '[admin]\nlisten = "127.0.0.1:0"\n'
            '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socksx", "server", "-c", str(conf)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> list[str]:
        """Block until *count* stderr lines contain *text* (an event, not a poll)."""
        with self.cond:
            ok = self.cond.wait_for(
                lambda: sum(text in line for line in self.lines) >= count, timeout
            )
            assert ok, f"waited for {count} x {text!r}; got:\n{''.join(self.lines)}"
            return [line for line in self.lines if text in line]

    def worker_pids(self) -> set[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return {int(p) for p in out.stdout.split()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path):
    started: list[Supervised] = []

    def factory(workers: int) -> Supervised:
        sup = Supervised(tmp_path, workers)
        started.append(sup)
        return sup

    yield factory
    for sup in started:
        sup.stop()


def test_two_workers_serve_and_a_dead_one_is_replaced(supervised, echo_server):
    sup = supervised(2)
    sup.wait_for("listening", 2)
    pids = sup.worker_pids()
    assert len(pids) == 2
    with socks5_connect(("127.0.0.1", sup.port), *echo_server.address) as sock:
        sock.sendall(b"w")
        assert recv_exactly(sock, 1) == b"w"
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    sup.wait_for("worker died, restarting")
    sup.wait_for("listening", 3)
    new_pids = sup.worker_pids()
    assert len(new_pids) == 2
    assert victim not in new_pids
    for _ in range(8):  # every connection is served, whichever worker the kernel picks
        with socks5_connect(("127.0.0.1", sup.port), *echo_server.address) as sock:
            sock.sendall(b"again")
            assert recv_exactly(sock, 5) == b"again"


def test_signals_reach_every_worker_and_sigterm_stops_all(supervised):
    sup = supervised(2)
    sup.wait_for("listening", 2)
    pids = sup.worker_pids()
    sup.proc.send_signal(signal.SIGUSR1)
    sup.wait_for("info state ", 2)
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_for("config reloaded", 2)
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(20) == 0
    sup.wait_for("worker stopped", 2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
