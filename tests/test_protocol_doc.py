"""docs/PROTOCOL.md stays true: its vectors, code tables, errno table and defaults are checked."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from socksx.config import Timeouts
from socksx.protocol.constants import REPLY_TEXT, Command, Method, Notice, ReplyCode, Socks4Code

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "docs" / "PROTOCOL.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
TOOL = ROOT / "tools" / "render_vectors.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("render_vectors", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_vectors = _load_tool()

ALL_VECTORS = [vector for table in render_vectors.tables().values() for vector in table]


def test_vector_tables_include_the_standard_protocol() -> None:
    modules = {module.__name__ for module in render_vectors.vector_modules()}
    assert {f"tests.vectors.{name}" for name in ("rfc1928", "rfc1929", "socks4", "udp")} <= modules
    names = set(render_vectors.tables())
    assert {"rfc1928-requests", "rfc1929-requests", "socks4-requests", "udp-datagrams"} <= names


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=lambda v: f"{v.source}: {v.name}")
def test_every_vector_appears_in_the_document(vector) -> None:
    assert f"`{vector.hex}`" in DOC


@pytest.mark.parametrize("name", list(render_vectors.render_all()))
def test_vector_block_is_current(name) -> None:
    """Regenerate with: python tools/render_vectors.py --write docs/PROTOCOL.md"""
    blocks = render_vectors.blocks(DOC)
    assert name in blocks, f"PROTOCOL.md has no <!-- vectors:{name} --> block"
    assert blocks[name] == render_vectors.render_all()[name]


def test_document_has_no_block_without_a_table() -> None:
    assert set(render_vectors.blocks(DOC)) <= set(render_vectors.render_all())


def _row(value: int, name: str) -> str | None:
    for line in DOC.splitlines():
        if line.startswith(f"| {value:02X} |") and f"`{name}`" in line:
            return line
    return None


@pytest.mark.parametrize(
    "member",
    [*Command, *ReplyCode, *Notice, *Method, *Socks4Code],
    ids=lambda m: f"{type(m).__name__}.{m.name}",
)
def test_every_code_has_a_table_row(member) -> None:
    assert _row(member.value, member.name), f"no row '| {member.value:02X} | ... `{member.name}`'"


@pytest.mark.parametrize("code", list(ReplyCode), ids=lambda c: c.name)
def test_reply_rows_use_the_codes_text(code) -> None:
    row = _row(code.value, code.name)
    assert row is not None
    assert f"| {REPLY_TEXT[code]} |" in row


def test_extension_commands_are_reserved_with_rep_07_in_the_introduction() -> None:
    intro = DOC.split("## 1.", 1)[0]
    for command in Command:
        if command >= Command.JOIN_MCAST_GROUP:
            assert f"| {command.value:02X} | `{command.name}` |" in intro
    assert "REP `07`" in intro


def test_connect_errno_table_is_copied_from_the_code() -> None:
    source = (ROOT / "socksx" / "server" / "connect.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    table = [line.strip() for line in docstring.splitlines() if line.startswith("    ")]
    assert len(table) >= 8
    doc_lines = [line.strip() for line in DOC.splitlines()]
    start = doc_lines.index(table[0])
    assert doc_lines[start : start + len(table)] == table


def test_documented_timeout_defaults_match_the_config() -> None:
    stated = dict(re.findall(r"`timeouts\.(\w+)`,? \(?(\d+) s by default", DOC))
    assert set(stated) == set(re.findall(r"`timeouts\.(\w+)`", DOC)), "a timeout without default"
    defaults = {f.name: f.default for f in fields(Timeouts)}
    for key, seconds in stated.items():
        assert defaults[key] == float(seconds), key


def test_render_tool_prints_every_block() -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL)], capture_output=True, text=True, timeout=60, check=True
    )
    assert render_vectors.blocks(result.stdout) == render_vectors.render_all()


def test_render_tool_rewrites_stale_blocks_and_reports_missing_ones(tmp_path) -> None:
    stale = DOC.replace("`05 01 00`", "`05 01 ff`")
    dropped = re.sub(
        r"<!-- vectors:udp-datagrams -->.*?<!-- /vectors:udp-datagrams -->\n",
        "",
        stale,
        flags=re.DOTALL,
    )
    path = tmp_path / "PROTOCOL.md"
    path.write_text(dropped, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--write", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no block for table udp-datagrams" in result.stderr
    rewritten = path.read_text(encoding="utf-8")
    assert "`05 01 00`" in rewritten
    assert (
        render_vectors.blocks(rewritten)["rfc1928-greetings"]
        == render_vectors.render_all()["rfc1928-greetings"]
    )
