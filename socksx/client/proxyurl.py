"""Proxy URLs: ``socks5h://user:pass@host:port`` and friends, and the SOCKS_PROXY/ALL_PROXY lookup.

The scheme decides the protocol and who resolves names, as curl spells it:

    socks5://   SOCKS5, names resolved locally, the proxy gets an IP
    socks5h://  SOCKS5, names sent to the proxy (also a bare ``host:port``)
    socks5s://  SOCKS5 with names sent to the proxy, over TLS to the proxy
    socks4://   SOCKS4, names resolved locally (IPv4 only)
    socks4a://  SOCKS4a, names sent to the proxy

User and password are percent-decoded; for SOCKS4 the user is the USERID.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_PORT", "ProxyURL", "parse_proxy_url", "proxy_from_env"]

DEFAULT_PORT: Final = 1080  #: IANA "socks" port (RFC 1928 §3)


@dataclass(frozen=True, slots=True)
class _Scheme:
    version: int
    remote_dns: bool
    tls: bool


_SCHEMES: Final = {
    "socks5": _Scheme(5, remote_dns=False, tls=False),
    "socks5h": _Scheme(5, remote_dns=True, tls=False),
    "socks5s": _Scheme(5, remote_dns=True, tls=True),
    "socks4": _Scheme(4, remote_dns=False, tls=False),
    "socks4a": _Scheme(4, remote_dns=True, tls=False),
}
_BARE_SCHEME: Final = "socks5h"
#: Environment variables consulted in order; lower-case spellings are what curl also reads.
_ENV_VARS: Final = ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """Where the proxy is and how to talk to it."""

    scheme: str
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    remote_dns: bool = True
    version: int = 5
    tls: bool = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) for socket.create_connection."""
        return self.host, self.port

    @property
    def hostport(self) -> str:
        """``host:port``, IPv6 in brackets: how messages name the proxy."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        # Never print the password: URLs end up in logs and error messages.
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.hostport}"


def parse_proxy_url(text: str) -> ProxyURL:
    """Parse a proxy URL or a bare ``host[:port]`` (which means socks5h).

    Raises:
        ValueError: unknown scheme, bad port, missing host, or a path/query in the URL.
    """
    text = text.strip()
    if not text:
        msg = "empty proxy address"
        raise ValueError(msg)
    if "://" not in text:
        text = f"{_BARE_SCHEME}://{text}"
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        # urlsplit checks bracketed hosts itself ("[zz::1]", "[1.2.3.4]", "[::1").
        reason = "the host in brackets is not an IPv6 address" if "[" in text else str(exc)
        msg = f"proxy URL {_redact(text)!r}: {reason}"
        raise ValueError(msg) from None
    scheme = parts.scheme.lower()
    spec = _SCHEMES.get(scheme)
    if spec is None:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        msg = f"unsupported proxy scheme {scheme + '://'!r} (use {known})"
        raise ValueError(msg)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        msg = f"proxy URL {_redact(text)!r} must not have a path, query or fragment"
        raise ValueError(msg)
    host = _host_of(parts.netloc, text)
    try:
        port = parts.port
    except ValueError:
        msg = f"proxy URL {_redact(text)!r}: port must be a number 1..65535"
        raise ValueError(msg) from None
    if port == 0:
        msg = f"proxy URL {_redact(text)!r}: port must be a number 1..65535"
        raise ValueError(msg)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(
        scheme=scheme,
        host=host,
        port=DEFAULT_PORT if port is None else port,
        username=username,
        password=password,
        remote_dns=spec.remote_dns,
        version=spec.version,
        tls=spec.tls,
    )


def proxy_from_env(environ: Mapping[str, str] | None = None) -> ProxyURL | None:
    """The proxy named by SOCKS_PROXY, else ALL_PROXY; None when neither names a SOCKS proxy.

    ALL_PROXY often names an HTTP proxy: such values are skipped, not errors. A bare
    ``host:port`` counts only in SOCKS_PROXY (curl reads a bare ALL_PROXY as HTTP).

    Raises:
        ValueError: a variable holds a socks URL that does not parse (names the variable).
    """
    env = os.environ if environ is None else environ
    for name in _ENV_VARS:
        value = env.get(name, "").strip()
        if not value:
            continue
        scheme = value.split("://", 1)[0].lower() if "://" in value else None
        if scheme is None and not name.lower().startswith("socks"):
            continue
        if scheme is not None and scheme not in _SCHEMES:
            continue
        try:
            return parse_proxy_url(value)
        except ValueError as exc:
            msg = f"{name}: {exc}"
            raise ValueError(msg) from None
    return None


def _host_of(netloc: str, text: str) -> str:
    hostpart = netloc.rpartition("@")[2]
    if hostpart.startswith("["):
        literal = hostpart[1:].partition("]")[0]
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            msg = f"proxy URL {_redact(text)!r}: {literal!r} is not an IPv6 address"
            raise ValueError(msg) from None
    host = hostpart.rpartition(":")[0] if ":" in hostpart else hostpart
    if not host:
        msg = f"proxy URL {_redact(text)!r} has no host"
        raise ValueError(msg)
    if ":" in host:
        msg = f"proxy URL {_redact(text)!r}: write IPv6 addresses as [addr]:port"
        raise ValueError(msg)
    return host.lower()


def _redact(text: str) -> str:
    """The URL with any password replaced, for error messages."""
    scheme, sep, rest = text.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"
