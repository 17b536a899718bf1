"""What a restore left under a root: its files, and any staging leftovers."""

from __future__ import annotations

from pathlib import Path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (directories show through their files)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def leftovers(root: Path) -> list[Path]:
    """What staging left under `root`: twin directories and temp files."""
    return [path for path in root.rglob("*") if ".warmer-" in path.name]
