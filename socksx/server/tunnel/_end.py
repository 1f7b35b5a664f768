"""What both ends of a UDP tunnel share: lifetime, timers, counters, the stats snapshot.

A tunnel end is a handful of greenlets in one Group, owned by the session that asked for or
granted the tunnel: the link's reader (frames from the TLS stream, or sealed datagrams), the
local side's reader (the client's datagrams on A, site B's answers on B), a watcher of the
control connection(s), and the clock. Whatever ends first (a close, a timeout, an error, a
reload) sets ``ended`` with a reason; the session greenlet then kills the Group and closes the
sockets, in that order, in its ``finally``.

Timers (docs/PROTOCOL.md "UDP tunnels", keepalives): a keepalive goes to the other gateway when
nothing was sent to it for ``tunnel.keepalive`` seconds, and the end gives up when nothing
authenticated came from it for ``tunnel.dead_after`` seconds. Clocks are monotonic.
"""

from __future__ import annotations

import abc
import contextlib
from collections import Counter
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group

from socksx.log import logger
from socksx.protocol.address import Address
from socksx.protocol.constants import TunnelProto

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["Link", "TunnelEnd"]

#: The smallest sleep of the clock: keeps a misconfigured tiny interval from spinning.
_MIN_TICK = 0.01


class Link(Protocol):
    """How datagrams travel to the other gateway: PROTO 01 frames or PROTO 02 sealed UDP."""

    def send(self, address: bytes, data: bytes | memoryview) -> bool:
        """Send one datagram; False when it cannot be carried (counted by the caller)."""

    def keepalive(self) -> None:
        """Send a keepalive."""

    def close(self) -> None:
        """Release the link's own resources."""


class TunnelEnd(abc.ABC):
    """State common to gateway A's end ("near") and gateway B's end ("far")."""

    role: ClassVar[str] = "?"

    def __init__(self, session: Session, proto: TunnelProto, peer: str) -> None:
        self.session = session
        self.server = session.server
        settings = self.server.config.tunnel
        self.keepalive_after = settings.keepalive
        self.dead_after = settings.dead_after
        self.proto = proto
        self.peer = peer
        self.id = f"{self.role}-{session.id}"
        self.started = monotonic()
        self.last_rx = self.started  # last thing authenticated from the other gateway
        self.last_tx = self.started  # last thing sent to it
        self.tunnel_id: int | None = None
        self.link: Link | None = None
        self.group = Group()
        self.ended: AsyncResult = AsyncResult()
        # Counters (plain ints, read at scrape time). "out" is toward the other gateway.
        self.datagrams_out = 0
        self.datagrams_in = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.keepalives_sent = 0
        self.keepalives_received = 0
        self.dropped: Counter[str] = Counter()

    # -- lifetime ---------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the tunnel (the first reason wins); safe from any greenlet of this hub."""
        if not self.ended.ready():
            self.ended.set(reason)

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        """Run *fn* in the tunnel's Group; its failure ends the tunnel instead of escaping."""
        self.group.spawn(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except gevent.GreenletExit:
            raise
        except OSError as exc:
            text = (exc.strerror or str(exc) or type(exc).__name__).lower()
            self.end(f"io-error: {text}")
        except Exception:
            # A bug: log it with its traceback, and end cleanly rather than hang.
            logger.exception("tunnel %s: internal error", self.id)
            self.end("internal-error")

    def run(self) -> str:
        """Wait for the end and return its reason (the session's result)."""
        self.spawn(self._clock)
        reason: str = self.ended.get()
        return reason

    def close(self) -> None:
        """Stop every greenlet, release the link, close the control connection.

        Closing the control connection here (not only when the session's socket is collected)
        is what tells the other side at once: the tunnel ends on both gateways.
        """
        self.group.kill()
        link, self.link = self.link, None  # also breaks the end <-> link reference cycle
        with contextlib.suppress(OSError):
            if link is not None:
                link.close()
            self.session.sock.close()

    # -- timers -----------------------------------------------------------------------------

    def _clock(self) -> None:
        """Send keepalives when idle; end when the other gateway has been silent too long."""
        while True:
            now = monotonic()
            silent = now - self.last_rx
            if silent >= self.dead_after:
                self.end("dead-peer")
                return
            if now - self.last_tx >= self.keepalive_after and self.link is not None:
                self.link.keepalive()
                self.keepalives_sent += 1
                self.last_tx = monotonic()
            wait = min(
                self.keepalive_after - (monotonic() - self.last_tx),
                self.dead_after - silent,
            )
            gevent.sleep(max(wait, _MIN_TICK))

    def heard(self, keepalive: bool = False) -> None:
        """Something authenticated arrived from the other gateway."""
        self.last_rx = monotonic()
        if keepalive:
            self.keepalives_received += 1

    def watch_control(self, sock: Any, reason: str) -> None:
        """End with *reason* when *sock* closes; octets on it carry no meaning and are ignored."""
        while sock.recv(4096):
            pass
        self.end(reason)

    # -- datagrams --------------------------------------------------------------------------

    @abc.abstractmethod
    def deliver(self, address: Address, data: bytes) -> None:
        """A datagram from the other gateway (subclasses route it)."""

    def drop(self, reason: str) -> None:
        """Count a dropped datagram."""
        self.dropped[reason] += 1

    # -- stats ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the stats API and ``SIGUSR1``."""
        now = monotonic()
        session = self.session
        return {
            "id": self.id,
            "role": self.role,
            "proto": "tls" if self.proto == TunnelProto.TLS else "udp",
            "peer": self.peer,
            "client": f"{session.client_ip}:{session.client_port}",
            "user": session.user,
            "tunnel_id": None if self.tunnel_id is None else f"{self.tunnel_id:08x}",
            "age": round(now - self.started, 3),
            "silent_for": round(now - self.last_rx, 3),
            "datagrams_out": self.datagrams_out,
            "datagrams_in": self.datagrams_in,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "keepalives_sent": self.keepalives_sent,
            "keepalives_received": self.keepalives_received,
            "dropped": dict(self.dropped),
        }

    def log_up(self) -> None:
        """One log line when the tunnel is established."""
        fields = {"id": self.id, "proto": self.snapshot()["proto"], "peer": self.peer}
        fields["client"] = f"{self.session.client_ip}:{self.session.client_port}"
        fields["user"] = self.session.user or "-"
        logger.info("tunnel up", extra={"fields": fields})

    def log_down(self, reason: str) -> None:
        """One log line when it ends, with its totals."""
        fields = {
            "id": self.id,
            "reason": reason,
            "out": self.datagrams_out,
            "in": self.datagrams_in,
            "dropped": sum(self.dropped.values()),
        }
        logger.info("tunnel down", extra={"fields": fields})
