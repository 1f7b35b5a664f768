"""Multicast through the gateway (docs/PROTOCOL.md "Multicast"; issue 6).

``join`` serves JOIN_MCAST_GROUP / LEAVE_MCAST_GROUP control channels, ``manager`` owns the
relays of a server (one per public group and port), ``relay`` moves the datagrams, ``member``
holds one membership's keys and counters, ``policy`` decides who may send and receive (pure,
also used by the config loader), ``iface`` finds the interfaces multicast sockets are tied to.
Importing this package imports nothing heavy: the config loader reads ``policy`` without
pulling in gevent.
"""

from __future__ import annotations

__all__: list[str] = []
