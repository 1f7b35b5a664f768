"""The object every command receives: consoles, verbosity, and the one-line error exit."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

import click
from rich.console import Console

from socksx.cli._exit import ExitCode


@dataclass
class App:
    """Per-invocation state on ``ctx.obj``: data goes to ``out``, diagnostics to ``err``."""

    verbosity: int = 0
    color: bool | None = None
    out: Console = field(init=False)
    err: Console = field(init=False)

    def __post_init__(self) -> None:
        no_color = self.color is False or (self.color is None and "NO_COLOR" in os.environ)
        force = True if self.color else None
        self.out = Console(no_color=no_color, force_terminal=force, highlight=False, soft_wrap=True)
        self.err = Console(
            stderr=True, no_color=no_color, force_terminal=force, highlight=False, soft_wrap=True
        )

    @property
    def debug(self) -> bool:
        """Tracebacks wanted (-vv or SOCKSX_DEBUG=1)."""
        return self.verbosity >= 2 or os.environ.get("SOCKSX_DEBUG") == "1"

    def info(self, text: str) -> None:
        """A diagnostic line on stderr unless quieted; *text* is plain, never markup."""
        if self.verbosity >= 0:
            self.err.print(text, markup=False)

    def fail(self, message: str, code: ExitCode) -> NoReturn:
        """Print ``socksx: message`` on stderr and exit with *code*."""
        click.echo(f"socksx: {message}", err=True)
        sys.stdout.flush()
        raise SystemExit(int(code))
