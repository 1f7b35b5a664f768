"""Helpers for admin API tests: a server with an admin listener, raw HTTP, bounded waits."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from socksx.config import SECTIONS


def admin_toml(listen: str = "127.0.0.1:0", token_file: Path | None = None, **extra: Any) -> str:
    """An ``[admin]`` table (append it after any top-level keys)."""
    lines = ["[admin]", f'listen = "{listen}"']
    if token_file is not None:
        lines.append(f'token_file = "{token_file}"')
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def extensions_off() -> str:
    """Every extension section that exists switched off (workers > 1 refuses them)."""
    return "".join(
        f"[{s.name}]\nenabled = false\n"
        for s in SECTIONS
        if "enabled" in s.keys and s.name != "admin"
    )


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    host: str | None = "default",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with full control of the Host header (None: send none)."""
    conn = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host == "default":
            conn.putheader("Host", f"{address[0]}:{address[1]}")
        elif host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll *check* until it returns something true (the server has no event to await for
    "a session has finished"), bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.02)
