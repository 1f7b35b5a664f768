"""The server: listeners from the config, the session pool, reload, drain, signals.

A ``Server`` binds in ``start()`` (so ``addresses`` has the real ports at once: tests use port 0
and never poll), serves each connection in its own greenlet, and stops with a grace period.
Signals follow Dante's conventions: SIGHUP reloads, SIGTERM/SIGINT drain and stop, SIGUSR1 logs
a state dump.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import resource
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import Event
from greenlet import getcurrent, greenlet

from socksx import __version__
from socksx.config import Config
from socksx.config import load as load_config
from socksx.errors import ConfigError, ConfigProblem, SocksError
from socksx.log import logger
from socksx.protocol.constants import Command
from socksx.server import bind, connect, tunnel, udp
from socksx.server.admin import start_admin
from socksx.server.auth import Authenticator, load_users
from socksx.server.limits import SessionLimiter
from socksx.server.mcast import join as mcast_join
from socksx.server.mcast.manager import stop_relays
from socksx.server.multibind import handle_accept, handle_multibind
from socksx.server.rawio import RawStream
from socksx.server.rules import RuleSet
from socksx.server.session import HANDLERS, Session
from socksx.server.stats import ServerStats

__all__ = [
    "ListenError",
    "Listener",
    "Resolver",
    "Server",
    "bind_listen_socket",
    "listen_specs",
    "make_tls_context",
]

Resolver = Callable[[str, int], list[tuple[int, tuple]]]

HANDLERS.setdefault(Command.CONNECT, connect.handle)
HANDLERS.setdefault(Command.BIND, bind.handle)
HANDLERS.setdefault(Command.UDP_ASSOCIATE, udp.handle)
HANDLERS.setdefault(Command.JOIN_MCAST_GROUP, mcast_join.handle)
HANDLERS.setdefault(Command.LEAVE_MCAST_GROUP, mcast_join.handle)
HANDLERS.setdefault(Command.SETUP_UDP_TUNNEL, tunnel.handle)
HANDLERS.setdefault(Command.MULTI_BIND, handle_multibind)
HANDLERS.setdefault(Command.ACCEPT, handle_accept)


def system_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    """Resolve with gevent's resolver: every address, in the system's preferred order."""
    infos = gsocket.getaddrinfo(host, port, 0, gsocket.SOCK_STREAM, gsocket.IPPROTO_TCP)
    seen: set[tuple] = set()
    out: list[tuple[int, tuple]] = []
    for family, _, _, _, sockaddr in infos:
        key = (family, sockaddr[:2])
        if key not in seen:
            seen.add(key)
            out.append((family, sockaddr[:2]))
    return out


def bind_listen_socket(
    host: str, port: int, source: str, *, reuseport: bool = False
) -> _socket.socket:
    """A non-blocking listening TCP socket on (host, port).

    Raises:
        ConfigError: the address cannot be bound (names it and the reason).
    """
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        # Accepted sockets inherit TCP_NODELAY on Linux: one setsockopt here, none per session.
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        msg = f"cannot listen on {_fmt((host, port))}: {(exc.strerror or str(exc)).lower()}"
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            # Not the config's fault (another process has the port, or no privilege): a
            # runtime failure, so a supervisor may retry.
            where = f"{source}: listen: {msg}"
            raise ListenError(where) from exc
        raise ConfigError([ConfigProblem(source, "listen", msg)]) from exc
    return sock


class ListenError(SocksError):
    """A listen address that is valid but cannot be bound now (in use, no privilege)."""


#: accept() errors about one client that left before it was accepted: take the next one.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR})
#: connections accepted per readiness event before the loop serves other events
ACCEPT_BATCH = 32
#: back-off after accept() ran out of descriptors: doubles from the first to the last
_PAUSE_MIN, _PAUSE_MAX = 0.01, 1.0
#: finished session greenlets kept to serve the next connections (a new greenlet costs its
#: creation plus an mmap/munmap of its frame stack)
IDLE_GREENLETS = 64


class Listener:
    """One listening socket; ``auth`` is what it requires of clients.

    Accepting is a libev callback, not a greenlet: it takes up to ``ACCEPT_BATCH`` connections
    per wake-up and switches into a greenlet for each at once (no scheduling hop, no pool
    bookkeeping), which runs the session until it first has to wait. Greenlets whose session
    ended wait for the next connection instead of dying (up to ``IDLE_GREENLETS``).
    """

    def __init__(self, server: Server, sock: _socket.socket, tls: bool = False) -> None:
        self.server = server
        self.tls = tls
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._hub = gevent.get_hub()
        self._watcher = self._hub.loop.io(sock.fileno(), 1)
        self._pause = _PAUSE_MIN
        self._resume_timer: Any = None
        self._idle: list[greenlet] = []  # session greenlets waiting for a connection

    @property
    def auth(self) -> str:
        """What clients must do, from the current config (a reload applies to new sessions)."""
        return self.server.config.auth

    def start(self) -> None:
        self._watcher.start(self._on_readable)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # closed already
        self._watcher.stop()
        self._watcher.close()
        for waiting in self._idle:
            gevent.kill(waiting)  # from the hub: GreenletExit out of its wait
        self._idle.clear()
        if self._resume_timer is not None:
            self._resume_timer.stop()
            self._resume_timer.close()
            self._resume_timer = None
        self.sock.close()

    def _on_readable(self) -> None:
        accept = self.sock._accept
        family = self.sock.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue  # that client is gone already: the next one may be fine
                # Out of descriptors or memory (or worse): one log line, and a pause instead
                # of a busy loop of failing accepts.
                self._back_off(exc)
                return
            self._pause = _PAUSE_MIN
            self._next_greenlet().switch(fd, family, peer)

    def _next_greenlet(self) -> greenlet:
        """A parked session greenlet, or a new one."""
        while self._idle:
            waiting = self._idle.pop()
            if not waiting.dead:  # (none dies while parked; a dead one would lose the client)
                return waiting
        return greenlet(self._serve_many, parent=self._hub)

    def _back_off(self, exc: OSError) -> None:
        """accept() failed (descriptors ran out): one log line, pause accepting, try again."""
        self.server.warn_refused("-", f"accept: {(exc.strerror or str(exc)).lower()}")
        self._watcher.stop()
        timer = self._resume_timer = self._hub.loop.timer(self._pause)
        self._pause = min(self._pause * 2, _PAUSE_MAX)

        def resume() -> None:
            timer.close()
            if self._resume_timer is timer:
                self._resume_timer = None
                self._watcher.start(self._on_readable)

        timer.start(resume)

    def _serve_many(self, fd: int, family: int, peer: tuple) -> None:
        """Serve connections one after another: the accept callback switches in the next.

        A killed session ends the greenlet (GreenletExit passes through), so a kill can never
        land in a later session.
        """
        idle = self._idle
        switch = self._hub.switch
        while True:
            self._serve(fd, family, peer)
            if len(idle) >= IDLE_GREENLETS or self.sock.fileno() < 0:
                return
            idle.append(getcurrent())
            fd, family, peer = switch()

    def _serve(self, fd: int, family: int, peer: tuple) -> None:
        server = self.server
        ip = peer[0]
        reason = server.limiter.try_acquire(ip)
        if reason is not None:
            os.close(fd)
            server.stats.by_result[reason] += 1
            server.warn_refused(ip, reason)
            return
        try:
            try:
                raw = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
            except OSError:
                os.close(fd)
                return
            sock: Any = raw
            try:
                raw.setblocking(False)
                if self.tls:
                    sock = gsocket.socket(family, _socket.SOCK_STREAM, 0, fileno=raw.detach())
                    # The TLS handshake itself runs in the session, under the handshake timeout.
                    sock = server.tls_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                else:
                    sock = RawStream(raw)
            except OSError:
                sock.close()  # whichever object holds the descriptor now
                return
            session = Session(server, self, sock, peer)
            server.session_started(session)
            try:
                session.run()
            finally:
                with contextlib.suppress(OSError):
                    session.sock.close()  # a handler may have swapped in a gevent socket
                server.session_ended(session)
        except Exception:
            # Session.run() catches everything; this is a bug before it (a log line, not a
            # traceback through the accept callback, which must keep accepting).
            logger.exception("internal error starting a session from %s", ip)
        finally:
            server.limiter.release(ip)


class Server:
    """A running socksx server (a set of listeners sharing config, rules, auth and stats)."""

    def __init__(self, config: Config, *, resolver: Resolver | None = None) -> None:
        self.config = config
        self.resolve: Resolver = resolver or system_resolver
        self.stats = ServerStats()
        self.sessions: set[Session] = set()
        self._idle = Event()  # set whenever no session is running
        self._idle.set()
        self.associations: set[Any] = set()
        # Extension state, by id; every value has snapshot() -> dict for the stats API.
        self.mcast_relays: dict[str, Any] = {}  # multicast relays (issue 6)
        self.tunnels: dict[str, Any] = {}  # UDP tunnels, both ends (issue 5)
        self.multibinds: dict[str, Any] = {}  # MULTI_BIND control channels (issue 7)
        self.listeners: list[Listener] = []
        self.admin: Any = None  # the admin API listener (socksx.server.admin), when serving
        self.stopped = Event()
        self._apply(config)

    # -- configuration --------------------------------------------------------------------

    def _apply(self, config: Config) -> None:
        """Build rules, auth and limits from *config* (raises ConfigError before changing)."""
        rules = RuleSet(config.rules)
        users_stamp = _file_stamp(config.users_file) if config.users_file else None
        users = load_users(config.users_file) if config.users_file else {}
        tls_context = make_tls_context(config) if config.tls.listen else None
        limits = config.limits
        if hasattr(self, "authenticator"):
            self.authenticator.replace_users(users)
            self.authenticator.reconfigure(
                workers=limits.auth_workers,
                queue=limits.auth_queue,
                failures_per_minute=limits.auth_failures_per_minute,
            )
        else:
            self.authenticator = Authenticator(
                users,
                workers=limits.auth_workers,
                queue=limits.auth_queue,
                failures_per_minute=limits.auth_failures_per_minute,
            )
        if not hasattr(self, "limiter"):
            self.limiter = SessionLimiter(
                config.limits.max_sessions, config.limits.max_sessions_per_client
            )
        else:
            self.limiter.reconfigure(
                config.limits.max_sessions, config.limits.max_sessions_per_client
            )
        self.rules = rules
        self.tls_context = tls_context
        self.config = config
        self._users_stamp = users_stamp
        self._users_checked = time.monotonic()

    #: how often (at most) a login looks at the users file for changes, in seconds
    users_check_interval = 1.0

    def refresh_users(self) -> None:
        """Re-read the users file if it changed since it was read (looked at, on a login, at
        most once per ``users_check_interval``): ``socksx passwd`` takes effect without SIGHUP.

        A changed file that cannot be used (bad lines, gone) keeps the users read before, with
        one warning per change.
        """
        now = time.monotonic()
        if now - self._users_checked < self.users_check_interval:
            return
        self._users_checked = now
        path = self.config.users_file
        if not path:
            return
        stamp = _file_stamp(path)
        if stamp == self._users_stamp:
            return
        self._users_stamp = stamp
        try:
            users = load_users(path)
        except ConfigError as exc:
            for problem in exc.problems:
                logger.warning("users file changed, keeping the users read before: %s", problem)
            return
        self.authenticator.replace_users(users)  # also forgets every cached login
        logger.info("users file changed: reloaded", extra={"fields": {"users": len(users)}})

    def reload(self, path: str | None = None) -> bool:
        """Re-read the config (and users file); keep the old one if the new one is bad."""
        source = (
            path
            if path is not None
            else (None if self.config.source == "<embedded default>" else self.config.source)
        )
        old = self.config
        try:
            new = load_config(source)
            new = new if self._overrides is None else self._overrides(new)
            self._apply(new)
        except ConfigError as exc:
            for problem in exc.problems:
                logger.error("reload refused, keeping the running config: %s", problem)
            return False
        if listen_specs(new) != listen_specs(old):
            logger.warning("listen addresses changed: restart to apply them")
        if (new.admin.enabled, new.admin.listen) != (old.admin.enabled, old.admin.listen):
            logger.warning("admin listener changed: restart to apply it")
        if new.log != old.log and self.log_hook is not None:
            self.log_hook(new.log)
        tunnel.config_changed(self)  # ends tunnels the new config no longer allows
        logger.info("config reloaded", extra={"fields": {"source": new.source}})
        return True

    _overrides: Callable[[Config], Config] | None = None
    #: Called with the new [log] settings when a reload changes them. The command line sets
    #: it (logging is the process's, not the server object's); an embedded server has none.
    log_hook: Callable[[Any], None] | None = None

    def set_overrides(self, overrides: Callable[[Config], Config]) -> None:
        """Command-line overrides re-applied to every reloaded config."""
        self._overrides = overrides

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, sockets: list[_socket.socket] | None = None) -> None:
        """Bind every listener (or adopt pre-bound *sockets*, one per address) and accept.

        Raises:
            ConfigError: a listen address cannot be bound (names the address and the reason).
        """
        specs = listen_specs(self.config)
        if sockets is None:
            sockets = []
            try:
                for host, port, _ in specs:
                    sockets.append(bind_listen_socket(host, port, self.config.source))
            except (ConfigError, ListenError):
                for sock in sockets:
                    sock.close()
                raise
        self.listeners = [
            Listener(self, sock, tls) for sock, (_, _, tls) in zip(sockets, specs, strict=True)
        ]
        for listener in self.listeners:
            listener.start()
        try:
            self.admin = start_admin(self)
        except BaseException:
            for listener in self.listeners:
                listener.close()
            raise
        for listener in self.listeners:
            fields = {"address": _fmt(listener.address), "auth": listener.auth}
            if listener.tls:
                fields["tls"] = "yes"
            logger.info("listening", extra={"fields": fields})

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener, in config order."""
        return [listener.address for listener in self.listeners]

    @property
    def admin_address(self) -> tuple[str, int] | str | None:
        """The admin API's bound (host, port) or UNIX socket path; None when not serving."""
        return None if self.admin is None else self.admin.address

    def warn_refused(self, ip: str, reason: str) -> None:
        """Log a refused connection, at most once a second (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._last_refusal_log < 1.0:
            self._refusals_unlogged += 1
            return
        fields = {"client": ip, "why": reason}
        if self._refusals_unlogged:
            fields["also_refused"] = str(self._refusals_unlogged)
        self._refusals_unlogged = 0
        self._last_refusal_log = now
        logger.warning("session refused", extra={"fields": fields})

    _last_refusal_log = -1e9
    _refusals_unlogged = 0

    def now(self) -> float:
        """Monotonic seconds (wall-clock jumps must not distort timeouts)."""
        return time.monotonic()

    def session_started(self, session: Session) -> None:
        self.sessions.add(session)
        self._idle.clear()

    def session_ended(self, session: Session) -> None:
        session.ended = True
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no session is running; False if some still are after *timeout* s."""
        return bool(self._idle.wait(timeout))

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let sessions finish for *grace* seconds, then end the rest."""
        grace = self.config.timeouts.shutdown_grace if grace is None else grace
        for listener in self.listeners:
            listener.close()
        stop_relays(self)  # members get B7, so their sessions end now
        if not self.wait_idle(grace):
            left = list(self.sessions)
            logger.info("shutdown: ending %d sessions after the grace period", len(left))
            for session in left:
                session.kill()
            self.wait_idle(1)
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self.stopped.set()

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT; handle SIGHUP (reload) and SIGUSR1 (state dump)."""
        stopping = Event()
        handlers = [
            gevent.signal_handler(signal.SIGTERM, stopping.set),
            gevent.signal_handler(signal.SIGINT, stopping.set),
            gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload)),
            gevent.signal_handler(signal.SIGUSR1, self.dump_state),
        ]
        try:
            stopping.wait()
            logger.info(
                "stopping: draining sessions",
                extra={
                    "fields": {
                        "open": len(self.sessions),
                        "grace": self.config.timeouts.shutdown_grace,
                    }
                },
            )
            self.stop()
        finally:
            for handler in handlers:
                handler.cancel()
        logger.info("stopped")

    def dump_state(self) -> None:
        """Log the server's state (SIGUSR1)."""
        snap = self.stats.snapshot()
        logger.info(
            "state",
            extra={
                "fields": {
                    "version": __version__,
                    "open": len(self.sessions),
                    "total": snap["sessions_total"],
                    "up": snap["bytes_up"],
                    "down": snap["bytes_down"],
                    "auth_failures": snap["auth_failures"],
                    "denials": snap["rule_denials"],
                }
            },
        )
        for session in list(self.sessions):
            logger.info(
                "state session",
                extra={
                    "fields": {
                        "id": session.id,
                        "client": f"{session.client_ip}:{session.client_port}",
                        "user": session.user or "-",
                        "cmd": session.command,
                        "dst": session.dst,
                        "up": session.bytes_up,
                        "down": session.bytes_down,
                        "age": round(time.monotonic() - session.started, 1),
                    }
                },
            )


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (inode, mtime, size); None if it is not there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def listen_specs(config: Config) -> list[tuple[str, int, bool]]:
    """Every listen address as (host, port, tls), plain listeners first."""
    return [(h, p, False) for h, p in config.listen] + [(h, p, True) for h, p in config.tls.listen]


def make_tls_context(config: Config) -> ssl.SSLContext:
    """The server-side TLS context of the TLS listeners (TLS 1.2 or later).

    Raises:
        ConfigError: the certificate, key or client CA cannot be loaded.
    """
    tls = config.tls
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert or "", tls.key or "")
    except (OSError, ssl.SSLError) as exc:
        msg = f"cannot load the certificate and key: {exc}"
        raise ConfigError([ConfigProblem(config.source, "tls.cert", msg)]) from exc
    if tls.client_ca:
        try:
            context.load_verify_locations(tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            msg = f"cannot load the client CA: {exc}"
            raise ConfigError([ConfigProblem(config.source, "tls.client_ca", msg)]) from exc
        context.verify_mode = gssl.CERT_REQUIRED
    return context


def _fmt(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_nofile_limit(max_sessions: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; warn if that is still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = 2 * max_sessions + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "open-file limit %d is below the %d that max_sessions=%d needs",
            soft,
            needed,
            max_sessions,
        )


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch to *user*/*group* after binding (no-op for None).

    Raises:
        ConfigError: unknown user or group, or not permitted.
    """
    if not user and not group:
        return
    import grp
    import pwd

    try:
        gid = grp.getgrnam(group).gr_gid if group else (pwd.getpwnam(user).pw_gid if user else None)
        uid = pwd.getpwnam(user).pw_uid if user else None
    except KeyError as exc:
        raise ConfigError(
            [ConfigProblem("<privileges>", "user/group", f"unknown {exc.args[0]}")]
        ) from exc
    try:
        if gid is not None:
            os.setgroups([gid])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except PermissionError as exc:
        msg = f"cannot drop privileges: {exc.strerror}"
        raise ConfigError([ConfigProblem("<privileges>", "user", msg)]) from exc
    logger.info("privileges dropped", extra={"fields": {"uid": os.getuid(), "gid": os.getgid()}})
