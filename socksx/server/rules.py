"""Access rules: an ordered allow/deny list judged per request (and per UDP datagram).

PURE: no sockets, no gevent, no DNS. The server resolves names itself and passes the addresses in,
so a decision is a function of its arguments and is tested like the codec.

Each ``[[rules]]`` table in the config becomes a ``Rule``; a rule matches a request when every
criterion it names matches (a criterion it omits matches anything):

* ``from``     -- client source address in one of these CIDRs;
* ``to``       -- destination in one of these CIDRs, or a name matching one of these globs;
* ``ports``    -- destination port in one of these ranges;
* ``commands`` -- the request's command name (``COMMANDS``);
* ``users``    -- the authenticated user name (an unauthenticated session never matches).

How a destination is judged (first match wins within each phase):

* host is an IP literal: one phase, over the rules that can judge an address (those with a CIDR
  in ``to``, or no ``to``); a rule whose ``to`` holds only globs never matches an IP literal.
* host is a name: a NAME phase over the rules that can judge a name (a glob in ``to``, or no
  ``to``; CIDR-only rules are skipped), then one ADDRESS phase per resolved address over the
  rules that can judge an address (glob-only rules are skipped).

A phase ends in allow, deny or no match. The request is denied if any phase hit a deny rule
(reporting the first such rule); otherwise it is allowed if some phase hit an allow rule
(reporting the first); otherwise it is denied by ``default-deny``. So ``allow to *.corp.example``
works under the default deny, while a name resolving to a denied network is still denied: no
bypass by DNS. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are judged as their IPv4 form, for
clients and destinations alike.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from socksx.errors import ConfigProblem
from socksx.protocol.constants import Command

__all__ = [
    "COMMANDS",
    "COMMAND_NAMES",
    "DEFAULT_DENY",
    "RULE_KEYS",
    "Decision",
    "Rule",
    "RuleSet",
    "parse_rules",
    "rule_to_table",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The command names rules use, one per request type a session can carry.
COMMAND_NAMES: dict[Command, str] = {
    Command.CONNECT: "connect",
    Command.BIND: "bind",
    Command.UDP_ASSOCIATE: "udp",
    Command.JOIN_MCAST_GROUP: "join",
    Command.LEAVE_MCAST_GROUP: "leave",
    Command.SETUP_UDP_TUNNEL: "tunnel",
    Command.MULTI_BIND: "multibind",
    Command.ACCEPT: "accept",
}
COMMANDS: tuple[str, ...] = tuple(COMMAND_NAMES.values())

#: Every key a ``[[rules]]`` table may hold (documented in man/socksx.toml.5).
RULE_KEYS: tuple[str, ...] = ("id", "action", "from", "to", "ports", "commands", "users")

_ACTIONS = ("allow", "deny")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# Characters a destination glob may hold: a host name's plus fnmatch's wildcards.
_GLOB_RE = re.compile(r"[a-z0-9_*?\[\]!.-]+")
# Text that was meant as an address/network (so the error should be about the CIDR, not a glob).
_ADDRESSLIKE_RE = re.compile(r"[0-9./]+|.*[:/].*")


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule; empty criteria match anything (``users`` empty: any user or none)."""

    id: str
    action: str
    sources: tuple[IPNetwork, ...] = ()
    dst_nets: tuple[IPNetwork, ...] = ()
    dst_globs: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    commands: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request: ``rule_id`` names the rule that decided (for the log line)."""

    allowed: bool
    rule_id: str


DEFAULT_DENY = Decision(allowed=False, rule_id="default-deny")


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> tuple[int, int] | None:
    """(version, integer) of an IP literal, mapped IPv6 folded to IPv4; None for a name.

    Cached because the same few client and peer addresses recur on every datagram of a UDP
    association, and parsing is the costliest step of a decision.
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, int(addr)


def _unmapped(net: IPNetwork) -> IPNetwork:
    """Write ``::ffff:a.b.c.d/n`` (n >= 96) as the IPv4 network it denotes, so it can match."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((base, net.prefixlen - 96))
    return net


def _masks(nets: Iterable[IPNetwork]) -> tuple[tuple[int, int, int], ...]:
    """(version, network, netmask) integers: matching is then one AND and one compare."""
    return tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)


def _in_any(addr: tuple[int, int], masks: tuple[tuple[int, int, int], ...]) -> bool:
    version, value = addr
    for net_version, network, netmask in masks:
        if net_version == version and value & netmask == network:
            return True
    return False


class _Compiled:
    """A Rule prepared for matching: integer masks, one regex for all its globs."""

    __slots__ = (
        "any_dst",
        "commands",
        "decision",
        "dst_masks",
        "glob_re",
        "ports",
        "sources",
        "users",
    )

    def __init__(self, rule: Rule) -> None:
        self.decision = Decision(rule.action == "allow", rule.id)
        self.sources = _masks(rule.sources)
        self.dst_masks = _masks(rule.dst_nets)
        self.any_dst = not rule.dst_nets and not rule.dst_globs
        self.glob_re = (
            re.compile("|".join(fnmatch.translate(g) for g in rule.dst_globs))
            if rule.dst_globs
            else None
        )
        self.ports = rule.ports
        self.commands = rule.commands
        self.users = rule.users

    def matches_request(
        self, client: tuple[int, int], user: str | None, command: str, port: int
    ) -> bool:
        """Everything except the destination host: shared by all phases of one decision."""
        if self.commands and command not in self.commands:
            return False
        if self.users and (user is None or user not in self.users):
            return False
        if self.ports:
            for low, high in self.ports:
                if low <= port <= high:
                    break
            else:
                return False
        return not self.sources or _in_any(client, self.sources)


class RuleSet:
    """An ordered rule list, precompiled so ``decide`` is cheap enough to run per datagram."""

    __slots__ = ("_address_rules", "_name_rules", "rules")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        compiled = [_Compiled(r) for r in self.rules]
        # Which rules take part in which phase is fixed by their `to`, so split once here.
        self._address_rules = tuple(c for c in compiled if c.any_dst or c.dst_masks)
        self._name_rules = tuple(c for c in compiled if c.any_dst or c.glob_re is not None)

    def decide(
        self,
        client_ip: str,
        user: str | None,
        command: str,
        host: str,
        port: int,
        resolved: Sequence[str] = (),
    ) -> Decision:
        """Judge one request; see the module docstring for the phases.

        ``user`` is None for an unauthenticated session (a SOCKS4 USERID is never a user).
        ``resolved`` are the addresses a domain ``host`` resolved to; without them only the
        name phase judges the request.

        Raises:
            ValueError: ``client_ip`` or an entry of ``resolved`` is not an IP address.
        """
        client = _address(client_ip)
        if client is None:
            msg = f"client address {client_ip!r} is not an IP address"
            raise ValueError(msg)
        destination = _address(host)
        if destination is not None:
            return self._address_phase(client, user, command, port, destination) or DEFAULT_DENY

        name = host.lower().rstrip(".")
        allow: Decision | None = None
        for rule in self._name_rules:
            if rule.matches_request(client, user, command, port) and (
                rule.any_dst or (rule.glob_re is not None and rule.glob_re.fullmatch(name))
            ):
                if not rule.decision.allowed:
                    return rule.decision
                allow = rule.decision
                break
        for text in resolved:
            address = _address(text)
            if address is None:
                msg = f"resolved address {text!r} is not an IP address"
                raise ValueError(msg)
            verdict = self._address_phase(client, user, command, port, address)
            if verdict is not None:
                if not verdict.allowed:
                    return verdict
                if allow is None:
                    allow = verdict
        return allow or DEFAULT_DENY

    def _address_phase(
        self,
        client: tuple[int, int],
        user: str | None,
        command: str,
        port: int,
        address: tuple[int, int],
    ) -> Decision | None:
        for rule in self._address_rules:
            if rule.matches_request(client, user, command, port) and (
                rule.any_dst or _in_any(address, rule.dst_masks)
            ):
                return rule.decision
        return None


# --------------------------------------------------------------------------- parsing from TOML


def _network(text: str) -> IPNetwork:
    """A CIDR (or a bare address, meaning that host only), host bits must be clear.

    Raises:
        ValueError: not an address/network.
    """
    try:
        return _unmapped(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        msg = f"{text!r} is not a network (CIDR such as 10.0.0.0/8 or ::1/128): {exc}"
        raise ValueError(msg) from None


def _destination(text: str) -> IPNetwork | str:
    """A CIDR, or a lower-cased domain glob without trailing dot.

    Raises:
        ValueError: neither.
    """
    if _ADDRESSLIKE_RE.fullmatch(text):
        return _network(text)
    glob = text.lower().rstrip(".")
    if not glob or not _GLOB_RE.fullmatch(glob):
        msg = (
            f"{text!r} is neither a network (CIDR) nor a domain glob "
            "(letters, digits, '-', '.', '*', '?')"
        )
        raise ValueError(msg)
    return glob


def _port_range(value: Any) -> tuple[int, int]:
    """443, "443" or "1000-2000" as an inclusive range.

    Raises:
        ValueError: not a port or a range low-high with low <= high within 0..65535.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d{1,5}(-\d{1,5})?", value.strip()):
        low_text, _, high_text = value.strip().partition("-")
        low, high = int(low_text), int(high_text or low_text)
    else:
        msg = f'{value!r} is not a port or a range such as "1000-2000"'
        raise ValueError(msg)
    if not 0 <= low <= 65535 or not 0 <= high <= 65535:
        msg = f"{value!r}: ports are 0..65535"
        raise ValueError(msg)
    if low > high:
        msg = f"{value!r}: range runs backwards"
        raise ValueError(msg)
    return low, high


def _command(value: Any) -> str:
    if value not in COMMANDS:
        msg = f"{value!r} is not a command (one of {', '.join(COMMANDS)})"
        raise ValueError(msg)
    return str(value)


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        msg = f"{value!r} is not a user name (a non-empty string)"
        raise ValueError(msg)
    return value


def _source(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        msg = f'{value!r} is not a network (a string such as "10.0.0.0/8")'
        raise ValueError(msg)
    return _network(value)


def _to(value: Any) -> IPNetwork | str:
    if not isinstance(value, str):
        msg = f"{value!r} is not a network or domain glob (a string)"
        raise ValueError(msg)
    return _destination(value)


_LIST_CHECKS = {
    "from": _source,
    "to": _to,
    "ports": _port_range,
    "commands": _command,
    "users": _user,
}


def parse_rules(tables: Any, file: str) -> tuple[tuple[Rule, ...], list[ConfigProblem]]:
    """Validate the ``[[rules]]`` array, collecting every problem rather than stopping.

    Problem keys are ``rules[N]`` / ``rules[N].key`` / ``rules[N].key[M]`` with 0-based N and M;
    a rule without ``id`` is named ``rule#N`` with 1-based N (its position as people count).
    """
    problems: list[ConfigProblem] = []
    if not isinstance(tables, list):
        problems.append(ConfigProblem(file, "rules", "must be an array of tables ([[rules]])"))
        return (), problems
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"rules[{index}]"
        if not isinstance(table, dict):
            problems.append(ConfigProblem(file, where, "must be a table ([[rules]])"))
            continue
        rule_problems: list[ConfigProblem] = []
        rule = _parse_rule(table, index, where, file, rule_problems)
        if rule.id in seen:
            rule_problems.append(
                ConfigProblem(
                    file, f"{where}.id", f"duplicate id {rule.id!r} (also rules[{seen[rule.id]}])"
                )
            )
        else:
            seen[rule.id] = index
        problems.extend(rule_problems)
        if not rule_problems:
            rules.append(rule)
    return tuple(rules), problems


def _parse_rule(
    table: dict[str, Any], index: int, where: str, file: str, problems: list[ConfigProblem]
) -> Rule:
    for key in table:
        if key not in RULE_KEYS:
            problems.append(
                ConfigProblem(
                    file, f"{where}.{key}", f"unknown key (rules take {', '.join(RULE_KEYS)})"
                )
            )

    action = table.get("action")
    if action is None:
        problems.append(ConfigProblem(file, f"{where}.action", 'missing: "allow" or "deny"'))
    elif action not in _ACTIONS:
        problems.append(
            ConfigProblem(file, f"{where}.action", f'{action!r} is not "allow" or "deny"')
        )

    rule_id = table.get("id", f"rule#{index + 1}")
    if not isinstance(rule_id, str) or not rule_id.strip():
        problems.append(
            ConfigProblem(file, f"{where}.id", f"{rule_id!r} is not a non-empty string")
        )
        rule_id = f"rule#{index + 1}"
    elif rule_id == DEFAULT_DENY.rule_id:
        problems.append(
            ConfigProblem(file, f"{where}.id", f"{rule_id!r} is reserved for the default")
        )

    lists: dict[str, list[Any]] = {}
    for key, check in _LIST_CHECKS.items():
        if key not in table:
            lists[key] = []
            continue
        raw = table[key]
        if not isinstance(raw, list):
            problems.append(
                ConfigProblem(file, f"{where}.{key}", "must be a list (omit the key to match any)")
            )
            lists[key] = []
            continue
        if not raw:
            problems.append(
                ConfigProblem(
                    file, f"{where}.{key}", "empty list matches nothing; omit the key to match any"
                )
            )
        values = []
        for item_index, item in enumerate(raw):
            try:
                values.append(check(item))
            except ValueError as exc:
                problems.append(ConfigProblem(file, f"{where}.{key}[{item_index}]", str(exc)))
        lists[key] = values

    return Rule(
        id=str(rule_id),
        action=str(action),
        sources=tuple(lists["from"]),
        dst_nets=tuple(v for v in lists["to"] if not isinstance(v, str)),
        dst_globs=tuple(v for v in lists["to"] if isinstance(v, str)),
        ports=tuple(lists["ports"]),
        commands=frozenset(lists["commands"]),
        users=frozenset(lists["users"]),
    )


def rule_to_table(rule: Rule) -> dict[str, Any]:
    """The TOML table that parses back to ``rule`` (criteria that match anything are omitted)."""
    table: dict[str, Any] = {"id": rule.id, "action": rule.action}
    if rule.sources:
        table["from"] = [str(n) for n in rule.sources]
    if rule.dst_nets or rule.dst_globs:
        table["to"] = [str(n) for n in rule.dst_nets] + list(rule.dst_globs)
    if rule.ports:
        table["ports"] = [low if low == high else f"{low}-{high}" for low, high in rule.ports]
    if rule.commands:
        table["commands"] = [c for c in COMMANDS if c in rule.commands]
    if rule.users:
        table["users"] = sorted(rule.users)
    return table
