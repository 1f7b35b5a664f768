"""The relays of one server: one per (public group, port), started on the first JOIN.

The registry is the server's ``mcast_relays`` dict (id -> Relay, read by the stats API); the
manager adds a relay when it starts, and the relay's stop removes it and frees its intranet
group. ``stop_relays`` ends them all with B7 when the server stops.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from socksx.log import logger
from socksx.protocol.address import Address
from socksx.server.mcast.relay import Relay, RelayError

if TYPE_CHECKING:
    from socksx.config import McastConfig
    from socksx.server.server import Server

__all__ = ["RelayManager", "manager_for", "stop_relays"]

_MANAGERS: weakref.WeakKeyDictionary[Server, RelayManager] = weakref.WeakKeyDictionary()


class RelayManager:
    """Starts relays on demand and keeps the intranet groups they use apart."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.intranet_groups: set[str] = set()

    def relay_for(self, group: Address) -> Relay | None:
        """The running relay of *group*, if any."""
        relay: Relay | None = self.server.mcast_relays.get(str(group))
        return relay

    def acquire(self, group: Address) -> Relay:
        """The relay of *group*, started now if there is none.

        Raises:
            RelayError: it cannot start (the reason is in the message and logged).
        """
        relay = self.relay_for(group)
        if relay is not None and relay.running:
            return relay
        config = self.server.config.mcast
        intranet_group = self._allocate(config) if config.mode == "multicast" else None
        relay = Relay(group, config, intranet_group, self._stopped)
        try:
            relay.start()
        except RelayError as exc:
            if intranet_group is not None:
                self.intranet_groups.discard(intranet_group)
            logger.error("mcast relay not started: %s", exc)
            raise
        self.server.mcast_relays[relay.id] = relay
        return relay

    def release_if_idle(self, relay: Relay) -> None:
        """Stop a relay that was started for a JOIN that then got no membership."""
        if relay.running and not relay.members:
            relay.stop("no member joined")

    def _allocate(self, config: McastConfig) -> str:
        family = 6 if ":" in (config.intranet_interface or "") else 4
        for address in self._candidates(config, family):
            if address not in self.intranet_groups:
                self.intranet_groups.add(address)
                return address
        msg = "every intranet group of mcast.intranet_pool is in use"
        raise RelayError(msg)

    @staticmethod
    def _candidates(config: McastConfig, family: int) -> Iterator[str]:
        for net in config.intranet_pool:
            if net.version != family:
                continue
            if net.num_addresses == 1:
                yield str(net.network_address)
                continue
            for host in net.hosts():
                yield str(host)

    def _stopped(self, relay: Relay, why: str) -> None:
        if self.server.mcast_relays.get(relay.id) is relay:
            del self.server.mcast_relays[relay.id]
        if relay.intranet_group is not None:
            self.intranet_groups.discard(relay.intranet_group)

    def stop_all(self, why: str) -> None:
        """Stop every relay (each member gets B7)."""
        for relay in list(self.server.mcast_relays.values()):
            if isinstance(relay, Relay):
                relay.stop(why)


def manager_for(server: Server) -> RelayManager:
    """The server's relay manager (made on first use)."""
    manager = _MANAGERS.get(server)
    if manager is None:
        manager = _MANAGERS[server] = RelayManager(server)
    return manager


def stop_relays(server: Server, why: str = "server stopping") -> None:
    """Stop every relay of *server* with B7 to each member (called from Server.stop)."""
    manager = _MANAGERS.get(server)
    if manager is not None:
        manager.stop_all(why)
