"""socksx top's screen: golden text at 80 and 200 columns from a frozen snapshot and clock
(memray's TUI test idea), the key handler, and --once/--json against a real server."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from socksx.cli import cli
from socksx.cli._exit import ExitCode
from socksx.cli.top.render import format_age, format_bytes, render, sparkline
from socksx.cli.top.state import FeedStatus, ViewState, apply_key
from socksx.client.multibind import multi_bind
from tests.conftest import recv_exactly
from tests.server.admin_helpers import admin_toml
from tests.server.socks_raw import socks5_connect

GOLDEN = Path(__file__).parent / "top_golden"
NOW = 1000.0

SNAPSHOT = {
    "stats": {
        "version": "0.1.0",
        "pid": 4242,
        "workers": 1,
        "uptime": 3723.5,
        "started": 1700000000.0,
        "config_source": "/etc/socksx/[red]socksx.toml",
        "sessions": {
            "open": 3,
            "total": 1045,
            "by_command": {"connect": 1030},
            "by_result": {"ok": 1020},
            "open_by_command": {"connect": 2, "udp": 1},
        },
        "bytes": {"up": 81234, "down": 912345678},
        "rates": {"up": 1200.0, "down": 250000.0},
        "history": {
            "interval": 1.0,
            "up": [0, 100, 400, 800, 1200] * 12,
            "down": [250000 * (i % 8) // 7 for i in range(60)],
        },
        "auth": {"failures": 7},
        "rule_denials": 15,
        "udp": {
            "associations": 1,
            "datagrams_up": 512,
            "datagrams_down": 498,
            "dropped": {"fragment": 1, "unsolicited": 13},
        },
        "relays": [
            {
                "id": "239.1.1.1:5000",
                "group": "239.1.1.1:5000",
                "intranet": "10.1.0.1:5000",
                "mode": "sealed",
                "members": [
                    {"client": "192.0.2.7:4000", "permission": "recv"},
                    {"client": "192.0.2.8:4000", "permission": "both"},
                ],
                "datagrams_in": 1000,
                "datagrams_out": 2000,
                "bytes_in": 1200000,
                "bytes_out": 2400000,
                "drops": {"auth": 2, "replay": 1},
                "rekeys": 4,
                "age": 600.0,
                "rates": {
                    "datagrams_in": 50.0,
                    "datagrams_out": 100.0,
                    "bytes_in": 60000.0,
                    "bytes_out": 120000.0,
                },
            },
            {
                "id": "r2",
                "group": "[bold]239.9.9.9:6000",
                "members": [],
                "age": 5.0,
                "datagrams_in": 0,
                "rates": {"datagrams_in": 0.0},
            },
        ],
        "tunnels": [
            {
                "id": "t1",
                "peer": "gw2.example:1080",
                "proto": "udp",
                "client": "192.0.2.9:5555",
                "datagrams_in": 40,
                "datagrams_out": 42,
                "bytes_in": 4000,
                "bytes_out": 4200,
                "dropped": {"replay": 3},
                "age": 75.0,
                "rates": {"datagrams_in": 2.0, "datagrams_out": 2.5},
            },
        ],
        "multibinds": [
            {
                "id": "mb7",
                "client": "192.0.2.10:6000",
                "peer": "0.0.0.0:0",
                "age": 7300.0,
                "channels": [
                    {
                        "datagrams_up": 5,
                        "datagrams_down": 6,
                        "bytes_up": 500,
                        "bytes_down": 600,
                        "dropped": {},
                    },
                    {"peers": 2, "bytes_up": 70, "bytes_down": 80, "dropped": {"policy": 1}},
                ],
                "rates": {},
            },
        ],
        "totals": {},
    },
    "sessions": [
        {
            "id": "17",
            "client": "127.0.0.1:50412",
            "user": "alice",
            "command": "connect",
            "dst": "example.com:443",
            "bytes_up": 5012,
            "bytes_down": 901233,
            "rate": 48020.5,
            "age": 12.4,
        },
        {
            "id": "21",
            "client": "[::1]:50500",
            "user": "[bold]mallory[/bold]",
            "command": "udp",
            "dst": "[link=http://evil]x[/link]:53",
            "bytes_up": 640,
            "bytes_down": 600,
            "rate": 0.0,
            "age": 3.0,
        },
        {
            "id": "22",
            "client": "127.0.0.1:50600",
            "user": None,
            "command": "connect",
            "dst": "192.0.2.1:80",
            "bytes_up": 99999999,
            "bytes_down": 12,
            "rate": 1500.0,
            "age": 100000.0,
        },
    ],
}


def screen(width: int, view: ViewState | None = None, **kwargs) -> str:
    console = Console(record=True, width=width, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(render(SNAPSHOT, view or ViewState(), NOW, width, **kwargs))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def golden(name: str) -> str:
    return (GOLDEN / f"{name}.txt").read_text()


@pytest.mark.parametrize("width", [80, 200])
def test_overview(width):
    assert screen(width) == golden(f"overview_{width}")


def test_focused_table_while_the_server_is_away():
    view = apply_key(ViewState(), "r")
    status = FeedStatus(fetched_at=985.0, error="connection refused", retry_at=1001.5)
    text = screen(80, view, height=24, status=status)
    assert text == golden("relays_focused_server_away_80")
    assert "server went away, retrying in 2 s (connection refused), data 15s old" in text


def test_paused_sorted_by_bytes_on_a_short_terminal():
    view = apply_key(apply_key(ViewState(), "s"), "p")
    assert screen(80, view, height=20) == golden("paused_sorted_by_bytes_short_80")


def test_narrow_terminal_keeps_the_header_only():
    assert screen(50) == golden("narrow_50")


@pytest.mark.parametrize("width", [50, 80, 120, 200])
def test_no_line_is_wider_than_the_terminal(width):
    for view in (ViewState(), apply_key(ViewState(), "b"), apply_key(ViewState(), "m")):
        text = screen(width, view, height=30, status=FeedStatus(error="x" * 300, retry_at=NOW))
        assert max(len(line) for line in text.splitlines()) <= width


def test_network_strings_are_never_markup():
    console = Console(record=True, width=200, color_system="truecolor", file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(render(SNAPSHOT, ViewState(), NOW, 200))
    text = console.export_text()
    for literal in (
        "[bold]mallory[/bold]",
        "[link=http://evil]x[/link]:53",
        "[bold]239.9.9.9:6000",
        "/etc/socksx/[red]socksx.toml",
    ):
        assert literal in text
    html = console.export_html()
    assert "http://evil" not in re.findall(r'href="([^"]*)"', html)


def test_relay_group_and_port_given_apart():
    relay = {
        "id": "r9",
        "group": "ff15::7",
        "port": 6000,
        "endpoint": "10.0.0.1:6000",
        "members": [
            {"permission": "receive"},
            {"permission": "send"},
            {"permission": "both"},
            {"permission": "none"},
        ],
    }
    stats = {**SNAPSHOT["stats"], "relays": [relay]}
    console = Console(record=True, width=120, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(
            render({"stats": stats, "sessions": []}, apply_key(ViewState(), "r"), NOW, 120)
        )
    (row,) = [line for line in console.export_text().splitlines() if "ff15::7" in line]
    assert row.split()[:4] == ["[ff15::7]:6000", "10.0.0.1:6000", "-", "2/2"]


def test_empty_tables_say_none():
    stats = {**SNAPSHOT["stats"], "relays": [], "tunnels": [], "multibinds": []}
    console = Console(record=True, width=80, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(render({"stats": stats, "sessions": []}, ViewState(), NOW, 80))
    lines = console.export_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("────")]
    assert len(rules) == 4
    assert all(lines[i + 1].strip() == "none" for i in rules)


def test_first_fetch_pending_and_failed():
    waiting = Console(record=True, width=80, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    with waiting.file:
        waiting.print(render({}, ViewState(), NOW, 80))
        assert "waiting for the first snapshot" in waiting.export_text()
        away = FeedStatus(error="no such file or directory", retry_at=NOW + 2)
        waiting.print(render({}, ViewState(), NOW, 80, status=away))
        assert "server went away, retrying in 2 s (no such file or directory)" in (
            waiting.export_text()
        )


# --------------------------------------------------------------------------- keys


def test_keys():
    view = ViewState()
    assert view.sort_target == "sessions"
    assert apply_key(view, "q").quit
    assert apply_key(view, "Q").quit
    assert apply_key(apply_key(view, "p"), "p") == view
    assert apply_key(view, "p").paused
    cycled = [view := apply_key(view, "s") for _ in range(3)]
    assert [v.sort_of("sessions") for v in cycled] == ["bytes", "age", "rate"]
    relays = apply_key(ViewState(), "r")
    assert relays.focus == "relays"
    assert apply_key(relays, "s").sort_of("relays") == "bytes"
    assert apply_key(relays, "s").sort_of("sessions") == "rate"
    assert apply_key(relays, "r").focus is None
    assert apply_key(relays, "\x1b").focus is None
    assert apply_key(relays, "t").focus == "tunnels"
    assert apply_key(relays, "m").focus == "multibinds"
    assert apply_key(relays, "b").focus == "sessions"
    assert apply_key(relays, "x") == relays
    assert apply_key(relays, "\x1b[A").focus == "relays"


def test_formatting():
    assert [format_bytes(n) for n in (0, 1023, 1024, 10 * 1024, 5 * 1024**3)] == [
        "0B",
        "1023B",
        "1.0K",
        "10K",
        "5.0G",
    ]
    assert [format_age(s) for s in (None, -1, 0, 59.9, 60, 3599, 3600, 90061)] == [
        "-",
        "-",
        "0s",
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "1d01h",
    ]
    assert sparkline([0, 1, 2, 4, 8], 5) == "▁▂▃▅█"
    assert sparkline([0, 0], 5) == "▁▁"
    assert sparkline(list(range(100)), 3) == "███"
    assert sparkline([1, 2], 0) == ""


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def busy_server(make_server, echo_server):
    server = make_server(admin_toml())
    socks = [socks5_connect(server.address, *echo_server.address) for _ in range(3)]
    for sock, size in zip(socks, (1000, 300_000, 20_000), strict=True):
        sock.sendall(b"t" * size)
        assert recv_exactly(sock, size) == b"t" * size
    yield server, socks
    for sock in socks:
        sock.close()


def test_once_shows_a_real_multi_bind(make_server):
    server = make_server(admin_toml())
    with multi_bind(proxy=server.address, tcp=1, udp=2, timeout=10) as channels:
        result = CliRunner().invoke(
            cli,
            ["top", "--admin", admin_arg(server), "--once"],
            env={"COLUMNS": "200"},
            catch_exceptions=False,
        )
        local = "{}:{}".format(*channels.control.getsockname())
    assert result.exit_code == 0, result.output
    assert "Multi-binds (m)  1" in result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("mb")]
    assert local in row
    assert row.split()[3] == "3"  # channels


def admin_arg(server) -> str:
    host, port = server.server.admin_address
    return f"{host}:{port}"


@pytest.mark.parametrize("width", [80, 200])
def test_once_renders_real_data(busy_server, echo_server, width):
    server, socks = busy_server
    result = CliRunner().invoke(
        cli,
        ["top", "--admin", admin_arg(server), "--once"],
        env={"COLUMNS": str(width)},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= width
    text = result.output
    assert "sessions 3 open, 3 total" in text
    assert "total 313K" in text  # 321,000 bytes each way so far
    for title in (
        "Multicast relays (r)  0",
        "Tunnels (t)  0",
        "Multi-binds (m)  0",
        "Busiest sessions (b)  3  sort: rate",
    ):
        assert title in text
    assert sum(line.split() == ["none"] for line in lines) == 3
    rows = [line for line in lines if f"{echo_server.address[0]}:{echo_server.address[1]}" in line]
    assert len(rows) == 3
    client = "{}:{}".format(*socks[1].getsockname())
    assert client in rows[0]  # the busiest first
    assert "293K" in rows[0]  # 300,000 bytes
    if width >= 120:
        assert "config " in lines[0]


def test_json_prints_the_raw_snapshot(busy_server):
    server, _ = busy_server
    result = CliRunner().invoke(
        cli, ["top", "--admin", admin_arg(server), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"stats", "sessions"}
    assert data["stats"]["sessions"]["open"] == 3
    assert [row["bytes_up"] for row in data["sessions"]] == [300_000, 20_000, 1000]


def test_token_file_option(make_server, tmp_path):
    token = tmp_path / "token"
    token.write_text("abc123\n")
    server = make_server(admin_toml(token_file=token))
    args = ["top", "--admin", f"http://{admin_arg(server)}", "--json"]
    result = CliRunner().invoke(cli, [*args, "--token-file", str(token)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert refused.exit_code == ExitCode.AUTH
    assert refused.output.startswith("socksx: the admin API wants a token (--token-file)")


def test_unreachable_admin_is_one_line(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    for target in (f"127.0.0.1:{port}", str(tmp_path / "none.sock")):
        result = CliRunner().invoke(
            cli, ["top", "--admin", target, "--once"], catch_exceptions=False
        )
        assert result.exit_code == ExitCode.UNREACHABLE
        assert len(result.output.splitlines()) == 1
        assert result.output.startswith(f"socksx: cannot reach the admin API at {target}: ")


def test_usage_errors():
    runner = CliRunner()
    bad = runner.invoke(cli, ["top", "--admin", "nope", "--once"], catch_exceptions=False)
    assert bad.exit_code == ExitCode.USAGE
    fast = runner.invoke(cli, ["top", "--interval", "10ms", "--once"], catch_exceptions=False)
    assert fast.exit_code == ExitCode.USAGE
    live = runner.invoke(cli, ["top", "--admin", "127.0.0.1:9"], catch_exceptions=False)
    assert live.exit_code == ExitCode.USAGE
    assert live.output == "socksx: top needs a terminal: use --once or --json\n"
