"""Byte-level test vectors, shared by the codec tests and docs/PROTOCOL.md.

A vector's ``hex`` is the wire image with one space between fields, exactly as the document
prints it; ``wire`` is those octets. A field written ``61*256`` is the octets ``61`` repeated
256 times (so that long fields stay readable in the document). ``TABLES`` and ``ERROR_TABLES``
in each module map a table name (the name of its ``<!-- vectors:NAME -->`` block in
PROTOCOL.md) to its vectors, in document order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from socksx.protocol.constants import ReplyCode
from socksx.protocol.datagram import UdpHeader
from socksx.protocol.errors import RemoteProtocolError

__all__ = [
    "TRAILING",
    "Datagram",
    "ErrorVector",
    "Vector",
    "check_error_vector",
    "check_vector",
    "octets",
]


def octets(text: str) -> bytes:
    """The octets of a vector's hex text: fields separated by spaces, ``HH*N`` repeats HH."""
    out = bytearray()
    for field in text.split():
        pattern, _, count = field.partition("*")
        out += bytes.fromhex(pattern) * (int(count) if count else 1)
    return bytes(out)


@dataclass(frozen=True)
class Vector:
    """A well-formed message: its octets and the value they decode to."""

    name: str
    hex: str
    msg: object
    source: str

    @property
    def wire(self) -> bytes:
        """The octets on the wire."""
        return octets(self.hex)


@dataclass(frozen=True)
class ErrorVector:
    """Octets a parser must refuse, the error it raises and the reply that error carries."""

    name: str
    hex: str
    exc: type[RemoteProtocolError]
    reply: ReplyCode | None
    source: str

    @property
    def wire(self) -> bytes:
        """The octets on the wire."""
        return octets(self.hex)


@dataclass(frozen=True)
class Datagram:
    """A whole UDP datagram as ``decode_udp_datagram`` sees it: its header and its DATA."""

    header: UdpHeader
    data: bytes


TRAILING = b"\x05\x01\x00GET / HTTP/1.1\r\n"  # pipelined bytes that must survive a parse


def check_vector(parse: Callable[[bytes], tuple[object, int] | None], vector: Vector) -> None:
    """The three-way vector check (h11 ``tr()`` style) for a ``maybe_read_*`` parser.

    Whole: decodes to (msg, len); encodes back to the same octets; every strict prefix is
    "need more" (None); with bytes after it, the same (msg, len) and the rest left alone.
    """
    wire = vector.wire
    assert parse(wire) == (vector.msg, len(wire))
    assert vector.msg.to_bytes() == wire  # type: ignore[attr-defined]
    for i in range(len(wire)):
        assert parse(wire[:i]) is None, f"prefix of {i} octets"
    assert parse(wire + TRAILING) == (vector.msg, len(wire))
    assert parse(bytearray(wire)) == (vector.msg, len(wire))
    assert parse(memoryview(wire + TRAILING)) == (vector.msg, len(wire))


def check_error_vector(parse: Callable[[bytes], object], vector: ErrorVector) -> None:
    """The parser refuses the whole vector with exactly ``vector.exc`` carrying ``vector.reply``.

    A strict prefix either needs more or fails the same way (the error never depends on how
    the bytes were chunked), and bytes after the vector do not change the verdict.
    """
    wire = vector.wire
    for data in (wire, wire + TRAILING):
        with pytest.raises(vector.exc) as info:
            parse(data)
        assert type(info.value) is vector.exc
        assert info.value.reply == vector.reply
        assert str(info.value)
    for i in range(len(wire)):
        outcome: object
        try:
            outcome = parse(wire[:i])
        except RemoteProtocolError as exc:
            outcome = type(exc)
        assert outcome is None or outcome is vector.exc, f"prefix of {i} octets: {outcome!r}"
