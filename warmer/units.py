"""Durations (`90s`, `30m`, `7d`, `2w`) and sizes (`20G`, `512MiB`) for people and specs."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_NUMBER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_duration(value: str | float | int) -> float:
    """Seconds from `90s`, `30m`, `2h`, `7d`, `2w` (or `500ms`).

    A bare number is refused, whether text or a YAML number: `--older-than 30` meant 30 seconds
    to the code and 30 days to the user who pruned everything with it. The message says how to
    write it (`30 has no unit: write 30s, 30m, 30h or 30d`).
    """
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = f"{value:g}"
    elif isinstance(value, str) and _NUMBER_RE.match(value):
        number = value.strip()
    if number is not None:
        units = ", ".join(f"{number}{unit}" for unit in "smh")
        raise ValueError(f"{number} has no unit: write {units} or {number}d")
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"not a duration: {value!r} (write e.g. 90s, 30m, 2h, 7d, 2w)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from `1024`, `512K`, `20G`, `1.5GiB` (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. 500M, 20G)")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size < 0:
        raise ValueError(f"size must not be negative: {value!r}")
    return size


def format_size(size: float) -> str:
    """`1.2G`-style size for people (binary units)."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(size) < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """`850ms`, `12.3s`, `4m05s`, `3h02m`, `5d` for people."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d"
