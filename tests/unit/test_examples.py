"""The in-process examples run (the service-backed ones run in tests/e2e/test_operations.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name", ["quickstart", "constraints", "explicit_feedback", "implicit_feedback"]
)
def test_example_runs(name):
    env = dict(os.environ, CONDUIT_ROUTER__EMBEDDER="hashing")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
