"""Several worker processes behind one set of listen addresses (``workers = N`` or "auto").

The supervisor binds one SO_REUSEPORT socket per worker per listen address (so the kernel
spreads new connections over the workers, with no shared accept queue), drops privileges, then
forks the workers. It never accepts itself: it restarts a worker that dies (with the same
sockets, whose queued connections wait for the new worker), forwards SIGHUP (reload) and
SIGUSR1 (state dump) to every worker, and on SIGTERM/SIGINT forwards the signal and waits for
the workers to drain.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

import gevent
import gevent.os
from gevent import socket as gsocket
from gevent.event import Event

from socksx.config import Config
from socksx.errors import ConfigError
from socksx.log import logger
from socksx.server import admin
from socksx.server.server import ListenError, bind_listen_socket, listen_specs

__all__ = ["Supervisor", "worker_count"]

RESTART_DELAY = 0.5  # seconds between a worker's death and its replacement (no tight loops)


def worker_count(config: Config) -> int:
    """The configured number of workers ("auto": one per core)."""
    return config.workers if config.workers is not None else (os.cpu_count() or 1)


class Supervisor:
    """Owns the listen sockets and the worker processes."""

    def __init__(
        self,
        config: Config,
        count: int,
        run_worker: Callable[[list[gsocket.socket]], None],
        drop_privileges: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.count = count
        self.run_worker = run_worker
        self.drop_privileges = drop_privileges
        self.sockets: list[list[gsocket.socket]] = []
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.all_exited = Event()
        self._handlers: list[Any] = []
        # The admin API: the supervisor's listener sums what each worker serves on a private
        # UNIX socket (worker index -> path, filled once the private directory exists).
        self.admin: admin.AdminListener | None = None
        self.worker_admin: dict[str, str] = {}
        self._admin_dir: str | None = None

    def bind(self) -> None:
        """Bind count x addresses sockets; a port 0 is resolved once and shared.

        Raises:
            ConfigError: an address cannot be bound.
        """
        source = self.config.source
        try:
            for _ in range(self.count):
                row = []
                for i, (host, port, _) in enumerate(listen_specs(self.config)):
                    if port == 0 and self.sockets:
                        port = self.sockets[0][i].getsockname()[1]
                    row.append(bind_listen_socket(host, port, source, reuseport=True))
                self.sockets.append(row)
            self.admin = admin.start_supervisor_admin(self.config.admin, source, self.worker_admin)
        except (ConfigError, ListenError):
            for sock in (s for row in self.sockets for s in row):
                sock.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listen address."""
        return [sock.getsockname()[:2] for sock in self.sockets[0]]

    def _spawn(self, index: int) -> None:
        pid = gevent.os.fork_and_watch(lambda watcher: self._exited(index, watcher), ref=True)
        if pid == 0:
            _die_with_parent()
            # The child: forget the supervisor's signal handlers and the other workers' sockets.
            for handler in self._handlers:
                handler.cancel()
            for i, row in enumerate(self.sockets):
                if i != index:
                    for sock in row:
                        sock.close()
            if self.admin is not None:
                self.admin.close(unlink=False)  # the parent's socket and file
                admin.serve_worker_admin_at(self.worker_admin[str(index)])
            code = 0
            try:
                self.run_worker(self.sockets[index])
            except BaseException:
                logger.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        self.pids[pid] = index
        logger.info("worker started", extra={"fields": {"worker": index, "pid": pid}})

    def _exited(self, index: int, watcher: Any) -> None:
        pid, status = watcher.rpid, watcher.rstatus
        self.pids.pop(pid, None)
        how = _describe_status(status)
        if self.stopping:
            logger.info(
                "worker stopped", extra={"fields": {"worker": index, "pid": pid, "how": how}}
            )
            if not self.pids:
                self.all_exited.set()
            return
        logger.warning(
            "worker died, restarting", extra={"fields": {"worker": index, "pid": pid, "how": how}}
        )
        gevent.spawn_later(RESTART_DELAY, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self.stopping:
            self._spawn(index)

    def _forward(self, signum: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            logger.info(
                "stopping workers", extra={"fields": {"signal": signal.Signals(signum).name}}
            )
        self.stopping = True
        if not self.pids:
            self.all_exited.set()
        self._forward(signal.SIGTERM)

    def serve_forever(self) -> None:
        """Fork the workers and supervise them until stopped and drained."""
        self.drop_privileges()
        if self.admin is not None:
            # Made after the privilege drop, so the workers can create their sockets in it.
            self._admin_dir = tempfile.mkdtemp(prefix="socksx-admin-")
            for index in range(self.count):
                self.worker_admin[str(index)] = os.path.join(self._admin_dir, f"{index}.sock")
            self.admin.start()
        self._handlers = [
            gevent.signal_handler(signal.SIGTERM, self._stop, signal.SIGTERM),
            gevent.signal_handler(signal.SIGINT, self._stop, signal.SIGINT),
            gevent.signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP),
            gevent.signal_handler(signal.SIGUSR1, self._forward, signal.SIGUSR1),
        ]
        try:
            for index in range(self.count):
                self._spawn(index)
            self.all_exited.wait()
        finally:
            for handler in self._handlers:
                handler.cancel()
            for sock in (s for row in self.sockets for s in row):
                sock.close()
            if self.admin is not None:
                self.admin.close()
            if self._admin_dir is not None:
                shutil.rmtree(self._admin_dir, ignore_errors=True)
        logger.info("stopped")


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if the supervisor dies, so no orphan keeps a port."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"
