"""``socksx top``: a live monitor of a running server, from its admin API (docs/ADMIN.md).

Two greenlets: the feed fetches ``/stats`` and ``/sessions`` every interval and keeps the last
snapshot (or the error, retrying every ``RETRY`` seconds while the server is away); the screen
loop waits for keys with ``gevent.select`` and redraws a full-screen ``rich.live.Live`` from
``render()``. ``--once`` prints one rendering and exits, ``--json`` the raw snapshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import Duration

if TYPE_CHECKING:
    from socksx.client.admin import AdminClient

__all__ = ["top"]

RETRY = 2.0  # seconds between attempts while the server is away
ONCE_SESSIONS = 20  # busiest sessions shown by --once
LIVE_SESSIONS = 200  # busiest sessions fetched for the live view (the screen shows what fits)


class AdminTargetType(click.ParamType):
    """HOST:PORT, http://HOST:PORT or a UNIX socket path."""

    name = "URL|PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse or fail with click's usage error."""
        from socksx.client.admin import AdminTarget, parse_admin_target

        if isinstance(value, AdminTarget):
            return value
        try:
            return parse_admin_target(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command(short_help="Watch a running server live: throughput, relays, tunnels, sessions.")
@click.option(
    "--admin",
    "target",
    type=AdminTargetType(),
    default="127.0.0.1:1081",
    show_default=True,
    help="The server's admin API: HOST:PORT, http://HOST:PORT or a UNIX socket path.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding the admin API's bearer token.",
)
@click.option(
    "--interval",
    type=Duration(),
    default="1s",
    show_default=True,
    help="Seconds between updates (500ms, 2s...).",
)
@click.option("--once", is_flag=True, help="Print one snapshot as tables and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw snapshot as JSON and exit.")
@click.pass_obj
def top(
    app: App,
    *,
    target: Any,
    token_file: str | None,
    interval: float,
    once: bool,
    as_json: bool,
) -> None:
    """Watch a running server like top(1): sessions, throughput with a sparkline of the last
    minute, multicast relays, tunnels, multi-binds and the busiest sessions.

    Keys: q quit, s cycle the sort column, p pause, r/t/m/b focus the relays, tunnels,
    multi-binds or sessions table (again, or Esc: back to all of them).
    """
    from socksx.client.admin import AdminClient, AdminError, read_token_file

    if interval < 0.1:
        msg = "must be at least 100ms"
        raise click.BadParameter(msg, param_hint="'--interval'")
    try:
        token = read_token_file(token_file) if token_file else None
    except AdminError as exc:
        app.fail(str(exc), ExitCode.FAILURE)
    client = AdminClient(target, token=token, timeout=max(5.0, interval))
    if once or as_json:
        snapshot = _fetch_or_fail(app, client, ONCE_SESSIONS, "rate")
        if as_json:
            click.echo(json.dumps(snapshot, indent=2, sort_keys=True))
        else:
            _print_once(app, snapshot)
        return
    _live(app, client, interval)


def _fetch(client: AdminClient, limit: int, sort: str) -> dict[str, Any]:
    stats = client.stats()
    sessions = client.sessions(limit=limit, sort=sort)
    return {"stats": stats, "sessions": sessions.get("sessions", [])}


def _fail_for(app: App, exc: Exception) -> None:
    from socksx.client.admin import AdminHTTPError

    if isinstance(exc, AdminHTTPError) and exc.status == 401:
        app.fail(f"the admin API wants a token (--token-file): {exc}", ExitCode.AUTH)
    if isinstance(exc, AdminHTTPError) and exc.status == 403:
        app.fail(f"the admin API refused the request: {exc}", ExitCode.AUTH)
    if isinstance(exc, AdminHTTPError):
        app.fail(f"the admin API failed: {exc}", ExitCode.FAILURE)
    app.fail(str(exc), ExitCode.UNREACHABLE)


def _fetch_or_fail(app: App, client: AdminClient, limit: int, sort: str) -> dict[str, Any]:
    from socksx.client.admin import AdminError

    try:
        return _fetch(client, limit, sort)
    except AdminError as exc:
        _fail_for(app, exc)
        raise  # unreachable: app.fail exits


def _print_once(app: App, snapshot: dict[str, Any]) -> None:
    from socksx.cli.top.render import render
    from socksx.cli.top.state import ViewState

    width = app.out.width
    app.out.print(render(snapshot, ViewState(), time.monotonic(), width), soft_wrap=False)


class Feed:
    """The fetching greenlet's state: the last snapshot, and the error while the server is away."""

    def __init__(self, client: AdminClient, interval: float, changed: Callable[[], None]) -> None:
        self.client = client
        self.interval = interval
        self.changed = changed
        self.snapshot: dict[str, Any] = {}
        self.fetched_at: float | None = None
        self.error: str | None = None
        self.retry_at: float | None = None
        self.fatal: Exception | None = None
        self.sort = "rate"
        self.paused = False

    def run(self) -> None:
        """Fetch until killed (or until the API refuses us: retrying cannot help then)."""
        import gevent

        from socksx.client.admin import AdminHTTPError, AdminUnreachable

        while True:
            if self.paused:
                gevent.sleep(0.2)
                continue
            try:
                self.snapshot = _fetch(self.client, LIVE_SESSIONS, self.sort)
            except (AdminUnreachable, AdminHTTPError) as exc:
                if isinstance(exc, AdminHTTPError) and exc.status in (401, 403):
                    self.fatal = exc
                    self.changed()
                    return
                self.error = str(exc).rpartition(": ")[2] or "no answer"
                self.retry_at = time.monotonic() + RETRY
                self.changed()
                gevent.sleep(RETRY)
                continue
            self.fetched_at = time.monotonic()
            self.error = self.retry_at = None
            self.changed()
            gevent.sleep(self.interval)

    def status(self) -> Any:
        """The FeedStatus for render()."""
        from socksx.cli.top.state import FeedStatus

        return FeedStatus(fetched_at=self.fetched_at, error=self.error, retry_at=self.retry_at)


def _live(app: App, client: AdminClient, interval: float) -> None:
    import gevent
    from rich.console import Console
    from rich.live import Live

    from socksx.cli.top.keys import cbreak, read_keys
    from socksx.cli.top.render import render
    from socksx.cli.top.state import ViewState, apply_key

    console = Console(highlight=False, no_color=app.out.no_color)
    if not (sys.stdin.isatty() and console.is_terminal):
        app.fail("top needs a terminal: use --once or --json", ExitCode.USAGE)
    fd = sys.stdin.fileno()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def changed() -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the screen already
            os.write(wake_w, b".")

    feed = Feed(client, interval, changed)
    fetcher = gevent.spawn(feed.run)
    view = ViewState()
    try:
        with cbreak(fd), Live(console=console, screen=True, auto_refresh=False) as live:
            while not view.quit and feed.fatal is None:
                size = console.size
                screen = render(
                    feed.snapshot,
                    view,
                    time.monotonic(),
                    size.width,
                    height=size.height,
                    status=feed.status(),
                )
                live.update(screen, refresh=True)
                # A key, a new snapshot, or a second (the retry countdown) redraws.
                for key in read_keys(fd, 1.0, wake_r):
                    view = apply_key(view, key)
                feed.sort = view.sort_of("sessions")
                feed.paused = view.paused
    finally:
        fetcher.kill(block=False)
        os.close(wake_r)
        os.close(wake_w)
    if feed.fatal is not None:
        _fail_for(app, feed.fatal)
