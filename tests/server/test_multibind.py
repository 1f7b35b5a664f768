"""MULTI_BIND and ACCEPT through the real server on loopback (docs/PROTOCOL.md section 10)."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from click.testing import CliRunner

from socksx.client import multi_bind
from socksx.client.multibind import AcceptExpired, ChannelClosed, PeerConnected
from socksx.errors import ReplyError
from socksx.protocol.address import Address
from socksx.protocol.constants import ChannelCloseReason, ChannelFlag, ChannelType
from socksx.protocol.messages import Reply
from socksx.protocol.multibind import (
    AcceptRequest,
    BoundChannel,
    ChannelRequest,
    MultiBindReply,
    MultiBindRequest,
    maybe_read_event,
    maybe_read_multibind_reply,
)
from tests.conftest import recv_all, recv_exactly, sha256, wait_until
from tests.server.socks_raw import negotiate, read_reply
from tests.server.test_server_auth import userpass_toml, write_users

TCP = ChannelRequest(ChannelType.TCP)
UDP = ChannelRequest(ChannelType.UDP)
PAIR = ChannelRequest(ChannelType.UDP, ChannelFlag.RTP_PAIR)
ANY = Address("0.0.0.0", 0)
WAIT = 5.0


class Control:
    """A raw MULTI_BIND control connection: the reply, then events, parsed from one buffer."""

    def __init__(self, proxy, request: bytes, *, source: str = "127.0.0.1", **auth) -> None:
        self.sock = socket.create_connection(proxy, timeout=WAIT, source_address=(source, 0))
        negotiate(self.sock, auth.get("user"), auth.get("password"))
        self.sock.sendall(request)
        self.buf = bytearray()

    def _parse(self, parse):
        while (parsed := parse(self.buf)) is None:
            data = self.sock.recv(4096)
            assert data, f"EOF; buffered {bytes(self.buf).hex()}"
            self.buf += data
        message, consumed = parsed
        del self.buf[:consumed]
        return message

    def reply(self) -> MultiBindReply | Reply:
        return self._parse(maybe_read_multibind_reply)

    def event(self):
        return self._parse(maybe_read_event)

    def assert_closed(self) -> None:
        assert not self.buf
        assert recv_all(self.sock) == b""

    def close(self) -> None:
        self.sock.close()


def open_channels(server, channels, peer=ANY, **kw) -> tuple[Control, MultiBindReply]:
    control = Control(server.address, MultiBindRequest(peer, tuple(channels)).to_bytes(), **kw)
    reply = control.reply()
    assert isinstance(reply, MultiBindReply), reply
    return control, reply


def accept_raw(server, token: bytes, *, source: str = "127.0.0.1", **auth):
    sock = socket.create_connection(server.address, timeout=WAIT, source_address=(source, 0))
    negotiate(sock, auth.get("user"), auth.get("password"))
    sock.sendall(AcceptRequest(token).to_bytes())
    return sock, read_reply(sock)


def connect_from(address: Address, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        (address.host, address.port), timeout=WAIT, source_address=(source, 0)
    )


def udp_from(source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(WAIT)
    return sock


def register(sock: socket.socket, relay: Address) -> None:
    sock.sendto(b"\0\0\0" + ANY.to_bytes(), (relay.host, relay.port))


def snapshots(server) -> list[dict]:
    return server.call(lambda: [mb.snapshot() for mb in server.server.multibinds.values()])


def gone(server) -> bool:
    return not server.call(lambda: len(server.server.multibinds))


# -- the media-server scenario ----------------------------------------------------------------


class MediaServer(threading.Thread):
    """The remote peer: two TCP connections (control and data) and an RTP/RTCP pair.

    On each TCP channel it sends a payload and reads the client's answer to EOF; on the pair it
    sends RTP packets and RTCP sender reports, each answered by the client, ping-pong (so
    nothing can be lost to a full socket buffer on a busy machine).
    """

    def __init__(self, tcp: list[Address], rtp: Address, rtcp: Address) -> None:
        super().__init__(daemon=True)
        self.tcp, self.rtp, self.rtcp = tcp, rtp, rtcp
        self.payloads = [os.urandom(256 * 1024 + n) for n in range(len(tcp))]
        self.answers: list[bytes] = []
        self.rtp_packets = [self.rtp_packet(seq) for seq in range(64)]
        self.rtcp_reports = [b"\x80\xc8\x00\x06" + os.urandom(24) for _ in range(8)]
        self.echoed: list[tuple[str, bytes]] = []
        self.error: BaseException | None = None

    @staticmethod
    def rtp_packet(seq: int) -> bytes:
        return bytes([0x80, 96]) + seq.to_bytes(2, "big") + os.urandom(8) + os.urandom(160)

    def run(self) -> None:
        try:
            conns = [connect_from(address) for address in self.tcp]
            for conn, payload in zip(conns, self.payloads, strict=True):
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
            self.answers = [recv_all(conn) for conn in conns]
            for conn in conns:
                conn.close()
            with udp_from() as rtp, udp_from() as rtcp:
                for packet in self.rtp_packets:
                    rtp.sendto(packet, (self.rtp.host, self.rtp.port))
                    self.echoed.append(("rtp", rtp.recvfrom(65535)[0]))
                for report in self.rtcp_reports:
                    rtcp.sendto(report, (self.rtcp.host, self.rtcp.port))
                    self.echoed.append(("rtcp", rtcp.recvfrom(65535)[0]))
        except BaseException as exc:
            self.error = exc


def test_media_server_reaches_the_client_on_two_tcp_channels_and_an_rtp_pair(make_server):
    server = make_server()
    with multi_bind(proxy=server.address, tcp=2, udp=2, rtp_pair=True, timeout=WAIT) as mb:
        assert [c.type for c in mb.channels] == ["tcp", "tcp", "udp", "udp"]
        rtp, rtcp = mb.channels[2], mb.channels[3]
        assert rtp.rtp_pair
        assert rtp.bound[1] % 2 == 0
        assert rtcp.bound[1] == rtp.bound[1] + 1
        assert all(c.bound[0] == "127.0.0.1" for c in mb.channels)
        media = MediaServer(
            [Address(*c.bound) for c in mb.channels[:2]], Address(*rtp.bound), Address(*rtcp.bound)
        )
        media.start()
        received: dict[int, bytes] = {}
        for _ in range(2):
            event = mb.next_event(timeout=WAIT)
            assert isinstance(event, PeerConnected)
            assert event.peer.host == "127.0.0.1"
            with mb.accept(event) as sock:
                received[event.chan_id] = recv_all(sock)
                sock.sendall(b"answer on channel %d" % event.chan_id)
        rtp_socket, rtcp_socket = mb.udp_socket(2), mb.udp_socket(3)
        got = []
        for channel_socket in [rtp_socket] * 64 + [rtcp_socket] * 8:
            data, peer = channel_socket.recvfrom(timeout=WAIT)
            got.append(data)
            channel_socket.sendto(b"RR " + data[:4], peer)
        media.join(WAIT * 2)
        assert media.error is None, media.error
        assert [sha256(received[i]) for i in (0, 1)] == [sha256(p) for p in media.payloads]
        assert media.answers == [b"answer on channel 0", b"answer on channel 1"]
        assert sha256(b"".join(got)) == sha256(b"".join(media.rtp_packets + media.rtcp_reports))
        assert [data for _, data in media.echoed] == [b"RR " + p[:4] for p in got]
        (snap,) = snapshots(server)
        tcp0, tcp1, udp2, udp3 = snap["channels"]
        assert (tcp0["accepted"], tcp1["accepted"]) == (1, 1)
        assert tcp0["bytes_down"] == len(media.payloads[0])
        assert tcp1["bytes_up"] == len(b"answer on channel 1")
        assert (udp2["datagrams_down"], udp2["datagrams_up"]) == (64, 64)
        assert (udp3["datagrams_down"], udp3["datagrams_up"]) == (8, 8)
        assert udp2["bytes_down"] == sum(len(p) for p in media.rtp_packets)
        assert snap["open_channels"] == 4
        json.dumps(snap)
    wait_until(lambda: gone(server), "the MULTI_BIND outlived its control connection")


# -- the wire ----------------------------------------------------------------------------------


def test_reply_names_every_channel_in_order_with_rel_for_udp_only(make_server):
    server = make_server()
    request = bytes.fromhex("05 08 00 01 00000000 0000 03 01 00 02 00 01 00")
    control = Control(server.address, request)
    head = recv_exactly(control.sock, 4)
    assert head == bytes.fromhex("05 00 00 03")
    entries = []
    for chan_id, kind in ((0, 1), (1, 2), (2, 1)):
        assert recv_exactly(control.sock, 2) == bytes([chan_id, kind])
        bound = recv_exactly(control.sock, 7)
        relay = recv_exactly(control.sock, 7) if kind == 2 else None
        entries.append((bound, relay))
    for bound, relay in entries:
        assert bound[:5] == bytes.fromhex("01 7f000001")
        assert relay is None or relay[:5] == bytes.fromhex("01 7f000001")
    control.close()


@pytest.mark.parametrize(
    "body",
    [
        "00",  # NCHAN 0: socksx check's probe
        "11" + "0100" * 17,
        "01 03 00",
        "01 02 02",
        "01 02 01",  # pair bit on the last channel
        "02 01 01 02 00",  # pair bit on TCP
        "02 02 01 01 00",  # a pair's partner is TCP
    ],
)
def test_malformed_requests_get_rep_01_and_close(make_server, body):
    server = make_server()
    control = Control(server.address, bytes.fromhex("05 08 00 01 00000000 0000" + body))
    assert read_reply(control.sock) == (0x01, "0.0.0.0", 0)
    control.assert_closed()
    control.close()


def test_second_multibind_on_the_connection_gets_01_and_closes_everything(make_server):
    server = make_server()
    control, reply = open_channels(server, [TCP, UDP])
    control.sock.sendall(MultiBindRequest(ANY, (TCP,)).to_bytes())
    assert read_reply(control.sock) == (0x01, "0.0.0.0", 0)
    control.assert_closed()
    control.close()
    wait_until(lambda: gone(server), "channels still open")
    with pytest.raises(ConnectionRefusedError):
        connect_from(reply.channels[0].bound)


def test_garbage_on_the_control_connection_gets_01_and_closes(make_server):
    server = make_server()
    control, _ = open_channels(server, [TCP])
    control.sock.sendall(b"\x05\x08\x07")
    assert read_reply(control.sock) == (0x01, "0.0.0.0", 0)
    control.assert_closed()
    control.close()


# -- ACCEPT ------------------------------------------------------------------------------------


def wait_peer(control: Control, chan_id: int = 0) -> PeerConnected:
    event = control.event()
    assert isinstance(event, PeerConnected), event
    assert event.chan_id == chan_id
    return event


def test_accept_relays_early_peer_bytes_and_tokens_are_single_use(make_server):
    server = make_server()
    control, reply = open_channels(server, [TCP])
    peer = connect_from(reply.channels[0].bound)
    peer.sendall(b"OPTIONS rtsp://cam RTSP/1.0\r\n\r\n")
    event = wait_peer(control)
    assert event.peer == Address(*peer.getsockname())
    sock, (rep, host, port) = accept_raw(server, event.token)
    assert (rep, host, port) == (0, "127.0.0.1", peer.getsockname()[1])
    assert recv_exactly(sock, 31) == b"OPTIONS rtsp://cam RTSP/1.0\r\n\r\n"
    sock.sendall(b"RTSP/1.0 200 OK\r\n\r\n")
    assert recv_exactly(peer, 19) == b"RTSP/1.0 200 OK\r\n\r\n"
    again, (rep, _, _) = accept_raw(server, event.token)
    assert rep == 0x02
    assert recv_all(again) == b""
    # The accepted connection is a session of its own: it outlives the control connection.
    control.close()
    wait_until(lambda: gone(server), "control connection not closed")
    peer.sendall(b"still here")
    assert recv_exactly(sock, 10) == b"still here"
    for s in (sock, peer, again):
        s.close()


def test_wrong_token_gets_02_and_close(make_server):
    server = make_server()
    control, reply = open_channels(server, [TCP])
    peer = connect_from(reply.channels[0].bound)
    event = wait_peer(control)
    wrong = bytes(b ^ 1 for b in event.token)
    sock, (rep, _, _) = accept_raw(server, wrong)
    assert rep == 0x02
    assert recv_all(sock) == b""
    sock.close()
    ok, (rep, _, _) = accept_raw(server, event.token)  # the right one still works
    assert rep == 0x00
    for s in (ok, peer):
        s.close()
    control.close()


def test_expired_token_gets_c2_the_peer_is_closed_and_accept_gets_02(make_server):
    server = make_server("[multibind]\naccept_timeout = 0.3\n")
    control, reply = open_channels(server, [TCP])
    peer = connect_from(reply.channels[0].bound)
    event = wait_peer(control)
    expired = control.event()
    assert expired == AcceptExpired(0, event.token)
    assert recv_all(peer) == b""
    sock, (rep, _, _) = accept_raw(server, event.token)
    assert rep == 0x02
    (snap,) = snapshots(server)
    assert snap["channels"][0]["expired"] == 1
    assert snap["channels"][0]["open"] is True  # the channel stays open
    second = connect_from(reply.channels[0].bound)
    assert isinstance(control.event(), PeerConnected)
    for s in (sock, peer, second):
        s.close()
    control.close()


def test_token_of_another_user_or_another_address_gets_02_and_stays_valid(make_server, tmp_path):
    users = write_users(tmp_path / "users", {"alice": b"pw-a", "bob": b"pw-b"})
    server = make_server(userpass_toml(users))
    alice = {"user": b"alice", "password": b"pw-a"}
    control, reply = open_channels(server, [TCP], **alice)
    peer = connect_from(reply.channels[0].bound)
    event = wait_peer(control)
    bob, (rep, _, _) = accept_raw(server, event.token, user=b"bob", password=b"pw-b")
    assert rep == 0x02
    elsewhere, (rep, _, _) = accept_raw(server, event.token, source="127.0.0.2", **alice)
    assert rep == 0x02
    mine, (rep, _, port) = accept_raw(server, event.token, **alice)
    assert (rep, port) == (0x00, peer.getsockname()[1])
    mine.sendall(b"x")
    assert recv_exactly(peer, 1) == b"x"
    (snap,) = snapshots(server)
    assert snap["user"] == "alice"
    assert snap["channels"][0]["foreign_accepts"] == 2
    for s in (bob, elsewhere, mine, peer):
        s.close()
    control.close()


def test_rules_can_refuse_accept(make_server):
    rules = (
        '[[rules]]\naction = "deny"\ncommands = ["accept"]\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    server = make_server(rules=rules)
    control, reply = open_channels(server, [TCP])
    peer = connect_from(reply.channels[0].bound)
    event = wait_peer(control)
    sock, (rep, _, _) = accept_raw(server, event.token)
    assert rep == 0x02
    for s in (sock, peer):
        s.close()
    control.close()


# -- the DST filter, rules and limits --------------------------------------------------------


def test_only_the_expected_peer_gets_through(make_server):
    server = make_server()
    control, reply = open_channels(server, [TCP, UDP], peer=Address("127.0.0.2", 0))
    tcp, udp = reply.channels
    client = udp_from()
    register(client, udp.relay)
    stranger = connect_from(tcp.bound, source="127.0.0.1")
    assert recv_all(stranger) == b""  # closed at once, no C0
    expected = connect_from(tcp.bound, source="127.0.0.2")
    event = wait_peer(control)
    assert event.peer.host == "127.0.0.2"
    with udp_from("127.0.0.1") as wrong, udp_from("127.0.0.2") as right:
        wrong.sendto(b"not you", (udp.bound.host, udp.bound.port))
        right.sendto(b"you", (udp.bound.host, udp.bound.port))
        try:
            data, _ = client.recvfrom(65535)
        except TimeoutError:
            raise AssertionError(snapshots(server)) from None
        assert data == b"\0\0\0" + Address(*right.getsockname()).to_bytes() + b"you"
        # The client may only send to the expected peer too.
        client.sendto(
            b"\0\0\0" + Address(*wrong.getsockname()).to_bytes() + b"no",
            (udp.relay.host, udp.relay.port),
        )
        client.sendto(
            b"\0\0\0" + Address(*right.getsockname()).to_bytes() + b"yes",
            (udp.relay.host, udp.relay.port),
        )
        assert right.recvfrom(100)[0] == b"yes"
    (snap,) = snapshots(server)
    assert snap["channels"][0]["dropped"] == {"filtered": 1}
    assert snap["channels"][1]["dropped"] == {"filtered": 2}
    for s in (client, stranger, expected):
        s.close()
    control.close()


def test_dst_port_filters_udp_peers_by_port(make_server):
    server = make_server()
    with udp_from() as media, udp_from() as other:
        control, reply = open_channels(server, [UDP], peer=Address(*media.getsockname()))
        (udp,) = reply.channels
        client = udp_from()
        register(client, udp.relay)
        other.sendto(b"other port", (udp.bound.host, udp.bound.port))
        media.sendto(b"media", (udp.bound.host, udp.bound.port))
        assert client.recvfrom(100)[0].endswith(b"media")
        client.close()
        control.close()


def test_peer_datagrams_before_registration_are_dropped_and_counted(make_server):
    server = make_server()
    control, reply = open_channels(server, [UDP])
    (udp,) = reply.channels
    with udp_from() as media, udp_from() as client:
        media.sendto(b"too early", (udp.bound.host, udp.bound.port))
        wait_until(
            lambda: snapshots(server)[0]["channels"][0]["dropped"].get("unregistered") == 1,
            "early datagram not counted",
        )
        register(client, udp.relay)
        wait_until(lambda: snapshots(server)[0]["channels"][0]["registered"], "not registered")
        media.sendto(b"in time", (udp.bound.host, udp.bound.port))
        assert client.recvfrom(100)[0].endswith(b"in time")
        channel = snapshots(server)[0]["channels"][0]
        assert (channel["datagrams_up"], channel["datagrams_down"]) == (0, 1)
    control.close()


def test_rules_decide_which_peers_are_allowed(make_server):
    rules = (
        '[[rules]]\nid = "no-dot-3"\naction = "deny"\nto = ["127.0.0.3/32"]\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    server = make_server(rules=rules)
    denied = Control(server.address, MultiBindRequest(Address("127.0.0.3", 0), (TCP,)).to_bytes())
    assert read_reply(denied.sock)[0] == 0x02
    denied.assert_closed()
    control, reply = open_channels(server, [TCP])
    refused = connect_from(reply.channels[0].bound, source="127.0.0.3")
    assert recv_all(refused) == b""
    allowed = connect_from(reply.channels[0].bound, source="127.0.0.4")
    assert wait_peer(control).peer.host == "127.0.0.4"
    assert snapshots(server)[0]["channels"][0]["dropped"] == {"policy": 1}
    for s in (denied.sock, refused, allowed):
        s.close()
    control.close()


def test_max_pending_closes_the_extra_peer(make_server):
    server = make_server("[multibind]\nmax_pending = 2\n")
    control, reply = open_channels(server, [TCP])
    peers = [connect_from(reply.channels[0].bound) for _ in range(2)]
    tokens = {wait_peer(control).token for _ in peers}
    extra = connect_from(reply.channels[0].bound)
    assert recv_all(extra) == b""
    channel = snapshots(server)[0]["channels"][0]
    assert (channel["waiting"], channel["dropped"]) == (2, {"overflow": 1})
    sock, (rep, _, _) = accept_raw(server, tokens.pop())
    assert rep == 0
    late = connect_from(reply.channels[0].bound)  # room again
    wait_peer(control)
    for s in (*peers, extra, sock, late):
        s.close()
    control.close()


@pytest.mark.parametrize(
    ("config", "first", "second"),
    [
        ("max_channels_per_request = 2", 3, None),
        ("max_channels_per_client = 3", 2, 2),
    ],
)
def test_channel_limits_refuse_with_02(make_server, config, first, second):
    server = make_server(f"[multibind]\n{config}\n")
    one = Control(server.address, MultiBindRequest(ANY, (TCP,) * first).to_bytes())
    if second is None:
        assert read_reply(one.sock)[0] == 0x02
        one.close()
        return
    assert isinstance(one.reply(), MultiBindReply)
    two = Control(server.address, MultiBindRequest(ANY, (TCP,) * second).to_bytes())
    assert read_reply(two.sock)[0] == 0x02
    # Another client address has its own budget.
    three = Control(
        server.address, MultiBindRequest(ANY, (TCP,) * second).to_bytes(), source="127.0.0.2"
    )
    assert isinstance(three.reply(), MultiBindReply)
    for control in (one, two, three):
        control.close()


def test_per_user_limit_spans_addresses(make_server, tmp_path):
    users = write_users(tmp_path / "users", {"alice": b"pw-a", "bob": b"pw-b"})
    extra = "[multibind]\nmax_channels_per_user = 2\nmax_channels_per_client = 0\n"
    server = make_server(userpass_toml(users, extra))
    alice = {"user": b"alice", "password": b"pw-a"}
    one = Control(server.address, MultiBindRequest(ANY, (TCP, TCP)).to_bytes(), **alice)
    assert isinstance(one.reply(), MultiBindReply)
    two = Control(
        server.address, MultiBindRequest(ANY, (TCP,)).to_bytes(), source="127.0.0.2", **alice
    )
    assert read_reply(two.sock)[0] == 0x02
    bob = Control(
        server.address, MultiBindRequest(ANY, (TCP, TCP)).to_bytes(), user=b"bob", password=b"pw-b"
    )
    assert isinstance(bob.reply(), MultiBindReply)
    one.close()
    wait_until(lambda: len(snapshots(server)) == 1, "alice's channels still counted")
    three = Control(server.address, MultiBindRequest(ANY, (TCP,)).to_bytes(), **alice)
    assert isinstance(three.reply(), MultiBindReply)
    for control in (two, bob, three):
        control.close()


def test_disabled_multibind_answers_07_and_the_client_says_so(make_server):
    server = make_server("[multibind]\nenabled = false\n")
    with pytest.raises(ReplyError, match="has no multi-bind support") as info:
        multi_bind(proxy=server.address, tcp=1, timeout=WAIT)
    assert info.value.reply == 0x07
    sock, (rep, _, _) = accept_raw(server, bytes(16))
    assert rep == 0x07
    sock.close()


# -- lifetime ----------------------------------------------------------------------------------


def test_closing_the_control_connection_frees_every_port(make_server):
    server = make_server()
    control, reply = open_channels(server, [TCP, PAIR, UDP, UDP])
    waiting = connect_from(reply.channels[0].bound)
    wait_peer(control)
    control.close()
    assert recv_all(waiting) == b""  # the waiting peer is closed with it
    waiting.close()  # (the server's end of it then waits in TIME_WAIT, which SO_REUSEADDR allows)
    wait_until(lambda: gone(server), "MULTI_BIND still registered")
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", reply.channels[0].bound.port))
    tcp.listen()
    udp = reply.channels[1:]
    udp_ports = [c.bound.port for c in udp] + [c.relay.port for c in udp]
    sockets = [tcp]
    for port in udp_ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        sockets.append(sock)
    for sock in sockets:
        sock.close()


def test_idle_channels_close_with_c1_01_then_the_connection(make_server):
    server = make_server("[multibind]\nidle_timeout = 0.3\n")
    control, _ = open_channels(server, [TCP, UDP])
    events = {control.event(), control.event()}
    assert events == {
        ChannelClosed(0, ChannelCloseReason.IDLE),
        ChannelClosed(1, ChannelCloseReason.IDLE),
    }
    control.assert_closed()
    control.close()


def test_busy_udp_channel_outlives_an_idle_one(make_server):
    server = make_server("[multibind]\nidle_timeout = 0.5\n")
    control, reply = open_channels(server, [UDP, UDP])
    busy = reply.channels[1]
    stop = threading.Event()

    def keep_busy(client: socket.socket) -> None:
        while not stop.wait(0.05):
            register(client, busy.relay)

    with udp_from() as client:
        sender = threading.Thread(target=keep_busy, args=(client,), daemon=True)
        sender.start()
        try:
            assert control.event() == ChannelClosed(0, ChannelCloseReason.IDLE)
            channels = snapshots(server)[0]["channels"]
        finally:
            stop.set()
            sender.join(WAIT)
    assert [c["open"] for c in channels] == [False, True]
    assert channels[0]["closed_reason"] == "idle"
    assert control.event() == ChannelClosed(1, ChannelCloseReason.IDLE)
    control.assert_closed()
    control.close()


def test_server_shutdown_sends_c1_04(make_server):
    server = make_server()
    control, _ = open_channels(server, [TCP])
    stopper = threading.Thread(target=lambda: server.call(lambda: server.server.stop(grace=0.1)))
    stopper.start()
    assert control.event() == ChannelClosed(0, ChannelCloseReason.SHUTDOWN)
    control.assert_closed()
    stopper.join(WAIT)
    control.close()


def test_reload_with_rules_that_refuse_closes_channels_with_c1_02(make_server, tmp_path):
    server = make_server()
    control, _ = open_channels(server, [TCP])
    config = tmp_path / "deny.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\n[[rules]]\naction = "deny"\ncommands = ["multibind"]\n'
    )
    assert server.call(lambda: server.server.reload(str(config)))
    assert control.event() == ChannelClosed(0, ChannelCloseReason.POLICY)
    control.assert_closed()
    control.close()


def test_ipv6_loopback(make_server):
    from tests.conftest import have_ipv6_loopback

    if not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    rules = '[[rules]]\naction = "allow"\nfrom = ["::1/128"]\n'
    server = make_server(listen=["[::1]:0"], rules=rules)
    with multi_bind(proxy=server.address, tcp=1, udp=1, timeout=WAIT) as mb:
        assert [c.bound[0] for c in mb.channels] == ["::1", "::1"]
        with socket.create_connection(mb.channels[0].bound, timeout=WAIT) as peer:
            event = mb.next_event(timeout=WAIT)
            with mb.accept(event) as sock:
                peer.sendall(b"v6")
                assert recv_exactly(sock, 2) == b"v6"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as media:
            media.bind(("::1", 0))
            media.sendto(b"dgram", mb.channels[1].bound)
            data, source = mb.udp_socket(1).recvfrom(timeout=WAIT)
            assert (data, source) == (b"dgram", media.getsockname()[:2])


# -- socksx check ------------------------------------------------------------------------------


def test_socksx_check_reports_multibind_and_accept_as_supported(make_server):
    from socksx.cli._app import App
    from socksx.cli.check import check

    server = make_server()
    host, port = server.address
    result = CliRunner().invoke(
        check,
        ["--via", f"{host}:{port}", "--json", "--timeout", "3"],
        obj=App(),
        catch_exceptions=False,
    )
    report = json.loads(result.stdout)
    assert report["extensions"]["multi_bind"] is True
    assert report["extensions"]["accept"] is True
    probes = {p["probe"]: p for p in report["probes"]}
    assert probes["multi_bind"]["status"] == "ok"
    assert probes["accept"]["status"] == "ok"


def test_over_a_tls_listener_events_and_accept_both_travel_in_tls(make_server, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key, ca_file = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    server = make_server(f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{chain}"\nkey = "{key}"\n')
    port = server.addresses[1][1]
    with multi_bind(
        proxy=f"socks5s://127.0.0.1:{port}", ca_file=str(ca_file), tcp=2, udp=1, timeout=WAIT
    ) as mb:
        peers = [connect_from(Address(*c.bound)) for c in mb.channels[:2]]
        for _ in peers:
            event = mb.next_event(timeout=WAIT)
            assert isinstance(event, PeerConnected)
            with mb.accept(event) as sock:
                assert hasattr(sock, "getpeercert")
                peers[event.chan_id].sendall(b"peer %d" % event.chan_id)
                assert recv_exactly(sock, 6) == b"peer %d" % event.chan_id
        with udp_from() as media:
            media.sendto(b"over tls control", mb.channels[2].bound)
            assert mb.udp_socket(2).recvfrom(timeout=WAIT)[0] == b"over tls control"
        for peer in peers:
            peer.close()


# -- the client library's edges ----------------------------------------------------------------


class FakeProxy:
    """One connection: selects no-auth, reads the request, answers *answer*, then closes."""

    def __init__(self, answer: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            recv_exactly(conn, 3)
            conn.sendall(b"\x05\x00")
            conn.recv(4096)
            conn.sendall(self.answer)
            conn.shutdown(socket.SHUT_WR)
            recv_all(conn)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(WAIT)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", r"closed the connection instead of answering MULTI_BIND \(no multi-bind support\?\)"),
        (bytes.fromhex("05 00 00 00"), "bad answer from proxy"),
    ],
)
def test_a_proxy_that_cannot_multibind_is_a_connection_error(answer, message):
    from socksx.errors import ProxyConnectionError

    fake = FakeProxy(answer)
    with pytest.raises(ProxyConnectionError, match=message):
        multi_bind(proxy=fake.address, tcp=1, timeout=WAIT)
    fake.close()


def test_garbage_instead_of_an_event_is_a_connection_error():
    from socksx.errors import ProxyConnectionError

    reply = MultiBindReply((BoundChannel(0, ChannelType.TCP, Address("127.0.0.1", 9)),))
    fake = FakeProxy(reply.to_bytes() + b"\x05\xc9\x00\x00")
    with (
        multi_bind(proxy=fake.address, tcp=1, timeout=WAIT) as mb,
        pytest.raises(ProxyConnectionError, match="bad event"),
    ):
        mb.next_event(timeout=WAIT)
    fake.close()


def test_events_end_when_the_proxy_closes_and_close_wakes_other_threads(make_server):
    server = make_server("[multibind]\nidle_timeout = 0.3\n")
    with multi_bind(proxy=server.address, tcp=1, timeout=WAIT) as mb:
        assert list(mb.events()) == [ChannelClosed(0, ChannelCloseReason.IDLE)]
        assert mb.next_event() is None
    with multi_bind(proxy=server.address, tcp=1, udp=1, timeout=WAIT) as mb:
        results: list[object] = []

        def wait_event() -> None:
            results.append(mb.next_event())

        def wait_datagram() -> None:
            try:
                mb.udp_socket(1).recvfrom()
            except OSError as exc:
                results.append(type(exc))

        with pytest.raises(TimeoutError):
            mb.udp_socket(1).recvfrom(timeout=0.05)
        threads = [threading.Thread(target=f) for f in (wait_event, wait_datagram)]
        for thread in threads:
            thread.start()
        mb.close()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(map(repr, results)) == sorted(map(repr, [None, OSError]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "ask for 1 to 16 channels"),
        ({"tcp": 9, "udp": 8}, "ask for 1 to 16 channels"),
        ({"udp": 1, "rtp_pair": True}, "needs at least two UDP channels"),
        ({"tcp": 1, "proxy": "socks4://127.0.0.1:1"}, "needs a SOCKS5 proxy"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        multi_bind(**{"proxy": ("127.0.0.1", 1), **kwargs})


def test_accept_takes_a_raw_token_and_explains_a_refusal(make_server):
    server = make_server()
    with multi_bind(proxy=server.address, tcp=1, timeout=WAIT) as mb:
        with pytest.raises(ReplyError, match="token is unknown, used, expired or not ours"):
            mb.accept(bytes(16))
        with connect_from(Address(*mb.channels[0].bound)) as peer:
            event = mb.next_event(timeout=WAIT)
            with mb.accept(event.token) as sock:
                sock.sendall(b"raw token")
                assert recv_exactly(peer, 9) == b"raw token"
        with pytest.raises(ValueError, match="not a UDP channel"):
            mb.udp_socket(0)


def test_the_embedded_default_serves_multibind_on_loopback():
    """Issue 7: `socksx bind` works on one machine with the embedded default config."""
    from socksx.config import DEFAULT_TOML
    from tests.conftest import ServerThread

    text = DEFAULT_TOML.replace('listen = ["127.0.0.1:1080"]', 'listen = ["127.0.0.1:0"]')
    assert text != DEFAULT_TOML
    server = ServerThread(text + "[admin]\nenabled = false\n", "<embedded default>")
    try:
        with multi_bind(proxy=server.address, tcp=1, udp=2, rtp_pair=True, timeout=WAIT) as mb:
            assert {c.bound[0] for c in mb.channels} == {"127.0.0.1"}
            with (
                connect_from(Address(*mb.channels[0].bound)) as peer,
                mb.accept(mb.next_event(timeout=WAIT)) as sock,
            ):
                peer.sendall(b"default")
                assert recv_exactly(sock, 7) == b"default"
    finally:
        server.stop()
