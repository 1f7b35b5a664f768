"""The two ways datagrams travel between the gateways (docs/PROTOCOL.md "UDP tunnels").

PROTO 01, ``FrameLink``: inside the tunnel's TLS connection, each datagram one frame
``LEN(2) | ATYP | ADDR | PORT | DATA``, LEN 0 a keepalive. Frames are written whole under a lock
(the local reader and the clock both write), and read by one greenlet that parses them with
the codec, so a frame split across TLS records or TCP segments is handled like any other.

PROTO 02, ``SealedLink``: UDP datagrams ``DIR | TUNNEL_ID | SEQ | BOX`` sealed with the key B
gave A inside TLS. Each direction counts its own SEQ from 1 (DIR is in the nonce, so the two
directions never share a nonce under the one key); the receiver checks DIR, TUNNEL_ID and the
64-wide replay window before it pays for authentication, and marks a SEQ as seen only after the
datagram authenticated, so forgeries and replays are dropped and counted and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.lock import Semaphore

from socksx.protocol.constants import TUNNEL_FRAME_MAX, TunnelDir
from socksx.protocol.errors import ProtocolError
from socksx.protocol.sealed import HEADER_SIZE, ReplayWindow, UnsealError, open_sealed, seal
from socksx.protocol.tunnel import Frame, decode_payload, maybe_read_frame
from socksx.server.tunnel._end import TunnelEnd

__all__ = ["FrameLink", "SealedLink"]

_RECV_SIZE = 65536
_KEEPALIVE_FRAME = b"\x00\x00"
_EMPTY = b""


class FrameLink:
    """PROTO 01 over *sock* (the TLS connection between the gateways)."""

    def __init__(self, end: TunnelEnd, sock: Any, pending: bytes = b"") -> None:
        self.end = end
        self.sock = sock
        self.pending = pending
        self.lock = Semaphore()

    def send(self, address: bytes, data: bytes | memoryview) -> bool:
        """Write one frame; False (nothing sent) when it is larger than a frame can be."""
        size = len(address) + len(data)
        if size > TUNNEL_FRAME_MAX:
            return False
        frame = b"".join((size.to_bytes(2, "big"), address, data))
        with self.lock:
            self.sock.sendall(frame)
        return True

    def keepalive(self) -> None:
        """An empty frame."""
        with self.lock:
            self.sock.sendall(_KEEPALIVE_FRAME)

    def read_loop(self) -> None:
        """Read frames until the connection closes; each goes to the tunnel end."""
        end = self.end
        buf = self.pending
        self.pending = _EMPTY
        recv = self.sock.recv
        while True:
            if buf:
                rest = self._parse(buf)
                if rest is None:
                    return
                buf = rest
            data = recv(_RECV_SIZE)
            if not data:
                end.end("peer-closed")
                return
            buf = buf + data if buf else data

    def _parse(self, buf: bytes) -> bytes | None:
        """Deliver every whole frame in *buf*; the rest, or None when the stream is broken."""
        end = self.end
        view = memoryview(buf)
        pos = 0
        try:
            while (parsed := maybe_read_frame(view[pos:])) is not None:
                frame, used = parsed
                pos += used
                if isinstance(frame, Frame):
                    end.heard()
                    end.deliver(frame.address, frame.data)
                else:
                    end.heard(keepalive=True)
        except ProtocolError as exc:
            end.end(f"protocol-error: {exc}")
            return None
        return buf[pos:]

    def close(self) -> None:
        """The TLS connection belongs to the session (or to the near end): nothing here."""


class SealedLink:
    """PROTO 02: sealing toward the other gateway, opening and replay checks for its datagrams.

    *transmit* puts a sealed datagram on the wire (the near end's own socket, or the far end's
    shared endpoint toward A's latest address); it returns False when it cannot send yet.
    """

    def __init__(
        self,
        end: TunnelEnd,
        key: bytes,
        tunnel_id: int,
        outgoing: TunnelDir,
        transmit: Callable[[bytes], bool],
    ) -> None:
        self.end = end
        self.key = key
        self.tunnel_id = tunnel_id
        self.outgoing = outgoing
        self.incoming = TunnelDir.B_TO_A if outgoing == TunnelDir.A_TO_B else TunnelDir.A_TO_B
        self.transmit = transmit
        self.seq = 0
        self.window = ReplayWindow()

    def _seal(self, plaintext: bytes) -> bytes:
        self.seq += 1  # a SEQ is used up even if the datagram is then lost
        return seal(self.key, self.outgoing, self.tunnel_id, self.seq, plaintext)

    def send(self, address: bytes, data: bytes | memoryview) -> bool:
        """Seal ``ATYP | ADDR | PORT | DATA`` and transmit it."""
        return self.transmit(self._seal(b"".join((address, data))))

    def keepalive(self) -> None:
        """A sealed datagram with an empty plaintext."""
        if not self.transmit(self._seal(_EMPTY)):
            self.end.drop("keepalive-unsent")

    def open(self, dgram: bytes) -> bool:
        """Check, authenticate and deliver one datagram; False when it was dropped (counted)."""
        end = self.end
        # Cheap checks first: the clear header says whether this can be ours and fresh.
        if len(dgram) < HEADER_SIZE or dgram[0] != self.incoming:
            end.drop("malformed" if len(dgram) < HEADER_SIZE else "wrong-direction")
            return False
        if int.from_bytes(dgram[1:5], "big") != self.tunnel_id:
            end.drop("wrong-tunnel")
            return False
        seq = int.from_bytes(dgram[5:HEADER_SIZE], "big")
        if not self.window.check(seq):
            end.drop("replay")
            return False
        try:
            _, plaintext = open_sealed(self.key, dgram)
        except UnsealError:
            end.drop("forged")
            return False
        self.window.accept(seq)
        if not plaintext:
            end.heard(keepalive=True)
            return True
        end.heard()
        try:
            parsed = decode_payload(plaintext)
        except ProtocolError:
            # Authentic but malformed: the other gateway is broken; drop the datagram only.
            end.drop("malformed")
            return True
        assert parsed is not None
        address, offset = parsed
        end.deliver(address, plaintext[offset:])
        return True

    def close(self) -> None:
        """Sockets belong to the ends: nothing here."""
