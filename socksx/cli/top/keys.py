"""Keys from a terminal without blocking the gevent hub: cbreak mode and ``gevent.select``.

cbreak (not raw) keeps ISIG, so Ctrl-C still interrupts; the previous terminal settings are
restored on the way out, whatever ends the program.
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Iterator

import gevent.select

__all__ = ["cbreak", "read_keys"]


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one by one, unechoed, until the block ends."""
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(fd: int, timeout: float, wake: int | None = None) -> list[str]:
    """The keys pressed within *timeout* seconds (other greenlets run meanwhile); [] if none,
    or as soon as something is written to the *wake* pipe (which is then drained).

    Keys typed together come back one by one; an escape sequence (an arrow key...) comes
    back whole, so its letters are not taken for commands.

    Raises:
        EOFError: the terminal is gone.
    """
    watched = [fd] if wake is None else [fd, wake]
    ready, _, _ = gevent.select.select(watched, [], [], max(timeout, 0.0))
    if wake is not None and wake in ready:
        os.read(wake, 4096)
    if fd not in ready:
        return []
    data = os.read(fd, 64)
    if not data:
        msg = "end of input"
        raise EOFError(msg)
    text = data.decode("utf-8", "replace")
    keys: list[str] = []
    while text:
        if text.startswith("\x1b"):
            end = 1
            if text[1:2] in ("[", "O"):
                end = 2
                while end < len(text) and not text[end].isalpha() and text[end] != "~":
                    end += 1
                end += 1
            keys.append(text[:end])
            text = text[end:]
        else:
            keys.append(text[0])
            text = text[1:]
    return keys
