"""The ``socksx`` command: a click group; each command lives in its own module."""

from __future__ import annotations

import os
import sys

import click

from socksx import __version__
from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.errors import SocksError

__all__ = ["cli", "exit_code_for", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More output; -vv shows tracebacks.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.option("--color/--no-color", default=None, help="Force or disable color [env: NO_COLOR].")
@click.version_option(__version__, prog_name="socksx")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, color: bool | None) -> None:
    """socksx: SOCKS4/4a/5 server, client and tools, with multicast, tunnel and multi-bind."""
    ctx.obj = App(verbosity=verbose - quiet, color=color)


HELP_OPTIONS = ["-h", "--help"]


def _register() -> None:
    from socksx.cli import commands

    for command in commands.ALL:
        cli.add_command(command)
        _help_everywhere(command)


def _help_everywhere(command: click.Command) -> None:
    # Set on each command, not only inherited from the root context: click caches a command's
    # help option, so one invoked on its own (tests, embedding) would otherwise lose -h.
    command.context_settings.setdefault("help_option_names", HELP_OPTIONS)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _help_everywhere(sub)


_register()


def main() -> None:
    """Run the CLI; turn Ctrl-C into exit 130 without a traceback."""
    try:
        cli.main(prog_name="socksx", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line, like every other user error; --help has the long story.
        where = exc.ctx.command_path if exc.ctx is not None else "socksx"
        click.echo(f"socksx: {exc.format_message()} (try '{where} --help')", err=True)
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        click.echo(f"socksx: {exc.format_message()}", err=True)
        sys.exit(ExitCode.FAILURE)
    except click.exceptions.Abort:
        click.echo("socksx: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("socksx: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except SocksError as exc:
        if _debug():
            raise
        problems = getattr(exc, "problems", None) or [exc]
        for problem in problems:
            click.echo(f"socksx: {problem}", err=True)
        sys.exit(exit_code_for(exc))


def _debug() -> bool:
    """Tracebacks wanted: SOCKSX_DEBUG=1, or -vv before the command name."""
    if os.environ.get("SOCKSX_DEBUG") == "1":
        return True
    level = 0
    for arg in sys.argv[1:]:
        if arg == "--verbose":
            level += 1
        elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
            level += len(arg) - 1
        elif not arg.startswith("-"):
            break
    return level >= 2


def exit_code_for(exc: BaseException) -> ExitCode:
    """The documented exit code for an error that reached the top of a command."""
    from socksx import errors

    if isinstance(exc, errors.ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, errors.AuthenticationFailed):
        return ExitCode.AUTH
    if isinstance(exc, errors.ReplyError):
        return ExitCode.REFUSED
    if isinstance(exc, errors.ProxyConnectionError | errors.ProxyTimeoutError):
        return ExitCode.UNREACHABLE
    return ExitCode.FAILURE
