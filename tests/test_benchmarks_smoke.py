"""``benchmarks/bench.py --smoke`` runs every benchmark end to end and cleans up after itself.

Untimed on purpose: it checks what the script printed and recorded, never how fast anything was
(speed belongs in docs/PERFORMANCE.md, not in a test that a busy machine could fail).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = (
    "tput-1-up",
    "tput-1-down",
    "tput-8-up",
    "tput-8-down",
    "rate-none",
    "rate-userpass",
    "mem-50",
    "udp-64",
    "udp-1200",
)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_smoke_run_prints_tables_records_every_case_and_leaves_nothing(tmp_path):
    if shutil.which("cc") is None:
        pytest.skip("bench.py compiles its load generator with cc")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "results.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--smoke",
            "--floor",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=80,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| target |" in proc.stdout
    assert f"command: {sys.executable}" in proc.stdout
    data = json.loads(out.read_text())
    assert data["sizes"]["smoke"] is True
    for case in CASES:
        runs = data["results"][case]["socksx"]
        assert len(runs) == 1, case
        assert "failed" not in runs[0], (case, runs[0])
    for case in ("tput-1-up", "tput-1-down", "tput-8-up", "tput-8-down"):
        assert data["results"][case]["socksx"][0]["bytes"] == data["sizes"]["bytes"]
    assert data["results"]["mem-50"]["socksx"][0]["alive"] == 50
    # the floor relay (--floor) is measured beside socksx where it can be
    for case in ("tput-1-up", "tput-8-down", "rate-none", "mem-50"):
        assert "failed" not in data["results"][case]["floor"][0], case
    assert data["results"]["tput-8-up"]["floor"][0]["bytes"] == data["sizes"]["bytes"]
    assert "floor" not in data["results"]["udp-64"]
    # every process it started is gone, and so is its temporary directory
    assert _processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == []
