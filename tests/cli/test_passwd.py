from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest
from click.testing import CliRunner, Result

from socksx.cli._app import App
from socksx.cli._exit import ExitCode
from socksx.cli.passwd import passwd
from socksx.server.auth import hash_password
from socksx.server.userfile import load_users

ROOT = Path(__file__).resolve().parents[2]
FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}


@pytest.fixture(autouse=True)
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKSX_TEST_FAST_HASH", "1")


def run(*args: str, stdin: str | bytes = "") -> Result:
    return CliRunner().invoke(passwd, list(args), input=stdin, obj=App(), catch_exceptions=False)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOCKSX_TEST_FAST_HASH"] = "1"
    env["NO_COLOR"] = "1"
    env.pop("SOCKSX_DEBUG", None)
    return env


def socksx(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "socksx", *args],
        input=stdin,
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )


def matches(path: Path, user: str, password: bytes) -> bool:
    stored = load_users(str(path))[user]
    try:
        return argon2id.verify(stored, password)
    except Exception:
        return False


# --- add -------------------------------------------------------------------------------------


def test_add_creates_a_private_file_with_a_verifiable_hash(tmp_path: Path) -> None:
    users = tmp_path / "users"
    result = run("add", "alice", "--file", str(users), stdin="s3cret\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"added user 'alice' in {users}\n"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert users.read_text().startswith("alice:$argon2id$v=19$m=8,t=1,p=1$")
    assert matches(users, "alice", b"s3cret")
    assert "s3cret" not in users.read_text()


def test_add_uses_production_cost_without_the_test_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOCKSX_TEST_FAST_HASH")
    users = tmp_path / "users"
    assert run("add", "alice", "-f", str(users), stdin="pw\n").exit_code == 0
    assert users.read_text().startswith("alice:$argon2id$v=19$m=65536,t=2,p=1$")


def test_add_appends_and_keeps_comments(tmp_path: Path) -> None:
    users = tmp_path / "users"
    bob = hash_password(b"b", **FAST).decode()
    users.write_text(f"# staff\nbob:{bob}\n\n")
    assert run("add", "zoë", "-f", str(users), stdin="été\n").exit_code == 0
    lines = users.read_text().splitlines()
    assert lines[:3] == ["# staff", f"bob:{bob}", ""]
    assert lines[3].startswith("zoë:$argon2id$")
    assert matches(users, "zoë", "été".encode())


def test_add_existing_user_needs_force(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert run("add", "alice", "-f", str(users), stdin="old\n").exit_code == 0
    before = users.read_bytes()
    result = run("add", "alice", "-f", str(users), stdin="new\n")
    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr == (
        f"socksx: user 'alice' already exists in {users} (use --force to replace it)\n"
    )
    assert users.read_bytes() == before
    result = run("add", "alice", "-f", str(users), "--force", stdin="new\n")
    assert result.exit_code == 0, result.output
    assert "replaced password of user 'alice'" in result.stderr
    assert matches(users, "alice", b"new")
    assert list(load_users(str(users))) == ["alice"]


@pytest.mark.parametrize(
    ("stdin", "password"),
    [
        (b" two words \n", b" two words "),
        (b"no-newline", b"no-newline"),
        (b"crlf\r\n", b"crlf"),
        (b"first\nsecond\n", b"first"),
        (b"\xff\xfe-bytes\n", b"\xff\xfe-bytes"),
    ],
)
def test_add_reads_one_line_of_stdin(tmp_path: Path, stdin: bytes, password: bytes) -> None:
    users = tmp_path / "users"
    assert run("add", "alice", "-f", str(users), stdin=stdin).exit_code == 0
    assert matches(users, "alice", password)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"\n", "empty password refused"),
        (b"", "no password on stdin (expected one line)"),
        (b"x" * 256 + b"\n", "password is longer than 255 octets (RFC 1929 cannot send it)"),
    ],
)
def test_add_refuses_bad_passwords(tmp_path: Path, stdin: bytes, message: str) -> None:
    users = tmp_path / "users"
    result = run("add", "alice", "-f", str(users), stdin=stdin)
    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr == f"socksx: {message}\n"
    assert not users.exists()


def test_add_accepts_a_255_octet_password(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert run("add", "alice", "-f", str(users), stdin=b"x" * 255 + b"\n").exit_code == 0
    assert matches(users, "alice", b"x" * 255)


@pytest.mark.parametrize(
    ("user", "problem"),
    [("a:b", "username contains ':'"), ("#root", "username starts with '#'")],
)
def test_add_refuses_bad_usernames(tmp_path: Path, user: str, problem: str) -> None:
    result = run("add", user, "-f", str(tmp_path / "users"), stdin="pw\n")
    assert result.exit_code == ExitCode.USAGE
    assert problem in result.stderr


def test_password_is_never_an_option(tmp_path: Path) -> None:
    result = run("add", "alice", "-f", str(tmp_path / "users"), "--password", "pw")
    assert result.exit_code == ExitCode.USAGE
    assert not (tmp_path / "users").exists()


# --- del / list / verify ---------------------------------------------------------------------


@pytest.fixture
def three_users(tmp_path: Path) -> Path:
    users = tmp_path / "users"
    for name in ("carol", "alice", "bob"):
        assert run("add", name, "-f", str(users), stdin=f"{name}-pw\n").exit_code == 0
    return users


def test_del_removes_only_that_user(three_users: Path) -> None:
    three_users.chmod(0o644)
    result = run("del", "alice", "-f", str(three_users))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"deleted user 'alice' from {three_users}\n"
    assert list(load_users(str(three_users))) == ["carol", "bob"]
    assert matches(three_users, "bob", b"bob-pw")
    # An existing file keeps owner, group and mode, minus any access for "other".
    assert stat.S_IMODE(three_users.stat().st_mode) == 0o640


def test_del_unknown_user(three_users: Path) -> None:
    before = three_users.read_bytes()
    result = run("del", "dave", "-f", str(three_users))
    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr == f"socksx: no user 'dave' in {three_users}\n"
    assert three_users.read_bytes() == before


def test_list_in_file_order(three_users: Path) -> None:
    result = run("list", "-f", str(three_users))
    assert result.exit_code == 0
    assert result.stdout == "carol\nalice\nbob\n"


def test_list_json(three_users: Path) -> None:
    result = run("list", "-f", str(three_users), "--json")
    expected = {"file": str(three_users), "users": ["carol", "alice", "bob"]}
    assert json.loads(result.stdout) == expected


def test_list_empty_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# nobody yet\n")
    assert run("list", "-f", str(users)).stdout == ""


def test_verify_matching_password(three_users: Path) -> None:
    result = run("verify", "bob", "-f", str(three_users), stdin="bob-pw\n")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "password of user 'bob' matches\n"


def test_verify_wrong_password(three_users: Path) -> None:
    result = run("verify", "bob", "-f", str(three_users), stdin="alice-pw\n")
    assert result.exit_code == ExitCode.AUTH
    assert result.stderr == "socksx: wrong password for user 'bob'\n"


def test_verify_unknown_user(three_users: Path) -> None:
    result = run("verify", "dave", "-f", str(three_users), stdin="x\n")
    assert result.exit_code == ExitCode.AUTH
    assert result.stderr == f"socksx: no user 'dave' in {three_users}\n"


# --- through `python -m socksx` --------------------------------------------------------------


def test_end_to_end_through_the_entry_point(tmp_path: Path) -> None:
    users = str(tmp_path / "users")
    added = socksx("passwd", "add", "alice", "--file", users, stdin=b"pw\n")
    assert added.returncode == 0, added.stderr
    assert socksx("passwd", "verify", "alice", "--file", users, stdin=b"pw\n").returncode == 0
    wrong = socksx("passwd", "verify", "alice", "--file", users, stdin=b"pW\n")
    assert wrong.returncode == ExitCode.AUTH
    assert socksx("passwd", "list", "--file", users).stdout == b"alice\n"


def test_missing_users_file_is_a_config_error(tmp_path: Path) -> None:
    users = str(tmp_path / "absent")
    for command in (["list"], ["del", "alice"], ["verify", "alice"]):
        result = socksx("passwd", *command, "--file", users, stdin=b"pw\n")
        assert result.returncode == ExitCode.CONFIG, command
        assert result.stderr.decode() == f"socksx: {users}: file not found\n"
        assert result.stdout == b""


def test_bad_users_file_is_a_config_error_naming_lines(tmp_path: Path) -> None:
    users = tmp_path / "users"
    good = hash_password(b"pw", **FAST).decode()
    users.write_text(f"alice:{good}\nbroken\nalice:{good}\n")
    result = socksx("passwd", "add", "bob", "--file", str(users), stdin=b"pw\n")
    assert result.returncode == ExitCode.CONFIG
    stderr = result.stderr.decode()
    assert f"{users}: line 2: expected USERNAME:HASH" in stderr
    assert f"{users}: line 3: duplicate user 'alice' (first on line 1)" in stderr
    assert "Traceback" not in stderr
    assert "bob" not in users.read_text()


def _read_until(fd: int, marker: bytes | None, seen: bytearray, deadline: float) -> None:
    """Append terminal output to *seen* until *marker* appears (None: until the child exits)."""
    while marker is None or marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} from the terminal; got {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process closed the terminal
            chunk = b""
        if not chunk:
            assert marker is None, f"terminal closed before {marker!r}; got {bytes(seen)!r}"
            return
        seen += chunk


def test_prompts_twice_with_hidden_input_on_a_terminal(tmp_path: Path) -> None:
    users = tmp_path / "users"
    argv = [sys.executable, "-m", "socksx", "passwd", "add", "alice", "--file", str(users)]
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal and stdin
        try:
            os.execve(sys.executable, argv, child_env())
        finally:
            os._exit(127)
    transcript = bytearray()
    deadline = time.monotonic() + 60
    status = None
    try:
        dialogue = [
            (b"Password:", b"first"),
            (b"confirmation:", b"other"),  # mismatch: click asks again
            (b"Password:", b"hunter2"),
            (b"confirmation:", b"hunter2"),
        ]
        for prompt, typed in dialogue:
            pending = bytearray()
            _read_until(fd, prompt, pending, deadline)
            transcript += pending
            os.write(fd, typed + b"\r")
        _read_until(fd, None, transcript, deadline)
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(transcript)
    assert b"do not match" in transcript
    assert b"added user 'alice'" in transcript
    assert b"hunter2" not in transcript
    assert b"first" not in transcript  # nothing typed is echoed
    assert matches(users, "alice", b"hunter2")
