"""Run a test file again in a fresh pytest process, for tests that must not share this one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def assert_passes_in_child(test_file: str, **env: str) -> None:
    """Run ``test_file`` in a child pytest with ``env`` added to the environment; fail with its output unless
    it exits 0 having passed at least one test."""
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                           env=dict(os.environ, **env), capture_output=True, text=True,
                           cwd=Path(__file__).parents[1], timeout=900)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0 and " passed" in summary, child.stdout[-4000:] + child.stderr[-2000:]
