"""socksx/protocol is sans-I/O (STYLE.md §2.7 rule 1); `import socksx` loads no network stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "socksx" / "protocol"
FORBIDDEN = frozenset(
    {"socket", "ssl", "gevent", "time", "random", "os", "logging", "threading", "select", "asyncio"}
)
DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


def impurities(source: str) -> list[str]:
    """Every import of a forbidden module, of a non-protocol socksx module, or dynamic import."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in DYNAMIC_IMPORTS:
                found.append(f"line {node.lineno}: dynamic import via {name}()")
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN:
                found.append(f"line {node.lineno}: imports {name}")
            elif top == "socksx" and not name.startswith("socksx.protocol"):
                found.append(
                    f"line {node.lineno}: imports {name} (protocol imports no other layer)"
                )
    return found


MODULES = sorted(PROTOCOL.glob("*.py"))


def test_protocol_modules_are_found() -> None:
    names = {path.name for path in MODULES}
    assert {"address.py", "messages.py", "connection.py", "datagram.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_protocol_module_is_pure(path) -> None:
    assert impurities(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import os.path",
        "from time import monotonic",
        "from gevent.socket import socket",
        "import logging as log",
        "def f():\n    import random\n",
        "from socksx.server import session",
        "import socksx.cli",
        "mod = __import__('ssl')",
        "import importlib\nimportlib.import_module('select')",
    ],
)
def test_scanner_catches_impure_imports(source) -> None:
    assert impurities(source)


@pytest.mark.parametrize(
    "source",
    [
        "import ipaddress",
        "from socksx.protocol.address import Address",
        "from . import constants",
        "import enum, dataclasses",
    ],
)
def test_scanner_allows_pure_imports(source) -> None:
    assert impurities(source) == []


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return set(result.stdout.split())


def test_import_socksx_loads_no_network_stack() -> None:
    """socksx/__main__.py must be able to monkey-patch before anything imports these."""
    assert {"ssl", "gevent", "socket"} & _loaded_after("import socksx") == set()


def test_importing_every_protocol_module_loads_no_network_stack() -> None:
    code = "import importlib\n" + "".join(
        f"importlib.import_module('socksx.protocol.{path.stem}')\n"
        for path in MODULES
        if path.stem != "__init__"
    )
    assert {"ssl", "gevent", "socket", "select", "asyncio"} & _loaded_after(code) == set()
