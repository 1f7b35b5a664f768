"""``socksx bind``: channels, forwarding, output, exit codes, and an RTSP/RTP-style demo."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli.bind import ChannelState, bind, live_table, plain_table
from socksx.client.multibind import ChannelInfo
from tests.conftest import recv_all, sha256, wait_until

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
ENV_PROXIES = ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in ENV_PROXIES:
        monkeypatch.delenv(name, raising=False)


def run(*args: str, app: App | None = None) -> Result:
    return CliRunner().invoke(bind, list(args), obj=app or App(), catch_exceptions=False)


def via(server) -> str:
    host, port = server.address
    return f"{host}:{port}"


class BindProcess:
    """``python -m socksx bind ... --json`` with its stdout lines readable with a timeout."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ENV_PROXIES}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socksx", "bind", *args, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_json(self) -> dict:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            self.stop()
            pytest.fail(f"no output from socksx bind; stderr: {self.stderr()}")
        return json.loads(line)

    def wait_event(self, kind: str) -> dict:
        for _ in range(100):
            event = self.next_json()
            if event.get("event") == kind:
                return event
        pytest.fail(f"no {kind} event")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(WAIT)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def bind_process():
    started: list[BindProcess] = []

    def start(*args: str) -> BindProcess:
        process = BindProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()


def multibinds_gone(server) -> None:
    wait_until(
        lambda: not server.call(lambda: len(server.server.multibinds)),
        "the proxy letting go of the channels",
        timeout=WAIT,
    )


# -- a subprocess with real forwarding ---------------------------------------------------------


def test_bind_forwards_a_tcp_channel_and_ctrl_c_closes_everything(
    make_server, echo_server, bind_process
):
    server = make_server()
    target = f"{echo_server.address[0]}:{echo_server.address[1]}"
    process = bind_process("--via", via(server), "--tcp", "1", "--udp", "2", "--rtp-pair",
                           "--forward", f"0={target}")
    head = process.next_json()
    assert head["proxy"] == via(server)
    channels = head["channels"]
    assert [(c["id"], c["type"], c["rtp_pair"]) for c in channels] == [
        (0, "tcp", False), (1, "udp", True), (2, "udp", False)
    ]
    assert channels[0]["forward"] == target
    assert channels[0]["relay"] is None
    rtp_port = int(channels[1]["bound"].rsplit(":", 1)[1])
    assert rtp_port % 2 == 0
    assert channels[2]["bound"].endswith(f":{rtp_port + 1}")
    host, port = channels[0]["bound"].rsplit(":", 1)
    payload = os.urandom(200_000)
    with socket.create_connection((host, int(port)), timeout=WAIT) as peer:
        assert process.wait_event("peer_connected")["channel"] == 0
        peer.sendall(payload)
        peer.shutdown(socket.SHUT_WR)
        echoed = recv_all(peer)
    assert sha256(echoed) == sha256(payload)
    closed = process.wait_event("connection_closed")
    assert (closed["bytes_in"], closed["bytes_out"]) == (len(payload), len(payload))
    assert len(echo_server.peers) == 1
    assert process.interrupt() == ExitCode.INTERRUPTED
    assert process.stderr().strip().splitlines()[-1] == "socksx: interrupted"
    multibinds_gone(server)


# -- the RTSP/RTP-style demo -------------------------------------------------------------------


class Player:
    """The application behind the gateway: an RTSP responder, an RTP sink, an RTCP answerer."""

    def __init__(self) -> None:
        self.rtsp = socket.create_server(("127.0.0.1", 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtcp.bind(("127.0.0.1", 0))
        self.requests: list[str] = []
        self.rtp_received: queue.Queue[bytes] = queue.Queue()
        for loop in (self._serve_rtsp, self._serve_rtp, self._serve_rtcp):
            threading.Thread(target=loop, daemon=True).start()

    def address(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"

    def _serve_rtsp(self) -> None:
        with self.rtsp.accept()[0] as conn, conn.makefile("rwb") as stream:
            while line := stream.readline():
                request = [line.decode().strip()]
                while (header := stream.readline()) not in (b"\r\n", b""):
                    request.append(header.decode().strip())
                self.requests.append(request[0])
                cseq = next(h for h in request if h.startswith("CSeq:"))
                stream.write(f"RTSP/1.0 200 OK\r\n{cseq}\r\n\r\n".encode())
                stream.flush()

    def _serve_rtp(self) -> None:
        while True:
            try:
                data, _ = self.rtp.recvfrom(65535)
            except OSError:
                return
            self.rtp_received.put(data)

    def _serve_rtcp(self) -> None:
        while True:
            try:
                report, source = self.rtcp.recvfrom(65535)
            except OSError:
                return
            # An RTCP receiver report (PT 201) back to whoever sent the sender report (PT 200).
            self.rtcp.sendto(b"\x81\xc9\x00\x07" + report[4:8] + bytes(24), source)

    def close(self) -> None:
        for sock in (self.rtsp, self.rtp, self.rtcp):
            sock.close()


def rtsp_exchange(stream, method: str, url: str, cseq: int, extra: str = "") -> str:
    stream.write(f"{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n".encode())
    stream.flush()
    status = stream.readline().decode().strip()
    headers = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        headers.append(line.decode().strip())
    assert f"CSeq: {cseq}" in headers
    return status


def test_rtsp_rtp_demo_through_socksx_bind(make_server, bind_process):
    """docs/PROTOCOL.md 10.7: RTSP on the TCP channel, RTP and RTCP over the UDP pair."""
    server = make_server()
    player = Player()
    process = bind_process(
        "--via", via(server), "--tcp", "1", "--udp", "2", "--rtp-pair",
        "--forward", f"0={player.address(player.rtsp)}",
        "--forward", f"1={player.address(player.rtp)}",
        "--forward", f"2={player.address(player.rtcp)}",
    )
    channels = process.next_json()["channels"]
    rtsp_bound, rtp_bound, rtcp_bound = (c["bound"].rsplit(":", 1) for c in channels)
    rtp_port, rtcp_port = int(rtp_bound[1]), int(rtcp_bound[1])
    assert (rtp_port % 2, rtcp_port - rtp_port) == (0, 1)
    url = "rtsp://camera.example/stream"
    with socket.create_connection((rtsp_bound[0], int(rtsp_bound[1])), timeout=WAIT) as control, \
            control.makefile("rwb") as stream, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media_rtp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media_rtcp:
        assert rtsp_exchange(stream, "DESCRIBE", url, 1) == "RTSP/1.0 200 OK"
        transport = f"Transport: RTP/AVP;unicast;client_port={rtp_port}-{rtcp_port}\r\n"
        assert rtsp_exchange(stream, "SETUP", url, 2, transport) == "RTSP/1.0 200 OK"
        assert rtsp_exchange(stream, "PLAY", url, 3) == "RTSP/1.0 200 OK"
        media_rtcp.settimeout(WAIT)
        media_rtp.bind(("127.0.0.1", 0))
        media_rtcp.bind(("127.0.0.1", 0))
        sent = []
        for seq in range(50):
            packet = bytes([0x80, 96]) + seq.to_bytes(2, "big") + os.urandom(8 + 160)
            sent.append(packet)
            media_rtp.sendto(packet, ("127.0.0.1", rtp_port))
            if seq % 10 == 9:
                # A sender report every 10 packets; wait for the player's receiver report.
                ssrc = os.urandom(4)
                media_rtcp.sendto(b"\x80\xc8\x00\x06" + ssrc + bytes(20), ("127.0.0.1", rtcp_port))
                report, source = media_rtcp.recvfrom(65535)
                assert report[:8] == b"\x81\xc9\x00\x07" + ssrc
                assert source == ("127.0.0.1", rtcp_port)
        received = [player.rtp_received.get(timeout=WAIT) for _ in sent]
        assert sha256(b"".join(received)) == sha256(b"".join(sent))
        assert rtsp_exchange(stream, "TEARDOWN", url, 4) == "RTSP/1.0 200 OK"
    assert player.requests == [f"{m} {url} RTSP/1.0" for m in
                               ("DESCRIBE", "SETUP", "PLAY", "TEARDOWN")]
    assert process.interrupt() == ExitCode.INTERRUPTED
    player.close()
    multibinds_gone(server)


# -- in-process: output, usage errors and exit codes ------------------------------------------


IDLE = "[multibind]\nidle_timeout = 0.3\n"


def test_plain_output_then_exit_7_when_the_proxy_closes_every_channel(make_server):
    server = make_server(IDLE)
    result = run("--via", via(server), "--tcp", "1", "--udp", "1")
    assert result.exit_code == ExitCode.ENDED, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"socksx bind via {via(server)}: 2 channels"
    assert lines[1].split() == ["CHAN", "TYPE", "BOUND", "RELAY", "FORWARD"]
    assert lines[2].split()[:3] == ["0", "tcp", lines[2].split()[2]]
    assert lines[3].split()[1] == "udp"
    assert "channel closed: channel=0 reason=idle" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"socksx: proxy {via(server)} closed every channel (idle)"
    )
    assert "\x1b[" not in result.stdout


def test_json_output_is_one_object_then_event_lines(make_server):
    server = make_server(IDLE)
    result = run("--via", via(server), "--udp", "2", "--rtp-pair", "--json")
    assert result.exit_code == ExitCode.ENDED
    head, *events = (json.loads(line) for line in result.stdout.splitlines())
    assert [c["rtp_pair"] for c in head["channels"]] == [True, False]
    assert sorted((e["event"], e["channel"], e["reason"]) for e in events) == [
        ("channel_closed", 0, "idle"), ("channel_closed", 1, "idle")
    ]


def test_terminal_output_is_a_live_table(make_server):
    server = make_server(IDLE)
    result = run("--via", via(server), "--tcp", "1", app=App(color=True))
    assert result.exit_code == ExitCode.ENDED
    assert "\x1b[" in result.stdout  # a terminal: colours and cursor control
    assert "bound" in result.stdout
    assert "forward" in result.stdout
    assert "idle" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ask for 1 to 16 channels"),
        (["--tcp", "10", "--udp", "7"], "ask for 1 to 16 channels"),
        (["--udp", "1", "--rtp-pair"], "--rtp-pair needs at least two UDP channels"),
        (["--tcp", "1", "--forward", "1=127.0.0.1:80"], "there are only channels 0 to 0"),
        (["--tcp", "2", "--forward", "0=h:1", "--forward", "0=h:2"], "channel 0 is given twice"),
        (["--tcp", "1", "--forward", "x=127.0.0.1:80"], "is not CHAN=HOST:PORT"),
        (["--tcp", "1", "--forward", "0=127.0.0.1"], "missing port"),
        (["--tcp", "17"], "17 is not in the range"),
    ],
)
def test_usage_errors_exit_2(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "socksx", "bind", "--via", "127.0.0.1:9", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert result.returncode == ExitCode.USAGE
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_a_proxy_without_multibind_support_exits_6_with_a_clear_message(make_server):
    server = make_server("[multibind]\nenabled = false\n")
    result = run("--via", via(server), "--tcp", "1")
    assert result.exit_code == ExitCode.REFUSED
    assert result.stderr == (
        f"socksx: proxy {via(server)} has no multi-bind support "
        "(REP 0x07 command not supported)\n"
    )
    assert result.stdout == ""


def test_refused_by_the_rules_exits_6(make_server):
    server = make_server(rules='[[rules]]\naction = "deny"\ncommands = ["multibind"]\n')
    result = run("--via", via(server), "--tcp", "1")
    assert result.exit_code == ExitCode.REFUSED
    assert "refused MULTI_BIND: connection not allowed by ruleset (REP 0x02)" in result.stderr


def test_unreachable_proxy_exits_4():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("--via", f"127.0.0.1:{port}", "--tcp", "1")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stderr == (
        f"socksx: cannot connect to proxy 127.0.0.1:{port}: connection refused\n"
    )


# -- the renderers -----------------------------------------------------------------------------


def states() -> list[ChannelState]:
    tcp = ChannelState(ChannelInfo(0, "tcp", ("192.0.2.1", 8080), None), ("127.0.0.1", 8554))
    rtp = ChannelState(ChannelInfo(1, "udp", ("192.0.2.1", 6000), ("198.51.100.1", 40000), True),
                       None)
    tcp.add(peers=2, connections=1, active=1, bytes_in=5000, bytes_out=12)
    rtp.add(datagrams_in=3, bytes_in=600)
    rtp.closed = "idle"
    return [tcp, rtp]


def test_plain_table_lines():
    assert plain_table(states()).splitlines() == [
        "CHAN  TYPE     BOUND           RELAY               FORWARD",
        "0     tcp      192.0.2.1:8080  -                   127.0.0.1:8554",
        "1     udp/rtp  192.0.2.1:6000  198.51.100.1:40000  -",
    ]


def test_live_table_shows_endpoints_and_counters():
    console = Console(record=True, width=200)
    console.print(live_table(states(), "socksx bind via proxy:1080: 2 channels"))
    text = console.export_text()
    assert "socksx bind via proxy:1080: 2 channels" in text
    row0 = next(line for line in text.splitlines() if "192.0.2.1:8080" in line)
    assert "1/2 accepted, 1 open" in row0
    assert "4.9 KiB / 12 B" in row0
    assert "open" in row0
    row1 = next(line for line in text.splitlines() if "192.0.2.1:6000" in line)
    assert "udp/rtp" in row1
    assert "3 in, 0 out" in row1
    assert "idle" in row1
