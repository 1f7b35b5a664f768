"""The admin listener: a small HTTP API served with gevent's WSGI server (docs/ADMIN.md).

Routes::

    GET  /stats                      JSON snapshot of the whole server
    GET  /sessions?limit=N&sort=S    open sessions, S = rate | bytes | age
    GET  /metrics                    Prometheus text exposition
    POST /sessions/{id}/close        only when a token is configured; logged
    POST /relays/{id}/terminate      only when a token is configured; logged

Every request is checked before routing, in this order: an ``Origin`` header (any) or a ``Host``
header that is not the listener's own address gets 403, so a web page in a browser on the same
host cannot reach the API, by CSRF or by DNS rebinding (UNIX sockets skip the Host check: no
browser reaches them); then, when a token is configured, a missing or wrong
``Authorization: Bearer`` gets 401. A UNIX socket is created mode 0600.

With several worker processes, each worker serves its own admin API on a private UNIX socket
(``serve_worker_admin_at``) and the supervisor's listener answers from the sum of theirs
(``WorkersSource``).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from socksx import __version__
from socksx.config import AdminConfig, parse_host_port
from socksx.errors import ConfigError, ConfigProblem
from socksx.log import logger
from socksx.server.metrics import CONTENT_TYPE, render_metrics
from socksx.server.snapshot import SESSION_SORTS, StatsBuilder, merge_sessions, merge_stats

if TYPE_CHECKING:
    from socksx.server.server import Server

__all__ = [
    "AdminApp",
    "AdminListener",
    "LocalSource",
    "StatsSource",
    "TokenFile",
    "WorkersSource",
    "bind_admin_socket",
    "serve_worker_admin_at",
    "start_admin",
]

MAX_LIMIT = 100_000
ADMIN_CONNECTIONS = 32  # concurrent admin connections; more wait in the accept queue
ADMIN_IDLE = 30.0  # seconds an admin connection may sit idle
TICK = 1.0  # seconds between throughput samples

_ACTION = re.compile(r"/(sessions|relays)/([^/]+)/(close|terminate)")
_GET_ROUTES = ("/stats", "/sessions", "/metrics")

# Set in a worker process by the supervisor: serve the admin API there instead.
_worker_socket: str | None = None


def serve_worker_admin_at(path: str) -> None:
    """In a worker process: serve the admin API on this private UNIX socket."""
    global _worker_socket  # one value per forked process
    _worker_socket = path


# --------------------------------------------------------------------------- sources


class ActionUnsupported(Exception):
    """An admin action the target object cannot perform (answered 501)."""


class StatsSource(Protocol):
    """What the API shows and acts on: one process's server, or the sum of workers."""

    def stats(self) -> dict[str, Any]:
        """The /stats object."""
        ...

    def sessions(self, sort: str, limit: int | None) -> dict[str, Any]:
        """The /sessions object."""
        ...

    def close_session(self, session_id: str) -> dict[str, Any] | None:
        """Close one session; None when there is no such session."""
        ...

    def terminate_relay(self, relay_id: str) -> dict[str, Any] | None:
        """End one multicast relay; None when there is no such relay.

        Raises:
            ActionUnsupported: the relay object has no way to be ended.
        """
        ...


class LocalSource:
    """The server of this process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.builder = StatsBuilder(server)

    def tick(self) -> None:
        """One throughput sample."""
        self.builder.tick(time.monotonic())

    def stats(self) -> dict[str, Any]:
        """The /stats object."""
        return self.builder.stats()

    def sessions(self, sort: str, limit: int | None) -> dict[str, Any]:
        """The /sessions object."""
        return self.builder.sessions(sort=sort, limit=limit)

    def close_session(self, session_id: str) -> dict[str, Any] | None:
        """End the session's greenlet (its log line says ``killed``)."""
        session = next((s for s in list(self.server.sessions) if str(s.id) == session_id), None)
        if session is None:
            return None
        described = {
            "id": str(session.id),
            "client": f"{session.client_ip}:{session.client_port}",
            "command": session.command,
            "dst": session.dst,
        }
        session.kill()
        return described

    def terminate_relay(self, relay_id: str) -> dict[str, Any] | None:
        """Call the relay's ``terminate()`` (or ``close()``)."""
        relays = self.server.mcast_relays
        key = next((k for k in list(relays) if str(k) == relay_id), None)
        if key is None:
            return None
        relay = relays[key]
        end = getattr(relay, "terminate", None) or getattr(relay, "close", None)
        if not callable(end):
            msg = "this relay cannot be terminated"
            raise ActionUnsupported(msg)
        end()
        return {"id": relay_id}


class WorkersSource:
    """The supervisor's view: the sum of the workers' admin APIs, fetched on each request."""

    def __init__(
        self, sockets: Mapping[str, str], token: Callable[[], str | None], config_source: str
    ) -> None:
        self.sockets = sockets  # worker name -> private UNIX socket path
        self.token = token
        self.config_source = config_source
        self.started = time.time()
        self.started_monotonic = time.monotonic()

    def _client(self, path: str) -> Any:
        from socksx.client.admin import AdminClient

        return AdminClient(path, token=self.token(), timeout=3.0, sockets=gsocket)

    def _gather(self, fetch: Callable[[Any], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from socksx.client.admin import AdminError

        def one(path: str) -> dict[str, Any] | None:
            try:
                return fetch(self._client(path))
            except AdminError:
                return None  # a worker restarting: the others still count

        jobs = {name: gevent.spawn(one, path) for name, path in self.sockets.items()}
        gevent.joinall(list(jobs.values()), timeout=5)
        out = {}
        for name, job in jobs.items():
            job.kill(block=False)
            if job.successful() and job.value is not None:
                out[name] = job.value
        return out

    def stats(self) -> dict[str, Any]:
        """The workers' /stats summed, with the supervisor's own identity."""
        parts = self._gather(lambda client: client.stats())
        merged = merge_stats(parts)
        merged.update(
            version=__version__,
            pid=os.getpid(),
            workers=len(self.sockets),
            workers_reporting=len(parts),
            uptime=round(time.monotonic() - self.started_monotonic, 3),
            started=round(self.started, 3),
            config_source=self.config_source,
        )
        return merged

    def sessions(self, sort: str, limit: int | None) -> dict[str, Any]:
        """Every worker's sessions, ids prefixed with the worker's name."""
        parts = self._gather(lambda client: client.sessions(limit=limit, sort=sort))
        return merge_sessions(parts, sort, limit)

    def _forward(self, kind: str, prefixed: str) -> dict[str, Any] | None:
        from socksx.client.admin import AdminError, AdminHTTPError

        worker, _, local = prefixed.partition("-")
        path = self.sockets.get(worker)
        if path is None or not local:
            return None
        client = self._client(path)
        try:
            if kind == "sessions":
                answer = client.close_session(local)
            else:
                answer = client.terminate_relay(local)
        except AdminHTTPError as exc:
            if exc.status == 404:
                return None
            if exc.status == 501:
                raise ActionUnsupported(str(exc)) from None
            raise
        except AdminError:
            return None
        return {**answer, "id": prefixed}

    def close_session(self, session_id: str) -> dict[str, Any] | None:
        """Forwarded to the worker named in the id."""
        return self._forward("sessions", session_id)

    def terminate_relay(self, relay_id: str) -> dict[str, Any] | None:
        """Forwarded to the worker named in the id."""
        return self._forward("relays", relay_id)


# --------------------------------------------------------------------------- the WSGI app


class TokenFile:
    """The bearer token from a file, read again whenever the file changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    def get(self) -> str | None:
        """The token, or None when none is configured.

        Raises:
            OSError: the file cannot be read (callers refuse every request then).
        """
        if not self.path:
            return None
        info = os.stat(self.path)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            with open(self.path, encoding="utf-8") as stream:
                self._token = stream.read().strip() or None
            self._stamp = stamp
        if self._token is None:
            msg = f"{self.path}: empty token file"
            raise OSError(errno.EINVAL, msg)
        return self._token


_Response = tuple[str, list[tuple[str, str]], bytes]


def _json_response(status: str, data: Any, *headers: tuple[str, str]) -> _Response:
    body = (json.dumps(data, separators=(",", ":"), default=str) + "\n").encode()
    return status, [("Content-Type", "application/json"), *headers], body


def _error(status: str, message: str, *headers: tuple[str, str]) -> _Response:
    return _json_response(status, {"error": message}, *headers)


class AdminApp:
    """The WSGI application: request checks, then routing to a ``StatsSource``."""

    def __init__(
        self,
        source: StatsSource,
        *,
        token: Callable[[], str | None],
        host_allowed: Callable[[str | None], bool],
    ) -> None:
        self.source = source
        self.token = token
        self.host_allowed = host_allowed

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            status, headers, body = self.respond(environ)
        except Exception:
            logger.exception("admin API: internal error")
            status, headers, body = _error("500 Internal Server Error", "internal error")
        headers.append(("Cache-Control", "no-store"))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        # HEAD: the headers GET would send, no body (pywsgi would send one).
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def respond(self, environ: Mapping[str, Any]) -> _Response:
        """Status, headers and body for one request."""
        if environ.get("HTTP_ORIGIN") is not None:
            return _error("403 Forbidden", "requests with an Origin header are refused")
        if not self.host_allowed(environ.get("HTTP_HOST")):
            return _error("403 Forbidden", "Host is not this listener's address")
        try:
            token = self.token()
        except OSError as exc:
            logger.error("admin API: cannot read the token file: %s", exc)
            return _error("500 Internal Server Error", "token unavailable")
        if token is not None and not _bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return _error(
                "401 Unauthorized", "bearer token required", ("WWW-Authenticate", "Bearer")
            )
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if path in _GET_ROUTES:
            if method not in ("GET", "HEAD"):
                return _error("405 Method Not Allowed", "use GET", ("Allow", "GET, HEAD"))
            return self._get(path, parse_qs(environ.get("QUERY_STRING", "")))
        match = _ACTION.fullmatch(path)
        # The actions exist only with a token: without one, nobody could be told apart.
        if match is None or token is None or _ACTIONS.get(match[1]) != match[3]:
            return _error("404 Not Found", "no such endpoint")
        if method != "POST":
            return _error("405 Method Not Allowed", "use POST", ("Allow", "POST"))
        return self._act(match[1], unquote(match[2]), environ)

    def _get(self, path: str, query: Mapping[str, list[str]]) -> _Response:
        if path == "/stats":
            return _json_response("200 OK", self.source.stats())
        if path == "/metrics":
            return "200 OK", [("Content-Type", CONTENT_TYPE)], render_metrics(self.source.stats)
        sort = (query.get("sort") or ["rate"])[-1]
        if sort not in SESSION_SORTS:
            return _error("400 Bad Request", f"sort must be one of {', '.join(SESSION_SORTS)}")
        limit_text = (query.get("limit") or [""])[-1]
        limit = None
        if limit_text:
            if not limit_text.isdigit() or not 0 < int(limit_text) <= MAX_LIMIT:
                return _error("400 Bad Request", f"limit must be 1..{MAX_LIMIT}")
            limit = int(limit_text)
        return _json_response("200 OK", self.source.sessions(sort, limit))

    def _act(self, kind: str, ident: str, environ: Mapping[str, Any]) -> _Response:
        by = environ.get("REMOTE_ADDR") or "unix-socket"
        try:
            if kind == "sessions":
                done = self.source.close_session(ident)
            else:
                done = self.source.terminate_relay(ident)
        except ActionUnsupported as exc:
            return _error("501 Not Implemented", str(exc))
        what = "session" if kind == "sessions" else "relay"
        if done is None:
            return _error("404 Not Found", f"no such {what}")
        verb = "closed" if kind == "sessions" else "terminated"
        logger.info(f"admin: {what} {verb}", extra={"fields": {**done, "by": by}})
        return _json_response("200 OK", {verb: done})


_ACTIONS = {"sessions": "close", "relays": "terminate"}


def _bearer_matches(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def host_checker(address: tuple[str, int] | str) -> Callable[[str | None], bool]:
    """Which Host headers name this listener (None: a UNIX socket, any Host)."""
    if isinstance(address, str):
        return lambda host: True
    bound, port = address
    ip = ipaddress.ip_address(bound)
    wildcard = ip.is_unspecified

    def allowed(host: str | None) -> bool:
        if not host:
            return False
        name, port_text = _split_host(host.strip().lower())
        if port_text is None:
            port_text = "80"  # RFC 9110: no port means the scheme's default
        if port_text != str(port):
            return False
        if name == "localhost":
            return ip.is_loopback or wildcard
        try:
            named = ipaddress.ip_address(name)
        except ValueError:
            return False  # a DNS name: what a rebinding attack would send
        return wildcard or named == ip

    return allowed


def _split_host(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    return (name, port) if sep else (host, None)


# --------------------------------------------------------------------------- the listener


class _AdminServer(WSGIServer):
    def handle(self, sock: gsocket.socket, address: Any) -> None:
        sock.settimeout(ADMIN_IDLE)  # an idle keep-alive connection must not hold a slot
        super().handle(sock, address)


def bind_admin_socket(listen: str, source: str) -> gsocket.socket:
    """A listening socket for ``admin.listen`` (HOST:PORT, or a UNIX path created 0600).

    Raises:
        ConfigError: the address cannot be used (names it and the reason).
        OSError: EADDRINUSE (the caller decides whether that is fatal).
    """
    if listen.startswith("/"):
        return _bind_unix(listen, source)
    host, port = parse_host_port(listen)
    family = gsocket.AF_INET6 if ":" in host else gsocket.AF_INET
    sock = gsocket.socket(family, gsocket.SOCK_STREAM)
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        if family == gsocket.AF_INET6:
            sock.setsockopt(gsocket.IPPROTO_IPV6, gsocket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise
        raise _problem(source, f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return sock


def _problem(source: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(source, "admin.listen", message.lower())])


def _bind_unix(path: str, source: str) -> gsocket.socket:
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode):
            raise _problem(source, f"{path} exists and is not a socket")
        probe = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens on it any more
        else:
            raise OSError(errno.EADDRINUSE, f"{path}: another server listens on it")
        finally:
            probe.close()
    sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
    # The umask makes the socket 0600 from its creation: no moment when others may connect.
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise _problem(source, f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


class AdminListener:
    """A bound admin socket, its WSGI server and (for a local source) the throughput ticker."""

    def __init__(self, sock: gsocket.socket, app: AdminApp, ticker: Callable[[], None] | None):
        self.sock = sock
        self.app = app
        name = sock.getsockname()
        self.address: tuple[str, int] | str = name if isinstance(name, str) else name[:2]
        self._inode = os.stat(name).st_ino if isinstance(name, str) else None
        # SERVER_NAME set: pywsgi would otherwise look the bound address up in DNS.
        self.wsgi = _AdminServer(
            sock,
            app,
            spawn=Pool(ADMIN_CONNECTIONS),
            log=None,
            error_log=logger,
            environ={"SERVER_NAME": "socksx-admin", "SERVER_PORT": ""},
        )
        self._ticker_fn = ticker
        self._ticker: gevent.Greenlet | None = None

    def start(self) -> None:
        """Accept requests (and sample throughput every second)."""
        self.wsgi.start()
        if self._ticker_fn is not None:
            self._ticker = gevent.spawn(self._tick_forever, self._ticker_fn)
        where = self.address if isinstance(self.address, str) else _fmt(self.address)
        # A worker's private socket is an implementation detail: only the debug log shows it.
        level = logging.DEBUG if _worker_socket is not None else logging.INFO
        # Not "listening": scripts (and tests) take that word for "SOCKS is ready".
        logger.log(level, "admin API serving", extra={"fields": {"address": where}})

    @staticmethod
    def _tick_forever(tick: Callable[[], None]) -> None:
        next_at = time.monotonic()
        while True:
            tick()
            next_at += TICK
            gevent.sleep(max(next_at - time.monotonic(), 0.05))

    def close(self, *, unlink: bool = True) -> None:
        """Stop serving; remove the UNIX socket file if it is still ours.

        ``unlink=False`` in a forked child, where the file belongs to the parent.
        """
        if self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None
        self.wsgi.close()
        path = self.address if isinstance(self.address, str) else None
        if unlink and path:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == self._inode:
                    os.unlink(path)


def _fmt(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_or_warn(listen: str, source: str) -> gsocket.socket | None:
    try:
        return bind_admin_socket(listen, source)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Monitoring must not keep the proxy down (a second instance on this host, say).
        logger.warning(
            "admin listener not started: address in use",
            extra={"fields": {"address": listen}},
        )
        return None


def start_admin(server: Server) -> AdminListener | None:
    """Start the admin API of *server* per its config (None when disabled or not bound).

    Raises:
        ConfigError: the admin address cannot be used.
    """
    config: AdminConfig = server.config.admin
    if _worker_socket is not None:
        listen = _worker_socket
    elif config.enabled:
        listen = config.listen
    else:
        return None
    sock = _listen_or_warn(listen, server.config.source)
    if sock is None:
        return None
    tokens: dict[str | None, TokenFile] = {}

    def token() -> str | None:
        # Read from the running config each time: a reload may set or change the file.
        path = server.config.admin.token_file
        if path not in tokens:
            tokens.clear()
            tokens[path] = TokenFile(path)
        return tokens[path].get()

    source = LocalSource(server)
    address = sock.getsockname()
    app = AdminApp(
        source,
        token=token,
        host_allowed=host_checker(address if isinstance(address, str) else address[:2]),
    )
    listener = AdminListener(sock, app, source.tick)
    listener.start()
    return listener


def start_supervisor_admin(
    config: AdminConfig, source_name: str, sockets: Mapping[str, str]
) -> AdminListener | None:
    """The supervisor's admin API, answering from the workers' private sockets.

    Raises:
        ConfigError: the admin address cannot be used.
    """
    if not config.enabled:
        return None
    sock = _listen_or_warn(config.listen, source_name)
    if sock is None:
        return None
    token_file = TokenFile(config.token_file)
    source = WorkersSource(sockets, token_file.get, source_name)
    address = sock.getsockname()
    app = AdminApp(
        source,
        token=token_file.get,
        host_allowed=host_checker(address if isinstance(address, str) else address[:2]),
    )
    return AdminListener(sock, app, None)
