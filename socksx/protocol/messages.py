"""RFC 1928 and RFC 1929 messages: frozen values with ``to_bytes()`` and ``maybe_read_*`` parsers.

Greeting (RFC 1928 §3)         VER | NMETHODS | METHODS
MethodSelection (§3)           VER | METHOD
UserPassRequest (RFC 1929 §2)  VER=01 | ULEN | UNAME | PLEN | PASSWD
UserPassReply (RFC 1929 §2)    VER=01 | STATUS
Request (§4)                   VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT [| extension body]
Reply (§6)                     VER | REP | RSV | ATYP | BND.ADDR | BND.PORT

Every ``maybe_read_X(buf)`` returns ``(message, consumed)`` or None when *buf* holds only a
prefix; it never consumes past the message, so pipelined bytes stay with the caller.
Request parsing dispatches on CMD through ``REQUEST_READERS``: an extension command is one more
entry in that table (see the mcast, tunnel and multibind modules), not a special case here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from socksx.protocol.address import ZERO_V4, Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.constants import (
    SOCKS5_VERSION,
    USERPASS_VERSION,
    Command,
    Method,
    ReplyCode,
    UserPassStatus,
)
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    UnsupportedCommand,
    UnsupportedVersion,
)

__all__ = [
    "REQUEST_READERS",
    "Greeting",
    "MethodSelection",
    "Reply",
    "Request",
    "UserPassReply",
    "UserPassRequest",
    "maybe_read_greeting",
    "maybe_read_method_selection",
    "maybe_read_reply",
    "maybe_read_request",
    "maybe_read_userpass_reply",
    "maybe_read_userpass_request",
    "register_request_reader",
]

Buf = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Greeting:
    """Client's method offer. ``methods`` keeps the client's order; values may be unknown ints."""

    methods: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.methods) <= 255 or any(not 0 <= m <= 0xFF for m in self.methods):
            msg = "a greeting offers 1..255 methods, each one octet"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """VER | NMETHODS | METHODS."""
        return bytes([SOCKS5_VERSION, len(self.methods), *self.methods])


@dataclass(frozen=True, slots=True)
class MethodSelection:
    """Server's choice of method (0xFF: none acceptable, the server then closes)."""

    method: Method

    def __post_init__(self) -> None:
        _check_octet(self.method, "METHOD")

    def to_bytes(self) -> bytes:
        """VER | METHOD."""
        return bytes([SOCKS5_VERSION, self.method])


@dataclass(frozen=True, slots=True)
class UserPassRequest:
    """RFC 1929 credentials. Both fields are raw octets (RFC 1929 does not name a charset)."""

    username: bytes
    password: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.username) <= 255 or not 1 <= len(self.password) <= 255:
            msg = "RFC 1929 username and password are 1..255 octets"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """VER | ULEN | UNAME | PLEN | PASSWD."""
        return (
            bytes([USERPASS_VERSION, len(self.username)])
            + self.username
            + bytes([len(self.password)])
            + self.password
        )


@dataclass(frozen=True, slots=True)
class UserPassReply:
    """RFC 1929 status; any non-zero value means failure."""

    status: int

    def __post_init__(self) -> None:
        _check_octet(self.status, "STATUS")

    @property
    def ok(self) -> bool:
        """True when the server accepted the credentials."""
        return self.status == UserPassStatus.SUCCESS

    def to_bytes(self) -> bytes:
        """VER | STATUS."""
        return bytes([USERPASS_VERSION, self.status])


@dataclass(frozen=True, slots=True)
class Request:
    """A CONNECT, BIND or UDP ASSOCIATE request (commands with no body after the address)."""

    command: Command
    address: Address

    def __post_init__(self) -> None:
        _check_octet(self.command, "CMD")

    def to_bytes(self) -> bytes:
        """VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT."""
        return bytes([SOCKS5_VERSION, self.command, 0]) + self.address.to_bytes()


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply in the plain RFC 1928 shape (also every failure reply of the extensions)."""

    rep: ReplyCode
    address: Address = ZERO_V4

    def __post_init__(self) -> None:
        _check_octet(self.rep, "REP")

    @property
    def ok(self) -> bool:
        """True for REP 00."""
        return self.rep == ReplyCode.SUCCEEDED

    def to_bytes(self) -> bytes:
        """VER | REP | RSV | ATYP | BND.ADDR | BND.PORT."""
        return bytes([SOCKS5_VERSION, self.rep, 0]) + self.address.to_bytes()


def _check_octet(value: object, name: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        msg = f"{name} {value!r} does not fit in one octet"
        raise LocalProtocolError(msg)


RequestReader = Callable[[Reader, Command], object | None]


def _read_plain(r: Reader, command: Command) -> Request | None:
    address = read_address_from(r)
    return None if address is None else Request(command, address)


#: CMD -> reader of the rest of the request (after VER | CMD | RSV). Readers return None when
#: the buffer is short and raise ProtocolError subclasses on malformed input.
REQUEST_READERS: dict[int, RequestReader] = {
    Command.CONNECT: _read_plain,
    Command.BIND: _read_plain,
    Command.UDP_ASSOCIATE: _read_plain,
}


def register_request_reader(command: Command, reader: RequestReader) -> None:
    """Teach the request parser an extension command (called at import by extension modules)."""
    REQUEST_READERS[command] = reader


def _check_version(ver: int) -> None:
    if ver != SOCKS5_VERSION:
        msg = f"expected SOCKS version 0x05, got {ver:#04x}"
        raise UnsupportedVersion(msg)


def maybe_read_greeting(buf: Buf) -> tuple[Greeting, int] | None:
    """Parse VER | NMETHODS | METHODS.

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: NMETHODS is 0.
    """
    if len(buf) < 2:
        if len(buf) == 1:
            _check_version(buf[0])
        return None
    _check_version(buf[0])
    n = buf[1]
    if n == 0:
        msg = "greeting offers no methods"
        raise MalformedMessage(msg)
    if len(buf) < 2 + n:
        return None
    return Greeting(tuple(buf[2 : 2 + n])), 2 + n


def maybe_read_method_selection(buf: Buf) -> tuple[MethodSelection, int] | None:
    """Parse VER | METHOD (client side).

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: a method the client cannot have offered is unknown to us.
    """
    if len(buf) < 2:
        return None
    _check_version(buf[0])
    try:
        method = Method(buf[1])
    except ValueError:
        msg = f"server selected unknown method {buf[1]:#04x}"
        raise MalformedMessage(msg) from None
    return MethodSelection(method), 2


def maybe_read_userpass_request(buf: Buf) -> tuple[UserPassRequest, int] | None:
    """Parse RFC 1929 VER | ULEN | UNAME | PLEN | PASSWD.

    Raises:
        MalformedMessage: subnegotiation version is not 1, or an empty field.
    """
    r = Reader(buf)
    ver = r.u8()
    if ver is None:
        return None
    if ver != USERPASS_VERSION:
        msg = f"expected RFC 1929 version 0x01, got {ver:#04x}"
        raise MalformedMessage(msg)
    ulen = r.u8()
    if ulen is None:
        return None
    if ulen == 0:
        msg = "empty RFC 1929 username"
        raise MalformedMessage(msg)
    uname = r.take(ulen)
    plen = r.u8()
    if uname is None or plen is None:
        return None
    if plen == 0:
        msg = "empty RFC 1929 password"
        raise MalformedMessage(msg)
    passwd = r.take(plen)
    if passwd is None:
        return None
    return UserPassRequest(uname, passwd), r.pos


def maybe_read_userpass_reply(buf: Buf) -> tuple[UserPassReply, int] | None:
    """Parse RFC 1929 VER | STATUS (client side).

    Raises:
        MalformedMessage: subnegotiation version is not 1.
    """
    if len(buf) < 2:
        return None
    if buf[0] != USERPASS_VERSION:
        msg = f"expected RFC 1929 version 0x01, got {buf[0]:#04x}"
        raise MalformedMessage(msg)
    return UserPassReply(buf[1]), 2


def maybe_read_request(buf: Buf) -> tuple[object, int] | None:
    """Parse one request of any registered command: (message, consumed), or None if incomplete.

    Raises:
        UnsupportedVersion: VER is not 5 (no reply possible).
        UnsupportedCommand: no reader for CMD (REP 07).
        UnsupportedAddressType: bad ATYP (REP 08).
        MalformedMessage: RSV is not 0, or the body is malformed (REP 01).
    """
    r = Reader(buf)
    ver = r.u8()
    if ver is None:
        return None
    _check_version(ver)
    cmd = r.u8()
    if cmd is None:
        return None
    reader = REQUEST_READERS.get(cmd)
    if reader is None:
        msg = f"unknown command {cmd:#04x}"
        raise UnsupportedCommand(msg)
    rsv = r.u8()
    if rsv is None:
        return None
    if rsv != 0:
        msg = f"RSV must be 0x00, got {rsv:#04x}"
        raise MalformedMessage(msg)
    message = reader(r, Command(cmd))
    return None if message is None else (message, r.pos)


def maybe_read_reply(buf: Buf) -> tuple[Reply, int] | None:
    """Parse a plain-shape reply (client side).

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: RSV is not 0.
        UnsupportedAddressType: bad ATYP.
    """
    r = Reader(buf)
    ver = r.u8()
    if ver is None:
        return None
    _check_version(ver)
    rep = r.u8()
    rsv = r.u8()
    if rep is None or rsv is None:
        return None
    if rsv != 0:
        msg = f"RSV must be 0x00, got {rsv:#04x}"
        raise MalformedMessage(msg)
    address = read_address_from(r)
    if address is None:
        return None
    try:
        code = ReplyCode(rep)
    except ValueError:
        msg = f"unknown reply code {rep:#04x}"
        raise MalformedMessage(msg) from None
    return Reply(code, address), r.pos
