"""OpenSSH through the socksx server: ``socksx connect`` as ProxyCommand, and proxychains4 ssh.

A private sshd runs on a free 127.0.0.1 port with throwaway keys (root only: sshd must switch
to the logged-in user).
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import (
    PASSWORD,
    ROOT,
    USER,
    need_binary,
    run,
    sessions_seen,
)

pytestmark = pytest.mark.interop

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A foreground sshd (-D -e) on 127.0.0.1 accepting one generated client key for root."""

    def __init__(self, sshd: str, keygen: str, workdir: Path) -> None:
        workdir.mkdir()
        self.host_key = workdir / "host_ed25519"
        self.client_key = workdir / "client_ed25519"
        for key in (self.host_key, self.client_key):
            run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)]).check_returncode()
        authorized = workdir / "authorized_keys"
        authorized.write_bytes(self.client_key.with_suffix(".pub").read_bytes())
        self.port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPidFile {workdir / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nLogLevel INFO\n"
        )
        # sshd refuses to start without its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_listening(deadline=time.monotonic() + 10)
        except BaseException:
            self.stop()
            raise
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_listening(self, deadline: float) -> None:
        """Read sshd's log until it says it listens (its own readiness event)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        pending = b""
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.log += [line.decode(errors="replace") for line in lines]
            if any(f"port {self.port}" in line and "listening" in line for line in self.log):
                return
        msg = f"sshd did not start listening: {[*self.log, pending.decode(errors='replace')]}"
        raise AssertionError(msg)

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip("\n"))

    def stop(self) -> None:
        """Terminate sshd (and so its children) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if os.geteuid() != 0:
        pytest.skip("a private sshd needs root (it switches to the logged-in user)")
    sshd_bin = shutil.which("sshd", path=SBIN_PATH)
    if sshd_bin is None:
        pytest.skip("sshd not installed (apt-get install openssh-server)")
    need_binary("ssh", "openssh-client")
    keygen = need_binary("ssh-keygen", "openssh-client")
    server = Sshd(sshd_bin, keygen, tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def socksx_connect_available() -> None:
    check = run([sys.executable, "-m", "socksx", "connect", "--help"], cwd=ROOT)
    if check.returncode != 0:
        pytest.skip("socksx connect not available")


def ssh_argv(sshd: Sshd, *options: str) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(sshd.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        *options,
        "-p",
        str(sshd.port),
        "root@127.0.0.1",
        "echo",
        "via-socksx",
    ]


def run_ssh(argv: list[str], sshd: Sshd) -> str:
    result = run(argv, timeout=25, cwd=ROOT)
    detail = f"ssh: {result.stderr.decode(errors='replace')}\nsshd: {sshd.log}"
    assert result.returncode == 0, detail
    return result.stdout.decode()


def proxy_command(server, *extra: str) -> str:
    host, port = server.address
    words = [sys.executable, "-m", "socksx", "connect", "%h:%p", "--via", f"{host}:{port}"]
    return shlex.join([*words, *extra])


def test_ssh_proxycommand_socksx_connect(sshd, socks_server, socksx_connect_available):
    before = sessions_seen(socks_server)
    argv = ssh_argv(sshd, "-o", f"ProxyCommand={proxy_command(socks_server)}")
    assert run_ssh(argv, sshd) == "via-socksx\n"
    assert sessions_seen(socks_server) >= before + 1


def test_ssh_proxycommand_with_username_password(
    sshd, userpass_server, socksx_connect_available, tmp_path
):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    command = proxy_command(userpass_server, "--user", USER, "--password-file", str(password_file))
    argv = ssh_argv(sshd, "-o", f"ProxyCommand={command}")
    assert run_ssh(argv, sshd) == "via-socksx\n"


def test_ssh_proxycommand_refused_by_rules(sshd, deny_server, socksx_connect_available):
    argv = ssh_argv(sshd, "-o", f"ProxyCommand={proxy_command(deny_server)}")
    result = run(argv, timeout=25, cwd=ROOT)
    assert result.returncode == 255  # ssh's own failure: the ProxyCommand closed
    assert b"via-socksx" not in result.stdout
    assert not any("Accepted publickey" in line for line in sshd.log)
    # socksx connect's one-line diagnostic reaches ssh's stderr
    assert b"(REP 0x02)" in result.stderr
    assert deny_server.call(lambda: deny_server.server.stats.rule_denials) >= 1


def test_ssh_under_proxychains(sshd, socks_server, tmp_path):
    proxychains = need_binary("proxychains4", "proxychains4")
    host, port = socks_server.address
    conf = tmp_path / "proxychains.conf"
    conf.write_text(f"strict_chain\nproxy_dns\n[ProxyList]\nsocks5 {host} {port}\n")
    before = sessions_seen(socks_server)
    argv = [proxychains, "-q", "-f", str(conf), *ssh_argv(sshd)]
    assert run_ssh(argv, sshd) == "via-socksx\n"
    assert sessions_seen(socks_server) >= before + 1
