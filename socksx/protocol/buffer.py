"""A read cursor over a byte buffer: every getter returns None when the bytes are not there yet.

Parsers built on it consume nothing until a whole message is present and report how many bytes
they used, so the bytes after a message (pipelined data) are never lost.
"""

from __future__ import annotations

__all__ = ["Reader"]


class Reader:
    """Cursor over *buf*; ``pos`` is how many bytes the caller has consumed so far."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes | None:
        """The next *n* bytes, or None (consuming nothing) when fewer are buffered."""
        end = self.pos + n
        if end > len(self.buf):
            return None
        out = bytes(self.buf[self.pos : end])
        self.pos = end
        return out

    def u8(self) -> int | None:
        """One unsigned octet, or None."""
        if self.pos >= len(self.buf):
            return None
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int | None:
        """One unsigned big-endian 16-bit integer, or None."""
        end = self.pos + 2
        if end > len(self.buf):
            return None
        value = (self.buf[self.pos] << 8) | self.buf[self.pos + 1]
        self.pos = end
        return value

    def until(self, terminator: int, limit: int) -> bytes | None:
        """Bytes up to (not including) *terminator*, consuming it too; None if not yet seen.

        Raises:
            ValueError: more than *limit* bytes arrived without the terminator.
        """
        view = self.buf[self.pos : self.pos + limit + 1]
        index = bytes(view).find(bytes([terminator]))
        if index < 0:
            if len(view) > limit:
                msg = f"no terminator within {limit} bytes"
                raise ValueError(msg)
            return None
        out = bytes(view[:index])
        self.pos += index + 1
        return out
