"""The code standard, checked: ruff over the tree, mypy --strict on the codec and client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install ruff)")
def test_ruff_is_clean():
    result = subprocess.run(
        ["ruff", "check", "socksx", "tests", "benchmarks", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install ruff)")
def test_the_package_is_formatted():
    result = subprocess.run(
        ["ruff", "format", "--check", "socksx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_codec_and_the_client():
    pytest.importorskip("mypy", reason="mypy not installed (pip install mypy)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "socksx/protocol", "socksx/client"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
