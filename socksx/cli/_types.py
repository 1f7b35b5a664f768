"""click parameter types: values are validated at parse time, so errors are usage errors (2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or (with a default) a bare host.

    Raises:
        ValueError: with a readable message.
    """
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            msg = f"{text!r}: missing ']'"
            raise ValueError(msg)
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                msg = f"{text!r}: expected ':' after ']'"
                raise ValueError(msg)
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.rsplit(":", 1)
    elif text.count(":") > 1:
        msg = f"{text!r}: write IPv6 addresses as [addr]:port"
        raise ValueError(msg)
    if not host:
        msg = f"{text!r}: missing host"
        raise ValueError(msg)
    if not port_text:
        if default_port is None:
            msg = f"{text!r}: missing port (HOST:PORT)"
            raise ValueError(msg)
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        msg = f"{text!r}: port must be a number 0..65535"
        raise ValueError(msg)
    return host, int(port_text)


class HostPort(click.ParamType):
    """HOST:PORT (IPv6 as [addr]:port); converts to a (host, port) tuple."""

    name = "HOST:PORT"

    def __init__(self, default_port: int | None = None) -> None:
        self.default_port = default_port

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse or fail with click's usage error."""
        if isinstance(value, tuple):
            return value
        try:
            return split_host_port(str(value), self.default_port)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def timeout_option(help_text: str, default: float = 10.0) -> Callable[[F], F]:
    """The ``--timeout DURATION`` option every proxy-using command has (its help says what for)."""
    return click.option(
        "--timeout", type=Duration(), default=default, show_default=True, help=help_text
    )


class Duration(click.ParamType):
    """Seconds as a number, or with a unit suffix: 500ms, 30s, 5m, 2h."""

    name = "DURATION"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse into float seconds."""
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit):
                number, scale = text[: -len(unit)], self._UNITS[unit]
                break
        else:
            number, scale = text, 1.0
        try:
            seconds = float(number) * scale
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 30, 500ms, 5m)", param, ctx)
        if seconds < 0:
            self.fail(f"{value!r}: a duration cannot be negative", param, ctx)
        return seconds
