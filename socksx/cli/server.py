"""``socksx server``: run the SOCKS server from a config file, the embedded default, and flags."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

import click

from socksx.cli._app import App

if TYPE_CHECKING:
    from socksx.config import Config


@click.command(short_help="Run the SOCKS server.")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file [default: the embedded default, 127.0.0.1:1080].",
)
@click.option(
    "--listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Listen address (repeatable; replaces the config's list).",
)
@click.option("--auth", type=click.Choice(["none", "userpass"]), help="Client authentication.")
@click.option("--users", "users_file", type=click.Path(dir_okay=False), help="Users file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Session log line format.")
@click.option(
    "--tls-listen",
    multiple=True,
    metavar="HOST:PORT",
    help="SOCKS over TLS listen address (repeatable; replaces tls.listen).",
)
@click.option("--cert", type=click.Path(dir_okay=False), help="TLS certificate chain (PEM).")
@click.option("--key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option(
    "--client-ca",
    type=click.Path(dir_okay=False),
    help="Require TLS client certificates signed by this CA (PEM).",
)
@click.option(
    "--workers",
    metavar="N|auto",
    help="Worker processes sharing the listen addresses (SO_REUSEPORT); auto = one per core.",
)
@click.option(
    "--peer",
    multiple=True,
    metavar="HOST:PORT",
    help="A gateway B clients may tunnel to (repeatable; replaces [[tunnel.peer]]).",
)
@click.option(
    "--peer-ca",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="CA (PEM) that signed the --peer's certificate: once for all, or once per --peer.",
)
@click.option(
    "--peer-name",
    multiple=True,
    metavar="NAME",
    help="Name the --peer's certificate must carry: once for all, or once per --peer.",
)
@click.option(
    "--peer-fingerprint",
    multiple=True,
    metavar="sha256:HEX",
    help="Pin the --peer's certificate: once for all, or once per --peer.",
)
@click.pass_obj
def server(
    app: App,
    *,
    config_path: str | None,
    listen: tuple[str, ...],
    auth: str | None,
    users_file: str | None,
    log_format: str | None,
    tls_listen: tuple[str, ...],
    cert: str | None,
    key: str | None,
    client_ca: str | None,
    workers: str | None,
    peer: tuple[str, ...],
    peer_ca: tuple[str, ...],
    peer_name: tuple[str, ...],
    peer_fingerprint: tuple[str, ...],
) -> None:
    """Run the SOCKS server until SIGTERM or SIGINT.

    SIGHUP reloads the config and users file, SIGUSR1 logs a state dump.
    """
    from socksx.config import load, with_overrides
    from socksx.log import setup_logging
    from socksx.server.server import Server, drop_privileges, raise_nofile_limit
    from socksx.server.workers import Supervisor, worker_count

    overrides: dict[str, Any] = {}
    if listen:
        overrides["listen"] = list(listen)
    if auth:
        overrides["auth"] = auth
    if users_file:
        overrides["users_file"] = users_file
    tls: dict[str, Any] = {}
    if tls_listen:
        tls["listen"] = list(tls_listen)
    for name, path in (("cert", cert), ("key", key), ("client_ca", client_ca)):
        if path:
            tls[name] = os.path.abspath(path)
    if tls:
        overrides["tls"] = tls
    if workers:
        overrides["workers"] = "auto" if workers == "auto" else _int_or_text(workers)
    if peer or peer_ca or peer_name or peer_fingerprint:
        peers = _tunnel_peers(peer, peer_ca, peer_name, peer_fingerprint)
        overrides["tunnel"] = {"peer": peers}
    config = with_overrides(load(config_path), **overrides)
    log = config.log
    level = "debug" if app.verbosity > 0 else log.level
    setup_logging(log_format or log.format, log.target, level, log.syslog_address)
    raise_nofile_limit(config.limits.max_sessions)
    # What is loaded by now (gevent, click, rich, the config: ~100k objects) lives as long as
    # the process: keep the cyclic collector from rescanning it in every full collection,
    # which at thousands of sessions a second came several times a second.
    gc.freeze()

    def reapply(cfg: Config) -> Config:
        return with_overrides(cfg, **overrides)

    def relog(log: Any) -> None:
        setup_logging(log_format or log.format, log.target, log.level, log.syslog_address)

    count = worker_count(config)
    if count == 1:
        srv = Server(config)
        srv.log_hook = relog
        srv.start()
        drop_privileges(config.user, config.group)
        if overrides:
            srv.set_overrides(reapply)
        srv.serve_forever()
        return

    def run_worker(sockets: list) -> None:
        srv = Server(config)
        srv.log_hook = relog
        if overrides:
            srv.set_overrides(reapply)
        srv.start(sockets)
        srv.serve_forever()

    supervisor = Supervisor(
        config, count, run_worker, lambda: drop_privileges(config.user, config.group)
    )
    supervisor.bind()
    supervisor.serve_forever()


def _int_or_text(text: str) -> int | str:
    # Let config validation produce the one error message for a bad value.
    return int(text) if text.isdigit() else text


def _tunnel_peers(
    peers: tuple[str, ...], cas: tuple[str, ...], names: tuple[str, ...], pins: tuple[str, ...]
) -> list[dict[str, str]]:
    """``[[tunnel.peer]]`` tables from the flags: each --peer-* flag once for all, or per --peer."""
    if not peers:
        msg = "--peer-ca, --peer-name and --peer-fingerprint need --peer"
        raise click.UsageError(msg)
    columns: dict[str, list[str]] = {}
    for flag, values in (("ca", cas), ("name", names), ("fingerprint", pins)):
        if len(values) not in (0, 1, len(peers)):
            msg = f"give --peer-{flag} once (for every --peer) or once per --peer"
            raise click.UsageError(msg)
        if flag == "ca":
            values = tuple(os.path.abspath(v) for v in values)
        columns[flag] = list(values) * len(peers) if len(values) == 1 else list(values)
    return [
        {"address": address, **{k: v[i] for k, v in columns.items() if v}}
        for i, address in enumerate(peers)
    ]
