"""One membership as the relay sees it: keys, permission, limits, counters.

The relay owns its members; the control channel that asked for the membership holds a reference
to post notices about it. Counters are plain ints, read by the stats API and the accounting
line written when the membership ends.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import nacl.utils

from socksx.protocol.address import Address
from socksx.protocol.sealed import KEY_SIZE, ReplayWindow
from socksx.server.mcast.policy import McastPolicy, TokenBucket

__all__ = ["Channel", "Member", "wall_time"]


class Channel(Protocol):
    """What the relay needs of a member's control channel: somewhere to post events."""

    def post(self, event: tuple[Any, ...]) -> None:
        """Queue an event for the channel's greenlet (never blocks)."""


def wall_time(stamp: float) -> str:
    """UTC ISO 8601 to the second, for accounting lines."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class Member:
    """One membership: its keys, its limits, what it did."""

    __slots__ = (
        "active",
        "bucket",
        "bytes_in",
        "bytes_out",
        "can_receive",
        "can_send",
        "channel",
        "client",
        "client_ip",
        "datagrams_in",
        "datagrams_out",
        "drops",
        "endpoint",
        "group_out_base",
        "idle_limit",
        "joined",
        "joined_wall",
        "key",
        "last_drop",
        "last_seen",
        "member_id",
        "over_since",
        "policy",
        "seq_out",
        "ttl",
        "user",
        "window",
    )

    def __init__(
        self,
        member_id: int,
        channel: Channel,
        user: str | None,
        client_ip: str,
        client_port: int,
        policy: McastPolicy,
        idle_limit: float,
        ttl: int,
        now: float,
    ) -> None:
        self.member_id = member_id
        self.key = nacl.utils.random(KEY_SIZE)
        self.channel = channel
        self.user = user
        self.client_ip = client_ip
        self.client = str(Address(client_ip, client_port))
        self.policy = policy
        self.can_send = policy.can_send
        self.can_receive = policy.can_receive
        self.idle_limit = idle_limit
        self.ttl = ttl
        self.joined = now
        self.joined_wall = time.time()
        self.last_seen = now
        self.endpoint: tuple[Any, ...] | None = None
        self.window = ReplayWindow()
        self.seq_out = 0
        self.datagrams_in = 0
        self.bytes_in = 0
        self.datagrams_out = 0
        self.bytes_out = 0
        self.group_out_base = (0, 0)
        self.drops = 0
        self.bucket = (
            TokenBucket(policy.member_rate, policy.member_burst or policy.member_rate, now)
            if policy.member_rate
            else None
        )
        self.over_since = 0.0  # start of the current streak of rate drops
        self.last_drop = -1e9
        self.active = True

    @property
    def permission(self) -> str:
        """ "both", "receive" or "send" (a member with neither does not exist)."""
        return self.policy.permission

    def snapshot(self, now: float, group_out: tuple[int, int] | None) -> dict[str, Any]:
        """JSON-able state for the stats API (*group_out*: the relay's multicast-mode totals)."""
        datagrams_out, bytes_out = self.datagrams_out, self.bytes_out
        if group_out is not None and self.can_receive:
            datagrams_out = group_out[0] - self.group_out_base[0]
            bytes_out = group_out[1] - self.group_out_base[1]
        return {
            "member_id": self.member_id,
            "user": self.user,
            "client": self.client,
            "permission": self.permission,
            "endpoint": None
            if self.endpoint is None
            else str(Address.from_ip(self.endpoint[0], self.endpoint[1])),
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "datagrams_out": datagrams_out,
            "bytes_out": bytes_out,
            "drops": self.drops,
            "age": round(now - self.joined, 3),
            "idle": round(now - self.last_seen, 3),
        }
