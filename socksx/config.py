"""The configuration file: TOML (tomllib) validated into frozen dataclasses.

The schema is declarative (supervisor's idea): each section is a ``Section`` mapping key names to
a ``Key`` (TOML default, a checker that turns the TOML value into the Python value or raises
``ValueError``, a dumper for the way back, and one line of meaning). Loading walks every key of
every section and collects every problem before failing, so one ``socksx config check`` run shows
all of them. Adding a section (``[tls]``...) is a frozen dataclass, one ``Section`` in
``SECTIONS`` and one field on ``Config``.

The ``[[rules]]`` array is parsed by ``socksx.server.rules.parse_rules`` (the rule engine owns its
own syntax). Problem keys are dotted with 0-based indexes: ``timeouts.idle``, ``listen[1]``,
``rules[2].to[0]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from socksx.errors import ConfigError, ConfigProblem
from socksx.server.rules import RULE_KEYS, Rule, parse_rules, rule_to_table

__all__ = [
    "CROSS_CHECKS",
    "DEFAULT_TOML",
    "EMBEDDED_SOURCE",
    "KNOWN_KEYS",
    "SECTIONS",
    "TOP_LEVEL",
    "AdminConfig",
    "Config",
    "ItemProblems",
    "Key",
    "Limits",
    "LogConfig",
    "McastConfig",
    "MultiBindConfig",
    "Section",
    "Timeouts",
    "TunnelConfig",
    "TunnelPeer",
    "format_host_port",
    "load",
    "loads",
    "parse_host_port",
    "to_dict",
    "to_toml",
    "with_overrides",
]

EMBEDDED_SOURCE = "<embedded default>"

#: The config used when no file is given: loopback clients only, no authentication; anything
#: else falls to the default deny.
DEFAULT_TOML = """\
# socksx embedded default: a local proxy for this machine's own programs.
listen = ["127.0.0.1:1080"]
auth = "none"

[[rules]]
id = "loopback-clients"
action = "allow"
from = ["127.0.0.0/8", "::1/128"]
"""


# --------------------------------------------------------------------------- validators
# Each takes the TOML value and returns the Python value, or raises ValueError with a message
# naming the value. Factories (`_choice`, `_integer`) build them from parameters.


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _enabled_or_auto(value: Any) -> bool | str:
    """true, false, or "auto" (resolved at load: on with one worker, off with several)."""
    if value == "auto" and isinstance(value, str):
        return value
    return _boolean(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"must be true or false, not {_type_name(value)} {value!r}"
        raise ValueError(msg)
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        msg = f"must be a string, not {_type_name(value)} {value!r}"
        raise ValueError(msg)
    return value


def _optional_string(value: Any) -> str | None:
    """``""`` means "not set"."""
    return _string(value) or None


def _optional_ip(value: Any) -> str | None:
    """An IP literal, normalised (``""`` means "not set")."""
    text = _string(value)
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        msg = f"{text!r} is not an IP address"
        raise ValueError(msg) from None


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options or not isinstance(value, str):
            msg = f"{value!r} is not one of {', '.join(repr(o) for o in options)}"
            raise ValueError(msg)
        return value

    return check


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            msg = f"must be an integer, not {_type_name(value)} {value!r}"
            raise ValueError(msg)
        if value < minimum:
            msg = f"{value} is below the minimum {minimum}"
            raise ValueError(msg)
        return value

    return check


def _integer_between(minimum: int, maximum: int) -> Callable[[Any], int]:
    at_least = _integer(minimum)

    def check(value: Any) -> int:
        number = at_least(value)
        if number > maximum:
            msg = f"{number} is above the maximum {maximum}"
            raise ValueError(msg)
        return number

    return check


def _seconds(value: Any) -> float:
    """A positive, finite number of seconds."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        msg = f"must be a number of seconds, not {_type_name(value)} {value!r}"
        raise ValueError(msg)
    if not math.isfinite(value) or value <= 0:
        msg = f"{value!r} seconds: must be a finite number > 0"
        raise ValueError(msg)
    return float(value)


def _workers(value: Any) -> int | None:
    """A process count, or ``"auto"`` (None: one per core, decided by the server)."""
    if value == "auto" and isinstance(value, str):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        msg = f'{value!r} is not an integer >= 1 or "auto"'
        raise ValueError(msg)
    return value


def parse_host_port(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` to (normalised IP, port); port 0 means "any free port".

    Listen addresses must be IP literals: the server never resolves a name to decide where to
    listen (a name could change meaning between reloads).

    Raises:
        ValueError: with a readable message.
    """
    match = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]*):(\d{1,5})", text)
    if match is None:
        msg = f"{text!r} is not HOST:PORT (IPv6 as [addr]:port)"
        raise ValueError(msg)
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        msg = f"{text!r}: {host!r} is not an IP address"
        raise ValueError(msg) from None
    if match.group(1) is not None and address.version != 6:
        msg = f"{text!r}: brackets are for IPv6 addresses"
        raise ValueError(msg)
    if port > 65535:
        msg = f"{text!r}: port must be 0..65535"
        raise ValueError(msg)
    return str(address), port


def format_host_port(address: tuple[str, int]) -> str:
    """The inverse of ``parse_host_port``: IPv6 hosts get brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ItemProblems(ValueError):
    """Problems with single items of a list value: (key suffix such as ``[1]``, message) pairs."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        super().__init__("; ".join(message for _, message in items))


def _listen(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, list) and not value:
        msg = "must name at least one address"
        raise ValueError(msg)
    return _addresses(value)


def _addresses(value: Any) -> tuple[tuple[str, int], ...]:
    """A list of HOST:PORT strings (possibly empty)."""
    if not isinstance(value, list):
        msg = f'must be a list such as ["127.0.0.1:1080"], not {_type_name(value)} {value!r}'
        raise ValueError(msg)
    addresses, problems = [], []
    for index, item in enumerate(value):
        try:
            addresses.append(parse_host_port(_string(item)))
        except ValueError as exc:
            problems.append((f"[{index}]", str(exc)))
    if problems:
        raise ItemProblems(problems)
    return tuple(addresses)


def _admin_listen(value: Any) -> str:
    """HOST:PORT (normalised) or the absolute path of a UNIX socket."""
    text = _string(value)
    if text.startswith("/"):
        return os.path.normpath(text)
    if "/" in text:
        msg = f"{text!r}: a UNIX socket path must be absolute"
        raise ValueError(msg)
    if ":" not in text:
        msg = f"{text!r} is neither HOST:PORT nor an absolute UNIX socket path"
        raise ValueError(msg)
    return format_host_port(parse_host_port(text))


def _syslog_address(value: Any) -> str:
    """A Unix socket path, or HOST:PORT of a UDP syslog receiver."""
    text = _string(value)
    if not text:
        msg = 'must not be empty (the default is "/dev/log")'
        raise ValueError(msg)
    if not text.startswith("/"):
        parse_host_port(text)
    return text


_PEER_KEYS = ("address", "ca", "name", "fingerprint")


def _peer_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of a peer gateway: an IP literal (IPv6 in brackets) or a DNS name."""
    match = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if match is None or not 0 < int(match.group(2) or match.group(4)) <= 65535:
        msg = f"{text!r} is not HOST:PORT (IPv6 as [addr]:port, port 1..65535)"
        raise ValueError(msg)
    if match.group(1) is not None:
        return parse_host_port(text)
    host, port = match.group(3), int(match.group(4))
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    from socksx.protocol.address import name_problem

    problem = name_problem(host)
    if problem or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        msg = f"{text!r}: {problem or 'a host name has only letters, digits, dots and dashes'}"
        raise ValueError(msg)
    return host.lower().rstrip("."), port


def _tunnel_peers(value: Any) -> tuple[TunnelPeer, ...]:
    """The ``[[tunnel.peer]]`` tables (``ca`` stays relative here: see ``_peer_paths``)."""
    from socksx.protocol.tunnel import parse_fingerprint

    if not isinstance(value, list):
        msg = f"must be a list of [[tunnel.peer]] tables, not {_type_name(value)} {value!r}"
        raise ValueError(msg)
    peers, problems = [], []
    for index, table in enumerate(value):
        where = f"[{index}]"
        if not isinstance(table, dict):
            problems.append((where, f"must be a table, not {_type_name(table)}"))
            continue
        problems += [(f"{where}.{k}", "unknown key") for k in table if k not in _PEER_KEYS]
        fields: dict[str, Any] = {}
        for name in _PEER_KEYS:
            try:
                text = _string(table.get(name, ""))
                if name == "address":
                    if not text:
                        msg = "required"
                        raise ValueError(msg)
                    fields[name] = _peer_address(text)
                elif name == "fingerprint" and text:
                    fields[name] = "sha256:" + parse_fingerprint(text).hex()
                else:
                    fields[name] = text or None
            except ValueError as exc:
                problems.append((f"{where}.{name}", str(exc)))
        if "address" in fields and "fingerprint" in fields:
            peers.append(TunnelPeer(**fields))
    if problems:
        raise ItemProblems(problems)
    return tuple(peers)


def _peer_paths(peers: tuple[TunnelPeer, ...], base_dir: str) -> tuple[TunnelPeer, ...]:
    """Each peer's ``ca`` taken relative to the config file's directory, and required to exist."""
    out, problems = [], []
    for index, peer in enumerate(peers):
        if peer.ca:
            path = os.path.normpath(os.path.join(base_dir, peer.ca))
            if not os.path.isfile(path):
                problems.append((f"[{index}].ca", f"file not found: {path}"))
            peer = dataclasses.replace(peer, ca=path)
        out.append(peer)
    if problems:
        raise ItemProblems(problems)
    return tuple(out)


def _optional_host_port(value: Any) -> tuple[str, int] | None:
    """``""`` (not set) or an ``IP:PORT``."""
    text = _string(value)
    return parse_host_port(text) if text else None


def _ttl(value: Any) -> int:
    """A multicast TTL / hop limit, 0..255 (0: the datagrams never leave the host)."""
    number = _integer(0)(value)
    if number > 255:  # the IP TTL field is one octet
        msg = f"{number} is above the maximum 255"
        raise ValueError(msg)
    return number


def _seconds_or_zero(value: Any) -> float:
    """A finite number of seconds >= 0 (0: never)."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _seconds(value)


def _tls_for_join(value: Any) -> bool | str:
    """true, false, or "auto" (required on listeners that are not loopback)."""
    if isinstance(value, bool) or value == "auto":
        return value  # type: ignore[no-any-return]
    msg = f'{value!r} is not true, false or "auto"'
    raise ValueError(msg)


def _networks(multicast: bool) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            msg = f'must be a list such as ["239.192.76.0/24"], not {_type_name(value)} {value!r}'
            raise ValueError(msg)
        nets, problems = [], []
        for index, item in enumerate(value):
            try:
                net = ipaddress.ip_network(_string(item), strict=True)
                if multicast and not net.is_multicast:
                    msg = f"{item!r} is not a multicast network"
                    raise ValueError(msg)
                nets.append(net)
            except ValueError as exc:
                problems.append((f"[{index}]", str(exc)))
        if problems:
            raise ItemProblems(problems)
        return tuple(nets)

    return check


def _mcast_policies(value: Any) -> tuple[Any, ...]:
    from socksx.server.mcast.policy import parse_policies

    policies, problems = parse_policies(value)
    if problems:
        raise ItemProblems(problems)
    return policies


# --------------------------------------------------------------------------- dumpers


def _same(value: Any) -> Any:
    return value


def _unset_as_empty(value: Any) -> Any:
    return "" if value is None else value


def _dump_listen(value: tuple[tuple[str, int], ...]) -> list[str]:
    return [format_host_port(a) for a in value]


def _dump_workers(value: int | None) -> int | str:
    return "auto" if value is None else value


def _dump_optional_host_port(value: tuple[str, int] | None) -> str:
    return "" if value is None else format_host_port(value)


def _dump_peers(peers: tuple[TunnelPeer, ...]) -> list[dict[str, str]]:
    return [
        {
            "address": format_host_port(p.address),
            "ca": p.ca or "",
            "name": p.name or "",
            "fingerprint": p.fingerprint or "",
        }
        for p in peers
    ]


def _dump_networks(value: tuple[Any, ...]) -> list[str]:
    return [str(n) for n in value]


def _dump_policies(value: tuple[Any, ...]) -> list[dict[str, Any]]:
    from socksx.server.mcast.policy import policy_to_table

    return [policy_to_table(p) for p in value]


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class Key:
    """One config key: its TOML default, how to check it, how to write it back, what it means."""

    default: Any
    check: Callable[[Any], Any]
    doc: str
    dump: Callable[[Any], Any] = _same
    #: a file path: resolved against the config file's directory and required to exist
    path: bool = False
    #: after ``check``: (value, config directory) -> value, e.g. paths inside a list of tables;
    #: raises ItemProblems
    finish: Callable[[Any, str], Any] | None = None


@dataclass(frozen=True, slots=True)
class Section:
    """A TOML table (``name`` "" is the top level) and the dataclass its keys fill."""

    name: str
    cls: type | None
    keys: Mapping[str, Key]


@dataclass(frozen=True)
class Timeouts:
    """Seconds each phase may take (see man/socksx.toml.5)."""

    handshake: float = 10.0
    connect: float = 10.0
    idle: float = 3600.0
    bind: float = 120.0
    udp_idle: float = 300.0
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class Limits:
    """Resource ceilings; 0 means "unlimited" / "automatic" where the key says so."""

    max_sessions: int = 10000
    max_sessions_per_client: int = 1000
    auth_workers: int = 0
    auth_queue: int = 64
    auth_failures_per_minute: int = 10


@dataclass(frozen=True)
class TlsConfig:
    """SOCKS over TLS listeners: the full protocol inside TLS (docs/PROTOCOL.md "TLS")."""

    listen: tuple[tuple[str, int], ...] = ()
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None


@dataclass(frozen=True)
class AdminConfig:
    """The admin listener (stats API, metrics, socksx top): docs/ADMIN.md."""

    enabled: bool = True
    listen: str = "127.0.0.1:1081"
    allow_remote: bool = False
    token_file: str | None = None


@dataclass(frozen=True)
class MultiBindConfig:
    """MULTI_BIND and ACCEPT (docs/PROTOCOL.md "Multi-bind"): limits and timers."""

    enabled: bool = True
    max_channels_per_request: int = 16
    max_channels_per_user: int = 64
    max_channels_per_client: int = 64
    max_pending: int = 8
    accept_timeout: float = 30.0
    idle_timeout: float = 300.0


@dataclass(frozen=True)
class TunnelPeer:
    """A gateway B this server may open tunnels to (``[[tunnel.peer]]``)."""

    address: tuple[str, int]
    ca: str | None = None
    name: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class TunnelConfig:
    """SETUP_UDP_TUNNEL, both ends (docs/PROTOCOL.md "UDP tunnels")."""

    enabled: bool = True
    keepalive: float = 25.0
    dead_after: float = 90.0
    allow_any_peer: bool = False
    udp_bind: tuple[str, int] | None = None
    max_tunnels: int = 1000
    peer: tuple[TunnelPeer, ...] = ()


@dataclass(frozen=True)
class McastConfig:
    """JOIN/LEAVE_MCAST_GROUP and the multicast relay (docs/PROTOCOL.md "Multicast")."""

    enabled: bool = True
    mode: str = "unicast"
    encryption: str = "secretbox"
    public_interface: str | None = "127.0.0.1"
    intranet_interface: str | None = "127.0.0.1"
    intranet_pool: tuple[Any, ...] = (ipaddress.ip_network("239.192.76.0/24"),)
    ttl_public: int = 0
    ttl_intranet: int = 1
    rekey_interval: float = 3600.0
    max_groups_per_channel: int = 16
    require_tls_for_join: bool | str = "auto"
    deny_sources: tuple[Any, ...] = ()
    member_timeout: float = 90.0
    default_permission: str = "both"
    policy: tuple[Any, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    """Where and how session lines and errors are logged."""

    format: str = "text"
    target: str = "stderr"
    level: str = "info"
    syslog_address: str = "/dev/log"


TOP_LEVEL = Section(
    "",
    None,
    {
        "listen": Key(["127.0.0.1:1080"], _listen, "addresses to accept clients on", _dump_listen),
        "auth": Key("none", _choice("none", "userpass"), "client authentication method"),
        "users_file": Key(
            "", _optional_string, "users file for auth = userpass", _unset_as_empty, path=True
        ),
        "socks4": Key(True, _boolean, "accept SOCKS4/4a requests on no-auth listeners"),
        "outward_address": Key(
            "", _optional_ip, "source address of outgoing connections", _unset_as_empty
        ),
        "udp_public_address": Key(
            "", _optional_ip, "BND.ADDR advertised in UDP ASSOCIATE replies", _unset_as_empty
        ),
        "udp_inbound": Key(
            "replied", _choice("replied", "any"), "which peers may send UDP to a client"
        ),
        "user": Key("", _optional_string, "user to switch to after binding", _unset_as_empty),
        "group": Key("", _optional_string, "group to switch to after binding", _unset_as_empty),
        "workers": Key(1, _workers, "worker processes", _dump_workers),
        "zero_copy": Key(
            True, _boolean, "relay TCP with splice(2) on Linux (false: copy in user space)"
        ),
    },
)

_LEVELS = ("debug", "info", "warning", "error")

SECTIONS: tuple[Section, ...] = (
    Section(
        "tls",
        TlsConfig,
        {
            "listen": Key([], _addresses, "addresses for SOCKS over TLS", _dump_listen),
            "cert": Key("", _optional_string, "PEM certificate chain", _unset_as_empty, path=True),
            "key": Key("", _optional_string, "PEM private key", _unset_as_empty, path=True),
            "client_ca": Key(
                "",
                _optional_string,
                "require client certificates from this CA",
                _unset_as_empty,
                path=True,
            ),
        },
    ),
    Section(
        "timeouts",
        Timeouts,
        {
            "handshake": Key(10.0, _seconds, "time to finish greeting, auth and request"),
            "connect": Key(10.0, _seconds, "time to connect to each target address"),
            "idle": Key(3600.0, _seconds, "a TCP relay with no traffic this long is closed"),
            "bind": Key(120.0, _seconds, "time a BIND waits for the incoming connection"),
            "udp_idle": Key(300.0, _seconds, "a UDP association with no datagram this long ends"),
            "shutdown_grace": Key(10.0, _seconds, "time sessions may drain on stop"),
        },
    ),
    Section(
        "limits",
        Limits,
        {
            "max_sessions": Key(10000, _integer(1), "open sessions in total"),
            "max_sessions_per_client": Key(
                1000, _integer(0), "open sessions per client address (0: no limit)"
            ),
            "auth_workers": Key(0, _integer(0), "password checks at once (0: number of cores)"),
            "auth_queue": Key(64, _integer(0), "password checks waiting for a worker"),
            "auth_failures_per_minute": Key(
                10, _integer(0), "failed logins per client address per minute (0: no limit)"
            ),
        },
    ),
    Section(
        "admin",
        AdminConfig,
        {
            "enabled": Key(True, _boolean, "serve the admin API (stats, metrics, socksx top)"),
            "listen": Key("127.0.0.1:1081", _admin_listen, "admin HOST:PORT or UNIX socket path"),
            "allow_remote": Key(False, _boolean, "allow a non-loopback admin address"),
            "token_file": Key(
                "",
                _optional_string,
                "file holding the admin bearer token",
                _unset_as_empty,
                path=True,
            ),
        },
    ),
    Section(
        "multibind",
        MultiBindConfig,
        {
            "enabled": Key(
                "auto", _enabled_or_auto, "serve MULTI_BIND/ACCEPT: true, false (REP 07), auto"
            ),
            "max_channels_per_request": Key(
                16, _integer_between(1, 16), "channels one MULTI_BIND may ask for (1..16)"
            ),
            "max_channels_per_user": Key(
                64, _integer(0), "open channels per authenticated user (0: no limit)"
            ),
            "max_channels_per_client": Key(
                64, _integer(0), "open channels per client address (0: no limit)"
            ),
            "max_pending": Key(8, _integer(1), "peer connections waiting per TCP channel"),
            "accept_timeout": Key(
                30.0, _seconds, "a waiting peer not accepted this long is closed (C2)"
            ),
            "idle_timeout": Key(300.0, _seconds, "a channel without traffic this long closes"),
        },
    ),
    Section(
        "tunnel",
        TunnelConfig,
        {
            "enabled": Key(
                "auto", _enabled_or_auto, "serve SETUP_UDP_TUNNEL: true, false (REP 07), auto"
            ),
            "keepalive": Key(25.0, _seconds, "send a keepalive after this long without sending"),
            "dead_after": Key(90.0, _seconds, "end a tunnel after this long without the peer"),
            "allow_any_peer": Key(
                False, _boolean, "let clients tunnel to gateways not listed in [[tunnel.peer]]"
            ),
            "udp_bind": Key(
                "",
                _optional_host_port,
                'IP:PORT of the PROTO 02 endpoint ("": the TLS listener\'s IP, any port)',
                _dump_optional_host_port,
            ),
            "max_tunnels": Key(1000, _integer(0), "open tunnel ends at once (0: no limit)"),
            "peer": Key(
                [],
                _tunnel_peers,
                "gateways B (address, ca, name, fingerprint)",
                _dump_peers,
                finish=_peer_paths,
            ),
        },
    ),
    Section(
        "mcast",
        McastConfig,
        {
            "enabled": Key(
                "auto", _enabled_or_auto, "serve JOIN/LEAVE: true, false (REP 07), auto"
            ),
            "mode": Key(
                "unicast", _choice("unicast", "multicast"), "how the relay reaches members"
            ),
            "encryption": Key(
                "secretbox", _choice("secretbox", "none"), "seal intranet relay traffic"
            ),
            "public_interface": Key(
                "127.0.0.1",
                _optional_ip,
                "IP of the interface public groups are joined on",
                _unset_as_empty,
            ),
            "intranet_interface": Key(
                "127.0.0.1",
                _optional_ip,
                "IP of the interface facing the members",
                _unset_as_empty,
            ),
            "intranet_pool": Key(
                ["239.192.76.0/24"],
                _networks(True),
                "intranet groups (multicast mode)",
                _dump_networks,
            ),
            "ttl_public": Key(0, _ttl, "TTL / hop limit of datagrams sent to public groups"),
            "ttl_intranet": Key(1, _ttl, "TTL / hop limit on the intranet (multicast mode)"),
            "rekey_interval": Key(
                3600.0, _seconds_or_zero, "new group key this often (0: on departures only)"
            ),
            "max_groups_per_channel": Key(16, _integer(1), "groups one control channel may hold"),
            "require_tls_for_join": Key(
                "auto", _tls_for_join, "refuse JOIN on plaintext channels (auto: non-loopback)"
            ),
            "deny_sources": Key(
                [],
                _networks(False),
                "public sources never relayed (loops, other gateways)",
                _dump_networks,
            ),
            "member_timeout": Key(90.0, _seconds, "a member silent this long expires (B4)"),
            "default_permission": Key(
                "both", _choice("none", "receive", "send", "both"), "when no policy matches"
            ),
            "policy": Key([], _mcast_policies, "[[mcast.policy]] tables", _dump_policies),
        },
    ),
    Section(
        "log",
        LogConfig,
        {
            "format": Key("text", _choice("text", "json"), "session line format"),
            "target": Key("stderr", _choice("stderr", "syslog"), "where log lines go"),
            "level": Key("info", _choice(*_LEVELS), "lowest level logged"),
            "syslog_address": Key("/dev/log", _syslog_address, "syslog socket or HOST:PORT"),
        },
    ),
)

_SECTION_BY_NAME = {s.name: s for s in SECTIONS}

#: Sections of the extension commands, whose state one process must own (see "workers").
EXTENSION_SECTIONS: tuple[str, ...] = ("mcast", "tunnel", "multibind")

#: Every dotted key the schema knows, ``rules.*`` standing for the keys of each ``[[rules]]``.
KNOWN_KEYS: tuple[str, ...] = (
    *TOP_LEVEL.keys,
    *(f"{s.name}.{k}" for s in SECTIONS for k in s.keys),
    *(f"rules.{k}" for k in RULE_KEYS),
)


@dataclass(frozen=True)
class Config:
    """A validated configuration; build it with ``load``/``loads``/``with_overrides``."""

    source: str
    listen: tuple[tuple[str, int], ...]
    auth: str
    users_file: str | None
    socks4: bool
    outward_address: str | None
    udp_public_address: str | None
    udp_inbound: str
    user: str | None
    group: str | None
    workers: int | None
    zero_copy: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    log: LogConfig = field(default_factory=LogConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    multibind: MultiBindConfig = field(default_factory=MultiBindConfig)
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    mcast: McastConfig = field(default_factory=McastConfig)
    rules: tuple[Rule, ...] = ()
    #: Extension sections whose ``enabled`` was "auto" (dumped back as "auto").
    auto_enabled: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- loading


def load(path: str | None) -> Config:
    """Read and validate a config file; ``None`` loads the embedded default.

    Raises:
        ConfigError: listing every problem (a missing or unreadable file is one problem).
    """
    if path is None:
        return loads(DEFAULT_TOML, EMBEDDED_SOURCE)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(path, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(path, "", "is a directory, not a file")]) from None
    except OSError as exc:
        problem = f"cannot read: {(exc.strerror or str(exc)).lower()}"
        raise ConfigError([ConfigProblem(path, "", problem)]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte offset {exc.start})"
        raise ConfigError([ConfigProblem(path, "", problem)]) from None
    return loads(text, path, os.path.dirname(os.path.abspath(path)))


def loads(text: str, source: str, base_dir: str = ".") -> Config:
    """Validate config text; relative paths in it are taken relative to ``base_dir``.

    Raises:
        ConfigError: listing every problem (a TOML syntax error is one problem with its line).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(source, "", f"invalid TOML: {exc}")]) from None
    return _build(data, source, base_dir)


def _userpass_needs_users_file(top: Mapping[str, Any]) -> str | None:
    if top["auth"] == "userpass" and top["users_file"] is None:
        return 'required when auth = "userpass"'
    return None


def _tls_needs_cert_and_key(values: Mapping[str, Any]) -> str | None:
    tls = values["tls"]
    if tls.listen and not (tls.cert and tls.key):
        return "TLS listeners need tls.cert and tls.key"
    return None


def _admin_listen_is_local(values: Mapping[str, Any]) -> str | None:
    admin = values["admin"]
    if not admin.enabled or admin.allow_remote or admin.listen.startswith("/"):
        return None
    host = parse_host_port(admin.listen)[0]
    if ipaddress.ip_address(host).is_loopback:
        return None
    # The API shows every client and destination (and may close sessions): never exposed by
    # accident.
    return f"{host} is not a loopback address: set admin.allow_remote = true to serve it there"


def _admin_token_is_readable(values: Mapping[str, Any]) -> str | None:
    path = values["admin"].token_file
    if not path or not os.path.isfile(path):
        return None  # unset, or already reported as missing
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read the token: {exc}"
    return None if token else "the token file is empty"


def _multibind_needs_one_worker(values: Mapping[str, Any]) -> str | None:
    # Channels and ACCEPT tokens live in the process that served the MULTI_BIND; with several
    # workers an ACCEPT would land in another process ("auto" may mean several).
    if values["multibind"].enabled and values["workers"] != 1:
        return 'several workers cannot serve multibind: set multibind.enabled = "auto" or false'
    return None


def _tunnel_needs_one_worker(values: Mapping[str, Any]) -> str | None:
    # A tunnel's TLS connection, UDP sockets and PROTO 02 endpoint live in the process that
    # served the request; several workers would split one endpoint's tunnels ("auto" may too).
    if values["tunnel"].enabled and values["workers"] != 1:
        return 'several workers cannot serve tunnel: set tunnel.enabled = "auto" or false'
    return None


def _tunnel_keepalive_below_dead_after(values: Mapping[str, Any]) -> str | None:
    tunnel = values["tunnel"]
    if tunnel.keepalive >= tunnel.dead_after:
        return "must be shorter than tunnel.dead_after (a live peer would be declared dead)"
    return None


def _mcast_needs_one_worker(values: Mapping[str, Any]) -> str | None:
    # Relays, keys and memberships live in the process that served the JOIN: with several
    # workers two members of one group could get two relays ("auto" may mean several).
    if values["mcast"].enabled and values["workers"] != 1:
        return 'several workers cannot serve mcast: set mcast.enabled = "auto" or false'
    return None


def _mcast_pool_fits_interface(values: Mapping[str, Any]) -> str | None:
    mcast = values["mcast"]
    if mcast.mode != "multicast" or not mcast.enabled:
        return None
    if not mcast.intranet_interface:
        return "multicast mode needs mcast.intranet_interface"
    family = ipaddress.ip_address(mcast.intranet_interface).version
    if not any(net.version == family for net in mcast.intranet_pool):
        return f"multicast mode needs an IPv{family} network like mcast.intranet_interface"
    return None


#: Checks that involve several keys: (keys involved, check returning a problem or None), over
#: the top-level values and the section dataclasses by name. The problem is reported at the
#: first key, unless that key already has a problem.
CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], str | None]], ...] = (
    (("users_file", "auth"), _userpass_needs_users_file),
    (("tls.listen", "tls.cert", "tls.key"), _tls_needs_cert_and_key),
    (("mcast.enabled", "workers"), _mcast_needs_one_worker),
    (("mcast.intranet_pool", "mcast.mode", "mcast.intranet_interface"), _mcast_pool_fits_interface),
    (("multibind.enabled", "workers"), _multibind_needs_one_worker),
    (("tunnel.enabled", "workers"), _tunnel_needs_one_worker),
    (("tunnel.keepalive", "tunnel.dead_after"), _tunnel_keepalive_below_dead_after),
    (("admin.listen", "admin.allow_remote"), _admin_listen_is_local),
    (("admin.token_file",), _admin_token_is_readable),
)


class _Problems(list[ConfigProblem]):
    """Collects problems; names the file ``command line`` for keys that came from overrides."""

    def __init__(self, source: str, overridden: frozenset[str]) -> None:
        super().__init__()
        self.source = source
        self.overridden = overridden

    def add(self, key: str, problem: str, related: tuple[str, ...] = ()) -> None:
        top = re.split(r"[.\[]", key, maxsplit=1)[0]
        from_flags = bool(self.overridden.intersection((top, *related)))
        self.append(ConfigProblem("command line" if from_flags else self.source, key, problem))


def _build(
    data: dict[str, Any], source: str, base_dir: str, overridden: frozenset[str] = frozenset()
) -> Config:
    problems = _Problems(source, overridden)
    top = _check_section(TOP_LEVEL, data, base_dir, problems)
    sections = {}
    for section in SECTIONS:
        raw = data.get(section.name, {})
        if not isinstance(raw, dict):
            problems.add(section.name, "must be a table")
            raw = {}
        assert section.cls is not None  # only the top level has no dataclass
        sections[section.name] = section.cls(**_check_section(section, raw, base_dir, problems))
    # "auto": the extensions keep state one process must own, so they serve only when there
    # is one worker; an explicit true with several workers is refused by CROSS_CHECKS.
    auto_enabled = frozenset(
        name for name in EXTENSION_SECTIONS if sections[name].enabled == "auto"
    )
    for name in auto_enabled:
        sections[name] = dataclasses.replace(sections[name], enabled=top["workers"] == 1)
    for key, value in data.items():
        if key in TOP_LEVEL.keys or key in _SECTION_BY_NAME or key == "rules":
            continue
        problems.add(key, "unknown section" if isinstance(value, dict) else "unknown key")
    rules, rule_problems = parse_rules(data.get("rules", []), source)
    for problem in rule_problems:
        problems.add(problem.key, problem.problem)
    for keys, check in CROSS_CHECKS:
        if any(p.key == keys[0] for p in problems):
            continue  # the key's own problem says enough
        message = check({**top, **sections})
        if message is not None:
            problems.add(keys[0], message, keys)
    if problems:
        raise ConfigError(list(problems))
    return Config(source=source, **top, **sections, rules=rules, auto_enabled=auto_enabled)


def _check_section(
    section: Section, raw: Mapping[str, Any], base_dir: str, problems: _Problems
) -> dict[str, Any]:
    """Check every key of one section; a bad key's value falls back to its default."""
    prefix = f"{section.name}." if section.name else ""
    values: dict[str, Any] = {}
    for name, key in section.keys.items():
        dotted = prefix + name
        try:
            value = key.check(raw.get(name, key.default))
        except ItemProblems as exc:
            for suffix, message in exc.items:
                problems.add(dotted + suffix, message)
            value = key.check(key.default)
        except ValueError as exc:
            problems.add(dotted, str(exc))
            value = key.check(key.default)
        if key.path and value:
            value = os.path.normpath(os.path.join(base_dir, value))
            if not os.path.exists(value):
                problems.add(dotted, f"file not found: {value}")
            elif not os.path.isfile(value):
                problems.add(dotted, f"not a regular file: {value}")
        if key.finish is not None:
            try:
                value = key.finish(value, base_dir)
            except ItemProblems as exc:
                for suffix, message in exc.items:
                    problems.add(dotted + suffix, message)
        values[name] = value
    if section.name:
        for name in raw:
            if name not in section.keys:
                problems.add(prefix + name, "unknown key")
    return values


def with_overrides(cfg: Config, **changes: Any) -> Config:
    """``cfg`` with some keys replaced (command-line flags, test fixtures), re-validated.

    Top-level keys take their TOML form (``listen=["127.0.0.1:0"]``; tuples such as
    ``("::1", 0)`` are accepted too; None means unset); a section takes a dict of its keys
    merged over the current values, or a dataclass instance; ``rules`` takes a list of
    ``[[rules]]`` tables or ``Rule`` objects. A relative ``users_file`` is taken relative to
    the working directory, as a command-line path is. Problems in changed keys name the file
    ``command line``.

    Raises:
        ConfigError: the result is invalid.
        TypeError: an unknown key name (a programming error, not a user's).
    """
    raw = to_dict(cfg)
    for name, value in changes.items():
        if name in TOP_LEVEL.keys:
            raw[name] = _override_value(name, value)
        elif name in _SECTION_BY_NAME:
            section = _SECTION_BY_NAME[name]
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                raw[name] = _dump_section(section, value)
            else:
                raw[name] = {**raw[name], **dict(value)}
        elif name == "rules":
            raw[name] = [rule_to_table(r) if isinstance(r, Rule) else r for r in value]
        else:
            msg = f"with_overrides: unknown config key {name!r}"
            raise TypeError(msg)
    return _build(raw, cfg.source, os.getcwd(), frozenset(changes))


def _override_value(name: str, value: Any) -> Any:
    if value is None:
        return "auto" if name == "workers" else ""
    if name == "listen":
        return [format_host_port(v) if isinstance(v, tuple) else v for v in value]
    return value


# --------------------------------------------------------------------------- writing back


def _dump_section(section: Section, values: Any) -> dict[str, Any]:
    return {name: key.dump(getattr(values, name)) for name, key in section.keys.items()}


def to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as TOML-shaped plain data (JSON-able; loads back to ``cfg``)."""
    data = _dump_section(TOP_LEVEL, cfg)
    for section in SECTIONS:
        data[section.name] = _dump_section(section, getattr(cfg, section.name))
    data["rules"] = [rule_to_table(r) for r in cfg.rules]
    for name in cfg.auto_enabled:
        data[name]["enabled"] = "auto"
    return data


def to_toml(cfg: Config) -> str:
    """The effective config as TOML text; ``loads`` of it gives back an equal Config."""
    data = to_dict(cfg)
    lines = [f"# effective socksx configuration (from {cfg.source})"]
    lines += [f"{name} = {_toml_value(data[name])}" for name in TOP_LEVEL.keys]
    for section in SECTIONS:
        lines += ["", f"[{section.name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[section.name].items()]
    for table in data["rules"]:
        lines += ["", "[[rules]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_TOML_ESCAPES |= {"\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    msg = f"cannot write {type(value).__name__} as TOML"
    raise TypeError(msg)
