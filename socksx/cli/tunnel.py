"""``socksx tunnel``: UDP tunnels between two gateways (docs/PROTOCOL.md "UDP tunnels").

``tunnel peer PEER --via GATEWAY --listen HOST:PORT --to HOST:PORT`` is a local UDP forwarder:
an application sends plain UDP to --listen, it reaches --to in site B through gateway A
(--via) and gateway B (PEER), and the answers come back to the application. ``tunnel list``
shows the tunnels a gateway runs, from its admin API (``[admin]``, docs/ADMIN.md).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import Duration, HostPort, timeout_option
from socksx.cli.connect import (
    hostport_text,
    proxy_options,
    read_password_file,
    resolve_credentials,
    resolve_proxy,
)

if TYPE_CHECKING:
    from socksx.client.tunnel import Tunnel

__all__ = ["tunnel"]

TICK: Final = 0.5  #: seconds between counter refreshes (and checks for SIGTERM)
RECV_SIZE: Final = 65535


@click.group(short_help="UDP tunnels between two gateways: peer, list.")
def tunnel() -> None:
    """UDP tunnels through gateway A to gateway B (SETUP_UDP_TUNNEL)."""


@dataclass
class Counters:
    """What the forwarder moved; printed live on a terminal and as JSON at the end."""

    started: float = field(default_factory=time.monotonic)
    datagrams_up: int = 0
    datagrams_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped: int = 0

    def line(self) -> str:
        """One status line."""
        age = time.monotonic() - self.started
        return (
            f"up {self.datagrams_up} datagrams / {self.bytes_up} bytes, "
            f"down {self.datagrams_down} / {self.bytes_down}, "
            f"dropped {self.dropped}, {age:.0f} s"
        )


def _bind(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class _Stop:
    """SIGTERM asks the loop to stop at its next tick (a clean exit 0)."""

    requested = False

    def __call__(self, signum: int, frame: object) -> None:
        _Stop.requested = True


@tunnel.command("peer", short_help="Forward a local UDP port to a host in site B.")
@click.argument("peer", type=HostPort(), metavar="PEER")
@proxy_options
@click.option(
    "--proto",
    type=click.Choice(["tls", "udp"]),
    default="tls",
    show_default=True,
    help="Between the gateways: tls (PROTO 01, inside TLS) or udp (PROTO 02, sealed UDP).",
)
@click.option("--peer-user", metavar="USER", help="Username gateway A presents to PEER.")
@click.option(
    "--peer-password-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The password for PEER: the first line of FILE (needs --peer-user, socks5s://).",
)
@click.option(
    "--listen",
    "listen",
    type=HostPort(),
    required=True,
    metavar="HOST:PORT",
    help="Local UDP address the application sends to (port 0: any free port).",
)
@click.option(
    "--to",
    "target",
    type=HostPort(),
    required=True,
    metavar="HOST:PORT",
    help="Destination in site B (a name is resolved by gateway B).",
)
@timeout_option("Limit for setting the tunnel up (A connects to B inside it).", default=30.0)
@click.option(
    "--duration",
    type=Duration(),
    default=None,
    help="Stop after this long (exit 0)  [default: run until interrupted].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final counters as JSON.")
@click.pass_obj
def peer(
    app: App,
    *,
    peer: tuple[str, int],
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    proto: str,
    peer_user: str | None,
    peer_password_file: str | None,
    listen: tuple[str, int],
    target: tuple[str, int],
    timeout: float,
    duration: float | None,
    as_json: bool,
) -> None:
    """Forward UDP from --listen to --to in site B, through --via (gateway A) and PEER (B).

    PEER is gateway B's TLS listener, HOST:PORT. Answers from site B go back to the address
    the application last sent from. Live counters are shown when stderr is a terminal.

    Exit status: 0 stopped (SIGTERM or --duration), 4 gateway unreachable, 5 authentication
    to the gateway failed, 6 tunnel refused (REP 02, 04, 05, B8, B9, BA...), 7 the tunnel
    ended (gateway closed it), 130 interrupted.
    """
    from socksx.client.tunnel import open_tunnel
    from socksx.errors import (
        AuthenticationFailed,
        ProxyConnectionError,
        ProxyTimeoutError,
        ReplyError,
    )

    url = resolve_proxy(via)
    user, password = resolve_credentials(url, username, password_file)
    if (peer_user is None) != (peer_password_file is None):
        msg = "--peer-user and --peer-password-file go together"
        raise click.UsageError(msg)
    peer_password = (
        read_password_file(peer_password_file, "--peer-password-file")
        if peer_password_file
        else None
    )
    try:
        local = _bind(listen)
    except OSError as exc:
        where = hostport_text(*listen)
        app.fail(
            f"cannot listen on {where}: {(exc.strerror or str(exc)).lower()}", ExitCode.FAILURE
        )
    with local:
        try:
            handle = open_tunnel(
                peer,
                proxy=url,
                proto=proto,
                peer_username=peer_user,
                peer_password=peer_password,
                username=user,
                password=password,
                timeout=timeout,
                ca_file=ca_file,
                fingerprint=fingerprint,
            )
        except ReplyError as exc:
            where = hostport_text(*peer)
            app.fail(
                f"gateway {url.hostport} refused the tunnel to {where}: {exc}", ExitCode.REFUSED
            )
        except AuthenticationFailed as exc:
            app.fail(str(exc), ExitCode.AUTH)
        except (ProxyConnectionError, ProxyTimeoutError) as exc:
            app.fail(str(exc), ExitCode.UNREACHABLE)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        with handle:
            bound = local.getsockname()
            app.info(
                f"tunnel up: {hostport_text(bound[0], bound[1])} -> {hostport_text(*target)} "
                f"via {url.hostport} and {hostport_text(*peer)} ({proto})"
            )
            counters = Counters()
            result = _forward(app, local, handle, target, counters, duration)
    if as_json:
        report: dict[str, Any] = {
            "peer": hostport_text(*peer),
            "via": url.hostport,
            "proto": proto,
            "listen": hostport_text(bound[0], bound[1]),
            "to": hostport_text(*target),
            "result": result,
            "seconds": round(time.monotonic() - counters.started, 3),
            "datagrams_up": counters.datagrams_up,
            "datagrams_down": counters.datagrams_down,
            "bytes_up": counters.bytes_up,
            "bytes_down": counters.bytes_down,
            "dropped": counters.dropped,
        }
        click.echo(json.dumps(report))
    if result == "ended":
        app.fail(f"the tunnel was ended by gateway {url.hostport}", ExitCode.ENDED)
    app.info(f"tunnel closed: {counters.line()}")


def _forward(
    app: App,
    local: socket.socket,
    handle: Tunnel,
    target: tuple[str, int],
    counters: Counters,
    duration: float | None,
) -> str:
    """Move datagrams until stopped ("stopped") or the gateway closes ("ended")."""
    previous = signal.signal(signal.SIGTERM, _Stop())
    _Stop.requested = False
    deadline = None if duration is None else time.monotonic() + duration
    application: tuple[Any, ...] | None = None
    live = None
    if app.err.is_terminal and app.verbosity >= 0:
        from rich.live import Live
        from rich.text import Text

        live = Live(Text(counters.line()), console=app.err, auto_refresh=False, transient=False)
        live.start()
    try:
        sockets = [local, handle.socket, handle.control]
        while not _Stop.requested:
            wait = TICK if deadline is None else min(TICK, deadline - time.monotonic())
            if wait <= 0:
                break
            readable, _, _ = select.select(sockets, [], [], wait)
            if local in readable:
                data, application = local.recvfrom(RECV_SIZE)
                handle.sendto(data, target)
                counters.datagrams_up += 1
                counters.bytes_up += len(data)
            if handle.socket in readable:
                _answers(local, handle, application, counters)
            if handle.control in readable and not _still_open(handle.control):
                return "ended"
            if live is not None:
                from rich.text import Text

                live.update(Text(counters.line()), refresh=True)
        return "stopped"
    finally:
        if live is not None:
            live.stop()
        signal.signal(signal.SIGTERM, previous)


def _still_open(control: socket.socket) -> bool:
    """False once gateway A has closed the control connection (the tunnel is over)."""
    try:
        return bool(control.recv(4096))
    except OSError:
        return False


def _answers(
    local: socket.socket, handle: Tunnel, application: tuple[Any, ...] | None, counters: Counters
) -> None:
    """Every answer waiting on the tunnel's socket, to the application's last address."""
    while True:
        try:
            data, _ = handle.recvfrom(timeout=0)
        except TimeoutError:
            return
        if application is None:
            counters.dropped += 1  # nobody has sent yet: there is nobody to answer
            continue
        local.sendto(data, application)
        counters.datagrams_down += 1
        counters.bytes_down += len(data)


@tunnel.command("list", short_help="List the tunnels a gateway runs (admin API).")
@click.option(
    "--admin",
    "target",
    default="127.0.0.1:1081",
    show_default=True,
    metavar="HOST:PORT|PATH",
    help="The gateway's admin API ([admin] listen): HOST:PORT, http://HOST:PORT or a socket.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding the admin API's bearer token.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the tunnels as a JSON list.")
@click.pass_obj
def list_tunnels(app: App, *, target: str, token_file: str | None, as_json: bool) -> None:
    """List both ends of every tunnel the gateway runs ("near": it is gateway A for a client;
    "far": it is gateway B for another gateway), with their counters.

    Exit status: 0, or 1 when the admin API cannot be reached.
    """
    from socksx.client.admin import AdminClient, AdminError, read_token_file

    try:
        client = AdminClient(target, token=read_token_file(token_file) if token_file else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--admin") from None
    except AdminError as exc:
        app.fail(str(exc), ExitCode.FAILURE)
    try:
        tunnels = client.stats().get("tunnels", [])
    except AdminError as exc:
        app.fail(str(exc), ExitCode.FAILURE)
    if as_json:
        click.echo(json.dumps(tunnels))
        return
    _print_table(app, tunnels)


_COLUMNS: Final = (
    ("id", "id"),
    ("role", "role"),
    ("proto", "proto"),
    ("peer", "peer"),
    ("client", "client"),
    ("user", "user"),
    ("age s", "age"),
    ("dgrams out", "datagrams_out"),
    ("dgrams in", "datagrams_in"),
    ("bytes out", "bytes_out"),
    ("bytes in", "bytes_in"),
    ("dropped", "dropped"),
)


def _cell(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if key == "dropped" and isinstance(value, dict):
        value = sum(value.values())
    if key == "age" and isinstance(value, int | float):
        value = f"{value:.0f}"
    return "-" if value is None else str(value)


def _print_table(app: App, tunnels: list[dict[str, Any]]) -> None:
    rows = [[_cell(t, key) for _, key in _COLUMNS] for t in tunnels]
    if app.out.is_terminal:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"{len(rows)} tunnel ends"), title_justify="left")
        for title, _ in _COLUMNS:
            table.add_column(title)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # peer and user come from the network
        app.out.print(table)
        return
    header = [title for title, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
