"""MULTI_BIND (CMD 08) and ACCEPT (CMD 09): several reverse channels on one control connection.

docs/PROTOCOL.md "Multi-bind" is the specification; the layouts, after VER | CMD | RSV:

    MULTI_BIND request   ATYP | DST.ADDR | DST.PORT | NCHAN | (TYPE | FLAGS) x NCHAN
    MULTI_BIND reply     05 | 00 | 00 | NCHAN | entries
        entry            CHAN_ID | TYPE | ATYP | BND.ADDR | BND.PORT [| ATYP | REL.ADDR | REL.PORT]
                         (the REL address only for TYPE 02, UDP)
    C0 PEER_CONNECTED    05 | C0 | 00 | CHAN_ID | TOKEN(16) | ATYP | PEER.ADDR | PEER.PORT
    C1 CHANNEL_CLOSED    05 | C1 | 00 | CHAN_ID | REASON
    C2 ACCEPT_EXPIRED    05 | C2 | 00 | CHAN_ID | TOKEN(16)
    ACCEPT request       TOKEN(16)
    ACCEPT reply         the plain RFC 1928 reply (PEER address), then the stream is relayed

A failed MULTI_BIND is answered with the plain RFC 1928 reply shape (``messages.Reply``), so the
client-side reply parser returns either a ``MultiBindReply`` or a failure ``Reply``.

Importing this module registers both request readers and the server-sent message types with the
codec (the request table of ``messages`` and the send table of ``connection``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from socksx.protocol.address import ZERO_V4, Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.connection import NOTICE_KIND, REPLY_KIND, register_reply_type
from socksx.protocol.constants import (
    MAX_CHANNELS,
    SOCKS5_VERSION,
    TOKEN_SIZE,
    ChannelCloseReason,
    ChannelFlag,
    ChannelType,
    Command,
    Notice,
    ReplyCode,
)
from socksx.protocol.errors import LocalProtocolError, MalformedMessage, UnsupportedVersion
from socksx.protocol.messages import Reply, maybe_read_reply, register_request_reader

__all__ = [
    "AcceptExpired",
    "AcceptRequest",
    "BoundChannel",
    "ChannelClosed",
    "ChannelRequest",
    "MultiBindEvent",
    "MultiBindReply",
    "MultiBindRequest",
    "PeerConnected",
    "maybe_read_event",
    "maybe_read_multibind_reply",
]

Buf = bytes | bytearray | memoryview

#: The FLAGS bits a channel may carry; anything else is refused (REP 01).
_KNOWN_FLAGS = int(ChannelFlag.RTP_PAIR)


def _channel_problem(channels: tuple[ChannelRequest, ...]) -> str | None:
    """Why a channel list cannot be a MULTI_BIND request (None when it can).

    The pair rules: the bit sits on a UDP channel that is not the last, the next channel is UDP
    too, and that next channel carries no pair bit itself (a channel in two pairs would need
    both an odd and an even port).
    """
    if not 1 <= len(channels) <= MAX_CHANNELS:
        return f"NCHAN {len(channels)} is outside 1..{MAX_CHANNELS}"
    for index, channel in enumerate(channels):
        if not channel.rtp_pair:
            continue
        if channel.type is not ChannelType.UDP:
            return f"channel {index}: the RTP/RTCP pair bit is only allowed on UDP channels"
        if index == len(channels) - 1:
            return f"channel {index}: the RTP/RTCP pair bit on the last channel"
        partner = channels[index + 1]
        if partner.type is not ChannelType.UDP:
            return f"channel {index}: the second channel of an RTP/RTCP pair must be UDP"
        if partner.rtp_pair:
            return f"channel {index + 1}: a channel cannot belong to two RTP/RTCP pairs"
    return None


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """One requested channel: TYPE and FLAGS."""

    type: ChannelType
    flags: ChannelFlag = ChannelFlag(0)

    def __post_init__(self) -> None:
        if not isinstance(self.type, ChannelType):
            msg = f"channel TYPE {self.type!r} is not a ChannelType"
            raise LocalProtocolError(msg)
        if not isinstance(self.flags, int) or int(self.flags) & ~_KNOWN_FLAGS:
            msg = f"channel FLAGS {self.flags!r} has unknown bits"
            raise LocalProtocolError(msg)
        object.__setattr__(self, "flags", ChannelFlag(int(self.flags)))

    @property
    def rtp_pair(self) -> bool:
        """True when this channel and the next form an RTP/RTCP pair."""
        return bool(self.flags & ChannelFlag.RTP_PAIR)


@dataclass(frozen=True, slots=True)
class MultiBindRequest:
    """MULTI_BIND: the expected peer (0.0.0.0:0 / [::]:0 for any) and the channels wanted."""

    address: Address
    channels: tuple[ChannelRequest, ...]

    def __post_init__(self) -> None:
        problem = _channel_problem(self.channels)
        if problem:
            raise LocalProtocolError(problem)

    @property
    def command(self) -> Command:
        """Always MULTI_BIND (the state machine and the session read ``command``)."""
        return Command.MULTI_BIND

    def to_bytes(self) -> bytes:
        """VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT | NCHAN | (TYPE | FLAGS) x NCHAN."""
        body = bytearray([SOCKS5_VERSION, Command.MULTI_BIND, 0])
        body += self.address.to_bytes()
        body.append(len(self.channels))
        for channel in self.channels:
            body += bytes([channel.type, channel.flags])
        return bytes(body)


@dataclass(frozen=True, slots=True)
class AcceptRequest:
    """ACCEPT: claim the waiting peer connection a C0 notice announced with this token."""

    token: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.token, bytes) or len(self.token) != TOKEN_SIZE:
            msg = f"an ACCEPT token is {TOKEN_SIZE} octets"
            raise LocalProtocolError(msg)

    @property
    def command(self) -> Command:
        """Always ACCEPT."""
        return Command.ACCEPT

    def to_bytes(self) -> bytes:
        """VER | CMD | RSV | TOKEN."""
        return bytes([SOCKS5_VERSION, Command.ACCEPT, 0]) + self.token


@dataclass(frozen=True, slots=True)
class BoundChannel:
    """One entry of the success reply: where the peer reaches the channel (``bound``) and, for
    a UDP channel, where the client exchanges its datagrams with the server (``relay``)."""

    chan_id: int
    type: ChannelType
    bound: Address
    relay: Address | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.chan_id, int) or not 0 <= self.chan_id < MAX_CHANNELS:
            msg = f"CHAN_ID {self.chan_id!r} is outside 0..{MAX_CHANNELS - 1}"
            raise LocalProtocolError(msg)
        if not isinstance(self.type, ChannelType):
            msg = f"channel TYPE {self.type!r} is not a ChannelType"
            raise LocalProtocolError(msg)
        if (self.relay is None) != (self.type is ChannelType.TCP):
            msg = "a UDP channel has a relay address and a TCP channel has none"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """CHAN_ID | TYPE | ATYP | BND.ADDR | BND.PORT [| ATYP | REL.ADDR | REL.PORT]."""
        out = bytes([self.chan_id, self.type]) + self.bound.to_bytes()
        return out if self.relay is None else out + self.relay.to_bytes()


@dataclass(frozen=True, slots=True)
class MultiBindReply:
    """The success reply: one entry per channel, in CHAN_ID order."""

    channels: tuple[BoundChannel, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.channels) <= MAX_CHANNELS:
            msg = f"NCHAN {len(self.channels)} is outside 1..{MAX_CHANNELS}"
            raise LocalProtocolError(msg)
        if [c.chan_id for c in self.channels] != list(range(len(self.channels))):
            msg = "reply entries must be in CHAN_ID order 0..NCHAN-1"
            raise LocalProtocolError(msg)

    @property
    def ok(self) -> bool:
        """Always True: failures use the plain reply shape."""
        return True

    def to_bytes(self) -> bytes:
        """05 | 00 | 00 | NCHAN | entries."""
        head = bytes([SOCKS5_VERSION, ReplyCode.SUCCEEDED, 0, len(self.channels)])
        return head + b"".join(channel.to_bytes() for channel in self.channels)


def _check_chan_id(chan_id: int) -> None:
    if not isinstance(chan_id, int) or not 0 <= chan_id < MAX_CHANNELS:
        msg = f"CHAN_ID {chan_id!r} is outside 0..{MAX_CHANNELS - 1}"
        raise LocalProtocolError(msg)


def _check_token(token: object) -> None:
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        msg = f"a token is {TOKEN_SIZE} octets"
        raise LocalProtocolError(msg)


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """C0: a peer connected to TCP channel ``chan_id`` and waits to be accepted with ``token``."""

    chan_id: int
    token: bytes = field(repr=False)
    peer: Address = ZERO_V4

    def __post_init__(self) -> None:
        _check_chan_id(self.chan_id)
        _check_token(self.token)

    def to_bytes(self) -> bytes:
        """05 | C0 | 00 | CHAN_ID | TOKEN | ATYP | PEER.ADDR | PEER.PORT."""
        head = bytes([SOCKS5_VERSION, Notice.PEER_CONNECTED, 0, self.chan_id])
        return head + self.token + self.peer.to_bytes()


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """C1: channel ``chan_id`` was closed by the server, for ``reason``."""

    chan_id: int
    reason: ChannelCloseReason

    def __post_init__(self) -> None:
        _check_chan_id(self.chan_id)
        if not isinstance(self.reason, ChannelCloseReason):
            msg = f"REASON {self.reason!r} is not a ChannelCloseReason"
            raise LocalProtocolError(msg)

    def to_bytes(self) -> bytes:
        """05 | C1 | 00 | CHAN_ID | REASON."""
        return bytes([SOCKS5_VERSION, Notice.CHANNEL_CLOSED, 0, self.chan_id, self.reason])


@dataclass(frozen=True, slots=True)
class AcceptExpired:
    """C2: the peer announced with ``token`` was not accepted in time and was closed."""

    chan_id: int
    token: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_chan_id(self.chan_id)
        _check_token(self.token)

    def to_bytes(self) -> bytes:
        """05 | C2 | 00 | CHAN_ID | TOKEN."""
        return bytes([SOCKS5_VERSION, Notice.ACCEPT_EXPIRED, 0, self.chan_id]) + self.token


MultiBindEvent = PeerConnected | ChannelClosed | AcceptExpired


# -- readers (server side: requests) ---------------------------------------------------------


def _read_multibind(r: Reader, command: Command) -> MultiBindRequest | None:
    """The body after VER | CMD | RSV. Each bad octet is refused as soon as it arrives.

    Raises:
        MalformedMessage: NCHAN 0 or above 16, an unknown TYPE or FLAGS bit, a pair bit that
            breaks the pair rules (REP 01).
        UnsupportedAddressType: bad ATYP (REP 08).
    """
    address = read_address_from(r)
    if address is None:
        return None
    nchan = r.u8()
    if nchan is None:
        return None
    if not 1 <= nchan <= MAX_CHANNELS:
        msg = f"NCHAN {nchan} is outside 1..{MAX_CHANNELS}"
        raise MalformedMessage(msg)
    channels: list[ChannelRequest] = []
    for index in range(nchan):
        paired = bool(channels) and channels[-1].rtp_pair
        kind = r.u8()
        if kind is None:
            return None
        if kind not in ChannelType._value2member_map_:
            msg = f"channel {index}: unknown TYPE {kind:#04x}"
            raise MalformedMessage(msg)
        channel_type = ChannelType(kind)
        if paired and channel_type is not ChannelType.UDP:
            msg = f"channel {index - 1}: the second channel of an RTP/RTCP pair must be UDP"
            raise MalformedMessage(msg)
        flags = r.u8()
        if flags is None:
            return None
        if flags & ~_KNOWN_FLAGS:
            msg = f"channel {index}: unknown FLAGS bits {flags:#04x}"
            raise MalformedMessage(msg)
        if flags & ChannelFlag.RTP_PAIR:
            # The same rules as _channel_problem, each checked as soon as its octet is here.
            if channel_type is not ChannelType.UDP:
                msg = f"channel {index}: the RTP/RTCP pair bit is only allowed on UDP channels"
                raise MalformedMessage(msg)
            if index == nchan - 1:
                msg = f"channel {index}: the RTP/RTCP pair bit on the last channel"
                raise MalformedMessage(msg)
            if paired:
                msg = f"channel {index}: a channel cannot belong to two RTP/RTCP pairs"
                raise MalformedMessage(msg)
        channels.append(ChannelRequest(channel_type, ChannelFlag(flags)))
    return MultiBindRequest(address, tuple(channels))


def _read_accept(r: Reader, command: Command) -> AcceptRequest | None:
    token = r.take(TOKEN_SIZE)
    return None if token is None else AcceptRequest(token)


register_request_reader(Command.MULTI_BIND, _read_multibind)
register_request_reader(Command.ACCEPT, _read_accept)
register_reply_type(MultiBindReply, REPLY_KIND)
for _notice in (PeerConnected, ChannelClosed, AcceptExpired):
    register_reply_type(_notice, NOTICE_KIND)
del _notice


# -- parsers (client side: the reply and the events) -----------------------------------------


def _check_head(buf: Buf) -> None:
    if buf[0] != SOCKS5_VERSION:
        msg = f"expected SOCKS version 0x05, got {buf[0]:#04x}"
        raise UnsupportedVersion(msg)


def _read_channel_type(r: Reader, what: str) -> ChannelType | None:
    kind = r.u8()
    if kind is None:
        return None
    if kind not in ChannelType._value2member_map_:
        msg = f"{what}: unknown TYPE {kind:#04x}"
        raise MalformedMessage(msg)
    return ChannelType(kind)


def maybe_read_multibind_reply(buf: Buf) -> tuple[MultiBindReply | Reply, int] | None:
    """Parse the answer to a MULTI_BIND: the success reply, or a failure in the plain shape.

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: RSV not 0, NCHAN 0 or above 16, entries out of CHAN_ID order, an
            unknown TYPE, a UDP entry without a relay address; a plain reply with REP 00.
        UnsupportedAddressType: bad ATYP.
    """
    if len(buf) < 2:
        if buf:
            _check_head(buf)
        return None
    _check_head(buf)
    if buf[1] != ReplyCode.SUCCEEDED:
        return maybe_read_reply(buf)
    r = Reader(buf, 2)
    rsv = r.u8()
    if rsv is None:
        return None
    if rsv != 0:
        msg = f"RSV must be 0x00, got {rsv:#04x}"
        raise MalformedMessage(msg)
    nchan = r.u8()
    if nchan is None:
        return None
    if not 1 <= nchan <= MAX_CHANNELS:
        msg = f"reply NCHAN {nchan} is outside 1..{MAX_CHANNELS}"
        raise MalformedMessage(msg)
    entries: list[BoundChannel] = []
    for index in range(nchan):
        chan_id = r.u8()
        if chan_id is None:
            return None
        if chan_id != index:
            msg = f"reply entry {index} has CHAN_ID {chan_id}"
            raise MalformedMessage(msg)
        kind = _read_channel_type(r, f"reply entry {index}")
        if kind is None:
            return None
        bound = read_address_from(r)
        if bound is None:
            return None
        relay = None
        if kind is ChannelType.UDP:
            relay = read_address_from(r)
            if relay is None:
                return None
        entries.append(BoundChannel(chan_id, kind, bound, relay))
    return MultiBindReply(tuple(entries)), r.pos


def maybe_read_event(buf: Buf) -> tuple[MultiBindEvent, int] | None:
    """Parse one C0, C1 or C2 notice from the front of *buf*.

    Raises:
        UnsupportedVersion: VER is not 5.
        MalformedMessage: a code other than C0/C1/C2, RSV not 0, CHAN_ID above 15, an unknown
            REASON.
        UnsupportedAddressType: bad ATYP in C0.
    """
    r = Reader(buf)
    ver = r.u8()
    if ver is None:
        return None
    _check_head(buf)
    code = r.u8()
    if code is None:
        return None
    if code not in (Notice.PEER_CONNECTED, Notice.CHANNEL_CLOSED, Notice.ACCEPT_EXPIRED):
        msg = f"unexpected message code {code:#04x} on a multi-bind control connection"
        raise MalformedMessage(msg)
    rsv = r.u8()
    if rsv is None:
        return None
    if rsv != 0:
        msg = f"RSV must be 0x00, got {rsv:#04x}"
        raise MalformedMessage(msg)
    chan_id = r.u8()
    if chan_id is None:
        return None
    if chan_id >= MAX_CHANNELS:
        msg = f"CHAN_ID {chan_id} is outside 0..{MAX_CHANNELS - 1}"
        raise MalformedMessage(msg)
    event: MultiBindEvent
    if code == Notice.CHANNEL_CLOSED:
        reason = r.u8()
        if reason is None:
            return None
        if reason not in ChannelCloseReason._value2member_map_:
            msg = f"unknown C1 REASON {reason:#04x}"
            raise MalformedMessage(msg)
        event = ChannelClosed(chan_id, ChannelCloseReason(reason))
        return event, r.pos
    token = r.take(TOKEN_SIZE)
    if token is None:
        return None
    if code == Notice.ACCEPT_EXPIRED:
        return AcceptExpired(chan_id, token), r.pos
    peer = read_address_from(r)
    if peer is None:
        return None
    return PeerConnected(chan_id, token, peer), r.pos
