"""Multicast policy: who may send to and receive from which group, and within what limits.

PURE (no sockets, no gevent, no clock): the config loader parses ``[[mcast.policy]]`` tables with
it, and the relay passes the time in. The access rules (``[[rules]]``, command "join") decide
first whether a JOIN is allowed at all (REP 02); the first policy whose criteria all match the
JOIN then decides its permission (REP 00 / B0 / B1 / B2) and limits. A JOIN no policy matches
gets ``[mcast] default_permission`` and no limits.

Criteria (an omitted one matches anything): ``group`` (CIDRs the public group is in), ``ports``,
``users`` (authenticated names; an unauthenticated session never matches), ``from`` (client
CIDRs). Limits: ``max_members`` (members of the relay, REP B3 beyond), ``max_time`` (seconds in
the group, B4 after), ``idle_timeout`` (seconds without a datagram from the member, B4),
``member_rate``/``member_burst`` (a token bucket on what the member sends, in datagrams), with
``over_limit_action`` "drop" (drop the excess) or "expel" (drop, and B5 once the member has been
over the limit for ``expel_after`` seconds), ``relay_rate`` (datagrams per second through the
relay, excess dropped), ``relay_bandwidth_limit`` (octets per second through the relay, beyond
it the relay is terminated with B7) and ``ttl`` (a ceiling on the TTL / hop limit of what the
member sends out). A relay applies the strictest relay-wide limit among its members' policies.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from socksx.server.rules import _network, _port_range, _user

__all__ = [
    "PERMISSIONS",
    "POLICY_KEYS",
    "McastPolicy",
    "TokenBucket",
    "choose_policy",
    "parse_policies",
    "policy_to_table",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: permission -> (may send, may receive)
PERMISSIONS: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "receive": (False, True),
    "send": (True, False),
    "both": (True, True),
}
_ACTIONS = ("drop", "expel")
MAX_TTL = 255

#: Every key a ``[[mcast.policy]]`` table may hold (documented in man/socksx.toml.5).
POLICY_KEYS: tuple[str, ...] = (
    "id",
    "group",
    "ports",
    "users",
    "from",
    "permission",
    "max_members",
    "max_time",
    "idle_timeout",
    "member_rate",
    "member_burst",
    "relay_rate",
    "over_limit_action",
    "expel_after",
    "relay_bandwidth_limit",
    "ttl",
)


@dataclass(frozen=True, slots=True)
class McastPolicy:
    """One validated policy; zero limits mean "no limit" (``idle_timeout`` 0: the [mcast] one)."""

    id: str
    permission: str = "both"
    groups: tuple[IPNetwork, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    users: frozenset[str] = frozenset()
    sources: tuple[IPNetwork, ...] = ()
    max_members: int = 0
    max_time: float = 0.0
    idle_timeout: float = 0.0
    member_rate: float = 0.0
    member_burst: int = 0
    relay_rate: float = 0.0
    over_limit_action: str = "drop"
    expel_after: float = 10.0
    relay_bandwidth_limit: float = 0.0
    ttl: int = MAX_TTL

    @property
    def can_send(self) -> bool:
        """The relay forwards what such a member sends."""
        return PERMISSIONS[self.permission][0]

    @property
    def can_receive(self) -> bool:
        """The relay delivers the group's traffic to such a member."""
        return PERMISSIONS[self.permission][1]

    def matches(self, group: str, port: int, user: str | None, client_ip: str) -> bool:
        """Do all of this policy's criteria hold for a JOIN of *group*:*port*?"""
        if self.groups and not _in(group, self.groups):
            return False
        if self.ports and not any(low <= port <= high for low, high in self.ports):
            return False
        if self.users and (user is None or user not in self.users):
            return False
        return not self.sources or _in(client_ip, self.sources)


def _in(ip: str, networks: Iterable[IPNetwork]) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def choose_policy(
    policies: Iterable[McastPolicy],
    default_permission: str,
    group: str,
    port: int,
    user: str | None,
    client_ip: str,
) -> McastPolicy:
    """The first policy matching the JOIN, else a limitless one with *default_permission*."""
    for policy in policies:
        if policy.matches(group, port, user, client_ip):
            return policy
    return McastPolicy(id="default", permission=default_permission)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; the caller passes monotonic time in."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend *amount* tokens if there are that many (after refilling up to *now*)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


# --------------------------------------------------------------------------- parsing from TOML


def _number(value: Any, minimum: float = 0.0) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        msg = f"must be a finite number, not {value!r}"
        raise ValueError(msg)
    if value < minimum:
        msg = f"{value!r} is below the minimum {minimum:g}"
        raise ValueError(msg)
    return float(value)


def _count(value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"must be an integer, not {value!r}"
        raise ValueError(msg)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        msg = f"{value} is outside {bound}"
        raise ValueError(msg)
    return value


def _choice(options: Iterable[str]) -> Any:
    allowed = tuple(options)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            msg = f"{value!r} is not one of {', '.join(repr(o) for o in allowed)}"
            raise ValueError(msg)
        return value

    return check


def _group_network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        msg = f'{value!r} is not a network (a string such as "239.0.0.0/8")'
        raise ValueError(msg)
    net = _network(value)
    if not net.is_multicast:
        msg = f"{value!r} is not a multicast network (224.0.0.0/4 or ff00::/8)"
        raise ValueError(msg)
    return net


def _source(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        msg = f'{value!r} is not a network (a string such as "10.0.0.0/8")'
        raise ValueError(msg)
    return _network(value)


_LISTS = {"group": _group_network, "ports": _port_range, "users": _user, "from": _source}
_SCALARS = {
    "permission": _choice(PERMISSIONS),
    "max_members": _count,
    "max_time": _number,
    "idle_timeout": _number,
    "member_rate": _number,
    "member_burst": _count,
    "relay_rate": _number,
    "over_limit_action": _choice(_ACTIONS),
    "expel_after": _number,
    "relay_bandwidth_limit": _number,
    "ttl": lambda v: _count(v, 0, MAX_TTL),
}


def parse_policies(tables: Any) -> tuple[tuple[McastPolicy, ...], list[tuple[str, str]]]:
    """Validate the ``[[mcast.policy]]`` array: (policies, [(key suffix, problem)]).

    Suffixes are ``[N]``, ``[N].key`` or ``[N].key[M]`` (0-based), to be appended to
    ``mcast.policy``; every problem is collected. A policy without ``id`` is ``policy#N``
    (1-based); ``permission`` is required.
    """
    if not isinstance(tables, list):
        return (), [("", "must be an array of tables ([[mcast.policy]])")]
    policies: list[McastPolicy] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"[{index}]"
        if not isinstance(table, dict):
            problems.append((where, "must be a table ([[mcast.policy]])"))
            continue
        mine: list[tuple[str, str]] = []
        policy = _parse_policy(table, index, where, mine)
        if policy.id in seen:
            mine.append((f"{where}.id", f"duplicate id {policy.id!r} (also [{seen[policy.id]}])"))
        else:
            seen[policy.id] = index
        problems += mine
        if not mine:
            policies.append(policy)
    return tuple(policies), problems


def _parse_policy(
    table: dict[str, Any], index: int, where: str, problems: list[tuple[str, str]]
) -> McastPolicy:
    for key in table:
        if key not in POLICY_KEYS:
            known = ", ".join(POLICY_KEYS)
            problems.append((f"{where}.{key}", f"unknown key (policies take {known})"))
    policy_id = table.get("id", f"policy#{index + 1}")
    if not isinstance(policy_id, str) or not policy_id.strip():
        problems.append((f"{where}.id", f"{policy_id!r} is not a non-empty string"))
        policy_id = f"policy#{index + 1}"
    if "permission" not in table:
        problems.append((f"{where}.permission", 'missing: "none", "receive", "send" or "both"'))
    lists: dict[str, list[Any]] = {}
    for key, check in _LISTS.items():
        raw = table.get(key)
        lists[key] = []
        if raw is None:
            continue
        if not isinstance(raw, list) or not raw:
            problems.append((f"{where}.{key}", "must be a non-empty list (omit it to match any)"))
            continue
        for item_index, item in enumerate(raw):
            try:
                lists[key].append(check(item))
            except ValueError as exc:
                problems.append((f"{where}.{key}[{item_index}]", str(exc)))
    scalars: dict[str, Any] = {}
    for key, check in _SCALARS.items():
        if key in table:
            try:
                scalars[key] = check(table[key])
            except ValueError as exc:
                problems.append((f"{where}.{key}", str(exc)))
    return McastPolicy(
        id=str(policy_id),
        groups=tuple(lists["group"]),
        ports=tuple(lists["ports"]),
        users=frozenset(lists["users"]),
        sources=tuple(lists["from"]),
        **scalars,
    )


def policy_to_table(policy: McastPolicy) -> dict[str, Any]:
    """The TOML table that parses back to *policy* (defaults and match-anything omitted)."""
    table: dict[str, Any] = {"id": policy.id, "permission": policy.permission}
    if policy.groups:
        table["group"] = [str(n) for n in policy.groups]
    if policy.ports:
        table["ports"] = [low if low == high else f"{low}-{high}" for low, high in policy.ports]
    if policy.users:
        table["users"] = sorted(policy.users)
    if policy.sources:
        table["from"] = [str(n) for n in policy.sources]
    default = McastPolicy(id=policy.id)
    for key in _SCALARS:
        value = getattr(policy, key)
        if key != "permission" and value != getattr(default, key):
            table[key] = value
    return table
