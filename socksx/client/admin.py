"""Blocking client of a socksx server's admin API (docs/ADMIN.md), over TCP or a UNIX socket.

Used by ``socksx top`` and by the supervisor of several workers (which passes gevent's socket
module, so its fetches are cooperative even without monkey-patching).

    client = AdminClient("127.0.0.1:1081", token="...")
    stats = client.stats()
"""

from __future__ import annotations

import http.client
import json
import socket as stdlib_socket
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import quote, urlencode

from socksx.errors import SocksError

__all__ = [
    "DEFAULT_ADMIN",
    "AdminClient",
    "AdminError",
    "AdminHTTPError",
    "AdminTarget",
    "AdminUnreachable",
    "parse_admin_target",
    "read_token_file",
]

DEFAULT_ADMIN = "127.0.0.1:1081"


class AdminError(SocksError):
    """The admin API could not be used."""


class AdminUnreachable(AdminError, ConnectionError):
    """No connection to the admin listener, or it broke off."""


class AdminHTTPError(AdminError):
    """The admin API answered with an error status (401, 403, 404...)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


@dataclass(frozen=True, slots=True)
class AdminTarget:
    """Where the admin API listens: a UNIX socket *path*, or *host* and *port*."""

    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_admin_target(text: str) -> AdminTarget:
    """``HOST:PORT``, ``http://HOST:PORT[/]``, a socket path, or ``unix:PATH``.

    Raises:
        ValueError: with a readable message.
    """
    value = text.strip()
    if value.startswith("unix:"):
        value = value[5:]
        if not value:
            msg = f"{text!r}: missing socket path after unix:"
            raise ValueError(msg)
        return AdminTarget(path=value)
    if value.startswith("http://"):
        value = value[7:].rstrip("/")
        if "/" in value:
            msg = f"{text!r}: the admin URL takes no path (http://HOST:PORT)"
            raise ValueError(msg)
    elif "://" in value:
        msg = f"{text!r}: only http:// admin URLs (or a UNIX socket path)"
        raise ValueError(msg)
    elif "/" in value:
        return AdminTarget(path=value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        msg = f"{text!r} is not HOST:PORT, http://HOST:PORT or a socket path"
        raise ValueError(msg)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return AdminTarget(host=host, port=int(port))


def read_token_file(path: str) -> str:
    """The token in *path* (surrounding white space removed).

    Raises:
        AdminError: unreadable or empty.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}"
        raise AdminError(msg) from None
    if not token:
        msg = f"the token file {path} is empty"
        raise AdminError(msg)
    return token


class _Connection(http.client.HTTPConnection):
    """http.client over TCP or a UNIX socket, with a chosen socket module."""

    def __init__(self, target: AdminTarget, timeout: float, sockets: ModuleType) -> None:
        host = target.host or "localhost"
        super().__init__(host, target.port or None, timeout=timeout)
        self._target = target
        self._sockets = sockets

    def connect(self) -> None:
        if self._target.path:
            sock = self._sockets.socket(self._sockets.AF_UNIX, self._sockets.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._target.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        else:
            self.sock = self._sockets.create_connection(
                (self._target.host, self._target.port), self.timeout
            )


class AdminClient:
    """One request per call, each on its own connection (no state between calls)."""

    def __init__(
        self,
        target: str | AdminTarget,
        token: str | None = None,
        timeout: float = 5.0,
        *,
        sockets: ModuleType = stdlib_socket,
    ) -> None:
        """Raises ValueError for a target that cannot be parsed."""
        self.target = target if isinstance(target, AdminTarget) else parse_admin_target(target)
        self.token = token
        self.timeout = timeout
        self.sockets = sockets

    def request(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request.

        Raises:
            AdminUnreachable: no connection, a timeout, or a broken answer.
        """
        conn = _Connection(self.target, self.timeout, self.sockets)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            return response.status, response.getheader("Content-Type", ""), body
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            msg = f"cannot reach the admin API at {self.target}: {reason.lower()}"
            raise AdminUnreachable(msg) from None
        finally:
            conn.close()

    def _json(self, method: str, path: str) -> dict[str, Any]:
        status, _, body = self.request(method, path)
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise AdminHTTPError(status, str(message or body[:200].decode("utf-8", "replace")))
        if not isinstance(data, dict):
            msg = f"the admin API at {self.target} sent no JSON object"
            raise AdminUnreachable(msg)
        return data

    def stats(self) -> dict[str, Any]:
        """``GET /stats``."""
        return self._json("GET", "/stats")

    def sessions(self, limit: int | None = None, sort: str = "rate") -> dict[str, Any]:
        """``GET /sessions?limit=N&sort=S``."""
        query: dict[str, str | int] = {"sort": sort}
        if limit is not None:
            query["limit"] = limit
        return self._json("GET", "/sessions?" + urlencode(query))

    def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text).

        Raises:
            AdminHTTPError: an error status.
        """
        status, _, body = self.request("GET", "/metrics")
        if status != 200:
            raise AdminHTTPError(status, body[:200].decode("utf-8", "replace"))
        return body.decode("utf-8")

    def close_session(self, session_id: str) -> dict[str, Any]:
        """``POST /sessions/ID/close`` (needs the token)."""
        return self._json("POST", f"/sessions/{quote(str(session_id), safe='')}/close")

    def terminate_relay(self, relay_id: str) -> dict[str, Any]:
        """``POST /relays/ID/terminate`` (needs the token)."""
        return self._json("POST", f"/relays/{quote(str(relay_id), safe='')}/terminate")
