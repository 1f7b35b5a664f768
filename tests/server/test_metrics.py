"""GET /metrics: parses with prometheus-client's parser, follows the naming conventions, and
counts exactly the traffic a real server relayed."""

from __future__ import annotations

import re
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from socksx.client import join_group
from socksx.client.admin import AdminClient
from socksx.server.metrics import render_metrics
from tests.conftest import recv_exactly
from tests.server.admin_helpers import admin_toml, request, wait_for
from tests.server.socks_raw import addr_bytes, socks5_connect, socks5_request
from tests.server.test_mcast import PublicSide, unique_group

#: Label names any socksx metric may carry: all of them take values from small fixed sets.
BOUNDED_LABELS = {"command", "result", "direction", "reason", "version"}


def scrape(server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} of one scrape."""
    address = server.server.admin_address
    text = AdminClient(f"{address[0]}:{address[1]}").metrics()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def server(make_server):
    rules = (
        '[[rules]]\nid = "no-discard"\naction = "deny"\nports = [9]\n'
        '[[rules]]\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
    )
    return make_server(admin_toml(), rules=rules)


def test_metrics_parse_and_follow_conventions(server):
    address = server.server.admin_address
    status, headers, body = request(address, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    families = list(text_string_to_metric_families(body.decode()))
    names = {family.name for family in families}
    assert {
        "socksx_build_info",
        "socksx_start_time_seconds",
        "socksx_open_sessions",
        "socksx_sessions",
        "socksx_bytes",
        "socksx_auth_failures",
        "socksx_rule_denials",
        "socksx_udp_datagrams",
        "socksx_udp_dropped",
        "socksx_udp_associations",
        "socksx_mcast_relays",
        "socksx_tunnels",
        "socksx_multibinds",
    } <= names
    for family in families:
        assert re.fullmatch(r"socksx_[a-z0-9_]+", family.name), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            assert set(sample.labels) <= BOUNDED_LABELS, sample
    assert value(scrape(server), "socksx_build_info", version=__import__("socksx").__version__) == 1


def test_metrics_count_real_traffic(server, echo_server, udp_echo):
    sizes = [100, 2000, 30_000]
    for size in sizes:
        with socks5_connect(server.address, *echo_server.address) as sock:
            sock.sendall(b"m" * size)
            assert recv_exactly(sock, size) == b"m" * size
    denied, (rep, _, _) = socks5_request(server.address, 1, "127.0.0.1", 9)
    denied.close()
    assert rep == 2
    control, (rep, host, port) = socks5_request(server.address, 3, "0.0.0.0", 0)
    assert rep == 0
    with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        head = b"\0\0\0" + addr_bytes(*udp_echo.address)
        for i in range(5):
            udp.sendto(head + bytes([i]), (host, port))
            assert udp.recvfrom(100)[0] == head + bytes([i])
        udp.sendto(b"\0\0\x01" + addr_bytes(*udp_echo.address) + b"frag", (host, port))
        udp.sendto(head + b"end", (host, port))
        assert udp.recvfrom(100)[0].endswith(b"end")
        samples = scrape(server)
        assert value(samples, "socksx_udp_associations") == 1
        assert value(samples, "socksx_udp_datagrams_total", direction="up") == 6
        assert value(samples, "socksx_udp_datagrams_total", direction="down") == 6
        assert value(samples, "socksx_udp_dropped_total", reason="fragment") == 1
    samples = wait_for(
        lambda: (
            (s := scrape(server))["socksx_open_sessions"][()] == 0
            and sum(s["socksx_sessions_total"].values()) == 5
            and s
        ),
        "five ended sessions",
    )
    assert value(samples, "socksx_sessions_total", command="connect") == 4
    assert value(samples, "socksx_sessions_total", command="udp") == 1
    assert value(samples, "socksx_session_results_total", result="ok") == 4
    assert value(samples, "socksx_session_results_total", result="denied") == 1
    udp_payload = 5 + len(b"end")  # the dropped fragment moved nothing
    assert value(samples, "socksx_bytes_total", direction="up") == sum(sizes) + udp_payload
    assert value(samples, "socksx_bytes_total", direction="down") == sum(sizes) + udp_payload
    assert value(samples, "socksx_rule_denials_total") == 1
    assert value(samples, "socksx_auth_failures_total") == 0


def test_relay_counters_survive_its_teardown(server):
    group = unique_group()
    public = PublicSide(*group)
    try:
        with join_group(*group, proxy=server.address) as member:
            wait_for(
                lambda: server.call(
                    lambda: [r for r in server.server.mcast_relays.values() if r.members]
                ),
                "the relay",
            )
            samples = scrape(server)
            assert value(samples, "socksx_mcast_relays") == 1
            assert value(samples, "socksx_mcast_relay_members") == 1
            member.send(b"to the public group")
            assert public.heard()[0] == b"to the public group"
            samples = wait_for(
                lambda: (
                    (s := scrape(server))["socksx_mcast_relay_datagrams_total"][
                        (("direction", "out"),)
                    ]
                    >= 1
                    and s
                ),
                "the datagram counted",
            )
            counted_in = value(samples, "socksx_mcast_relay_datagrams_total", direction="in")
            assert counted_in >= 1
            assert ("reason", "replay") in {
                labels[0] for labels in samples["socksx_mcast_relay_dropped_total"]
            }
        samples = wait_for(
            lambda: (s := scrape(server))["socksx_mcast_relays"][()] == 0 and s, "the teardown"
        )
        # The relay is gone; what it reported stays counted (counters never go backwards).
        assert value(samples, "socksx_mcast_relay_datagrams_total", direction="in") >= counted_in
    finally:
        public.close()


def test_collector_reads_only_the_snapshot():
    stats = {
        "version": "9.9",
        "sessions": {"open": 2, "by_command": {"connect": 3}, "by_result": {"ok": 3}},
        "relays": [{"id": "a", "members": [{}, {}, {}]}, {"id": "b", "members": [{}]}],
        "totals": {"relays": {"rekeys": {"": 4}, "dropped": {"auth": 1}}},
        "multibinds": [{"id": "m", "channels": [{}, {}]}],
    }
    text = render_metrics(lambda: stats).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("socksx_open_sessions", ())] == 2
    assert samples[("socksx_sessions_total", (("command", "connect"),))] == 3
    assert samples[("socksx_mcast_relays", ())] == 2
    assert samples[("socksx_mcast_relay_members", ())] == 4
    assert samples[("socksx_mcast_relay_rekeys_total", ())] == 4
    assert samples[("socksx_mcast_relay_dropped_total", (("reason", "auth"),))] == 1
    assert samples[("socksx_multibind_channels", ())] == 2
    assert samples[("socksx_build_info", (("version", "9.9"),))] == 1
