"""``socksx config check|show``: validate a config file, print the effective config."""

from __future__ import annotations

import json
from typing import NoReturn

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.errors import ConfigError


@click.group(name="config", short_help="Check or show a configuration.")
def config() -> None:
    """Validate config files and print the effective configuration."""


def _fail(error: ConfigError, code: ExitCode = ExitCode.CONFIG) -> NoReturn:
    # Every problem on its own line, so an editor or grep can jump to each.
    for problem in error.problems:
        click.echo(f"socksx: {problem}", err=True)
    raise SystemExit(int(code))


@config.command(short_help="Validate a config file.")
@click.argument("file", type=click.Path(dir_okay=True))
@click.pass_obj
def check(app: App, *, file: str) -> None:
    """Validate FILE: exit 0 if it is usable, else print every problem and exit 1.

    (A checker that found problems has done its job: 1, as issue #3 specifies. Commands that
    cannot start because of a bad config exit 3.)
    """
    from socksx.config import load
    from socksx.server.auth import load_users

    try:
        cfg = load(file)
        if cfg.users_file:
            load_users(cfg.users_file)  # a bad line would stop the server: report it now
    except ConfigError as error:
        _fail(error, ExitCode.FAILURE)
    app.info(f"{file}: ok ({len(cfg.listen)} listen addresses, {len(cfg.rules)} rules)")


@config.command(short_help="Print the effective configuration.")
@click.option(
    "-c",
    "--config",
    "file",
    type=click.Path(dir_okay=True),
    default=None,
    help="Config file [default: the embedded default].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_obj
def show(app: App, *, file: str | None, as_json: bool) -> None:
    """Print the config socksx would run with, defaults filled in, as TOML (or JSON)."""
    from socksx.config import load, to_dict, to_toml

    try:
        cfg = load(file)
    except ConfigError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(to_dict(cfg), indent=2))
    else:
        click.echo(to_toml(cfg), nl=False)
