"""Every command has --help; --version; usage and user errors are short and never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from socksx import __version__
from socksx.cli import cli
from socksx.cli._exit import ExitCode

ROOT = Path(__file__).resolve().parents[2]
ENV_PROXIES = ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy")


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMAND_PATHS = list(walk(cli))


def child_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ENV_PROXIES and k != "SOCKSX_DEBUG"
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    return env


def socksx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socksx", *args],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
        timeout=60, check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: ExitCode,
                          start: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"socksx: {start}"), result.stderr


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "socksx")
def test_help_exits_0_and_prints_usage(path: tuple[str, ...]):
    result = CliRunner().invoke(
        cli, [*path, "--help"], prog_name="socksx", catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('socksx', *path))} ")
    assert "Options:" in result.output
    assert "-h, --help" in result.output


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "socksx")
def test_short_help_option_works_everywhere(path: tuple[str, ...]):
    long = CliRunner().invoke(cli, [*path, "--help"], prog_name="socksx", catch_exceptions=False)
    short = CliRunner().invoke(cli, [*path, "-h"], prog_name="socksx", catch_exceptions=False)
    assert short.exit_code == 0
    assert short.output == long.output


def test_every_command_has_a_short_help_line():
    for path in COMMAND_PATHS[1:]:
        command: click.Command = cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        assert command.get_short_help_str(limit=100), path


def test_version_prints_the_package_version():
    result = CliRunner().invoke(cli, ["--version"], prog_name="socksx", catch_exceptions=False)
    assert result.exit_code == 0
    assert result.output == f"socksx, version {__version__}\n"


def test_version_from_the_entry_point():
    result = socksx("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"socksx, version {__version__}\n"


def test_unknown_command_is_a_usage_error_in_process():
    result = CliRunner().invoke(cli, ["no-such-command"], prog_name="socksx",
                                catch_exceptions=False)
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: No such command 'no-such-command'."]
    assert "Traceback" not in result.stderr


def test_unknown_command_from_the_entry_point():
    result = socksx("no-such-command")
    assert result.returncode == ExitCode.USAGE
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr == "socksx: No such command 'no-such-command'. (try 'socksx --help')\n"


@pytest.mark.parametrize(
    "args",
    [("--no-such-option",), ("server", "--no-such-option"), ("passwd", "list"),
     ("connect", "not-a-host-port", "--via", "127.0.0.1:1080"), ("server", "--auth", "maybe")],
    ids=" ".join,
)
def test_bad_command_line_exits_2_without_traceback(args: tuple[str, ...]):
    result = socksx(*args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("socksx: ")
    assert lines[0].endswith("--help')")


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections and stays ours: bound, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_connect_to_a_closed_proxy_port_is_exit_4(refusing_port: int):
    result = socksx("connect", "127.0.0.1:9", "--via", f"127.0.0.1:{refusing_port}",
                    "--timeout", "5")
    assert_one_line_error(result, ExitCode.UNREACHABLE,
                          f"cannot connect to proxy 127.0.0.1:{refusing_port}: ")


def test_server_with_a_missing_config_is_exit_3(tmp_path: Path):
    missing = tmp_path / "nonexistent.toml"
    assert_one_line_error(socksx("server", "-c", str(missing)), ExitCode.CONFIG,
                          f"{missing}: file not found")


def test_server_with_a_bad_flag_value_is_exit_3():
    assert_one_line_error(socksx("server", "--workers", "0"), ExitCode.CONFIG,
                          "command line: workers: ")


def test_passwd_list_of_a_missing_file_is_exit_3(tmp_path: Path):
    missing = tmp_path / "nonexistent"
    assert_one_line_error(socksx("passwd", "list", "--file", str(missing)), ExitCode.CONFIG,
                          f"{missing}: file not found")


def test_config_check_of_a_missing_file_is_exit_1(tmp_path: Path):
    missing = tmp_path / "nonexistent.toml"
    assert_one_line_error(socksx("config", "check", str(missing)), ExitCode.FAILURE,
                          f"{missing}: file not found")


def test_config_show_of_a_missing_file_is_exit_3(tmp_path: Path):
    missing = tmp_path / "nonexistent.toml"
    assert_one_line_error(socksx("config", "show", "-c", str(missing)), ExitCode.CONFIG,
                          f"{missing}: file not found")
