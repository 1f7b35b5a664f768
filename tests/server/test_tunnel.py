"""SETUP_UDP_TUNNEL through two real servers on loopback: A (plain, and TLS) and B (TLS).

The UDP echo stands "in site B"; the client library asks A for the tunnel. Where a test needs
to be gateway A or B itself (replays and forgeries on the inter-gateway UDP path, a silent
peer), it speaks the protocol with the codec, so the bytes are the documented ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest
import trustme

from socksx.client.tunnel import open_tunnel
from socksx.config import TunnelPeer, loads, to_toml
from socksx.errors import ConfigError, ReplyError
from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode, TunnelDir, TunnelProto
from socksx.protocol.messages import maybe_read_reply
from socksx.protocol.sealed import open_sealed, seal
from socksx.protocol.tunnel import (
    TunnelReply,
    TunnelRequest,
    maybe_read_frame,
    maybe_read_tunnel_reply,
)
from tests.conftest import LOOPBACK_RULE, UdpEcho, recv_exactly, wait_until
from tests.server.socks_raw import negotiate, open_socks, read_reply
from tests.server.test_server_auth import write_users

ZERO = Address("0.0.0.0", 0)
PROTOS = [pytest.param("tls", id="proto01"), pytest.param("udp", id="proto02")]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def pki(ca, tmp_path):
    """B's certificate (gw-b.test, 127.0.0.1), A's (gw-a.test), the CA file, and a wrong CA."""
    files = {}
    for name in ("gw-b.test", "gw-a.test"):
        cert = ca.issue_cert(name, "127.0.0.1")
        files[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        cert.private_key_and_cert_chain_pem.write_to_path(str(files[name][0]))
        cert.private_key_pem.write_to_path(str(files[name][1]))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "wrong-ca.pem"))
    files["ca"] = tmp_path / "ca.pem"
    files["wrong-ca"] = tmp_path / "wrong-ca.pem"
    return files


def tls_section(pki, name: str) -> str:
    chain, key = pki[name]
    return f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{chain}"\nkey = "{key}"\n'


def peer_table(port: int, ca: str = "", name: str = "gw-b.test", fingerprint: str = "") -> str:
    return (
        f'[[tunnel.peer]]\naddress = "127.0.0.1:{port}"\nca = "{ca}"\nname = "{name}"\n'
        f'fingerprint = "{fingerprint}"\n'
    )


class Pair:
    """Gateway A and gateway B, with the client's view of them."""

    def __init__(self, a, b, a_tls: bool) -> None:
        self.a = a
        self.b = b
        self.via = (
            f"socks5s://127.0.0.1:{a.addresses[1][1]}"
            if a_tls
            else f"socks5h://{a.address[0]}:{a.address[1]}"
        )
        self.b_tls = b.addresses[1]

    def tunnels(self, server) -> list[dict]:
        return server.call(lambda: [t.snapshot() for t in server.server.tunnels.values()])


@pytest.fixture
def gateways(make_server, pki, tmp_path):
    """Factory: ``gateways(b_extra="", a_tunnel="", peer=..., a_tls=False, b_rules=...)``."""

    def make(
        *,
        b_top: str = "",
        b_tunnel: str = "",
        b_rules: str = LOOPBACK_RULE,
        a_tunnel: str = "",
        a_rules: str = LOOPBACK_RULE,
        a_tls: bool = False,
        peer: Callable[[tuple[str, int]], str] | None = None,
    ) -> Pair:
        b = make_server(
            b_top + tls_section(pki, "gw-b.test") + "[tunnel]\n" + b_tunnel, rules=b_rules
        )
        table = peer(b.addresses[1]) if peer else peer_table(b.addresses[1][1], pki["ca"])
        a_extra = tls_section(pki, "gw-a.test") if a_tls else ""
        a = make_server(a_extra + "[tunnel]\n" + a_tunnel + table, rules=a_rules)
        return Pair(a, b, a_tls)

    return make


def tunnel_of(pair: Pair, proto: str = "tls", **kwargs):
    kwargs.setdefault("ca_file", None)
    return open_tunnel(pair.b_tls, proxy=pair.via, proto=proto, timeout=15, **kwargs)


def round_trip(tunnel, echo: UdpEcho, payloads: list[bytes]) -> None:
    for payload in payloads:
        tunnel.sendto(payload, echo.address)
        data, source = tunnel.recvfrom(timeout=10)
        assert (data, source) == (payload, echo.address)


# -- data through the tunnel ----------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_datagrams_cross_the_tunnel_both_ways_intact(gateways, udp_echo, proto):
    pair = gateways()
    payloads = [b"x", bytes(range(256)) * 4, b"\x00" * 1200, b"big" * 3000]
    with tunnel_of(pair, proto) as tunnel:
        round_trip(tunnel, udp_echo, payloads)
        near, far = pair.tunnels(pair.a)[0], pair.tunnels(pair.b)[0]
    sizes = sum(len(p) for p in payloads)
    assert (near["role"], near["proto"], far["role"], far["proto"]) == ("near", proto, "far", proto)
    assert (near["datagrams_out"], near["datagrams_in"]) == (4, 4)
    assert (far["datagrams_in"], far["datagrams_out"]) == (4, 4)
    assert near["bytes_out"] == near["bytes_in"] == far["bytes_in"] == sizes
    assert udp_echo.sources[0][0] == "127.0.0.1"
    if proto == "udp":
        assert far["tunnel_id"] == near["tunnel_id"] is not None
        assert far["keepalives_received"] >= 1  # A's keepalive right after B's reply


def test_peer_asked_for_by_name_resolves_and_verifies_the_name(make_server, pki, udp_echo):
    def resolver(host, port):
        assert host == "gw-b.test"
        return [(socket.AF_INET, ("127.0.0.1", port))]

    b = make_server(tls_section(pki, "gw-b.test"))
    port = b.addresses[1][1]
    a = make_server(
        f'[[tunnel.peer]]\naddress = "gw-b.test:{port}"\nca = "{pki["ca"]}"\n', resolver=resolver
    )
    with open_tunnel(
        ("gw-b.test", port), proxy=f"socks5h://127.0.0.1:{a.address[1]}", proto="udp", timeout=15
    ) as tunnel:
        round_trip(tunnel, udp_echo, [b"by name"])


def test_many_clients_share_one_peer_each_with_its_own_tunnel(gateways, udp_echo):
    pair = gateways()
    tunnels = [tunnel_of(pair, proto) for proto in ("tls", "udp", "udp")]
    try:
        for index, tunnel in enumerate(tunnels):
            round_trip(tunnel, udp_echo, [f"client {index}".encode()])
        far = pair.tunnels(pair.b)
        assert len(far) == 3
        assert len({t["tunnel_id"] for t in far if t["proto"] == "udp"}) == 2
    finally:
        for tunnel in tunnels:
            tunnel.close()


# -- refusals -------------------------------------------------------------------------------------


def test_credentials_reach_b_inside_tls(gateways, udp_echo, tmp_path, pki):
    users = write_users(tmp_path / "users", {"alice": b"s3cret"})
    pair = gateways(b_top=f'auth = "userpass"\nusers_file = "{users}"\n', a_tls=True)
    with tunnel_of(
        pair, "udp", ca_file=str(pki["ca"]), peer_username="alice", peer_password="s3cret"
    ) as tunnel:
        round_trip(tunnel, udp_echo, [b"authenticated"])
        assert pair.tunnels(pair.b)[0]["user"] == "alice"


def test_wrong_credentials_give_b8(gateways, tmp_path, pki):
    users = write_users(tmp_path / "users", {"alice": b"s3cret"})
    pair = gateways(b_top=f'auth = "userpass"\nusers_file = "{users}"\n', a_tls=True)
    with pytest.raises(ReplyError) as info:
        tunnel_of(pair, ca_file=str(pki["ca"]), peer_username="alice", peer_password="wrong")
    assert info.value.reply == ReplyCode.PEER_AUTH_FAILED
    with pytest.raises(ReplyError) as info:  # no credentials where B requires them
        tunnel_of(pair, ca_file=str(pki["ca"]))
    assert info.value.reply == ReplyCode.PEER_AUTH_FAILED


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(lambda pki, port: peer_table(port, pki["wrong-ca"]), id="wrong-ca"),
        pytest.param(lambda pki, port: peer_table(port, pki["ca"], "other.test"), id="wrong-name"),
        pytest.param(
            lambda pki, port: peer_table(port, fingerprint="sha256:" + "00" * 32),
            id="wrong-pin",
        ),
    ],
)
def test_certificate_failures_give_b9(gateways, pki, peer):
    pair = gateways(peer=lambda address: peer(pki, address[1]))
    with pytest.raises(ReplyError) as info:
        tunnel_of(pair)
    assert info.value.reply == ReplyCode.PEER_CERT_FAILED


def test_pinned_fingerprint_alone_is_enough(gateways, pki, udp_echo):
    import hashlib

    chain = pki["gw-b.test"][0].read_text()
    first = chain[chain.index("-----BEGIN CERTIFICATE-----") :]
    der = ssl.PEM_cert_to_DER_cert(first[: first.index("-----END CERTIFICATE-----") + 25])
    pin = "sha256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    pair = gateways(peer=lambda address: peer_table(address[1], fingerprint=pin, name=""))
    with tunnel_of(pair, "udp") as tunnel:
        round_trip(tunnel, udp_echo, [b"pinned"])


def test_b_unreachable_gives_05(make_server):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    a = make_server(f'[[tunnel.peer]]\naddress = "127.0.0.1:{port}"\n')
    with pytest.raises(ReplyError) as info:
        open_tunnel(("127.0.0.1", port), proxy=f"socks5h://127.0.0.1:{a.address[1]}", timeout=15)
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED


def test_peer_not_configured_gives_02(gateways):
    pair = gateways()
    with pytest.raises(ReplyError) as info:
        open_tunnel(("127.0.0.1", pair.b.address[1]), proxy=pair.via, timeout=15)
    assert info.value.reply == ReplyCode.NOT_ALLOWED


def test_a_rules_denying_the_peer_give_02(gateways):
    deny = '[[rules]]\nid = "no-tunnels"\naction = "deny"\ncommands = ["tunnel"]\n'
    pair = gateways(a_rules=deny + LOOPBACK_RULE)
    with pytest.raises(ReplyError) as info:
        tunnel_of(pair)
    assert info.value.reply == ReplyCode.NOT_ALLOWED
    assert pair.tunnels(pair.b) == []


def test_credentials_on_a_plaintext_connection_give_02(gateways):
    pair = gateways()
    request = TunnelRequest(Address(*pair.b_tls), TunnelProto.TLS, b"alice", b"s3cret")
    with open_socks(pair.a.address) as sock:
        negotiate(sock)
        sock.sendall(request.to_bytes())
        assert read_reply(sock)[0] == ReplyCode.NOT_ALLOWED
    assert pair.tunnels(pair.b) == []
    with pytest.raises(ValueError, match="TLS"):  # the library does not even send them
        tunnel_of(pair, peer_username="alice", peer_password="s3cret")


def test_gateway_form_on_a_plain_listener_gives_02(gateways):
    pair = gateways()
    with open_socks(pair.b.address) as sock:
        negotiate(sock)
        sock.sendall(TunnelRequest(ZERO, TunnelProto.UDP).to_bytes())
        assert read_reply(sock)[0] == ReplyCode.NOT_ALLOWED


def test_check_probe_gets_01(socks_server):
    with open_socks(socks_server.address) as sock:
        negotiate(sock)
        sock.sendall(bytes.fromhex("05 07 00 01 00000000 0000 ff 00 00"))
        assert read_reply(sock)[0] == ReplyCode.GENERAL_FAILURE


def test_disabled_tunnels_give_07(make_server):
    server = make_server("[tunnel]\nenabled = false\n")
    with open_socks(server.address) as sock:
        negotiate(sock)
        sock.sendall(TunnelRequest(Address("127.0.0.1", 1), TunnelProto.TLS).to_bytes())
        assert read_reply(sock)[0] == ReplyCode.COMMAND_NOT_SUPPORTED


def test_b_limit_gives_ba(gateways, udp_echo):
    pair = gateways(b_tunnel="max_tunnels = 1\n")
    with tunnel_of(pair) as first:
        round_trip(first, udp_echo, [b"first"])
        with pytest.raises(ReplyError) as info:
            tunnel_of(pair)
        assert info.value.reply == ReplyCode.PEER_REFUSED


def test_b_rules_refusing_every_tunnel_give_ba(gateways):
    deny = '[[rules]]\naction = "deny"\ncommands = ["tunnel"]\n' + LOOPBACK_RULE
    pair = gateways(b_rules=deny)
    with pytest.raises(ReplyError) as info:
        tunnel_of(pair)
    assert info.value.reply == ReplyCode.PEER_REFUSED


@pytest.mark.parametrize("proto", PROTOS)
def test_b_rules_drop_a_denied_destination_and_the_tunnel_goes_on(gateways, udp_echo, proto):
    denied = UdpEcho()
    try:
        rules = (
            f'[[rules]]\nid = "no-port"\naction = "deny"\ncommands = ["tunnel"]\n'
            f"ports = [{denied.address[1]}]\n" + LOOPBACK_RULE
        )
        pair = gateways(b_rules=rules)
        with tunnel_of(pair, proto) as tunnel:
            tunnel.sendto(b"must not arrive", denied.address)
            round_trip(tunnel, udp_echo, [b"still up"])
            far = pair.tunnels(pair.b)[0]
        assert far["dropped"] == {"policy": 1}
        assert denied.sources == []
        assert pair.b.call(lambda: pair.b.server.stats.rule_denials) == 1
    finally:
        denied.close()


# -- teardown -------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_closing_the_client_tears_down_both_gateways(gateways, udp_echo, proto):
    pair = gateways()
    tunnel = tunnel_of(pair, proto)
    round_trip(tunnel, udp_echo, [b"bye soon"])
    assert len(pair.tunnels(pair.b)) == 1
    tunnel.close()
    wait_until(lambda: pair.tunnels(pair.a) == [] and pair.tunnels(pair.b) == [])

    def results(server):
        return server.call(lambda: dict(server.server.stats.by_result))

    wait_until(lambda: results(pair.b).get("peer-closed") == 1)
    assert results(pair.a).get("client-closed") == 1


def test_b_stopping_ends_the_clients_tunnel(gateways, udp_echo):
    pair = gateways()
    with tunnel_of(pair, "udp") as tunnel:
        round_trip(tunnel, udp_echo, [b"x"])
        pair.b.stop()
        tunnel.control.settimeout(10)
        assert tunnel.control.recv(10) == b""  # A closed the client's connection
    wait_until(lambda: pair.tunnels(pair.a) == [])


def test_reload_without_the_peer_ends_its_tunnels(gateways, udp_echo, tmp_path):
    pair = gateways()
    with tunnel_of(pair) as tunnel:
        round_trip(tunnel, udp_echo, [b"x"])
        source = pair.a.call(lambda: pair.a.server.config.source)
        with open(source) as stream:
            text = stream.read()
        with open(source, "w") as stream:
            stream.write(
                text.split("[[tunnel.peer]]")[0] + '\n[log]\nlevel = "warning"\n' + LOOPBACK_RULE
            )
        assert pair.a.call(pair.a.server.reload) is True
        tunnel.control.settimeout(10)
        assert tunnel.control.recv(10) == b""
    wait_until(lambda: pair.tunnels(pair.b) == [])
    assert pair.a.call(lambda: dict(pair.a.server.stats.by_result)).get("peer-removed") == 1


# -- timers ---------------------------------------------------------------------------------------


def test_keepalives_hold_an_idle_tunnel_open(gateways, udp_echo):
    timers = "keepalive = 0.2\ndead_after = 1.0\n"
    pair = gateways(b_tunnel=timers, a_tunnel=timers)
    with tunnel_of(pair, "tls") as tls_tunnel, tunnel_of(pair, "udp") as udp_tunnel:
        time.sleep(2.0)  # idle for twice dead_after: only keepalives cross
        round_trip(tls_tunnel, udp_echo, [b"alive"])
        round_trip(udp_tunnel, udp_echo, [b"alive"])
        for snap in pair.tunnels(pair.a) + pair.tunnels(pair.b):
            assert snap["keepalives_received"] >= 3, snap


class ManualA:
    """The test as gateway A: TLS to B, the gateway-form request, then raw sealed datagrams."""

    def __init__(self, b_tls: tuple[str, int], ca_file: str) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection(b_tls, timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname="gw-b.test")
        negotiate(self.tls)
        self.tls.sendall(TunnelRequest(ZERO, TunnelProto.UDP).to_bytes())
        buf = b""
        while (parsed := maybe_read_tunnel_reply(buf, TunnelProto.UDP)) is None:
            buf += self.tls.recv(100)
        reply = parsed[0]
        assert isinstance(reply, TunnelReply)
        self.reply = reply
        self.endpoint = (reply.address.host, reply.address.port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(10)

    def sealed(
        self,
        seq: int,
        address: Address | None = None,
        data: bytes = b"",
        direction: int = TunnelDir.A_TO_B,
        tunnel_id: int | None = None,
    ) -> bytes:
        plaintext = b"" if address is None else address.to_bytes() + data
        tid = self.reply.tunnel_id if tunnel_id is None else tunnel_id
        return seal(self.reply.key, direction, tid, seq, plaintext)

    def send(self, dgram: bytes) -> None:
        self.udp.sendto(dgram, self.endpoint)

    def receive(self) -> tuple[int, bytes]:
        dgram, _ = self.udp.recvfrom(65535)
        header, plaintext = open_sealed(self.reply.key, dgram)
        assert (header.type, header.id) == (TunnelDir.B_TO_A, self.reply.tunnel_id)
        return header.seq, plaintext

    def close(self) -> None:
        self.udp.close()
        self.tls.close()


def test_replayed_and_forged_datagrams_are_dropped(make_server, pki, udp_echo):
    b = make_server(tls_section(pki, "gw-b.test"))
    a = ManualA(b.addresses[1], str(pki["ca"]))
    echo = Address(*udp_echo.address)
    try:
        a.send(a.sealed(1))  # keepalive: B learns where A is
        first = a.sealed(2, echo, b"once")
        a.send(first)
        assert a.receive() == (1, echo.to_bytes() + b"once")
        a.send(first)  # replayed
        forged = bytearray(a.sealed(3, echo, b"forged"))
        forged[-1] ^= 1
        a.send(bytes(forged))  # fails authentication: must not burn SEQ 3
        a.send(a.sealed(4, echo, b"wrong way", direction=TunnelDir.B_TO_A))
        a.send(a.sealed(5, echo, b"no such tunnel", tunnel_id=a.reply.tunnel_id ^ 1))
        a.send(b"\x01" + bytes(10))  # too short to be anything
        a.send(a.sealed(3, echo, b"twice"))
        assert a.receive() == (2, echo.to_bytes() + b"twice")

        def state():
            server = b.server
            far = next(t.snapshot() for t in server.tunnels.values())
            return far, dict(server.stats.udp_dropped)

        far, dropped = b.call(state)
        assert far["dropped"] == {"replay": 1, "forged": 1, "wrong-direction": 1}
        assert far["datagrams_in"] == 2
        assert dropped["tunnel-unknown-id"] == 1
        assert dropped["tunnel-malformed"] == 1
        assert udp_echo.sources == [udp_echo.sources[0]] * 2
    finally:
        a.close()


def test_b_keeps_alive_then_gives_up_on_a_silent_a(make_server, pki):
    b = make_server(tls_section(pki, "gw-b.test") + "[tunnel]\nkeepalive = 0.2\ndead_after = 1.0\n")
    a = ManualA(b.addresses[1], str(pki["ca"]))
    try:
        started = time.monotonic()
        a.send(a.sealed(1))
        assert a.receive() == (1, b"")  # B's keepalives: empty plaintext, SEQ 1, 2...
        assert a.receive() == (2, b"")
        a.tls.settimeout(10)
        assert a.tls.recv(10) == b""  # B ended the tunnel: A fell silent
        assert 0.9 < time.monotonic() - started < 5
        wait_until(lambda: b.call(lambda: len(b.server.tunnels)) == 0)
        assert b.call(lambda: dict(b.server.stats.by_result)).get("dead-peer") == 1
    finally:
        a.close()


class SilentB:
    """The test as gateway B: grants a tunnel, records what A sends, never says anything."""

    def __init__(self, pki, proto: TunnelProto) -> None:
        self.proto = proto
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*map(str, pki["gw-b.test"]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(10)
        self.key = bytes(range(32))
        self.received = b""
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with self.context.wrap_socket(conn, server_side=True) as tls:
            assert recv_exactly(tls, 3) == b"\x05\x01\x00"
            tls.sendall(b"\x05\x00")
            request = TunnelRequest(ZERO, self.proto).to_bytes()
            assert recv_exactly(tls, len(request)) == request
            if self.proto == TunnelProto.TLS:
                tls.sendall(b"\x05\x00\x00\x01" + bytes(6))
            else:
                reply = TunnelReply(Address(*self.udp.getsockname()), 0x51, self.key)
                tls.sendall(reply.to_bytes())
            with contextlib.suppress(OSError):
                while data := tls.recv(4096):
                    self.received += data
        self.closed.set()

    def close(self) -> None:
        self.listener.close()
        self.udp.close()


@pytest.mark.parametrize("proto", [TunnelProto.TLS, TunnelProto.UDP], ids=["proto01", "proto02"])
def test_a_keeps_alive_then_gives_up_on_a_silent_b(make_server, pki, proto):
    b = SilentB(pki, proto)
    try:
        a = make_server(
            "[tunnel]\nkeepalive = 0.2\ndead_after = 1.0\n" + peer_table(b.address[1], pki["ca"])
        )
        started = time.monotonic()
        tunnel = open_tunnel(
            b.address,
            proxy=f"socks5h://127.0.0.1:{a.address[1]}",
            proto="tls" if proto == TunnelProto.TLS else "udp",
            timeout=15,
        )
        with tunnel:
            if proto == TunnelProto.UDP:
                for seq in (1, 2, 3):  # right after the reply, then every 0.2 s
                    header, plaintext = open_sealed(b.key, b.udp.recvfrom(100)[0])
                    assert (header.type, header.id, header.seq, plaintext) == (1, 0x51, seq, b"")
            tunnel.control.settimeout(10)
            assert tunnel.control.recv(10) == b""  # A gave up and told its client
        assert 0.9 < time.monotonic() - started < 5
        assert b.closed.wait(10)
        if proto == TunnelProto.TLS:
            frames = []
            buf = b.received
            while (parsed := maybe_read_frame(buf)) is not None:
                frames.append(parsed[0].to_bytes())
                buf = buf[parsed[1] :]
            assert len(frames) >= 3
            assert set(frames) == {b"\x00\x00"}
        assert a.call(lambda: dict(a.server.stats.by_result)).get("dead-peer") == 1
    finally:
        b.close()


def test_reply_of_a_is_a_plain_reply_with_its_udp_port(gateways):
    pair = gateways()
    with open_socks(pair.a.address) as sock:
        negotiate(sock)
        sock.sendall(TunnelRequest(Address(*pair.b_tls), TunnelProto.UDP).to_bytes())
        head = recv_exactly(sock, 10)
        reply, used = maybe_read_reply(head)
        assert used == 10
        assert reply.ok
        assert reply.address.host == "127.0.0.1"
        assert reply.address.port != 0


def test_a_limit_gives_01(gateways, udp_echo):
    pair = gateways(a_tunnel="max_tunnels = 1\n")
    with tunnel_of(pair) as first:
        round_trip(first, udp_echo, [b"first"])
        with pytest.raises(ReplyError) as info:
            tunnel_of(pair)
        assert info.value.reply == ReplyCode.GENERAL_FAILURE


def test_socksx_check_reports_cmd_07_supported(socks_server):
    from click.testing import CliRunner

    from socksx.cli import cli

    via = f"127.0.0.1:{socks_server.address[1]}"
    result = CliRunner().invoke(cli, ["check", "--via", via, "--json"], catch_exceptions=False)
    report = json.loads(result.output)
    assert report["extensions"]["setup_udp_tunnel"] is True
    probe = next(p for p in report["probes"] if p["probe"] == "setup_udp_tunnel")
    assert probe["detail"] == "REP 0x01 as expected for this probe"


# -- configuration ---------------------------------------------------------------------------------


def test_tunnel_config_peers(tmp_path):
    (tmp_path / "b-ca.pem").write_text("not checked here")
    pin = "sha256:" + ":".join(["AB"] * 32)
    config = loads(
        '[tunnel]\nkeepalive = 5\ndead_after = 20\nudp_bind = "0.0.0.0:4443"\n'
        '[[tunnel.peer]]\naddress = "GW-B.Example:1443"\nca = "b-ca.pem"\nname = "gw-b"\n'
        f'[[tunnel.peer]]\naddress = "[2001:db8::2]:1443"\nfingerprint = "{pin}"\n',
        "t.toml",
        str(tmp_path),
    )
    settings = config.tunnel
    assert (settings.keepalive, settings.dead_after, settings.udp_bind) == (
        5.0,
        20.0,
        ("0.0.0.0", 4443),
    )
    assert settings.peer == (
        TunnelPeer(("gw-b.example", 1443), str(tmp_path / "b-ca.pem"), "gw-b"),
        TunnelPeer(("2001:db8::2", 1443), fingerprint="sha256:" + "ab" * 32),
    )
    assert loads(to_toml(config), "again.toml") == dataclasses.replace(config, source="again.toml")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[[tunnel.peer]]\nca = "x"\n', "tunnel.peer[0].address", "required"),
        ('[[tunnel.peer]]\naddress = "gw:0"\n', "tunnel.peer[0].address", "HOST:PORT"),
        ('[[tunnel.peer]]\naddress = "g w:1"\n', "tunnel.peer[0].address", "host name"),
        (
            '[[tunnel.peer]]\naddress = "gw:1"\nfingerprint = "md5:1"\n',
            "tunnel.peer[0].fingerprint",
            "sha256",
        ),
        ('[[tunnel.peer]]\naddress = "gw:1"\nport = 1\n', "tunnel.peer[0].port", "unknown key"),
        (
            '[[tunnel.peer]]\naddress = "gw:1"\nca = "missing.pem"\n',
            "tunnel.peer[0].ca",
            "file not found",
        ),
        ("[tunnel]\npeer = 1\n", "tunnel.peer", "list of [[tunnel.peer]] tables"),
        ("[tunnel]\nkeepalive = 90\n", "tunnel.keepalive", "shorter than tunnel.dead_after"),
        ('[tunnel]\nudp_bind = "gw:1"\n', "tunnel.udp_bind", "not an IP address"),
        (
            "workers = 2\n[tunnel]\nenabled = true\n",
            "tunnel.enabled",
            "several workers cannot serve tunnel",
        ),
    ],
)
def test_tunnel_config_problems(tmp_path, text, key, fragment):
    with pytest.raises(ConfigError) as info:
        loads(text, "t.toml", str(tmp_path))
    problems = {p.key: p.problem for p in info.value.problems}
    assert key in problems, problems
    assert fragment in problems[key]


def test_workers_turn_automatic_tunnels_off():
    """enabled = "auto" (the default): tunnels are served only by a single process."""
    assert loads("workers = 2\n", "t.toml").tunnel.enabled is False
    assert loads("workers = 1\n", "t.toml").tunnel.enabled is True
    assert loads("workers = 2\n[tunnel]\nenabled = false\n", "t.toml").workers == 2
