"""Fixtures for driving third-party SOCKS clients through the real socksx server.

Nothing here resolves names through the host's DNS: invented names such as ``web.test`` reach
the server and are answered by an injected resolver that maps every name to 127.0.0.1.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

from socksx.server.auth import hash_password
from tests.conftest import LOOPBACK_RULE, ServerThread

ROOT = Path(__file__).resolve().parents[2]
WEB_BODY = b"hello through socksx\n"
USER = "alice"
PASSWORD = "pw"


def loopback_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    """Every name is 127.0.0.1: lets tests use invented names without any DNS."""
    return [(socket.AF_INET, ("127.0.0.1", port))]


class RecordingResolver:
    """loopback_resolver that remembers each name the server looked up.

    The server calls its resolver only for names (ATYP 03, SOCKS4a), never for IP literals, so
    the list tells which clients resolved locally and which left the name to the server. With
    *known*, only those names resolve; any other is "not found" (REP 04 to the client), which
    keeps a client's own background fetches from reaching even loopback ports.
    """

    def __init__(self, known: frozenset[str] | None = None) -> None:
        self.known = known
        self.names: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[int, tuple]]:
        self.names.append(host)
        if self.known is not None and host not in self.known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return loopback_resolver(host, port)


def need_binary(name: str, package: str) -> str:
    """The binary's path, or skip the test naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], timeout: float = 15, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a client to completion with a bound on its runtime, capturing bytes."""
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False, **kwargs)


def sessions_seen(server: ServerThread) -> int:
    """Sessions the server has accepted: finished plus open (read inside its thread).

    A client may exit before the server has noticed its EOF, so finished sessions alone would
    race with the test; a session is in the open set from accept until after it is counted.
    """
    return server.call(lambda: server.server.stats.sessions_total + len(server.server.sessions))


class WebServer:
    """A threaded HTTP server on 127.0.0.1: GET answers WEB_BODY and records what it saw."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                seen.append(
                    {
                        "host": self.headers.get("Host"),
                        "path": self.path,
                        "peer": self.client_address,
                    }
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(WEB_BODY)))
                self.send_header("X-Seen-Host", self.headers.get("Host", ""))
                self.end_headers()
                self.wfile.write(WEB_BODY)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def web() -> Iterator[WebServer]:
    """An HTTP server on 127.0.0.1 serving WEB_BODY."""
    server = WebServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def users_hash() -> bytes:
    """alice's argon2id hash at the minimum cost (fast enough for tests)."""
    return hash_password(
        PASSWORD.encode(),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
    )


@pytest.fixture
def userpass_server(
    make_server: Callable[..., ServerThread], tmp_path: Path, users_hash: bytes
) -> ServerThread:
    """A server requiring username/password; the users file holds alice:pw."""
    users = tmp_path / "users"
    users.write_bytes(USER.encode() + b":" + users_hash + b"\n")
    users.chmod(0o600)
    return make_server(f'auth = "userpass"\nusers_file = "{users}"\n')


@pytest.fixture
def named_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    """A no-auth server whose resolver maps every name to 127.0.0.1."""
    return make_server(resolver=loopback_resolver)


@pytest.fixture
def recording_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    """named_server whose ``.resolver`` is a RecordingResolver (``.resolver.names``)."""
    return make_server(resolver=RecordingResolver())


@pytest.fixture
def deny_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    """A server whose first rule (id "no-loopback-dst") denies every loopback destination."""
    deny = '[[rules]]\nid = "no-loopback-dst"\naction = "deny"\nto = ["127.0.0.0/8"]\n'
    return make_server(rules=deny + LOOPBACK_RULE)


@pytest.fixture(scope="session")
def socksx_cli() -> list[str]:
    """argv prefix running this checkout's CLI."""
    return [sys.executable, "-m", "socksx"]
