"""``socksx mcast-join`` and ``socksx mcast-send``: a multicast group through a socksx gateway.

Both are members built on ``socksx.client.join_group()`` (docs/PROTOCOL.md section 8). The
granted permission goes to stderr on start; data goes to stdout (``mcast-join``) in the chosen
format. Exit status: 6 when the gateway refuses the JOIN (the reply code is in the message),
7 when it ends the membership (B4 expired, B5 expelled, B7 relay down), 130 on Ctrl-C (after a
LEAVE), 4/5 as for every proxy command.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import Duration, HostPort, timeout_option
from socksx.cli.connect import (
    hostport_text,
    proxy_options,
    read_stdin,
    resolve_credentials,
    resolve_proxy,
)

if TYPE_CHECKING:
    from socksx.client.mcast import Membership

__all__ = ["mcast_join", "mcast_send"]

FORMATS: Final = ("text", "hex", "json", "raw")
DEFAULT_COUNT: Final = 100
DEFAULT_SIZE: Final = 64
LEAVE_TIMEOUT: Final = 2.0
_PERMISSION_TEXT: Final = {
    "both": "send and receive (REP 00)",
    "receive": "receive only (REP B0)",
    "send": "send only (REP B1)",
}


def _group(target: tuple[str, int]) -> tuple[str, int]:
    host, port = target
    try:
        if ipaddress.ip_address(host).is_multicast:
            return host, port
    except ValueError:
        pass
    msg = f"{host!r} is not a multicast group address (224.0.0.0/4 or ff00::/8)"
    raise click.BadParameter(msg, param_hint="GROUP:PORT")


@contextlib.contextmanager
def _interrupts_here() -> Iterator[None]:
    """Under gevent, make Ctrl-C a KeyboardInterrupt in this greenlet, wherever it arrives.

    Python raises it in whatever code runs when the signal comes: with gevent that may be the
    membership's control or keepalive greenlet, which would die instead of the command, and
    the LEAVE would hang on a reply nobody reads.
    """
    if "gevent.monkey" not in sys.modules:
        yield
        return
    import gevent
    import greenlet

    target = greenlet.getcurrent()
    handler = gevent.signal_handler(signal.SIGINT, target.throw, KeyboardInterrupt)
    try:
        yield
    finally:
        handler.cancel()


@contextlib.contextmanager
def _membership(
    app: App,
    target: tuple[str, int],
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    timeout: float,
) -> Iterator[Membership]:
    """JOIN (mapping every failure to its exit code), yield, and always LEAVE at the end."""
    from socksx.client.mcast import join_group
    from socksx.errors import (
        AuthenticationFailed,
        ProxyConnectionError,
        ProxyTimeoutError,
        ReplyError,
    )

    host, port = _group(target)
    url = resolve_proxy(via)
    user, password = resolve_credentials(url, username, password_file)
    where = hostport_text(host, port)
    try:
        membership = join_group(
            host,
            port,
            proxy=url,
            username=user,
            password=password,
            timeout=timeout,
            ca_file=ca_file,
            fingerprint=fingerprint,
        )
    except ReplyError as exc:
        app.fail(f"proxy {url.hostport} refused to join {where}: {exc}", ExitCode.REFUSED)
    except AuthenticationFailed as exc:
        app.fail(str(exc), ExitCode.AUTH)
    except (ProxyConnectionError, ProxyTimeoutError) as exc:
        app.fail(str(exc), ExitCode.UNREACHABLE)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        # Announced inside the try: a Ctrl-C right after the announcement still LEAVEs.
        sealed = "sealed" if membership.sealed else "unencrypted"
        app.info(
            f"joined {where} via {url.hostport}: {_PERMISSION_TEXT[membership.permission]}; "
            f"relay {hostport_text(*membership.endpoint)}, {membership.mode} mode, {sealed}"
        )
        yield membership
    finally:
        # Always a LEAVE, Ctrl-C included (main() then exits 130): the relay takes what we sent
        # before dropping the membership.
        membership.leave(LEAVE_TIMEOUT)


def _ended(app: App, exc: Exception) -> None:
    app.fail(f"membership ended by the gateway: {exc}", ExitCode.ENDED)


# -- mcast-join -------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Escape control characters: network data must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _writer(fmt: str) -> Callable[[bytes, tuple[str, int]], None]:
    if fmt == "raw":
        stdout = sys.stdout.buffer

        def write_raw(data: bytes, source: tuple[str, int]) -> None:
            stdout.write(data)
            stdout.flush()

        return write_raw
    if fmt == "hex":
        return lambda data, source: click.echo(data.hex())
    if fmt == "json":

        def write_json(data: bytes, source: tuple[str, int]) -> None:
            record: dict[str, Any] = {
                "time": round(time.time(), 6),
                "source": hostport_text(*source),
                "size": len(data),
            }
            try:
                record["text"] = data.decode("utf-8")
            except UnicodeDecodeError:
                record["base64"] = base64.b64encode(data).decode("ascii")
            click.echo(json.dumps(record))

        return write_json
    return lambda data, source: click.echo(
        _printable(data.decode("utf-8", "replace").rstrip("\r\n"))
    )


@click.command("mcast-join", short_help="Join a multicast group through a gateway; print it.")
@click.argument("target", type=HostPort(), metavar="GROUP:PORT")
@proxy_options
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after N datagrams.")
@click.option(
    "--duration", type=Duration(), default=None, help="Exit after this long (e.g. 30s, 5m)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: one line per datagram; hex; json: one object per line; raw: the bytes as they are.",
)
@click.option(
    "--forward",
    type=HostPort(),
    metavar="HOST:PORT",
    default=None,
    help="Send each datagram to this UDP address (e.g. a local application) instead of printing.",
)
@timeout_option("Limit for connecting, the SOCKS handshake and the JOIN.")
@click.pass_obj
def mcast_join(
    app: App,
    *,
    target: tuple[str, int],
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    count: int | None,
    duration: float | None,
    fmt: str,
    forward: tuple[str, int] | None,
    timeout: float,
) -> None:
    """Join GROUP:PORT through the gateway and print every datagram of the group.

    The group's traffic is relayed by the gateway (decrypted here when the relay seals it);
    the permission the gateway granted is shown on stderr. Ends after --count datagrams or
    --duration, on Ctrl-C (leaving the group first), or when the gateway ends the membership
    (exit 7). A refused JOIN exits 6.
    """
    from socksx.client.mcast import MembershipEnded

    deadline = None if duration is None else time.monotonic() + duration
    received = 0
    with (
        _interrupts_here(),
        _membership(
            app, target, via, username, password_file, ca_file, fingerprint, timeout
        ) as membership,
    ):
        if not membership.can_receive:
            app.fail(
                f"not authorized to receive from {hostport_text(*target)} "
                f"(the gateway granted {_PERMISSION_TEXT[membership.permission]})",
                ExitCode.REFUSED,
            )
        out: socket.socket | None = None
        if forward is not None:
            family = socket.AF_INET6 if ":" in forward[0] else socket.AF_INET
            out = socket.socket(family, socket.SOCK_DGRAM)
        write = _writer(fmt)
        try:
            while count is None or received < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    data, source = membership.recv(timeout=remaining)
                except TimeoutError:
                    break
                except MembershipEnded as exc:
                    _ended(app, exc)
                received += 1
                if out is not None and forward is not None:
                    with contextlib.suppress(OSError):
                        out.sendto(data, forward)
                else:
                    write(data, source)
        except BrokenPipeError:
            pass  # whoever read our stdout has gone
        finally:
            if out is not None:
                out.close()
        verb = "forwarded" if forward is not None else "received"
        app.info(f"{verb} {received} datagrams")


# -- mcast-send -------------------------------------------------------------------------------


def _stdin_lines() -> Iterator[bytes]:
    """Lines of stdin without their line ends, read cooperatively under gevent."""
    read = read_stdin()
    pending = b""
    while chunk := read():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending


def _generated(size: int, count: int) -> Iterator[bytes]:
    for index in range(count):
        stamp = f"socksx mcast-send {index + 1}/{count} ".encode()
        yield (stamp + bytes(max(0, size - len(stamp))))[:size] if size else b""


@click.command("mcast-send", short_help="Send to a multicast group through a gateway.")
@click.argument("target", type=HostPort(), metavar="GROUP:PORT")
@click.argument("messages", nargs=-1, metavar="[MESSAGE]...")
@proxy_options
@click.option(
    "--size",
    type=click.IntRange(0, 65000),
    default=None,
    help=f"Generated load: datagrams of SIZE octets (default {DEFAULT_SIZE} with --count).",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help=f"Generated load: this many datagrams (default {DEFAULT_COUNT} with --size).",
)
@click.option(
    "--rate",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Generated load: datagrams per second (0: as fast as possible).",
)
@timeout_option("Limit for connecting, the SOCKS handshake and the JOIN.")
@click.pass_obj
def mcast_send(
    app: App,
    *,
    target: tuple[str, int],
    messages: tuple[str, ...],
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    size: int | None,
    count: int | None,
    rate: int,
    timeout: float,
) -> None:
    """Send datagrams to GROUP:PORT through the gateway.

    Each MESSAGE is one datagram; without MESSAGE, each line of standard input is one; with
    --size or --count, generated datagrams are sent at --rate (with a progress display on a
    terminal). The gateway forwards them to the public group and to the other members, if it
    grants send permission (a receive-only grant exits 6).
    """
    from socksx.client.mcast import MembershipEnded

    generated = size is not None or count is not None
    if generated and messages:
        msg = "give MESSAGE arguments or --size/--count, not both"
        raise click.UsageError(msg)
    with (
        _interrupts_here(),
        _membership(
            app, target, via, username, password_file, ca_file, fingerprint, timeout
        ) as membership,
    ):
        if not membership.can_send:
            app.fail(
                f"not authorized to send to {hostport_text(*target)} "
                f"(the gateway granted {_PERMISSION_TEXT[membership.permission]})",
                ExitCode.REFUSED,
            )
        if generated:
            total = count or DEFAULT_COUNT
            source: Iterator[bytes] = _generated(DEFAULT_SIZE if size is None else size, total)
        elif messages:
            total = len(messages)
            source = (os.fsencode(m) for m in messages)
            rate = 0
        else:
            total = 0
            source = _stdin_lines()
            rate = 0
        sent = octets = 0
        try:
            with _progress(app, total if generated else 0) as advance:
                for data in _paced(source, rate):
                    membership.send(data)
                    sent += 1
                    octets += len(data)
                    advance()
        except MembershipEnded as exc:
            _ended(app, exc)
        app.info(f"sent {sent} datagrams ({octets} octets) to {hostport_text(*target)}")


def _paced(source: Iterator[bytes], rate: int) -> Iterator[bytes]:
    """*source* at most *rate* items per second (0: unpaced), without drifting."""
    if not rate:
        yield from source
        return
    interval = 1.0 / rate
    due = time.monotonic()
    for data in source:
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield data
        due += interval


@contextlib.contextmanager
def _progress(app: App, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on a terminal's stderr (nothing otherwise); yields "one more sent"."""
    if not total or not app.err.is_terminal or app.verbosity < 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "sending", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=app.err
    ) as progress:
        task = progress.add_task("send", total=total)
        yield lambda: progress.advance(task)
