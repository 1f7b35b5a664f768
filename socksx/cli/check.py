"""``socksx check --via PROXY``: what does this SOCKS server support, and how fast does it answer?

Works against any server (socksx, Dante, microsocks...). Every probe uses its own connection
and only talks to targets ``check`` runs itself on loopback (a TCP echo on 127.0.0.1 and, when
possible, on ::1 at the same port, so "localhost" works whichever address the proxy picks; and
a UDP echo), so nothing leaves the machine but the traffic to the proxy. The extension
commands are probed with requests that cannot have side effects: each has one correct
failure reply, which proves the command is understood; REP 07 or a close means it is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli._types import timeout_option
from socksx.cli.connect import proxy_options, resolve_credentials, resolve_proxy
from socksx.protocol.address import ZERO_V4, Address
from socksx.protocol.constants import SOCKS5_VERSION, Command, Method, ReplyCode

if TYPE_CHECKING:
    from socksx.client.proxyurl import ProxyURL

__all__ = ["Report", "check"]

OK, UNSUPPORTED, REFUSED, ERROR, SKIPPED, AUTH_FAILED = (
    "ok",
    "unsupported",
    "refused",
    "error",
    "skipped",
    "auth-failed",
)
ECHO_PAYLOAD: Final = b"socksx check\n"
UDP_WAIT: Final = 2.0  #: seconds to wait for the datagram round trip (UDP may just drop it)
SAME_PORT_ATTEMPTS: Final = 8  #: tries to get one port free on both 127.0.0.1 and ::1

_ZERO = ZERO_V4
#: Probe bodies after VER CMD RSV (docs/PROTOCOL.md). Each is refused by a server that knows
#: the command, with the REP given, and changes nothing on it.
_TUNNEL_MALFORMED: Final = bytes([0xFF, 0, 0])  #: PROTO FF (unknown), ULEN 0, PLEN 0 -> REP 01
_MULTIBIND_NO_CHANNELS: Final = bytes([0])  #: NCHAN 0 -> REP 01
_ACCEPT_ZERO_TOKEN: Final = bytes(16)  #: a token no server ever issued -> REP 02
EXTENSION_PROBES: Final = (
    # key, label, CMD, body, the reply that proves support
    (
        "join",
        "JOIN_MCAST_GROUP 0x05",
        Command.JOIN_MCAST_GROUP,
        _ZERO.to_bytes(),
        ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
    ),
    (
        "leave",
        "LEAVE_MCAST_GROUP 0x06",
        Command.LEAVE_MCAST_GROUP,
        Address("239.255.0.1", 9).to_bytes(),
        ReplyCode.GENERAL_FAILURE,
    ),
    (
        "setup_udp_tunnel",
        "SETUP_UDP_TUNNEL 0x07",
        Command.SETUP_UDP_TUNNEL,
        _ZERO.to_bytes() + _TUNNEL_MALFORMED,
        ReplyCode.GENERAL_FAILURE,
    ),
    (
        "multi_bind",
        "MULTI_BIND 0x08",
        Command.MULTI_BIND,
        _ZERO.to_bytes() + _MULTIBIND_NO_CHANNELS,
        ReplyCode.GENERAL_FAILURE,
    ),
    ("accept", "ACCEPT 0x09", Command.ACCEPT, _ACCEPT_ZERO_TOKEN, ReplyCode.NOT_ALLOWED),
)


@dataclass
class ProbeResult:
    """One row of the report."""

    key: str
    label: str
    status: str
    detail: str = ""
    rtt_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        rtt = None if self.rtt_ms is None else round(self.rtt_ms, 1)
        return {"probe": self.key, "status": self.status, "detail": self.detail, "rtt_ms": rtt}


@dataclass
class Report:
    """Everything ``check`` found out, with a verdict that decides the exit status."""

    proxy: str
    reachable: bool = False
    verdict: str = "ok"
    probes: list[ProbeResult] = field(default_factory=list)

    def status(self, key: str) -> str | None:
        """The status of probe *key*, None when it did not run."""
        return next((p.status for p in self.probes if p.key == key), None)

    def supported(self, key: str) -> bool | None:
        """True when the probe succeeded, False when it ran and failed, None when not run."""
        status = self.status(key)
        return None if status in (None, SKIPPED, AUTH_FAILED) else status == OK

    def answered(self, key: str) -> bool:
        """The proxy spoke that protocol version (even if it then refused)."""
        return self.status(key) in (OK, REFUSED)

    def to_json(self) -> dict[str, Any]:
        """One JSON object: summary booleans plus every probe."""
        s = self.supported
        return {
            "proxy": self.proxy,
            "reachable": self.reachable,
            "result": self.verdict,
            "socks5": self.answered("socks5"),
            "socks4": self.answered("socks4"),
            "auth": {"none": s("auth_none"), "username_password": s("auth_userpass")},
            "commands": {
                "connect": s("connect"),
                "bind": s("bind"),
                "udp_associate": s("udp_associate"),
                "udp_roundtrip": s("udp_roundtrip"),
            },
            "address_types": {
                "ipv4": s("atyp_ipv4"),
                "ipv6": s("atyp_ipv6"),
                "domain": s("atyp_domain"),
            },
            "extensions": {key: s(key) for key, *_ in EXTENSION_PROBES},
            "probes": [p.to_json() for p in self.probes],
        }


# -- local targets ---------------------------------------------------------------------------


class LocalTargets:
    """TCP echo on 127.0.0.1 (and ::1 at the same port when possible) and a UDP echo."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.tcp_port = 0
        self.ipv6 = False
        self.udp: tuple[str, int] = ("127.0.0.1", 0)

    def __enter__(self) -> LocalTargets:
        try:
            v4, v6 = self._same_port_listeners()
            for listener in filter(None, (v4, v6)):
                self._spawn(self._accept_loop, listener)
            self.tcp_port, self.ipv6 = v4.getsockname()[1], v6 is not None
            udp = self._own(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", 0))
            self.udp = udp.getsockname()
            self._spawn(self._udp_loop, udp)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every echo (shutdown wakes the blocked accept/recv) and close the sockets."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=1)

    def _own(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def _spawn(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        thread = threading.Thread(target=target, args=(sock,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _same_port_listeners(self) -> tuple[socket.socket, socket.socket | None]:
        for _ in range(SAME_PORT_ATTEMPTS):
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            v4.bind(("127.0.0.1", 0))
            v4.listen(16)
            v6 = _listen_v6(v4.getsockname()[1])
            if v6 is not None or not socket.has_ipv6 or not _ipv6_loopback():
                self._own(v4)
                return v4, (self._own(v6) if v6 is not None else None)
            v4.close()  # the port is taken on ::1: try another one
        v4 = self._own(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        v4.bind(("127.0.0.1", 0))
        v4.listen(16)
        return v4, None

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    def _udp_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
                if peer is None:
                    return
                sock.sendto(data, peer)
            except OSError:
                return


def _listen_v6(port: int) -> socket.socket | None:
    if not socket.has_ipv6:
        return None
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.bind(("::1", port))
        sock.listen(16)
    except OSError:
        sock.close()
        return None
    return sock


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(65536):
            conn.sendall(data)


# -- probes ----------------------------------------------------------------------------------


class Prober:
    """Runs the probes in order and fills a Report."""

    def __init__(
        self,
        url: ProxyURL,
        *,
        username: str | None,
        password: str | None,
        timeout: float,
        ca_file: str | None,
        fingerprint: str | None,
        targets: LocalTargets,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.tls: dict[str, Any] = {"ca_file": ca_file, "fingerprint": fingerprint}
        self.creds: dict[str, Any] = {"username": username, "password": password}
        self.targets = targets
        self.report = Report(str(url))
        self.auth_failed = False

    def run(self) -> Report:
        """Probe everything the proxy's answers make worth probing."""
        from socksx.client import probe_reachable
        from socksx.errors import ProxyConnectionError, ProxyTimeoutError

        report = self.report
        start = time.perf_counter()
        try:
            probe_reachable(proxy=self.url, timeout=self.timeout, **self.tls)
        except (ProxyConnectionError, ProxyTimeoutError) as exc:
            report.verdict = "unreachable"
            self._add("reachable", "reachable", ERROR, str(exc), None)
            return report
        rtt = (time.perf_counter() - start) * 1000
        what = "TCP and TLS connect ok" if self.url.tls else "TCP connect ok"
        self._add("reachable", "reachable", OK, what, rtt)
        report.reachable = True
        none_method = self._probe_socks5()
        self._probe("socks4", "SOCKS4", self._socks4)
        if not report.answered("socks5") and not report.answered("socks4"):
            report.verdict = "not-socks"
            return report
        if report.answered("socks5"):
            self._probe_socks5_commands(none_method)
        return report

    # each probe returns (status, detail) or raises; _probe times it and maps errors
    def _probe(self, key: str, label: str, run: Callable[[], tuple[str, str]]) -> ProbeResult:
        from socksx.errors import (
            AuthenticationFailed,
            ProxyConnectionError,
            ProxyTimeoutError,
            ReplyError,
        )

        if self.auth_failed:
            return self._add(key, label, SKIPPED, "authentication failed", None)
        start = time.perf_counter()
        try:
            status, detail = run()
        except ReplyError as exc:
            unsupported = exc.reply == ReplyCode.COMMAND_NOT_SUPPORTED
            status, detail = (UNSUPPORTED if unsupported else REFUSED), str(exc)
        except AuthenticationFailed as exc:
            self.auth_failed = True
            status, detail = AUTH_FAILED, str(exc)
        except ProxyTimeoutError:
            status, detail = ERROR, "timed out"
        except ProxyConnectionError as exc:
            status, detail = ERROR, str(exc)
        except TimeoutError:
            status, detail = ERROR, "timed out"
        except OSError as exc:
            status, detail = ERROR, exc.strerror or str(exc)
        rtt = (time.perf_counter() - start) * 1000
        return self._add(key, label, status, detail, rtt)

    def _add(
        self, key: str, label: str, status: str, detail: str, rtt: float | None
    ) -> ProbeResult:
        result = ProbeResult(key, label, status, detail, rtt)
        self.report.probes.append(result)
        return result

    def _probe_socks5(self) -> Method | None:
        from socksx.client import select_method
        from socksx.errors import ProxyConnectionError

        selected: dict[Method, Method] = {}

        def offer(method: Method) -> Callable[[], tuple[str, str]]:
            def run() -> tuple[str, str]:
                try:
                    selected[method] = select_method(
                        (method,), proxy=self.url, timeout=self.timeout, **self.tls
                    )
                except ProxyConnectionError as exc:
                    return UNSUPPORTED, f"no SOCKS5 answer: {_why(exc)}"
                if selected[method] == Method.NO_ACCEPTABLE:
                    return REFUSED, "method 0xff: not acceptable"
                return OK, f"method {method:#04x} accepted"

            return run

        first = self._probe("socks5", "SOCKS5", offer(Method.NO_AUTH))
        if first.status == UNSUPPORTED:
            return None
        # The SOCKS5 probe offered only "no authentication": its answer is that row too.
        self._add("auth_none", "auth: none 0x00", first.status, first.detail, first.rtt_ms)
        first.status, first.detail = OK, "answers SOCKS5"
        self._probe(
            "auth_userpass", "auth: username/password 0x02", offer(Method.USERNAME_PASSWORD)
        )
        return selected.get(Method.NO_AUTH)

    def _probe_socks5_commands(self, none_method: Method | None) -> None:
        report = self.report
        if none_method != Method.NO_AUTH and not self.creds["username"]:
            needs = report.status("auth_userpass") == OK
            report.verdict = "credentials-required" if needs else "no-acceptable-method"
            reason = "needs --user/--password-file" if needs else "no acceptable method"
            for key, label in self._command_rows():
                self._add(key, label, SKIPPED, reason, None)
            return
        t = self.targets
        self._probe("connect", "CONNECT", lambda: self._connect("127.0.0.1", t.tcp_port, 5))
        if self.auth_failed:
            report.verdict = "auth-failed"
        self._probe("atyp_ipv4", "address: IPv4", lambda: self._atyp("127.0.0.1"))
        if t.ipv6:
            self._probe("atyp_ipv6", "address: IPv6", lambda: self._atyp("::1"))
        else:
            self._add("atyp_ipv6", "address: IPv6", SKIPPED, "no IPv6 loopback here", None)
        self._probe("atyp_domain", "address: domain name", lambda: self._atyp("localhost"))
        self._probe("bind", "BIND", self._bind)
        self._probe_udp()
        for key, label, command, body, expected in EXTENSION_PROBES:
            request = bytes([SOCKS5_VERSION, command, 0]) + body
            self._probe(key, label, self._extension(request, expected))

    def _command_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("connect", "CONNECT"),
            ("atyp_ipv4", "address: IPv4"),
            ("atyp_ipv6", "address: IPv6"),
            ("atyp_domain", "address: domain name"),
            ("bind", "BIND"),
            ("udp_associate", "UDP ASSOCIATE"),
        ]
        return rows + [(key, label) for key, label, *_ in EXTENSION_PROBES]

    def _connect(self, host: str, port: int, version: int) -> tuple[str, str]:
        from socksx.client import connect

        url = self.url
        if version == 4:
            url = dataclasses.replace(url, scheme="socks4", version=4, remote_dns=False)
        with connect(
            host, port, proxy=url, timeout=self.timeout, remote_dns=True, **self.creds, **self.tls
        ) as sock:
            sock.settimeout(self.timeout)
            sock.sendall(ECHO_PAYLOAD)
            echoed = b""
            while len(echoed) < len(ECHO_PAYLOAD) and (data := sock.recv(len(ECHO_PAYLOAD))):
                echoed += data
        if echoed != ECHO_PAYLOAD:
            return ERROR, "granted, but the echo did not come back intact"
        return OK, "granted; echo round trip ok"

    def _socks4(self) -> tuple[str, str]:
        from socksx.errors import ProxyConnectionError

        try:
            return self._connect("127.0.0.1", self.targets.tcp_port, 4)
        except ProxyConnectionError as exc:
            return UNSUPPORTED, f"no SOCKS4 answer: {_why(exc)}"

    def _atyp(self, host: str) -> tuple[str, str]:
        from socksx.errors import ReplyError

        try:
            return self._connect(host, self.targets.tcp_port, 5)
        except ReplyError as exc:
            if exc.reply == ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED:
                return UNSUPPORTED, str(exc)
            if exc.reply == ReplyCode.COMMAND_NOT_SUPPORTED:
                raise
            # Any other refusal still shows the proxy understood the address type.
            return OK, f"address type accepted; {exc}"

    def _bind(self) -> tuple[str, str]:
        from socksx.client import bind

        with bind(proxy=self.url, timeout=self.timeout, **self.creds, **self.tls) as handle:
            host, port = handle.bound
        return OK, f"first reply ok, bound {Address(host, port)}"

    def _probe_udp(self) -> None:
        from socksx.client import udp_associate

        holder: list[Any] = []

        def associate() -> tuple[str, str]:
            holder.append(
                udp_associate(proxy=self.url, timeout=self.timeout, **self.creds, **self.tls)
            )
            host, port = holder[0].relay
            return OK, f"relay {Address(host, port)}"

        def roundtrip() -> tuple[str, str]:
            association = holder[0]
            association.sendto(ECHO_PAYLOAD, self.targets.udp)
            try:
                data, _ = association.recvfrom(timeout=min(self.timeout, UDP_WAIT))
            except TimeoutError:
                return ERROR, f"no datagram came back within {min(self.timeout, UDP_WAIT):g} s"
            if data != ECHO_PAYLOAD:
                return ERROR, "a datagram came back altered"
            return OK, "datagram round trip ok"

        try:
            self._probe("udp_associate", "UDP ASSOCIATE", associate)
            if holder:
                self._probe("udp_roundtrip", "UDP datagram", roundtrip)
        finally:
            for association in holder:
                association.close()

    def _extension(self, request: bytes, expected: ReplyCode) -> Callable[[], tuple[str, str]]:
        from socksx.client import raw_request

        def run() -> tuple[str, str]:
            reply = raw_request(
                request, proxy=self.url, timeout=self.timeout, **self.creds, **self.tls
            )
            if reply is None:
                return UNSUPPORTED, "closed without a reply"
            if len(reply) < 2 or reply[0] != SOCKS5_VERSION:
                return ERROR, f"not a SOCKS5 reply: {reply[:16].hex()}"
            rep = reply[1]
            if rep == ReplyCode.COMMAND_NOT_SUPPORTED:
                return UNSUPPORTED, "REP 0x07 command not supported"
            if rep == expected:
                return OK, f"REP {rep:#04x} as expected for this probe"
            return REFUSED, f"unexpected REP {rep:#04x} (expected {expected:#04x})"

        return run


def _why(exc: BaseException) -> BaseException:
    """The codec's own complaint when there is one (shorter than the wrapped message)."""
    from socksx.errors import ProtocolError

    return exc.__cause__ if isinstance(exc.__cause__, ProtocolError) else exc


# -- output ----------------------------------------------------------------------------------

_STYLE = {
    OK: "green",
    UNSUPPORTED: "yellow",
    REFUSED: "yellow",
    ERROR: "red",
    AUTH_FAILED: "red",
    SKIPPED: "dim",
}


def _rtt_text(rtt: float | None) -> str:
    return "" if rtt is None else f"{rtt:.1f}"


def print_report(app: App, report: Report) -> None:
    """A rich table on a terminal, aligned plain text otherwise."""
    if app.out.is_terminal:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"socksx check {report.proxy}"), title_justify="left")
        table.add_column("probe")
        table.add_column("result")
        table.add_column("detail")
        table.add_column("ms", justify="right")
        for p in report.probes:
            table.add_row(
                Text(p.label),
                Text(p.status, style=_STYLE.get(p.status, "")),
                Text(p.detail),
                _rtt_text(p.rtt_ms),
            )
        app.out.print(table)
        return
    width = max((len(p.label) for p in report.probes), default=0)
    lines = [f"socksx check {report.proxy}"]
    for p in report.probes:
        lines.append(f"{p.label:<{width}}  {p.status:<11}  {_rtt_text(p.rtt_ms):>8}  {p.detail}")
    click.echo("\n".join(lines))


@click.command(short_help="Probe a SOCKS server: versions, auth, commands, extensions.")
@proxy_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@timeout_option("Limit for each probe.", default=5.0)
@click.pass_obj
def check(
    app: App,
    *,
    via: str | None,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    fingerprint: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Probe the proxy with one connection per feature and report what works.

    CONNECT, BIND, UDP and address-type probes only reach echo servers that check runs on
    loopback. Extension commands (0x05-0x09) are probed with requests a server that knows them
    must refuse with a specific code, so nothing changes on the server.

    Exit status: 0 the proxy answered SOCKS, 4 unreachable or not SOCKS, 5 credentials needed
    or wrong.
    """
    url = resolve_proxy(via)
    user, password = resolve_credentials(url, username, password_file)
    with LocalTargets() as targets:
        report = Prober(
            url,
            username=user,
            password=password,
            timeout=timeout,
            ca_file=ca_file,
            fingerprint=fingerprint,
            targets=targets,
        ).run()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    elif report.reachable:
        print_report(app, report)
    verdicts = {
        "unreachable": (ExitCode.UNREACHABLE, report.probes[0].detail),
        "not-socks": (ExitCode.UNREACHABLE, f"proxy {url.hostport} does not answer SOCKS"),
        "auth-failed": (ExitCode.AUTH, f"proxy {url.hostport} rejected the username/password"),
        "credentials-required": (
            ExitCode.AUTH,
            f"proxy {url.hostport} requires a username and password (--user)",
        ),
        "no-acceptable-method": (
            ExitCode.AUTH,
            f"proxy {url.hostport} accepts none of our authentication methods",
        ),
    }
    if report.verdict in verdicts:
        code, message = verdicts[report.verdict]
        app.fail(message, code)
