"""Network-namespace topologies for tests that need routes, interfaces or multicast.

Namespaces get unique names per run and are deleted even when a test fails. Tests here are
marked ``netns`` and skip, with the reason, where namespaces cannot be made (not root, no ip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    name = f"sxprobe{uuid.uuid4().hex[:8]}"
    probe = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


SKIP_REASON = _can_make_namespaces()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


class Netns:
    """One namespace: ``run`` a command in it, ``popen`` a long-running one."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        """Run ``ip ARGS`` inside the namespace."""
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command inside the namespace to completion."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        """Start a command inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)

    def delete(self) -> None:
        """Remove the namespace (its interfaces go with it)."""
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """Factory of namespaces with unique names, all deleted at teardown."""
    made: list[Netns] = []
    run_id = uuid.uuid4().hex[:6]

    def factory(role: str) -> Netns:
        ns = Netns(f"sx{run_id}{role}"[:15])
        made.append(ns)
        return ns

    yield factory
    for ns in made:
        ns.delete()


class ServerProcess:
    """``python -m socksx server`` inside a namespace, ready when it logs "listening"."""

    def __init__(self, ns: Netns, config_path: Path) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-m",
            "socksx",
            "server",
            "-c",
            str(config_path),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # blocks until the server writes: an event, not a poll
            self.lines.append(line)
            if "listening" in line:
                break
        else:
            msg = f"server exited before listening: {''.join(self.lines)}"
            raise RuntimeError(msg)
        # Keep draining so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[Netns, str], ServerProcess]]:
    """Start socksx inside a namespace from TOML text; stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(ns: Netns, toml_text: str) -> ServerProcess:
        path = tmp_path / f"{ns.name}.toml"
        path.write_text(toml_text)
        server = ServerProcess(ns, path)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
