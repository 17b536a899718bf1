"""A fresh Python interpreter that imports warmer from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def python(code: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter that imports warmer from this checkout; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return done.stdout
