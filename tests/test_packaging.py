"""What `pip install .` ships: every package, importable from the installed copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def _package_dirs() -> set[str]:
    dirs = {p.parent for p in (ROOT / "socksx").rglob("*.py") if "__pycache__" not in p.parts}
    return {".".join(d.relative_to(ROOT).parts) for d in dirs}


def test_every_source_directory_is_a_package():
    missing = [
        d
        for d in sorted(_package_dirs())
        if not (ROOT / d.replace(".", "/") / "__init__.py").exists()
    ]
    assert missing == []
    assert set(find_packages(str(ROOT), include=["socksx*"])) == _package_dirs()


def test_the_installed_copy_has_every_module():
    """Run where the checkout is not on sys.path: in CI that is the pip-installed package."""
    where = subprocess.run(
        [sys.executable, "-c", "import socksx, os; print(os.path.dirname(socksx.__file__))"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if where.returncode != 0:
        pytest.skip("socksx is not installed in this environment (only the checkout)")
    installed = Path(where.stdout.strip())
    modules = sorted(
        ".".join(p.with_suffix("").relative_to(ROOT).parts)
        for p in (ROOT / "socksx").rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__main__.py"
    )
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    result = subprocess.run(
        [sys.executable, "-c", script, *modules],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"installed at {installed}:\n{result.stderr}"
    cli = subprocess.run(
        [sys.executable, "-m", "socksx", "--version"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
