"""The README's quick start is what CI runs, and it names real commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _shell_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    blocks = _shell_blocks((ROOT / "README.md").read_text())
    assert blocks[:2] == [
        "python3 -m pip install . && socksx server",
        "python3 -m pip install '.[test]' && python3 -m pytest",
    ]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-1] == blocks[1]


def test_ci_script_uses_a_fresh_virtual_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci
    assert "set -euo pipefail" in ci
