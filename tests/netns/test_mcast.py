"""Multicast through a real gateway: public side, gateway, intranet, in namespaces made here.

    pub (198.51.100.1, 2001:db8:1::1)  source and listener of the public group
     | veth
    gw  gwp 198.51.100.2 / 2001:db8:1::2    socksx server, relays; no forwarding
        br0 10.9.0.1 / 2001:db8:2::1         (a bridge, multicast snooping off)
     | veth, veth
    in1 10.9.0.11, in2 10.9.0.12            members; no route to the public side

The test process makes its sockets inside a namespace from a thread that entered it (setns), so
the client library and plain sockets are used exactly as on a real host. Multicast never leaves
these namespaces: their interfaces are veths and a bridge between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from socksx.client import Membership, join_group
from socksx.errors import ReplyError
from socksx.protocol.constants import Notice, ReplyCode
from socksx.protocol.mcast import open_relay_datagram, seal_member
from socksx.protocol.sealed import UnsealError
from tests.conftest import wait_until

pytestmark = pytest.mark.netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

PUB, GW_PUB, GW_LAN = "198.51.100.1", "198.51.100.2", "10.9.0.1"
PUB6, GW_PUB6 = "2001:db8:1::1", "2001:db8:1::2"
HOSTS = {"in1": "10.9.0.11", "in2": "10.9.0.12"}
PROXY = f"{GW_LAN}:1080"
ADMIN = "http://127.0.0.1:1081"


def in_ns(ns, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run *fn* in a thread that entered namespace *ns*: the sockets it makes live there."""
    box: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
        finally:
            os.close(fd)
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def unique_group(v6: bool = False) -> tuple[str, int]:
    port = 20000 + secrets.randbelow(20000)
    if v6:
        return f"ff15::5358:{secrets.randbelow(0xFFFF):x}", port
    return f"239.77.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}", port


def _mreqn(group: str, local: str) -> bytes:
    return socket.inet_aton(group) + socket.inet_aton(local) + struct.pack("@i", 0)


class Endpoint:
    """A multicast sender and listener on one host's interface (made inside its namespace)."""

    def __init__(self, group: str, port: int, local: str, ifname: str) -> None:
        v6 = ":" in group
        family = socket.AF_INET6 if v6 else socket.AF_INET
        self.group = (group, port)
        self.sender = socket.socket(family, socket.SOCK_DGRAM)
        self.listener = socket.socket(family, socket.SOCK_DGRAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((group, port))
        if v6:
            index = socket.if_nametoindex(ifname)
            self.sender.bind((local, 0))
            self.sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            self.sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 4)
            self.sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        else:
            self.sender.bind((local, 0))
            outgoing = _mreqn("0.0.0.0", local)
            self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, outgoing)
            self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 4)
            self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            membership = _mreqn(group, local)
            self.listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            self.listener.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, outgoing)

    def send(self, data: bytes) -> None:
        self.sender.sendto(data, self.group)

    def heard(self, timeout: float = 3.0) -> bytes:
        self.listener.settimeout(timeout)
        return self.listener.recv(65535)

    def silent(self, timeout: float = 0.5) -> bool:
        self.listener.settimeout(timeout)
        try:
            self.listener.recv(65535)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sender.close()
        self.listener.close()


@dataclass
class Topology:
    pub: Any
    gw: Any
    in1: Any
    in2: Any
    server: Any = None
    closing: list[Callable[[], None]] | None = None

    def host(self, name: str) -> Any:
        return {"in1": self.in1, "in2": self.in2}[name]

    def public(self, group: tuple[str, int]) -> Endpoint:
        local = PUB6 if ":" in group[0] else PUB
        endpoint = in_ns(self.pub, Endpoint, *group, local, "pubif")
        self.later(endpoint.close)
        return endpoint

    def lan(self, name: str, group: tuple[str, int]) -> Endpoint:
        endpoint = in_ns(self.host(name), Endpoint, *group, HOSTS[name], "lan0")
        self.later(endpoint.close)
        return endpoint

    def join(self, name: str, group: tuple[str, int], **kw: Any) -> Membership:
        kw.setdefault("proxy", PROXY)
        member = in_ns(self.host(name), join_group, *group, **kw)
        self.later(member.close)
        return member

    def later(self, fn: Callable[[], None]) -> None:
        assert self.closing is not None
        self.closing.append(fn)

    def proc(self, path: str) -> str:
        return self.gw.run("cat", path).stdout.upper()

    def stats(self) -> dict[str, Any]:
        headers = {"Authorization": "Bearer sesame"}

        def get() -> dict[str, Any]:
            request = urllib.request.Request(ADMIN + "/stats", headers=headers)
            with urllib.request.urlopen(request, timeout=5) as reply:
                return json.loads(reply.read())

        return in_ns(self.gw, get)

    def relay(self) -> dict[str, Any]:
        relays = self.stats()["relays"]
        assert len(relays) == 1, relays
        return relays[0]

    def log(self, message: str) -> list[str]:
        return [line for line in self.server.lines if message in line]


def _link(gw, host, gw_if: str, host_if: str) -> None:
    gw.ip("link", "add", gw_if, "type", "veth", "peer", "name", host_if, "netns", host.name)


@pytest.fixture
def topology(make_netns, start_server) -> Iterator[Callable[..., Topology]]:
    made: list[Topology] = []

    def build(mcast: str, *, extra: str = "") -> Topology:
        names = ("pub", "gw", "in1", "in2")
        spaces = {name: make_netns(name) for name in names}
        for ns in spaces.values():
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            ns.run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        pub, gw = spaces["pub"], spaces["gw"]
        _link(gw, pub, "gwp", "pubif")
        gw.ip("addr", "add", f"{GW_PUB}/24", "dev", "gwp")
        gw.ip("addr", "add", f"{GW_PUB6}/64", "dev", "gwp", "nodad")
        pub.ip("addr", "add", f"{PUB}/24", "dev", "pubif")
        pub.ip("addr", "add", f"{PUB6}/64", "dev", "pubif", "nodad")
        gw.ip("link", "set", "gwp", "up")
        pub.ip("link", "set", "pubif", "up")
        gw.ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        gw.ip("addr", "add", f"{GW_LAN}/24", "dev", "br0")
        for index, name in enumerate(("in1", "in2"), start=1):
            host = spaces[name]
            _link(gw, host, f"gwi{index}", "lan0")
            gw.ip("link", "set", f"gwi{index}", "master", "br0")
            gw.ip("link", "set", f"gwi{index}", "up")
            host.ip("addr", "add", f"{HOSTS[name]}/24", "dev", "lan0")
            host.ip("link", "set", "lan0", "up")
        gw.ip("link", "set", "br0", "up")
        for ns, ifname in ((pub, "pubif"), (gw, "gwp")):
            # IPv6 multicast needs the kernel's ff00::/8 route, which addrconf adds a moment
            # after the link comes up (there is no event to wait for).
            wait_until(
                lambda ns=ns, ifname=ifname: (
                    f"ff00::/8 dev {ifname} "
                    in ns.run("ip", "-6", "route", "show", "table", "local").stdout
                )
            )
        config = (
            f'listen = ["{PROXY}"]\n{extra}\n[log]\nlevel = "info"\n'
            f'[mcast]\npublic_interface = "{GW_PUB}"\nintranet_interface = "{GW_LAN}"\n'
            f"ttl_public = 4\n{mcast}\n"
            '[[rules]]\naction = "allow"\n'
        )
        topo = Topology(spaces["pub"], gw, spaces["in1"], spaces["in2"], closing=[])
        topo.server = start_server(gw, config)
        made.append(topo)
        return topo

    yield build
    for topo in made:
        for close in reversed(topo.closing or []):
            with contextlib.suppress(Exception):
                close()
        topo.server.stop()


PLAIN = "require_tls_for_join = false"
MULTICAST = 'mode = "multicast"\nintranet_pool = ["239.192.76.0/28"]\n' + PLAIN


def igmp_hex(group: str) -> str:
    return socket.inet_aton(group)[::-1].hex().upper()


def igmp6_hex(group: str) -> str:
    return socket.inet_pton(socket.AF_INET6, group).hex().upper()


# -- the basic promise ------------------------------------------------------------------------


def test_unicast_mode_relays_both_ways_and_nothing_without_socksx(topology):
    topo = topology(PLAIN)
    group = unique_group()
    public = topo.public(group)
    outsider = topo.lan("in1", group)  # joined the public group directly: no route, no relay
    public.send(b"no socksx yet")
    assert outsider.silent()
    a = topo.join("in1", group)
    b = topo.join("in2", group)
    assert (a.mode, a.sealed, a.permission) == ("unicast", True, "both")
    assert a.endpoint == (GW_LAN, a.endpoint[1])
    wait_until(lambda: sum(m["endpoint"] is not None for m in topo.relay()["members"]) == 2)
    assert igmp_hex(group[0]) in topo.proc("/proc/net/igmp")
    public.send(b"news")
    assert a.recv(timeout=5) == (b"news", (PUB, public.sender.getsockname()[1]))
    assert b.recv(timeout=5)[0] == b"news"
    assert outsider.silent()  # still nothing on the intranet but the sealed unicast stream
    a.send(b"from in1")
    assert public.heard() == b"from in1"
    assert b.recv(timeout=5) == (b"from in1", (HOSTS["in1"], a._tx.getsockname()[1]))
    a.leave()
    b.leave()
    wait_until(lambda: igmp_hex(group[0]) not in topo.proc("/proc/net/igmp"))
    assert topo.stats()["relays"] == []
    assert topo.log("mcast relay stopped")


def test_multicast_mode_seals_once_for_the_intranet_group(topology):
    topo = topology(MULTICAST)
    group = unique_group()
    public = topo.public(group)
    a = topo.join("in1", group)
    b = topo.join("in2", group)
    assert a.mode == "multicast"
    assert a.endpoint == ("239.192.76.1", group[1])
    spy = topo.lan("in2", a.endpoint)  # anybody on the intranet can hear the intranet group
    public.send(b"to all")
    assert a.recv(timeout=5)[0] == b"to all"
    assert b.recv(timeout=5)[0] == b"to all"
    sealed = spy.heard()
    assert sealed[0] == 2
    assert b"to all" not in sealed
    b.send(b"from in2")
    assert public.heard() == b"from in2"
    assert a.recv(timeout=5)[0] == b"from in2"
    relay = topo.relay()
    assert relay["intranet_out"] == 2  # one copy per datagram, whatever the member count
    assert igmp_hex("239.192.76.1") in topo.proc("/proc/net/igmp")
    a.leave()
    b.leave()
    wait_until(lambda: igmp_hex("239.192.76.1") not in topo.proc("/proc/net/igmp"))
    assert igmp_hex(group[0]) not in topo.proc("/proc/net/igmp")


def test_ipv6_public_group(topology):
    topo = topology(PLAIN)
    group = unique_group(v6=True)
    public = topo.public(group)
    member = topo.join("in1", group)
    wait_until(lambda: topo.relay()["members"][0]["endpoint"] is not None)
    assert igmp6_hex(group[0]) in topo.proc("/proc/net/igmp6")
    public.send(b"over mld")
    assert member.recv(timeout=5) == (b"over mld", (PUB6, public.sender.getsockname()[1]))
    member.send(b"back")
    assert public.heard() == b"back"
    member.leave()
    wait_until(lambda: igmp6_hex(group[0]) not in topo.proc("/proc/net/igmp6"))


# -- permissions ------------------------------------------------------------------------------


def test_receive_only_sends_are_dropped_and_send_only_cannot_read(topology):
    in1, in2 = HOSTS["in1"], HOSTS["in2"]
    topo = topology(
        MULTICAST
        + f'\n[[mcast.policy]]\nid = "listener"\nfrom = ["{in1}/32"]\npermission = "receive"'
        + f'\n[[mcast.policy]]\nid = "talker"\nfrom = ["{in2}/32"]\npermission = "send"'
    )
    group = unique_group()
    public = topo.public(group)
    listener = topo.join("in1", group)
    talker = topo.join("in2", group)
    assert (listener.permission, talker.permission) == ("receive", "send")
    assert talker.keys.key_id == 0
    keys = listener.keys
    listener._tx.sendto(seal_member(keys.member_key, keys.member_id, 99, b"sneak"), listener._dest)
    assert public.silent()
    spy = topo.lan("in2", listener.endpoint)  # the talker's host hears the intranet group...
    public.send(b"secret")
    assert listener.recv(timeout=5)[0] == b"secret"
    sealed = spy.heard()
    for key in (talker.keys.member_key, talker.keys.group_key):  # ...and can open none of it
        with pytest.raises(UnsealError):
            open_relay_datagram(key, sealed)
    talker.send(b"talk")
    assert public.heard() == b"talk"
    assert topo.relay()["drops"]["policy"] == 1


def test_rekey_over_tls_locks_out_a_departed_receiver(topology, tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert(GW_LAN)
    chain, key, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    topo = topology(
        'mode = "multicast"\nintranet_pool = ["239.192.76.0/28"]',  # TLS required: "auto"
        extra=f'[tls]\nlisten = ["{GW_LAN}:1443"]\ncert = "{chain}"\nkey = "{key}"\n',
    )
    group = unique_group()
    with pytest.raises(ReplyError) as info:
        topo.join("in1", group)  # plaintext on a non-loopback listener: refused
    assert info.value.reply == ReplyCode.NOT_ALLOWED
    tls = {"proxy": f"socks5s://{GW_LAN}:1443", "ca_file": str(ca_file)}
    public = topo.public(group)
    stayer = topo.join("in1", group, **tls)
    leaver = topo.join("in2", group, **tls)
    spy = topo.lan("in2", stayer.endpoint)  # the departed member keeps listening
    old_key = leaver.keys.group_key
    public.send(b"before")
    assert open_relay_datagram(old_key, spy.heard())[2] == b"before"
    assert leaver.leave()
    public.send(b"after")
    assert stayer.recv(timeout=5)[0] == b"before"
    assert stayer.recv(timeout=5)[0] == b"after"
    after = spy.heard()
    with pytest.raises(UnsealError):
        open_relay_datagram(old_key, after)
    assert stayer.rekeys == 1
    assert topo.relay()["rekeys"] == 1


def test_replayed_and_forged_datagrams_are_dropped(topology):
    topo = topology(MULTICAST)
    group = unique_group()
    public = topo.public(group)
    member = topo.join("in1", group)
    other = topo.join("in2", group)
    capture = topo.lan("in2", member.endpoint)
    public.send(b"once")
    assert member.recv(timeout=5)[0] == b"once"
    datagram = capture.heard()
    # Replay the relay's datagram onto the intranet group: members take it once only.
    replayer = in_ns(topo.in2, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    topo.later(replayer.close)
    replayer.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn("0.0.0.0", HOSTS["in2"]))
    replayer.sendto(datagram, member.endpoint)
    forged = bytearray(datagram)
    forged[-1] ^= 1
    replayer.sendto(bytes(forged), member.endpoint)
    with pytest.raises(TimeoutError):
        member.recv(timeout=0.5)
    assert member.dropped == 2
    # Replay and forge member traffic to the relay: nothing reaches the public group.
    keys = other.keys
    wire = seal_member(keys.member_key, keys.member_id, 500, b"genuine")
    other._tx.sendto(wire, other._dest)
    assert public.heard() == b"genuine"
    other._tx.sendto(wire, other._dest)
    bad = bytearray(seal_member(keys.member_key, keys.member_id, 501, b"forged"))
    bad[20] ^= 1
    other._tx.sendto(bytes(bad), other._dest)
    assert public.silent()
    drops = topo.relay()["drops"]
    assert drops["replay"] == 1
    assert drops["auth"] == 1


# -- policy and endings -----------------------------------------------------------------------


IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # linux/in.h


def _ttl_of_next(endpoint: Endpoint) -> tuple[bytes, int]:
    sock = endpoint.listener
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    sock.settimeout(5)
    data, ancillary, _, _ = sock.recvmsg(65535, socket.CMSG_SPACE(4))
    ttl = next(
        int.from_bytes(value[:4], sys.byteorder)
        for level, kind, value in ancillary
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL
    )
    return data, ttl


def test_ttl_is_capped_by_the_policy(topology):
    topo = topology(
        PLAIN + f'\n[[mcast.policy]]\nfrom = ["{HOSTS["in2"]}/32"]\npermission = "both"\nttl = 1'
    )
    group = unique_group()
    public = topo.public(group)
    free = topo.join("in1", group)
    capped = topo.join("in2", group)
    free.send(b"ttl 4")
    assert _ttl_of_next(public) == (b"ttl 4", 4)  # mcast.ttl_public
    capped.send(b"ttl 1")
    assert _ttl_of_next(public) == (b"ttl 1", 1)  # the policy's ceiling
    free.send(b"ttl 4 again")
    assert _ttl_of_next(public) == (b"ttl 4 again", 4)


def test_member_limit_b3_and_time_limit_b4(topology):
    topo = topology(
        PLAIN + '\n[[mcast.policy]]\npermission = "both"\nmax_members = 1\nmax_time = 1.0'
    )
    group = unique_group()
    first = topo.join("in1", group)
    with pytest.raises(ReplyError) as info:
        topo.join("in2", group)
    assert info.value.reply == ReplyCode.MCAST_LIMIT
    ended = first.wait(10)
    assert ended is not None
    assert ended.notice == Notice.MCAST_EXPIRED
    wait_until(lambda: igmp_hex(group[0]) not in topo.proc("/proc/net/igmp"))
    assert any('why="time in group limit"' in line for line in topo.log("mcast membership"))


def test_spammer_is_expelled_b5(topology):
    topo = topology(
        PLAIN + '\n[[mcast.policy]]\npermission = "both"\nmember_rate = 5.0\nmember_burst = 5'
        '\nover_limit_action = "expel"\nexpel_after = 0.3'
    )
    group = unique_group()
    public = topo.public(group)
    spammer = topo.join("in1", group)
    deadline = time.monotonic() + 10
    while spammer.ended is None and time.monotonic() < deadline:
        spammer.send(b"spam")
        time.sleep(0.01)
    assert spammer.wait(5).notice == Notice.MCAST_EXPELLED
    heard = 0
    with contextlib.suppress(TimeoutError):
        while heard < 100:
            public.heard(0.3)
            heard += 1
    assert 5 <= heard < 20  # the burst and a little of the rate, not the flood


def test_dead_client_is_cleaned_up(topology):
    topo = topology(PLAIN + "\nmember_timeout = 1.0")
    group = unique_group()
    topo.join("in1", group)
    assert igmp_hex(group[0]) in topo.proc("/proc/net/igmp")
    topo.in1.ip("link", "set", "lan0", "down")  # the host vanishes: no FIN, no keepalive
    wait_until(lambda: igmp_hex(group[0]) not in topo.proc("/proc/net/igmp"))
    assert topo.stats()["relays"] == []
    assert any("why=inactive" in line for line in topo.log("mcast membership"))


def test_server_stop_ends_members_with_b7(topology):
    topo = topology(PLAIN)
    group = unique_group()
    member = topo.join("in1", group)
    topo.server.stop()
    assert member.wait(10).notice == Notice.MCAST_RELAY_DOWN


def test_admin_can_terminate_a_relay(topology, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("sesame\n")
    token.chmod(0o600)
    topo = topology(PLAIN, extra=f'[admin]\ntoken_file = "{token}"\n')
    group = unique_group()
    member = topo.join("in1", group)
    relay_id = topo.relay()["id"]

    def terminate() -> int:
        request = urllib.request.Request(
            f"{ADMIN}/relays/{relay_id}/terminate",
            method="POST",
            headers={"Authorization": "Bearer sesame"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)

    assert in_ns(topo.gw, terminate) == 200
    assert member.wait(10).notice == Notice.MCAST_RELAY_DOWN
