"""man/socksx.1 stays true to the CLI: commands, options, defaults, exit codes, signals."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import click
import pytest

from socksx import __version__
from socksx.cli import cli
from socksx.cli._exit import EXIT_TEXT, ExitCode

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "socksx.1"
SERVER_MODULES = sorted((ROOT / "socksx" / "server").glob("*.py"))
SECTIONS = (
    "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "GLOBAL OPTIONS", "PROXY URLS", "SIGNALS",
    "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO",
)
HELP_OPTIONS = {"-h", "--help"}
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def walk(command: click.Command, path: tuple[str, ...] = ("socksx",)) -> Iterator[
    tuple[tuple[str, ...], click.Command]
]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = dict(walk(cli))
LEAVES = [path for path, command in COMMANDS.items() if not isinstance(command, click.Group)]


def option_names(command: click.Command) -> set[str]:
    return {
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }


def long_options(command: click.Command) -> set[str]:
    return {name for name in option_names(command) if name.startswith("--")}


# -- the roff source ------------------------------------------------------------------------


ALTERNATING = {".BR", ".RB", ".IR", ".RI", ".BI", ".IB"}
ARGUMENT = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def unroff(line: str) -> str:
    """The text of one roff line: font macros and escapes resolved (enough for this page)."""
    if line.startswith("."):
        macro, _, rest = line.partition(" ")
        args = [quoted.replace('""', '"') if quoted or not plain else plain
                for quoted, plain in ARGUMENT.findall(rest)]
        line = ("" if macro in ALTERNATING else " ").join(args)
    line = re.sub(r"\\f[BIRP]", "", line)
    for escape, text in (("\\-", "-"), ("\\~", " "), ("\\(aq", "'"), ("\\e", "\\"),
                         ("\\&", ""), ("\\c", ""), ("\\|", "")):
        line = line.replace(escape, text)
    return line


def source_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in PAGE.read_text().splitlines():
        if line.startswith(".SH "):
            current = sections.setdefault(line[4:].strip('"'), [])
        else:
            current.append(line)
    return sections


def tp_items(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(tag, body lines) of every .TP entry, in order."""
    items: list[tuple[str, list[str]]] = []
    body: list[str] | None = None
    expect_tag = False
    for line in lines:
        if line.startswith(".TP"):
            expect_tag, body = True, None
        elif expect_tag:
            body = []
            items.append((unroff(line), body))
            expect_tag = False
        elif line.startswith((".SS", ".SH", ".PP")):
            body = None
        elif body is not None:
            body.append(line)
    return items


# -- the rendered page ----------------------------------------------------------------------


@cache
def rendered() -> str:
    if shutil.which("man") is None:
        pytest.skip("man not installed")
    env = {k: v for k, v in os.environ.items() if k != "MAN_KEEP_FORMATTING"}
    env.update(MANWIDTH="100", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    result = subprocess.run(
        ["man", "-l", str(PAGE)], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def flatten(text: str) -> str:
    """Rendered text as one line: hyphenation undone, minus signs as '-', spaces collapsed."""
    text = re.sub("\u2010\n[ \t]*", "", text)
    text = text.replace("\u2010", "-").replace("\u2212", "-")
    return " ".join(text.split())


def rendered_subsections() -> dict[str, str]:
    """Subsection title (e.g. 'socksx passwd add') -> its flattened text."""
    chunks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in rendered().splitlines():
        if re.match(r"^ {3}\S", line):
            current = chunks.setdefault(line.strip(), [])
        elif re.match(r"^\S", line):
            current = [] if line.strip() == "COMMANDS" else None
        elif current is not None:
            current.append(line)
    return {title: flatten("\n".join(lines)) for title, lines in chunks.items()}


def rendered_section(title: str) -> str:
    match = re.search(rf"^{re.escape(title)}\n(.*?)(?=^\S)", rendered(), re.S | re.M)
    assert match, f"no section {title} in the rendered page"
    return flatten(match.group(1))


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_groff_reports_no_warnings():
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_man_renders_every_section_title():
    titles = [line for line in rendered().splitlines() if re.match(r"^[A-Z][A-Z ]+$", line)]
    assert titles == list(SECTIONS)
    assert rendered().splitlines()[0].startswith("SOCKSX(1)")


def test_page_names_the_current_version():
    assert PAGE.read_text().splitlines()[0] == (
        f'.TH SOCKSX 1 "2024" "socksx {__version__}" "User Commands"'
    )


def test_every_command_has_a_subsection_and_no_subsection_is_stale():
    titles = set(rendered_subsections())
    assert set(map(" ".join, LEAVES)) <= titles
    assert titles <= {" ".join(path) for path in COMMANDS}


def test_synopsis_has_a_line_per_command():
    synopsis = rendered_section("SYNOPSIS")
    for path in LEAVES:
        assert f"socksx [GLOBAL-OPTIONS] {' '.join(path[1:])}" in synopsis


def test_every_option_is_described_under_its_command():
    sections = rendered_subsections()
    for path, command in COMMANDS.items():
        if path == ("socksx",):
            text = rendered_section("GLOBAL OPTIONS")
        else:
            # A command's options may be described once for its whole group (passwd's -f).
            scopes = [" ".join(path[:n]) for n in range(2, len(path) + 1)]
            text = " ".join(sections.get(scope, "") for scope in scopes)
        for name in option_names(command) - HELP_OPTIONS:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (path, name)
    assert {"-h", "--help"} <= set(re.findall(r"-[-\w]+", rendered_section("GLOBAL OPTIONS")))


def test_no_subsection_describes_an_option_its_command_lacks():
    for title, text in rendered_subsections().items():
        path = tuple(title.split())
        known = set(HELP_OPTIONS)
        for other, command in COMMANDS.items():
            if other[: len(path)] == path or path[: len(other)] == other:
                known |= long_options(command)
        assert set(LONG_OPTION.findall(text)) <= known, title


def test_every_option_entry_gives_a_default_or_says_required():
    lines = source_sections()["COMMANDS"]
    for tag, body in tp_items(lines):
        text = " ".join(unroff(line) for line in body)
        assert "Default:" in text or "Required." in text, tag


def test_option_defaults_match_the_code():
    sections = rendered_subsections()
    checked = 0
    for path, command in COMMANDS.items():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.default, float):
                text = sections[" ".join(path)]
                assert f"Default: {param.default:g} seconds" in text, (path, param.name)
                checked += 1
    assert checked >= 2  # connect and check --timeout


def test_config_check_exit_status_is_documented_as_1_and_others_as_3():
    text = rendered_subsections()["socksx config check"]
    assert f"exits with status {int(ExitCode.FAILURE)}" in text
    assert f"exit {int(ExitCode.CONFIG)}" in text


def exit_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for tag, body in tp_items(source_sections()["EXIT STATUS"]):
        assert tag.isdigit(), tag
        assert int(tag) not in table, tag
        table[int(tag)] = " ".join(unroff(line) for line in body)
    return table


def test_exit_status_table_equals_the_code():
    assert exit_table() == {int(code): text for code, text in EXIT_TEXT.items()}
    assert set(EXIT_TEXT) == set(ExitCode)


def test_rendered_exit_status_table_shows_every_row():
    lines = {
        tuple(line.split(maxsplit=1))
        for line in rendered_section_lines("EXIT STATUS")
        if re.match(r"^ +\d+ {2,}\S", line)
    }
    assert lines == {(str(int(code)), text) for code, text in EXIT_TEXT.items()}


def rendered_section_lines(title: str) -> list[str]:
    match = re.search(rf"^{re.escape(title)}\n(.*?)(?=^\S)", rendered(), re.S | re.M)
    assert match
    return match.group(1).splitlines()


def handled_signals() -> set[str]:
    """Signals the server code installs handlers for (gevent.signal_handler, signal.signal)."""
    names: set[str] = set()
    for module in SERVER_MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr not in {"signal_handler", "signal"} or not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Attribute) and first.attr.startswith("SIG"):
                names.add(first.attr)
    return names


def test_page_names_every_signal_the_server_handles():
    handled = handled_signals()
    assert {"SIGHUP", "SIGTERM", "SIGINT", "SIGUSR1"} <= handled
    tags = {
        name
        for tag, _ in tp_items(source_sections()["SIGNALS"])
        for name in re.findall(r"SIG[A-Z0-9]+", tag)
    }
    assert tags == handled


def test_signals_section_documents_each_action():
    text = " ".join(unroff(line) for line in source_sections()["SIGNALS"])
    for phrase in ("Reload the configuration file and the users file", "timeouts.shutdown_grace",
                   "state dump", "supervisor forwards SIGHUP and SIGUSR1"):
        assert phrase in text


def test_environment_and_see_also():
    environment = {tag for tag, _ in tp_items(source_sections()["ENVIRONMENT"])}
    assert environment == {"SOCKS_PROXY", "ALL_PROXY", "NO_COLOR", "SOCKSX_DEBUG"}
    see_also = " ".join(unroff(line) for line in source_sections()["SEE ALSO"])
    assert see_also == "socksx.toml(5), sockd(8), curl(1), proxychains4(1), ssh_config(5)"


def test_proxy_url_schemes_match_the_client():
    from socksx.client.proxyurl import parse_proxy_url

    with pytest.raises(ValueError, match="unsupported proxy scheme") as info:
        parse_proxy_url("nosuch://127.0.0.1:1080")
    known = set(re.findall(r"\w+://", str(info.value).split("(use", 1)[1]))
    tags = {tag for tag, _ in tp_items(source_sections()["PROXY URLS"])}
    assert tags == known | {"HOST[:PORT]"}
    for scheme in known:
        assert parse_proxy_url(f"{scheme}127.0.0.1").port == 1080
    assert parse_proxy_url("127.0.0.1:1080").scheme == "socks5h"
