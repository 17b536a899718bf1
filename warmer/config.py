"""Defaults that a user can change through the environment (see configs/warmer.env)."""

from __future__ import annotations

import os
from pathlib import Path

#: Store location: $WARMER_STORE, else $XDG_CACHE_HOME/warmer, else ~/.cache/warmer.
STORE_ENV = "WARMER_STORE"


def default_store_root() -> Path:
    """Where the content-addressed store lives unless `--store` says otherwise."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "warmer"


def default_compression() -> str:
    """Bundle compression: `zst` (default) or `gz` (what Docker's ADD unpacks)."""
    value = os.environ.get("WARMER_BUNDLE_FORMAT", "zst")
    if value not in ("zst", "gz"):
        raise ValueError(f"WARMER_BUNDLE_FORMAT must be zst or gz, not {value!r}")
    return value


def default_max_store_size() -> str | None:
    """The hot tier's byte budget for `warmer prune` without --max-size ($WARMER_MAX_SIZE)."""
    return os.environ.get("WARMER_MAX_SIZE") or None
