#!/usr/bin/env python3
"""Multicast relay throughput: public source -> relay -> N members, on loopback.

For every combination of relay mode (unicast, multicast), encryption (secretbox, none), payload
size and member count N, a fresh socksx server (``python -m socksx server``, one process) relays
a public group on 127.0.0.1 (TTL 0: nothing leaves the machine) to N members joined with
``socksx.client.join_group``. A public source sends ``--count`` datagrams at ``--rate`` per
second; a separate receiver process counts what reaches each member's socket (it does not
decrypt: the relay's work is what is measured). Reported per run:

* delivered/s: datagrams that reached members per second of the run (all members together);
* loss: 1 - delivered / (sent * N);
* relay CPU: user+system time of the server process during the run, as % of one core;
* us/public dgram: relay CPU per public datagram. In multicast mode the relay seals and sends
  each datagram once, whatever N; in unicast mode once per member, so it grows with N (the
  paper's trade-off, shown as a figure with ``--figure``);
* max public dgram/s: 1e6 / (us per datagram): what one core could relay.

    python benchmarks/mcast_bench.py                       # everything (a few minutes)
    python benchmarks/mcast_bench.py --members 1,10 --sizes 64 --count 2000 --figure
    python benchmarks/mcast_bench.py --json results.json

Every loop is bounded, every process started here is stopped at exit, and multicast stays on
the loopback interface.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from socksx.client import Membership, join_group  # noqa: E402

LO = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RCVBUF = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # root may exceed rmem_max
READY_TIMEOUT = 20.0
TICK = 0.01  # the source sends a burst of rate * TICK datagrams every TICK seconds
IDLE_END = 0.5  # the receiver stops after this long without a datagram (once the source ended)


@dataclass
class Result:
    """One run."""

    mode: str
    encryption: str
    size: int
    members: int
    sent: int
    delivered: int
    seconds: float
    relay_cpu: float
    relay_user: float

    @property
    def loss(self) -> float:
        expected = self.sent * self.members
        return 1 - self.delivered / expected if expected else 0.0

    @property
    def us_per_public(self) -> float:
        return self.relay_cpu / self.sent * 1e6 if self.sent else 0.0

    @property
    def user_us_per_public(self) -> float:
        return self.relay_user / self.sent * 1e6 if self.sent else 0.0

    def row(self) -> dict[str, object]:
        return {
            **asdict(self),
            "delivered_per_s": round(self.delivered / self.seconds) if self.seconds else 0,
            "loss": round(self.loss, 4),
            "relay_cpu_percent": round(100 * self.relay_cpu / self.seconds, 1),
            "us_per_public_datagram": round(self.us_per_public, 1),
            "user_us_per_public_datagram": round(self.user_us_per_public, 1),
            "max_public_per_s": round(1e6 / self.us_per_public) if self.us_per_public else 0,
        }


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LO, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server(mode: str, encryption: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    config = f"""
listen = ["{LO}:{port}"]
[admin]
enabled = false
[log]
level = "warning"
[mcast]
mode = "{mode}"
encryption = "{encryption}"
intranet_pool = ["239.254.{secrets.randbelow(250)}.0/28"]
member_timeout = 600.0
[[rules]]
action = "allow"
from = ["127.0.0.0/8"]
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as conf:
        conf.write(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "socksx", "server", "-c", conf.name],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LO, port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                msg = "the socksx server did not start"
                raise RuntimeError(msg)
            time.sleep(0.05)
        yield process, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.unlink(conf.name)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(all CPU time, user-space CPU time) of every thread of *pid*.

    The total comes from schedstat (nanoseconds); the user part from stat (clock ticks, sampled:
    only in the JSON). On loopback the kernel delivers every copy of a datagram inside the
    sender's sendto(), so the total includes the receiving side's kernel work.
    """
    total = user = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / CLK_TCK
        try:
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total, user


# -- members, source, receiver ----------------------------------------------------------------


def public_source() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LO, 0))
    mreqn = socket.inet_aton("0.0.0.0") + socket.inet_aton(LO) + struct.pack("@i", 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


def receive(sockets: list[socket.socket], done: float, limit: float) -> list[int]:
    """Count datagrams per socket until IDLE_END after *done* (a monotonic time) or *limit*."""
    counts = [0] * len(sockets)
    index = {s.fileno(): i for i, s in enumerate(sockets)}
    poller = select.epoll()
    for sock in sockets:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
    last = time.monotonic()
    while time.monotonic() < limit:
        events = poller.poll(0.1)
        now = time.monotonic()
        if not events:
            if now > done and now - last > IDLE_END:
                break
            continue
        last = now
        for fd, _ in events:
            sock = sockets[index[fd]]
            for _ in range(1024):  # bounded drain
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    break
                counts[index[fd]] += 1
    return counts


def run_one(port: int, pid: int, mode: str, encryption: str, size: int, members: int,
            count: int, rate: int) -> Result:
    group = (f"239.255.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}", free_port())
    joined: list[Membership] = []
    source = public_source()
    try:
        for _ in range(members):
            joined.append(join_group(*group, proxy=(LO, port), timeout=10))
        sockets = [m._rx for m in joined]  # the receiving socket of each member
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        _wait_registered(source, group, sockets)
        read_r, read_w = os.pipe()
        duration = count / rate if rate else 0.0
        child = os.fork()
        if child == 0:  # the receiver: counts, reports, exits
            os.close(read_r)
            start = time.monotonic()
            counts = receive(sockets, start + duration, start + duration + 60)
            os.write(read_w, json.dumps(counts).encode())
            os._exit(0)
        os.close(read_w)
        payload = bytes(size)
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        # Paced in bursts of TICK seconds' worth: sleeping between bursts leaves the CPU to
        # the relay and the receiver (a busy-wait would take a whole core of two).
        per_tick = max(1, round(rate * TICK)) if rate else count
        sent = 0
        while sent < count:
            for _ in range(min(per_tick, count - sent)):
                with contextlib.suppress(BlockingIOError):
                    source.sendto(payload, group)
                sent += 1
            if rate:
                due = started + sent / rate
                time.sleep(max(0.0, due - time.monotonic()))
        with os.fdopen(read_r) as report:
            counts = json.loads(report.read() or "[]")
        os.waitpid(child, 0)
        seconds = time.monotonic() - started - IDLE_END
        cpu_after, user_after = cpu_seconds(pid)
        cpu, user = cpu_after - cpu_before[0], user_after - cpu_before[1]
        return Result(mode, encryption, size, members, count, sum(counts), seconds, cpu, user)
    finally:
        source.close()
        for member in joined:
            member.close()


def _wait_registered(source: socket.socket, group: tuple[str, int],
                     sockets: list[socket.socket]) -> None:
    """Probe from the public side until every member's socket got one (then drain them)."""
    waiting = set(range(len(sockets)))
    deadline = time.monotonic() + 20
    while waiting and time.monotonic() < deadline:
        source.sendto(b"probe", group)
        ready, _, _ = select.select([sockets[i] for i in waiting], [], [], 0.2)
        for sock in ready:
            waiting.discard(sockets.index(sock))
    if waiting:
        msg = f"{len(waiting)} members never received the probe"
        raise RuntimeError(msg)
    time.sleep(0.3)  # let in-flight probes land before draining
    for sock in sockets:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(10000):
                sock.recv(65535)
        sock.setblocking(True)


# -- output -----------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    lines = [
        "| mode | encryption | payload | N | sent | delivered/s | loss | relay CPU "
        "| us/public dgram | max public dgram/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        row = r.row()
        lines.append(
            f"| {r.mode} | {r.encryption} | {r.size} | {r.members} | {r.sent} | "
            f"{row['delivered_per_s']} | {100 * r.loss:.1f}% | {row['relay_cpu_percent']}% | "
            f"{row['us_per_public_datagram']} | {row['max_public_per_s']} |"
        )
    return "\n".join(lines)


def figure(results: list[Result], width: int = 50) -> str:
    """Relay CPU per public datagram against N, one bar per run (the paper's claim)."""
    top = max((r.us_per_public for r in results), default=1.0) or 1.0
    lines = ["relay CPU per public datagram (us), by mode / encryption / payload / N:"]
    for r in sorted(results, key=lambda r: (r.mode, r.encryption, r.size, r.members)):
        bar = "#" * max(1, round(width * r.us_per_public / top))
        label = f"{r.mode:9} {r.encryption:9} {r.size:5}B N={r.members:<3}"
        lines.append(f"{label} {bar} {r.us_per_public:.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="multicast,unicast")
    parser.add_argument("--encryptions", default="secretbox,none")
    parser.add_argument("--sizes", default="64,1200")
    parser.add_argument("--members", default="1,10,50")
    parser.add_argument("--count", type=int, default=10000, help="datagrams per run")
    parser.add_argument("--rate", type=int, default=2000, help="datagrams per second offered")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--figure", action="store_true", help="print the CPU/N figure too")
    args = parser.parse_args()
    results: list[Result] = []
    for mode in args.modes.split(","):
        for encryption in args.encryptions.split(","):
            with server(mode, encryption) as (process, port):
                for size in map(int, args.sizes.split(",")):
                    for members in map(int, args.members.split(",")):
                        result = run_one(port, process.pid, mode, encryption, size, members,
                                         args.count, args.rate)
                        results.append(result)
                        print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}")
    print(f"# {args.count} datagrams per run offered at {args.rate}/s")
    print(table(results))
    if args.figure:
        print()
        print(figure(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.row() for r in results], indent=2))


if __name__ == "__main__":
    main()
