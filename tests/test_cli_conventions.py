"""CLI conventions every command keeps: help with an example, --json where people script,
plain output when piped or with NO_COLOR, completion of labs, scenarios and nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python3 -m labctl`` from this checkout, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})
