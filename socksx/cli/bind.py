"""``socksx bind --via PROXY``: reverse channels on a proxy (MULTI_BIND), relayed to local targets.

The proxy opens TCP listeners and UDP relays on its outward side (docs/PROTOCOL.md section 10);
this command prints where they are, so a remote peer can be told, then relays each channel to
its ``--forward`` target: every peer connection on a TCP channel is claimed (ACCEPT) and
connected to the target; datagrams of a UDP channel go to the target and the target's answers
back to the peer that sent them (one local socket per peer). Channels without a target are only
counted. On a terminal a live table shows the counters; ``--json`` prints one JSON object, then
one JSON line per event. Ctrl-C closes the control connection, which closes every channel.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import HostPort, split_host_port, timeout_option
from socksx.cli.connect import hostport_text, proxy_options, resolve_credentials, resolve_proxy

if TYPE_CHECKING:
    from rich.table import Table

    from socksx.client.multibind import ChannelInfo, ChannelSocket, MultiBind, PeerConnected

__all__ = ["bind"]

CHUNK: Final = 65536
POLL: Final = 0.25  #: seconds between checks of the stop flag in blocking loops
MAX_UDP_PEERS: Final = 64  #: local sockets per UDP channel (one per remote peer)
REFRESH_PER_SECOND: Final = 4


class ForwardSpec(click.ParamType):
    """CHAN=HOST:PORT; converts to (chan, (host, port))."""

    name = "CHAN=HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse or fail with click's usage error."""
        if isinstance(value, tuple):
            return value
        chan, sep, target = str(value).partition("=")
        if not sep or not chan.isdigit():
            self.fail(f"{value!r} is not CHAN=HOST:PORT (e.g. 0=127.0.0.1:8554)", param, ctx)
        try:
            return int(chan), split_host_port(target)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass
class ChannelState:
    """What the relay knows and counts about one channel (read by the live table)."""

    info: ChannelInfo
    forward: tuple[str, int] | None
    peers: int = 0  #: TCP: peers announced (C0)
    connections: int = 0  #: TCP: peers accepted and connected to the target
    active: int = 0  #: TCP: of those, still open
    expired: int = 0  #: TCP: peers the proxy closed unclaimed (C2)
    datagrams_in: int = 0  #: UDP: from peers
    datagrams_out: int = 0  #: UDP: to peers
    bytes_in: int = 0  #: from the peers
    bytes_out: int = 0  #: to the peers
    dropped: int = 0  #: UDP: datagrams with no target or beyond MAX_UDP_PEERS
    closed: str | None = None  #: the C1 REASON, once the proxy closed the channel
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add to counters from any thread."""
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def row(self) -> dict[str, Any]:
        """The channel for --json and the tables."""
        out = self.info.to_json()
        out["forward"] = None if self.forward is None else hostport_text(*self.forward)
        return out


Emit = Callable[..., None]


class Relay:
    """Everything that runs once the channels are granted: forwarding and counting."""

    def __init__(
        self, mb: MultiBind, states: list[ChannelState], emit: Emit, timeout: float
    ) -> None:
        self.mb = mb
        self.states = states
        self.emit = emit
        self.timeout = timeout
        self.stop_flag = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def start(self) -> None:
        """One receiving loop per UDP channel."""
        for state in self.states:
            if state.info.type == "udp":
                self._spawn(self._serve_udp, state)

    def stop(self) -> None:
        """Stop every loop and close every local socket (bounded wait)."""
        self.stop_flag.set()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2 * POLL + 1
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in sockets:
            sock.close()

    # -- events ----------------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        """React to one C0/C1/C2 event from the proxy."""
        from socksx.client.multibind import AcceptExpired, ChannelClosed, PeerConnected

        match event:
            case PeerConnected(chan_id=chan_id, peer=peer):
                state = self.states[chan_id]
                state.add(peers=1)
                self.emit("peer_connected", channel=chan_id, peer=str(peer))
                if state.forward is not None:
                    self._spawn(self._serve_tcp, state, event)
            case ChannelClosed(chan_id=chan_id, reason=reason):
                self.states[chan_id].closed = reason.name.lower()
                self.emit("channel_closed", channel=chan_id, reason=reason.name.lower())
            case AcceptExpired(chan_id=chan_id):
                self.states[chan_id].add(expired=1)
                self.emit("accept_expired", channel=chan_id)

    # -- TCP -------------------------------------------------------------------------------

    def _serve_tcp(self, state: ChannelState, event: PeerConnected) -> None:
        from socksx.errors import SocksError

        assert state.forward is not None
        chan, peer = state.info.id, str(event.peer)
        target = hostport_text(*state.forward)
        problem = ""
        try:
            local: socket.socket | None = socket.create_connection(
                state.forward, timeout=self.timeout
            )
        except OSError as exc:
            local, problem = None, _reason(exc)
        try:
            remote = self.mb.accept(event, timeout=self.timeout)
        except (SocksError, OSError) as exc:
            if local is not None:
                local.close()
            self.emit("accept_failed", channel=chan, peer=peer, error=str(exc))
            return
        if local is None:
            # Claimed only to close it at once: the peer learns now, not after accept_timeout.
            remote.close()
            self.emit("forward_failed", channel=chan, peer=peer, forward=target, error=problem)
            return
        local.settimeout(None)
        for sock in (local, remote):
            self._track(sock)
        state.add(connections=1, active=1)
        self.emit("accepted", channel=chan, peer=peer, forward=target)
        counts = {"in": 0, "out": 0}
        inbound = threading.Thread(
            target=self._pump, args=(remote, local, state, "in", counts), daemon=True
        )
        inbound.start()
        self._pump(local, remote, state, "out", counts)
        inbound.join()
        self._untrack(local)
        self._untrack(remote)
        state.add(active=-1)
        self.emit(
            "connection_closed",
            channel=chan,
            peer=peer,
            bytes_in=counts["in"],
            bytes_out=counts["out"],
        )

    @staticmethod
    def _pump(
        src: socket.socket,
        dst: socket.socket,
        state: ChannelState,
        way: str,
        counts: dict[str, int],
    ) -> None:
        """Copy until EOF, then half-close *dst* (the other direction keeps flowing)."""
        name = "bytes_in" if way == "in" else "bytes_out"
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
                counts[way] += len(data)
                state.add(**{name: len(data)})
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # One side broke: end both directions.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    # -- UDP -------------------------------------------------------------------------------

    def _serve_udp(self, state: ChannelState) -> None:
        channel = self.mb.udp_socket(state.info.id)
        locals_by_peer: dict[tuple[str, int], socket.socket] = {}
        while not self.stop_flag.is_set():
            try:
                data, peer = channel.recvfrom(timeout=POLL)
            except TimeoutError:
                continue
            except OSError:
                return
            state.add(datagrams_in=1, bytes_in=len(data))
            if state.forward is None:
                state.add(dropped=1)
                continue
            local = locals_by_peer.get(peer)
            if local is None:
                if len(locals_by_peer) >= MAX_UDP_PEERS:
                    state.add(dropped=1)
                    continue
                local = self._udp_local(state, channel, peer)
                if local is None:
                    continue
                locals_by_peer[peer] = local
            with contextlib.suppress(OSError):  # ECONNREFUSED from an earlier datagram
                local.send(data)

    def _udp_local(
        self, state: ChannelState, channel: ChannelSocket, peer: tuple[str, int]
    ) -> socket.socket | None:
        """A socket connected to the target that stands for *peer* (answers go back to it)."""
        assert state.forward is not None
        try:
            infos = socket.getaddrinfo(*state.forward, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            local = socket.socket(family, socket.SOCK_DGRAM)
            local.connect(address)
        except OSError as exc:
            self.emit(
                "forward_failed",
                channel=state.info.id,
                peer=hostport_text(*peer),
                forward=hostport_text(*state.forward),
                error=_reason(exc),
            )
            return None
        self._track(local)
        self.emit(
            "udp_peer",
            channel=state.info.id,
            peer=hostport_text(*peer),
            forward=hostport_text(*state.forward),
        )
        self._spawn(self._udp_back, state, channel, local, peer)
        return local

    def _udp_back(
        self,
        state: ChannelState,
        channel: ChannelSocket,
        local: socket.socket,
        peer: tuple[str, int],
    ) -> None:
        local.settimeout(POLL)
        while not self.stop_flag.is_set():
            try:
                data = local.recv(CHUNK)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                continue  # the target is not listening (yet): keep the peer's socket
            except OSError:
                return
            try:
                channel.sendto(data, peer)
            except OSError:
                return
            state.add(datagrams_out=1, bytes_out=len(data))


# -- output ------------------------------------------------------------------------------------


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _traffic(state: ChannelState) -> str:
    if state.info.type == "tcp":
        return f"{state.connections}/{state.peers} accepted, {state.active} open"
    return f"{state.datagrams_in} in, {state.datagrams_out} out"


def live_table(states: list[ChannelState], title: str) -> Table:
    """The terminal view: endpoints and live counters per channel.

    Nothing is ever cut short (the bound addresses are what the user copies to the peer): a
    narrow terminal folds cells instead. REL addresses are left to --json and the plain table.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    rows = [state.row() for state in states]
    widest = {key: max(len(row[key] or "-") for row in rows) for key in ("bound", "forward")}
    # Most important first: a terminal too narrow for the table crops it on the right.
    for name in ("#", "type", "bound", "forward", "state", "traffic", "in / out"):
        table.add_column(
            name,
            overflow="fold",
            justify="right" if name == "#" else "left",
            min_width=widest.get(name),
        )
    for state, row in zip(states, rows, strict=True):
        kind = row["type"] + ("/rtp" if row["rtp_pair"] else "")
        table.add_row(
            str(row["id"]),
            kind,
            Text(row["bound"]),
            Text(row["forward"] or "-"),
            Text(state.closed or "open", style="red" if state.closed else "green"),
            _traffic(state),
            f"{_size(state.bytes_in)} / {_size(state.bytes_out)}",
        )
    return table


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def plain_table(states: list[ChannelState]) -> str:
    """Aligned plain text of the endpoints (stdout is not a terminal)."""
    rows = [("CHAN", "TYPE", "BOUND", "RELAY", "FORWARD")]
    for state in states:
        row = state.row()
        kind = row["type"] + ("/rtp" if row["rtp_pair"] else "")
        rows.append(
            (str(row["id"]), kind, row["bound"], row["relay"] or "-", row["forward"] or "-")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _event_text(kind: str, fields: dict[str, Any]) -> str:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"{kind.replace('_', ' ')}: {parts}"


# -- the command -------------------------------------------------------------------------------


@click.command(short_help="Open reverse TCP/UDP channels on a proxy and relay them locally.")
@proxy_options
@click.option(
    "--tcp",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="TCP channels (listeners on the proxy's outward side).",
)
@click.option(
    "--udp",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="UDP channels (relays on the proxy's outward side).",
)
@click.option(
    "--rtp-pair",
    is_flag=True,
    help="The first two UDP channels form an RTP/RTCP pair (consecutive ports, the first even).",
)
@click.option(
    "--peer",
    type=HostPort(default_port=0),
    metavar="HOST[:PORT]",
    help="Accept connections and datagrams only from this peer (and port, when "
    "given).  [default: any peer the proxy allows]",
)
@click.option(
    "--forward",
    "forwards",
    type=ForwardSpec(),
    multiple=True,
    help="Relay channel CHAN to HOST:PORT on this side (repeatable).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (the channels), then one JSON line per event.",
)
@timeout_option("Limit for the SOCKS handshakes and for connecting to a forward target.")
@click.pass_obj
def bind(
    app: App,
    *,
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    tcp: int,
    udp: int,
    rtp_pair: bool,
    peer: tuple[str, int] | None,
    forwards: tuple[tuple[int, tuple[str, int]], ...],
    as_json: bool,
    timeout: float,
) -> None:
    """Ask the proxy for TCP listeners and UDP relays (MULTI_BIND) and relay them here.

    Channels are numbered from 0: the TCP ones first, then the UDP ones. Give each channel's
    BOUND address to the remote peer; with --forward, what the peer sends reaches HOST:PORT on
    this side (TCP: one connection per peer connection; UDP: datagrams both ways). Runs until
    Ctrl-C or until the proxy closes every channel.

    Exit status: 4 proxy unreachable or connection lost, 5 authentication failed, 6 refused
    (REP 07: the proxy has no multi-bind support), 7 the proxy closed every channel, 130 Ctrl-C.
    """
    from socksx.client.multibind import multi_bind
    from socksx.errors import (
        AuthenticationFailed,
        ProxyConnectionError,
        ProxyTimeoutError,
        ReplyError,
    )

    count = tcp + udp
    if not 1 <= count <= 16:
        msg = f"ask for 1 to 16 channels with --tcp and --udp (got {count})"
        raise click.UsageError(msg)
    if rtp_pair and udp < 2:
        msg = "--rtp-pair needs at least two UDP channels (--udp 2)"
        raise click.UsageError(msg)
    targets: dict[int, tuple[str, int]] = {}
    for chan, target in forwards:
        if chan >= count:
            msg = f"--forward {chan}=...: there are only channels 0 to {count - 1}"
            raise click.BadParameter(msg, param_hint="--forward")
        if chan in targets:
            msg = f"--forward: channel {chan} is given twice"
            raise click.BadParameter(msg, param_hint="--forward")
        targets[chan] = target
    url = resolve_proxy(via)
    user, password = resolve_credentials(url, username, password_file)
    try:
        mb = multi_bind(
            proxy=url,
            tcp=tcp,
            udp=udp,
            rtp_pair=rtp_pair,
            peer=peer,
            username=user,
            password=password,
            timeout=timeout,
            ca_file=ca_file,
            fingerprint=fingerprint,
        )
    except ReplyError as exc:
        app.fail(str(exc), ExitCode.REFUSED)
    except AuthenticationFailed as exc:
        app.fail(str(exc), ExitCode.AUTH)
    except (ProxyConnectionError, ProxyTimeoutError) as exc:
        app.fail(str(exc), ExitCode.UNREACHABLE)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    states = [ChannelState(info, targets.get(info.id)) for info in mb.channels]
    title = f"socksx bind via {url.hostport}: {len(states)} channels"
    emit = _emitter(app, as_json)
    if as_json:
        head = {"proxy": url.hostport, "channels": [state.row() for state in states]}
        click.echo(json.dumps(head))
    elif not app.out.is_terminal:
        click.echo(title)
        click.echo(plain_table(states))
    relay = Relay(mb, states, emit, timeout)
    with _interrupts_to_main():
        outcome = _run(app, mb, relay, states, title, as_json)
    if isinstance(outcome, ProxyConnectionError):
        app.fail(str(outcome), ExitCode.UNREACHABLE)
    reasons = sorted({state.closed for state in states if state.closed})
    if all(state.closed for state in states):
        app.fail(
            f"proxy {url.hostport} closed every channel ({', '.join(reasons)})", ExitCode.ENDED
        )
    app.fail(f"proxy {url.hostport} closed the multi-bind control connection", ExitCode.UNREACHABLE)


def _run(
    app: App,
    mb: MultiBind,
    relay: Relay,
    states: list[ChannelState],
    title: str,
    as_json: bool,
) -> Exception | None:
    """Relay until the proxy closes (or Ctrl-C); everything is closed on the way out."""
    try:
        relay.start()
        if app.out.is_terminal and not as_json:
            from rich.live import Live

            with Live(
                get_renderable=lambda: live_table(states, title),
                console=app.out,
                refresh_per_second=REFRESH_PER_SECOND,
            ):
                return _serve_events(mb, relay)
        return _serve_events(mb, relay)
    finally:
        relay.stop()
        mb.close()


@contextlib.contextmanager
def _interrupts_to_main() -> Iterator[None]:
    """Under gevent, deliver Ctrl-C to the main greenlet.

    Python raises KeyboardInterrupt in whatever code runs when the signal arrives; once gevent
    has patched threading, that may be any relay greenlet, and the main one would never stop.
    """
    if not _cooperative():
        yield
        return
    import gevent

    handler = gevent.signal_handler(
        signal.SIGINT, gevent.kill, gevent.getcurrent(), KeyboardInterrupt
    )
    try:
        yield
    finally:
        handler.cancel()


def _cooperative() -> bool:
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def _serve_events(mb: MultiBind, relay: Relay) -> Exception | None:
    """Hand every event to the relay until the proxy closes; a lost connection is returned."""
    from socksx.errors import ProxyConnectionError

    try:
        while (event := mb.next_event()) is not None:
            relay.on_event(event)
    except ProxyConnectionError as exc:
        return exc
    return None


def _emitter(app: App, as_json: bool) -> Emit:
    """Events as JSON lines on stdout (--json), else as diagnostic lines on stderr."""
    lock = threading.Lock()

    def emit(kind: str, **fields: Any) -> None:
        with lock:
            if as_json:
                click.echo(json.dumps({"event": kind, **fields}))
            else:
                app.info(_event_text(kind, fields))

    return emit
