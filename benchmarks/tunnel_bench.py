#!/usr/bin/env python3
"""Measure UDP tunnels (SETUP_UDP_TUNNEL): datagrams/s and round-trip latency, PROTO 01 and 02.

Topology (as root, in network namespaces made and deleted here):

    [ns ga] client + gateway A  ==== veth "inter-gateway link" ====  [ns gb] gateway B + UDP echo
            127.0.0.1:1080        198.51.100.1  <->  198.51.100.2       TLS :1443, echo 127.0.0.1

The client asks A for a tunnel to B and talks to the echo "in site B" through it. Loss runs drop
the given fraction of packets in each direction of the veth link: with ``tc qdisc netem loss``
when the kernel has netem, else with an nftables ``numgen random`` drop rule on each end's
input (the same random, independent, silent loss; the report says which). Without root (or ``ip``),
everything runs on 127.0.0.1 and the loss runs are skipped, with a note.

For each PROTO (01 tls, 02 udp), payload size (64, 1200 octets) and loss (0, 1 %, 5 %):

- latency: an RTP-like stream of --pings datagrams at --rate per second, open loop; each echo's
  round trip is timed (p50, p99), and those that never come back are lost (PROTO 02 can lose;
  PROTO 01 retransmits inside TCP, and every datagram behind a lost segment waits);
- throughput: --window datagrams in flight for --duration seconds (after a warm-up); echoes
  come back in order, so when one arrives every older one still out is counted lost and
  replaced at once (as TCP infers loss from duplicate ACKs); one not back after 0.2 s is
  abandoned too (late or lost: useless to real-time traffic).

    sudo python benchmarks/tunnel_bench.py                    # everything (about 3 minutes)
    sudo python benchmarks/tunnel_bench.py --loss 0 --sizes 64 --duration 2
    python benchmarks/tunnel_bench.py --json out.json         # loopback only, no loss runs

Every process and namespace made here is removed at exit; every loop has a deadline.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

READY_TIMEOUT = 20.0
PING_TIMEOUT = 1.0  # the latency stream waits this long after its last datagram
EXPIRE = 0.2  # throughput runs: an echo not back after this long is abandoned (late or lost)
SEQ = struct.Struct("!Q")

_PROCS: list[subprocess.Popen[Any]] = []
_NAMESPACES: list[str] = []


def _cleanup() -> None:
    for proc in _PROCS:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for name in _NAMESPACES:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


atexit.register(_cleanup)


# -- the client side (runs inside ns ga, or on loopback) ----------------------------------------


def _client(args: argparse.Namespace) -> None:
    """Open one tunnel, run the latency and throughput measurements, print JSON."""
    from socksx.client.tunnel import open_tunnel

    via = f"socks5h://{args.gateway}"
    peer = (args.peer_host, args.peer_port)
    echo = (args.echo_host, args.echo_port)
    with open_tunnel(peer, proxy=via, proto=args.proto, ca_file=args.ca, timeout=20) as tunnel:
        pad = b"\xa5" * (args.size - SEQ.size)
        for seq in range(20):  # warm-up: routes and caches on both gateways
            tunnel.sendto(SEQ.pack(seq) + pad, echo)
            with contextlib.suppress(TimeoutError):
                tunnel.recvfrom(timeout=PING_TIMEOUT)
        result = {"latency": _latency(tunnel, echo, pad, args.pings, args.rate)}
        result["throughput"] = _throughput(tunnel, echo, pad, args.window, args.duration)
    print(json.dumps(result))


def _latency(
    tunnel: Any, echo: tuple[str, int], pad: bytes, pings: int, rate: float
) -> dict[str, Any]:
    """An RTP-like stream: *pings* datagrams at *rate* per second, each echo timed on arrival.

    Open loop (a datagram goes out on schedule whether or not the previous came back), so
    head-of-line blocking shows: behind a retransmitted TCP segment every datagram waits.
    """
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    interval = 1.0 / rate
    first = 1000
    next_send = time.perf_counter()
    sent = 0
    stop_at = next_send + pings * interval + PING_TIMEOUT
    while True:
        now = time.perf_counter()
        if now >= stop_at or (sent == pings and not sent_at):
            break
        if sent < pings and now >= next_send:
            seq = first + sent
            sent_at[seq] = now
            tunnel.sendto(SEQ.pack(seq) + pad, echo)
            sent += 1
            next_send += interval
            continue
        wait = (next_send if sent < pings else stop_at) - now
        try:
            data, _ = tunnel.recvfrom(timeout=max(wait, 0.0005))
        except TimeoutError:
            continue
        arrived = time.perf_counter()
        started = sent_at.pop(SEQ.unpack_from(data)[0], None)
        if started is not None:
            rtts.append((arrived - started) * 1000)
    rtts.sort()
    return {
        "sent": sent,
        "lost": sent - len(rtts),
        "rate": rate,
        "p50_ms": _percentile(rtts, 0.50),
        "p99_ms": _percentile(rtts, 0.99),
        "mean_ms": round(statistics.fmean(rtts), 3) if rtts else None,
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _throughput(
    tunnel: Any, echo: tuple[str, int], pad: bytes, window: int, duration: float
) -> dict:
    inflight: dict[int, float] = {}
    seq = 10**9
    delivered = lost = 0

    def send() -> None:
        nonlocal seq
        seq += 1
        inflight[seq] = time.monotonic()
        tunnel.sendto(SEQ.pack(seq) + pad, echo)

    for _ in range(window):
        send()
    warm_until = time.monotonic() + min(1.0, duration / 4)
    end = warm_until + duration
    counting = False
    last_expiry = time.monotonic()
    while True:
        now = time.monotonic()
        if not counting and now >= warm_until:
            counting, delivered, lost, started = True, 0, 0, now
        if now >= end:
            break
        try:
            data, _ = tunnel.recvfrom(timeout=0.05)
        except TimeoutError:
            data = None
        if data is not None:
            got = SEQ.unpack_from(data)[0]
            if inflight.pop(got, None) is not None:
                delivered += 1
                send()
                # Echoes come back in order: anything older still out was lost (as TCP
                # infers from duplicate ACKs), so its slot is refilled at once.
                while inflight and (oldest := next(iter(inflight))) < got:
                    del inflight[oldest]
                    lost += 1
                    send()
        if now - last_expiry >= 0.1:
            last_expiry = now
            expired = [s for s, t in inflight.items() if now - t > EXPIRE]
            for s in expired:
                del inflight[s]
                lost += 1
                send()
    seconds = time.monotonic() - started
    return {
        "delivered": delivered,
        "lost": lost,
        "seconds": round(seconds, 3),
        "datagrams_per_s": round(delivered / seconds, 1),
    }


# -- the orchestrator ----------------------------------------------------------------------------


def _can_use_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces (and so loss emulation) need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing"
    return None


class Setup:
    """Namespaces (or loopback), certificates, two gateways and the echo."""

    def __init__(self, tmp: Path, use_netns: bool) -> None:
        import trustme

        self.tmp = tmp
        self.use_netns = use_netns
        run_id = uuid.uuid4().hex[:6]
        self.ns_a = f"sxtb{run_id}a"
        self.ns_b = f"sxtb{run_id}b"
        ca = trustme.CA()
        self.ca = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        b_ip = "198.51.100.2" if use_netns else "127.0.0.1"
        cert = ca.issue_cert("gw-b.bench", b_ip)
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "b.pem"))
        cert.private_key_pem.write_to_path(str(tmp / "b.key"))
        self.b_ip = b_ip
        self.loss_method: str | None = None
        if use_netns:
            self._namespaces()
        self.b_port = 1443 if use_netns else _free_port("tcp")
        self.a_port = 1080 if use_netns else _free_port("tcp")
        self.echo_port = 7 if use_netns else _free_port("udp")
        self._start_echo()
        self._start_gateways()

    def _ip(self, ns: str | None, *args: str) -> None:
        prefix = ["ip", "-n", ns] if ns else ["ip"]
        subprocess.run([*prefix, *args], check=True, capture_output=True)

    def _namespaces(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            _NAMESPACES.append(ns)
            self._ip(ns, "link", "set", "lo", "up")
        self._ip(
            self.ns_a, "link", "add", "i0", "type", "veth", "peer", "name", "i1", "netns", self.ns_b
        )
        self._ip(self.ns_a, "addr", "add", "198.51.100.1/24", "dev", "i0")
        self._ip(self.ns_b, "addr", "add", "198.51.100.2/24", "dev", "i1")
        self._ip(self.ns_a, "link", "set", "i0", "up")
        self._ip(self.ns_b, "link", "set", "i1", "up")

    def in_ns(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns] if self.use_netns else []

    def _start(self, argv: list[str], ns: str, ready: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*self.in_ns(ns), *argv],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _PROCS.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT
        assert proc.stderr is not None
        for line in proc.stderr:  # blocks until the process logs: an event, bounded below
            if ready in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            msg = f"{argv[:4]} exited before it was ready"
            raise RuntimeError(msg)
        # Keep draining: a full pipe must never block a gateway.
        import threading

        threading.Thread(target=proc.stderr.read, daemon=True).start()
        return proc

    def _start_echo(self) -> None:
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('127.0.0.1', {self.echo_port}))\n"
            "print('ready', file=sys.stderr, flush=True)\n"
            "while True:\n"
            "    d, a = s.recvfrom(65535)\n"
            "    s.sendto(d, a)\n"
        )
        self._start([sys.executable, "-c", code], self.ns_b, "ready")

    def _start_gateways(self) -> None:
        rules = '[[rules]]\naction = "allow"\n'
        b_conf = self.tmp / "b.toml"
        listen_b = f"{self.b_ip}:{_free_port('tcp') if not self.use_netns else 1081}"
        b_conf.write_text(
            f'listen = ["{listen_b}"]\n'
            f'[tls]\nlisten = ["{self.b_ip}:{self.b_port}"]\n'
            f'cert = "{self.tmp / "b.pem"}"\nkey = "{self.tmp / "b.key"}"\n'
            '[admin]\nenabled = false\n[log]\nlevel = "info"\n' + rules
        )
        a_conf = self.tmp / "a.toml"
        a_conf.write_text(
            f'listen = ["127.0.0.1:{self.a_port}"]\n'
            '[admin]\nenabled = false\n[log]\nlevel = "info"\n'
            f'[[tunnel.peer]]\naddress = "{self.b_ip}:{self.b_port}"\nca = "{self.ca}"\n' + rules
        )
        server = [sys.executable, "-m", "socksx", "server", "-c"]
        self._start([*server, str(b_conf)], self.ns_b, "listening")
        self._start([*server, str(a_conf)], self.ns_a, "listening")

    def set_loss(self, percent: float) -> None:
        """*percent* loss on each direction of the inter-gateway link (0: none)."""
        for ns, dev in ((self.ns_a, "i0"), (self.ns_b, "i1")):
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
                check=False,
            )
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "sxloss"],
                capture_output=True,
                check=False,
            )
        if not percent:
            return
        for ns, dev in ((self.ns_a, "i0"), (self.ns_b, "i1")):
            netem = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "netem",
                    "loss",
                    f"{percent}%",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if netem.returncode == 0:
                self.loss_method = "tc netem"
                continue
            per_mille = round(percent * 10)
            # On arrival (input hook), so the sender never learns of the drop, as on a lossy
            # link (an output-hook drop would fail the sender's sendto with EPERM).
            script = (
                "add table inet sxloss\n"
                "add chain inet sxloss in { type filter hook input priority 0; }\n"
                f'add rule inet sxloss in iifname "{dev}" numgen random mod 1000 < '
                f"{per_mille} drop\n"
            )
            nft = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
                check=False,
            )
            if nft.returncode != 0:
                msg = f"no loss emulation: netem: {netem.stderr.strip()}; nft: {nft.stderr.strip()}"
                raise RuntimeError(msg)
            self.loss_method = f"nftables numgen random drop (netem: {netem.stderr.strip()})"

    def measure(self, proto: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
        argv = [
            *self.in_ns(self.ns_a),
            sys.executable,
            str(Path(__file__).resolve()),
            "_client",
            "--gateway",
            f"127.0.0.1:{self.a_port}",
            "--peer-host",
            self.b_ip,
            "--peer-port",
            str(self.b_port),
            "--echo-host",
            "127.0.0.1",
            "--echo-port",
            str(self.echo_port),
            "--ca",
            str(self.ca),
            "--proto",
            proto,
            "--size",
            str(size),
            "--pings",
            str(args.pings),
            "--window",
            str(args.window),
            "--duration",
            str(args.duration),
            "--rate",
            str(args.rate),
        ]
        budget = 4 * args.duration + args.pings / args.rate + 60
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=budget, check=False
        )
        if done.returncode != 0:
            msg = f"client failed: {done.stderr.strip()[-400:]}"
            raise RuntimeError(msg)
        return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port(kind: str) -> int:
    import socket

    family_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family_type) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as stream:
        for line in stream:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import gevent

    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gevent": gevent.__version__,
        "load_before": [round(x, 2) for x in load],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protos", default="tls,udp", help="PROTOs: tls (01), udp (02)")
    parser.add_argument("--sizes", default="64,1200", help="payload sizes in octets")
    parser.add_argument("--loss", default="0,1,5", help="loss percentages on the link")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--pings", type=int, default=1000, help="datagrams per latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="latency stream, datagrams/s")
    parser.add_argument("--window", type=int, default=32, help="datagrams in flight")
    parser.add_argument("--loopback", action="store_true", help="no namespaces, no loss runs")
    parser.add_argument("--json", metavar="FILE", help="write every number to FILE")
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("_client", help=argparse.SUPPRESS)
    for name in ("gateway", "peer-host", "echo-host", "ca", "proto"):
        client.add_argument(f"--{name}", required=True)
    for name in ("peer-port", "echo-port", "size", "pings", "window"):
        client.add_argument(f"--{name}", type=int, required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--rate", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "_client":
        _client(args)
        return 0

    why_not = "--loopback given" if args.loopback else _can_use_namespaces()
    losses = [float(x) for x in args.loss.split(",")]
    if why_not and any(losses):
        print(f"tunnel_bench: loss runs skipped: {why_not}", file=sys.stderr)
        losses = [0.0]
    report: dict[str, Any] = {"machine": machine(), "runs": [], "netns": why_not is None}
    with tempfile.TemporaryDirectory(prefix="sx-tunnel-bench-") as tmp:
        setup = Setup(Path(tmp), use_netns=why_not is None)
        print("| PROTO | payload | loss | datagrams/s | late/lost | p50 ms | p99 ms | lost |")
        print("|---|---|---|---|---|---|---|---|")
        for loss in losses:
            if setup.use_netns:
                setup.set_loss(loss)
            for proto in args.protos.split(","):
                for size in (int(x) for x in args.sizes.split(",")):
                    numbers = setup.measure(proto, size, args)
                    lat, tput = numbers["latency"], numbers["throughput"]
                    label = "01 tls" if proto == "tls" else "02 udp"
                    lost_pct = 100 * tput["lost"] / max(1, tput["delivered"] + tput["lost"])
                    print(
                        f"| {label} | {size} | {loss:g} % | {tput['datagrams_per_s']:.0f} | "
                        f"{lost_pct:.1f} % | {lat['p50_ms']} | {lat['p99_ms']} | "
                        f"{lat['lost']}/{lat['sent']} |",
                        flush=True,
                    )
                    report["runs"].append({"proto": proto, "size": size, "loss": loss, **numbers})
        report["loss_method"] = setup.loss_method
    if setup.loss_method:
        print(f"\nloss emulation: {setup.loss_method}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
