"""``socksx connect HOST:PORT --via PROXY``: netcat through a proxy, usable as ssh ProxyCommand.

stdin goes to the target and the target's bytes to stdout, unchanged. EOF on stdin half-closes
the connection (the answer keeps flowing until the target closes), which is what ssh and
request/response tools expect. Under ``python -m socksx`` gevent has patched the standard
library: stdin/stdout are then waited on with gevent so one direction never blocks the other.

Also home of the proxy options ``socksx check`` shares (--via, --user, --password-file, TLS).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import HostPort, timeout_option

if TYPE_CHECKING:
    from socksx.client.proxyurl import ProxyURL

__all__ = ["connect", "proxy_options", "resolve_credentials", "resolve_proxy"]

CHUNK: Final = 65536
#: Writes no larger than PIPE_BUF never block once select() reports a pipe writable.
PIPE_CHUNK: Final = 4096


def proxy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--via, --user, --password-file, --ca-file, --fingerprint (shared with ``check``)."""
    options = [
        click.option(
            "--via",
            "via",
            metavar="PROXY",
            help="Proxy URL (socks5h://, socks5://, socks5s://, socks4a://, socks4://) or "
            "HOST[:PORT]  [env: SOCKS_PROXY, ALL_PROXY]",
        ),
        click.option("--user", "username", metavar="USER", help="Username (SOCKS4: the USERID)."),
        click.option(
            "--password-file",
            type=click.Path(dir_okay=False, readable=True),
            metavar="FILE",
            help="Read the password from the first line of FILE (never from the command line).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False),
            metavar="FILE",
            help="CA certificates for a socks5s:// proxy (default: the system's).",
        ),
        click.option(
            "--fingerprint",
            metavar="sha256:HEX",
            help="Pin the socks5s:// proxy's certificate by its SHA-256 fingerprint.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_proxy(via: str | None) -> ProxyURL:
    """--via, else SOCKS_PROXY/ALL_PROXY; usage errors (exit 2) for bad or missing values."""
    from socksx.client.proxyurl import parse_proxy_url, proxy_from_env

    try:
        url = parse_proxy_url(via) if via else proxy_from_env()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--via") from None
    if url is None:
        msg = "no proxy: pass --via PROXY or set SOCKS_PROXY"
        raise click.UsageError(msg)
    return url


def resolve_credentials(
    url: ProxyURL, username: str | None, password_file: str | None
) -> tuple[str | None, str | None]:
    """(username, password): the flags win over the URL's userinfo."""
    user = username if username is not None else url.username
    password = url.password
    if password_file is not None:
        if not user:
            msg = "--password-file needs --user (or a user in the proxy URL)"
            raise click.UsageError(msg)
        password = read_password_file(password_file, "--password-file")
    if user and not password and url.version == 5:
        msg = "--user needs --password-file (or user:password in the proxy URL)"
        raise click.UsageError(msg)
    return user, password


def read_password_file(path: str, option: str) -> str:
    """The first line of *path* (a password never comes from the command line itself).

    Raises:
        click.BadParameter: unreadable file or empty first line (exit 2, naming *option*).
    """
    try:
        with open(path, "rb") as stream:
            line = stream.readline()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise click.BadParameter(msg, param_hint=option) from None
    password = line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "surrogateescape")
    if not password:
        msg = f"{path}: the first line (the password) is empty"
        raise click.BadParameter(msg, param_hint=option)
    return password


def hostport_text(host: str, port: int) -> str:
    """``host:port`` with IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@click.command(short_help="Pipe stdin/stdout to HOST:PORT through a SOCKS proxy.")
@click.argument("target", type=HostPort(), metavar="HOST:PORT")
@proxy_options
@timeout_option("Limit for connecting and the SOCKS handshake (e.g. 10, 500ms).")
@click.pass_obj
def connect(
    app: App,
    *,
    target: tuple[str, int],
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    timeout: float,
) -> None:
    """Connect to HOST:PORT through the proxy and copy stdin to it and it to stdout.

    Binary-safe; EOF on stdin half-closes the connection and output continues until the target
    closes. As an ssh ProxyCommand:

        ssh -o ProxyCommand='socksx connect %h:%p --via 127.0.0.1:1080' host

    Exit status: 4 proxy unreachable, 5 authentication failed, 6 refused by the proxy.
    """
    from socksx.client import connect as open_connection
    from socksx.errors import (
        AuthenticationFailed,
        ProxyConnectionError,
        ProxyTimeoutError,
        ReplyError,
    )

    url = resolve_proxy(via)
    user, password = resolve_credentials(url, username, password_file)
    host, port = target
    try:
        sock = open_connection(
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
        where = hostport_text(host, port)
        app.fail(f"proxy {url.hostport} refused CONNECT to {where}: {exc}", ExitCode.REFUSED)
    except AuthenticationFailed as exc:
        app.fail(str(exc), ExitCode.AUTH)
    except (ProxyConnectionError, ProxyTimeoutError) as exc:
        app.fail(str(exc), ExitCode.UNREACHABLE)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:  # local name resolution for socks5:// and socks4://
        app.fail(f"cannot resolve {host}: {exc.strerror or exc}", ExitCode.FAILURE)
    with sock:
        try:
            relay(sock, read_stdin(), write_stdout())
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            app.fail(
                f"connection to {hostport_text(host, port)} lost: {reason}", ExitCode.UNREACHABLE
            )


def relay(sock: socket.socket, read: Callable[[], bytes], write: Callable[[bytes], None]) -> None:
    """stdin -> sock in a thread (a greenlet once patched), sock -> stdout here until EOF."""
    sender = threading.Thread(target=_send_stdin, args=(sock, read), daemon=True)
    sender.start()
    try:
        while data := sock.recv(CHUNK):
            write(data)
    except BrokenPipeError:
        return  # whoever read our stdout has gone: nothing left to do


def _send_stdin(sock: socket.socket, read: Callable[[], bytes]) -> None:
    # Errors here mean the connection is gone; the receiving side reports that.
    with contextlib.suppress(OSError, ValueError):
        while data := read():
            sock.sendall(data)
        if not _is_tls(sock):
            sock.shutdown(socket.SHUT_WR)


def _is_tls(sock: socket.socket) -> bool:
    # SSLSocket.shutdown() drops TLS altogether, so over TLS the write side stays open.
    return hasattr(sock, "getpeercert")


def _cooperative() -> bool:
    """True when gevent has patched socket: then waiting on fds must go through gevent."""
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


def read_stdin() -> Callable[[], bytes]:
    """A reader of stdin chunks (b"" at EOF): the raw fd when there is one."""
    stream = sys.stdin.buffer
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return lambda: stream.read1(CHUNK)  # an in-memory stream (tests, embedding)
    if _cooperative():
        from gevent.socket import wait_read

        def read() -> bytes:
            wait_read(fd)
            return os.read(fd, CHUNK)

        return read
    return lambda: os.read(fd, CHUNK)


def write_stdout() -> Callable[[bytes], None]:
    """A writer of whole chunks to stdout, unbuffered (ssh reads it as a stream)."""
    stream = sys.stdout.buffer
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):

        def write_stream(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return write_stream
    stream.flush()
    wait: Callable[[int], object] | None = None
    if _cooperative():
        from gevent.socket import wait_write

        wait = wait_write

    def write_fd(data: bytes) -> None:
        view = memoryview(data)
        while view:
            if wait is not None:
                wait(fd)
            written = os.write(fd, view[:PIPE_CHUNK] if wait is not None else view)
            view = view[written:]

    return write_fd
