"""Every wire value socksx speaks, as enums, with the document that defines it.

RFC 1928 (SOCKS5), RFC 1929 (username/password), the SOCKS4/4a notes, and the extensions in
docs/PROTOCOL.md. Nothing else in socksx may spell a wire value as a bare number.
"""

from __future__ import annotations

import enum

SOCKS4_VERSION = 0x04  #: SOCKS4 protocol note, "VN"
SOCKS5_VERSION = 0x05  #: RFC 1928 §3, "VER"
USERPASS_VERSION = 0x01  #: RFC 1929 §2, subnegotiation "VER"
SOCKS4_REPLY_VERSION = 0x00  #: SOCKS4 reply "VN" is 0

MAX_METHODS = 255  #: RFC 1928 §3: NMETHODS is one octet
MAX_DOMAIN_LENGTH = 255  #: RFC 1928 §5: one length octet
MAX_LABEL_LENGTH = 63  #: RFC 1035 §2.3.4: a DNS label
MAX_USERID_LENGTH = 255  #: SOCKS4 USERID / SOCKS4a hostname bound (ours: keeps parsers bounded)
MAX_UDP_PAYLOAD = 65507  #: largest IPv4 UDP payload; the relay must never truncate below it
UDP_RECV_SIZE = 65535  #: recvfrom size: anything larger than any datagram


class Method(enum.IntEnum):
    """Authentication methods (RFC 1928 §3)."""

    NO_AUTH = 0x00  #: RFC 1928 §3
    GSSAPI = 0x01  #: RFC 1928 §3 (not offered by socksx)
    USERNAME_PASSWORD = 0x02  #: RFC 1928 §3, RFC 1929
    NO_ACCEPTABLE = 0xFF  #: RFC 1928 §3


class Command(enum.IntEnum):
    """SOCKS5 request commands (RFC 1928 §4 and docs/PROTOCOL.md)."""

    CONNECT = 0x01  #: RFC 1928 §4
    BIND = 0x02  #: RFC 1928 §4
    UDP_ASSOCIATE = 0x03  #: RFC 1928 §4
    JOIN_MCAST_GROUP = 0x05  #: PROTOCOL.md "Multicast"
    LEAVE_MCAST_GROUP = 0x06  #: PROTOCOL.md "Multicast"
    SETUP_UDP_TUNNEL = 0x07  #: PROTOCOL.md "UDP tunnels"
    MULTI_BIND = 0x08  #: PROTOCOL.md "Multi-bind"
    ACCEPT = 0x09  #: PROTOCOL.md "Multi-bind"


class Atyp(enum.IntEnum):
    """Address types (RFC 1928 §5)."""

    IPV4 = 0x01  #: RFC 1928 §5
    DOMAINNAME = 0x03  #: RFC 1928 §5
    IPV6 = 0x04  #: RFC 1928 §5


class ReplyCode(enum.IntEnum):
    """REP values (RFC 1928 §6) and the extension codes of docs/PROTOCOL.md."""

    SUCCEEDED = 0x00  #: RFC 1928 §6
    GENERAL_FAILURE = 0x01  #: RFC 1928 §6
    NOT_ALLOWED = 0x02  #: RFC 1928 §6 "connection not allowed by ruleset"
    NETWORK_UNREACHABLE = 0x03  #: RFC 1928 §6
    HOST_UNREACHABLE = 0x04  #: RFC 1928 §6
    CONNECTION_REFUSED = 0x05  #: RFC 1928 §6
    TTL_EXPIRED = 0x06  #: RFC 1928 §6
    COMMAND_NOT_SUPPORTED = 0x07  #: RFC 1928 §6
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08  #: RFC 1928 §6
    MCAST_RECEIVE_ONLY = 0xB0  #: PROTOCOL.md "Multicast": not authorized to send
    MCAST_SEND_ONLY = 0xB1  #: PROTOCOL.md "Multicast": not authorized to receive
    MCAST_DENIED = 0xB2  #: PROTOCOL.md "Multicast": neither send nor receive
    MCAST_LIMIT = 0xB3  #: PROTOCOL.md "Multicast": member or group limit reached
    PEER_AUTH_FAILED = 0xB8  #: PROTOCOL.md "UDP tunnels": the far gateway refused the credentials
    PEER_CERT_FAILED = 0xB9  #: PROTOCOL.md "UDP tunnels": the far gateway's certificate failed
    PEER_REFUSED = 0xBA  #: PROTOCOL.md "UDP tunnels": the far gateway refused the tunnel


REPLY_TEXT: dict[ReplyCode, str] = {
    ReplyCode.SUCCEEDED: "succeeded",
    ReplyCode.GENERAL_FAILURE: "general SOCKS server failure",
    ReplyCode.NOT_ALLOWED: "connection not allowed by ruleset",
    ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    ReplyCode.HOST_UNREACHABLE: "host unreachable",
    ReplyCode.CONNECTION_REFUSED: "connection refused",
    ReplyCode.TTL_EXPIRED: "TTL expired",
    ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
    ReplyCode.MCAST_RECEIVE_ONLY: "not authorized to send to the group",
    ReplyCode.MCAST_SEND_ONLY: "not authorized to receive from the group",
    ReplyCode.MCAST_DENIED: "not authorized to send or receive",
    ReplyCode.MCAST_LIMIT: "group or channel membership limit reached",
    ReplyCode.PEER_AUTH_FAILED: "peer gateway rejected the credentials",
    ReplyCode.PEER_CERT_FAILED: "peer gateway certificate failed verification",
    ReplyCode.PEER_REFUSED: "peer gateway refused the tunnel",
}


class Notice(enum.IntEnum):
    """Server-initiated events on an extension control channel (docs/PROTOCOL.md)."""

    MCAST_EXPIRED = 0xB4  #: PROTOCOL.md "Multicast": membership expired
    MCAST_EXPELLED = 0xB5  #: PROTOCOL.md "Multicast": expelled by policy
    MCAST_REKEY = 0xB6  #: PROTOCOL.md "Multicast": new group key follows
    MCAST_RELAY_DOWN = 0xB7  #: PROTOCOL.md "Multicast": relay shut down
    PEER_CONNECTED = 0xC0  #: PROTOCOL.md "Multi-bind": a peer waits to be accepted
    CHANNEL_CLOSED = 0xC1  #: PROTOCOL.md "Multi-bind": a channel was closed
    ACCEPT_EXPIRED = 0xC2  #: PROTOCOL.md "Multi-bind": a waiting peer was not accepted in time


MAX_CHANNELS = 16  #: PROTOCOL.md "Multi-bind": NCHAN is 1..16
TOKEN_SIZE = 16  #: PROTOCOL.md "Multi-bind": the ACCEPT token, octets


class ChannelType(enum.IntEnum):
    """MULTI_BIND channel TYPE (docs/PROTOCOL.md "Multi-bind")."""

    TCP = 0x01  #: PROTOCOL.md "Multi-bind": a TCP listener
    UDP = 0x02  #: PROTOCOL.md "Multi-bind": a UDP relay


class ChannelFlag(enum.IntFlag):
    """MULTI_BIND channel FLAGS bits (docs/PROTOCOL.md "Multi-bind")."""

    RTP_PAIR = 0x01  #: PROTOCOL.md "Multi-bind": this UDP channel and the next form a pair


class ChannelCloseReason(enum.IntEnum):
    """REASON of a C1 CHANNEL_CLOSED notice (docs/PROTOCOL.md "Multi-bind")."""

    IDLE = 0x01  #: PROTOCOL.md "Multi-bind": no traffic for multibind.idle_timeout
    POLICY = 0x02  #: PROTOCOL.md "Multi-bind": the access rules no longer allow it
    ERROR = 0x03  #: PROTOCOL.md "Multi-bind": a socket error on the channel
    SHUTDOWN = 0x04  #: PROTOCOL.md "Multi-bind": the server is shutting down


class TunnelProto(enum.IntEnum):
    """SETUP_UDP_TUNNEL PROTO: how datagrams travel between two gateways."""

    TLS = 0x01  #: PROTOCOL.md "UDP tunnels": frames inside the TLS control connection
    UDP = 0x02  #: PROTOCOL.md "UDP tunnels": sealed datagrams over UDP


class TunnelDir(enum.IntEnum):
    """The TYPE octet of a PROTO 02 sealed datagram: its direction."""

    A_TO_B = 0x01  #: PROTOCOL.md "UDP tunnels": from the gateway that asked for the tunnel
    B_TO_A = 0x02  #: PROTOCOL.md "UDP tunnels": from the gateway that granted it


TUNNEL_KEY_BLOCK_LEN = 36  #: PROTOCOL.md "UDP tunnels": LEN of TUNNEL_ID(4) | KEY(32)
TUNNEL_FRAME_MAX = 0xFFFF  #: PROTOCOL.md "UDP tunnels": a PROTO 01 frame's LEN is two octets


class McastDatagramType(enum.IntEnum):
    """TYPE, the first octet of a member/relay datagram (PROTOCOL.md "Multicast")."""

    MEMBER_SEALED = 0x01  #: member -> relay, sealed with MEMBER_KEY
    RELAY_SEALED = 0x02  #: relay -> members, sealed with GROUP_KEY or the member's MEMBER_KEY
    MEMBER_PLAIN = 0x03  #: member -> relay, unencrypted relay only
    RELAY_PLAIN = 0x04  #: relay -> members, unencrypted relay only


class KeySuite(enum.IntEnum):
    """SUITE octet of a JOIN reply's KEY field (PROTOCOL.md "Multicast")."""

    SECRETBOX = 0x01  #: NaCl secretbox (XSalsa20-Poly1305), 32-octet keys


MCAST_KEY_LEN = 73  #: PROTOCOL.md "Multicast": SUITE | MEMBER_ID | KEY_ID | MEMBER_KEY | GROUP_KEY
MCAST_REKEY_LEN = 36  #: PROTOCOL.md "Multicast": B6 trailer KEY_ID | GROUP_KEY


class UserPassStatus(enum.IntEnum):
    """RFC 1929 §2 STATUS: 0 is success, anything else is failure."""

    SUCCESS = 0x00  #: RFC 1929 §2
    FAILURE = 0x01  #: RFC 1929 §2 (any non-zero value)


class Socks4Command(enum.IntEnum):
    """SOCKS4 "CD" request codes."""

    CONNECT = 0x01  #: SOCKS4 protocol note
    BIND = 0x02  #: SOCKS4 protocol note


class Socks4Code(enum.IntEnum):
    """SOCKS4 "CD" reply codes."""

    GRANTED = 0x5A  #: request granted
    REJECTED = 0x5B  #: request rejected or failed
    NO_IDENTD = 0x5C  #: client not running identd (never sent by socksx)
    IDENTD_MISMATCH = 0x5D  #: identd user mismatch (never sent by socksx)
