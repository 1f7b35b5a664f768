"""A real browser, headless Chromium, unchanged, through the socksx server.

Chromium hands host names to a socks5:// proxy (remote DNS), and here it cannot resolve anything
itself: ``--host-resolver-rules`` maps every name to "not found". So a page from ``web.test``
can only arrive through socksx, whose injected resolver answers 127.0.0.1 for that one name.
Chromium still sends a few background fetches through the proxy despite the flags
(update.googleapis.com, clients2.google.com, accounts.google.com in Chromium 156); the servers
here never use the host's DNS and know no name but ``web.test``, so those end in REP 04 and
nothing leaves the machine, not even for a loopback port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import LOOPBACK_RULE, ServerThread
from tests.interop.conftest import WEB_BODY, RecordingResolver, need_binary, sessions_seen

pytestmark = pytest.mark.interop

#: Bound on one browser run (a cold start on a loaded 2-core machine takes a few seconds).
BROWSER_TIMEOUT = 60

MARKER = WEB_BODY.decode().strip()

#: deny_server's rule: every loopback destination refused (REP 02)
DENY_LOOPBACK = '[[rules]]\nid = "no-loopback-dst"\naction = "deny"\nto = ["127.0.0.0/8"]\n'


class Page(NamedTuple):
    code: int
    dom: str
    stderr: str


@pytest.fixture
def chromium() -> str:
    path = need_binary("chromium", "chromium")
    if os.geteuid() != 0:
        pytest.skip("the browser test runs chromium as root with --no-sandbox (not root here)")
    return path


@pytest.fixture
def browser_server(make_server: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    """Factory: a server whose resolver knows only web.test (``.resolver.names`` records)."""

    def factory(rules: str = LOOPBACK_RULE) -> ServerThread:
        return make_server(rules=rules, resolver=RecordingResolver(frozenset({"web.test"})))

    return factory


@pytest.fixture
def dump_dom(chromium: str, tmp_path: Path) -> Iterator[Callable[[tuple[str, int], str], Page]]:
    """Run headless Chromium once per call through a SOCKS5 proxy; kill its groups afterwards."""
    groups: list[int] = []
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
    }

    def run(proxy: tuple[str, int], url: str) -> Page:
        profile = tmp_path / f"profile-{len(groups)}"
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-breakpad",
            f"--user-data-dir={profile}",
            f"--proxy-server=socks5://{proxy[0]}:{proxy[1]}",
            # Chromium goes direct to loopback unless told not to: "<-loopback>" proxies it too
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--dump-dom",
            url,
        ]
        # A session of its own: the wrapper script, the browser and its helpers share one
        # process group, which teardown kills whole.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
        groups.append(proc.pid)
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT} s")
        return Page(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    yield run
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_page_from_an_invented_name_arrives_through_socksx(dump_dom, browser_server, web):
    server = browser_server()
    before = sessions_seen(server)
    page = dump_dom(server.address, f"http://web.test:{web.port}/via-browser")
    assert page.code == 0, page.stderr
    assert MARKER in page.dom, page.dom + page.stderr
    assert any(
        r["path"] == "/via-browser" and r["host"] == f"web.test:{web.port}" for r in web.requests
    ), web.requests
    # the name went to the server (ATYP 03) and the server resolved it
    assert "web.test" in server.resolver.names
    assert sessions_seen(server) >= before + 1


def test_refused_by_the_proxy_no_page_and_no_request(dump_dom, browser_server, web):
    server = browser_server(DENY_LOOPBACK + LOOPBACK_RULE)
    before = server.call(lambda: server.server.stats.rule_denials)
    page = dump_dom(server.address, f"http://127.0.0.1:{web.port}/denied")
    assert MARKER not in page.dom
    assert web.requests == []
    # the browser asked socksx (with <-loopback> it does not go direct) and was refused
    assert server.call(lambda: server.server.stats.rule_denials) >= before + 1
