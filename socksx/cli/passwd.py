"""``socksx passwd add|del|list|verify``: manage the users file of username/password auth.

Passwords come from a hidden prompt when stdin is a terminal (``add`` asks twice), otherwise
from the first line of stdin, so scripts can pipe them in. They are never taken from the command
line, where other users could read them in the process list. ``SOCKSX_TEST_FAST_HASH=1`` makes
``add`` hash with argon2id's minimum cost: for test suites only, never for real users.
"""

from __future__ import annotations

import json
import os
import sys

import click

from socksx.cli._app import App
from socksx.cli._exit import ExitCode

__all__ = ["passwd"]

#: RFC 1929: PLEN is one octet, so a longer password could never be sent by a client.
MAX_PASSWORD_OCTETS = 255

file_option = click.option(
    "-f",
    "--file",
    "path",
    required=True,
    metavar="FILE",
    help="The users file (see 'socksx server --users').",
)


@click.group(name="passwd", short_help="Manage the users file (argon2id password hashes).")
def passwd() -> None:
    """Add, delete, list and check the users of a users file.

    A password is read from a hidden prompt when stdin is a terminal, otherwise from the first
    line of stdin (only its line end is removed). It is never accepted on the command line.
    """


def _check_username(username: str) -> None:
    from socksx.server.userfile import check_username

    problem = check_username(username)
    if problem:
        raise click.BadParameter(problem, param_hint="USER")


def _read_password(app: App, *, confirm: bool) -> bytes:
    if sys.stdin.isatty():
        text = click.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
        password = text.encode("utf-8", "surrogateescape")
    else:
        line = sys.stdin.buffer.readline(4 * MAX_PASSWORD_OCTETS)
        if not line:
            app.fail("no password on stdin (expected one line)", ExitCode.FAILURE)
        password = line.removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        app.fail("empty password refused", ExitCode.FAILURE)
    if len(password) > MAX_PASSWORD_OCTETS:
        app.fail(
            f"password is longer than {MAX_PASSWORD_OCTETS} octets (RFC 1929 cannot send it)",
            ExitCode.FAILURE,
        )
    return password


def _hash_cost() -> dict[str, int]:
    import nacl.pwhash.argon2id as argon2id

    from socksx.server.auth import DEFAULT_MEMLIMIT, DEFAULT_OPSLIMIT

    if os.environ.get("SOCKSX_TEST_FAST_HASH") == "1":
        return {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
    return {"opslimit": DEFAULT_OPSLIMIT, "memlimit": DEFAULT_MEMLIMIT}


@passwd.command(short_help="Add a user, or replace its password with --force.")
@click.argument("username", metavar="USER")
@file_option
@click.option("--force", is_flag=True, help="Replace the password of an existing user.")
@click.pass_obj
def add(app: App, *, username: str, path: str, force: bool) -> None:
    """Add USER to FILE (created, mode 0600, if missing) with a password read as described
    under 'socksx passwd --help'."""
    from socksx.server.auth import hash_password
    from socksx.server.userfile import UsersFile

    _check_username(username)
    users_file = UsersFile.read(path, missing_ok=True)
    existed = username in users_file.users
    if existed and not force:
        app.fail(
            f"user {username!r} already exists in {path} (use --force to replace it)",
            ExitCode.FAILURE,
        )
    password = _read_password(app, confirm=True)
    users_file.set(username, hash_password(password, **_hash_cost()))
    try:
        users_file.write()
    except OSError as exc:
        app.fail(f"cannot write {path}: {exc.strerror or exc}", ExitCode.FAILURE)
    app.info(f"{'replaced password of' if existed else 'added'} user {username!r} in {path}")


@passwd.command(name="del", short_help="Delete a user.")
@click.argument("username", metavar="USER")
@file_option
@click.pass_obj
def delete(app: App, *, username: str, path: str) -> None:
    """Remove USER from FILE, keeping every other line as it is."""
    from socksx.server.userfile import UsersFile

    users_file = UsersFile.read(path)
    if not users_file.remove(username):
        app.fail(f"no user {username!r} in {path}", ExitCode.FAILURE)
    try:
        users_file.write()
    except OSError as exc:
        app.fail(f"cannot write {path}: {exc.strerror or exc}", ExitCode.FAILURE)
    app.info(f"deleted user {username!r} from {path}")


@passwd.command(name="list", short_help="List the users, one per line.")
@file_option
@click.option("--json", "as_json", is_flag=True, help='Print {"file": ..., "users": [...]}.')
def list_users(*, path: str, as_json: bool) -> None:
    """Print the usernames in FILE in file order."""
    from socksx.server.userfile import load_users

    names = list(load_users(path))
    if as_json:
        click.echo(json.dumps({"file": path, "users": names}, ensure_ascii=False))
        return
    for name in names:
        click.echo(name)


@passwd.command(short_help="Check a password (exit 0 if it matches, 5 if not).")
@click.argument("username", metavar="USER")
@file_option
@click.pass_obj
def verify(app: App, *, username: str, path: str) -> None:
    """Check USER's password in FILE; the exit status says whether it matches."""
    from socksx.server.auth import check_password
    from socksx.server.userfile import load_users

    users = load_users(path)
    stored = users.get(username)
    if stored is None:
        app.fail(f"no user {username!r} in {path}", ExitCode.AUTH)
    password = _read_password(app, confirm=False)
    if not check_password(stored, password):
        app.fail(f"wrong password for user {username!r}", ExitCode.AUTH)
    app.info(f"password of user {username!r} matches")
