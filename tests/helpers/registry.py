"""The test registry (WARMER_TEST_REGISTRY) and snapshots of random files to push to it."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from warmer.envkey import EnvKey
from warmer.store import Store
from warmer.store.manifest import FileEntry, Manifest

F = TypeVar("F", bound=Callable[..., Any])
REGISTRY = os.environ.get("WARMER_TEST_REGISTRY", "")
REGISTRY_DATA = os.environ.get("WARMER_TEST_REGISTRY_DATA", "")


def _registry_answers() -> bool:
    if not REGISTRY:
        return False
    import requests

    try:
        return requests.get(f"http://{REGISTRY}/v2/", timeout=5).status_code == 200
    except requests.RequestException:
        return False


_REGISTRY_SKIP = pytest.mark.skipif(
    not _registry_answers(),
    reason="no OCI registry (set WARMER_TEST_REGISTRY=host:port or run .ci/registry-up)",
)


def needs_registry(test: F) -> F:
    """Marked `registry`, and skipped with the reason when no registry answers."""
    return pytest.mark.registry(_REGISTRY_SKIP(test))  # type: ignore[no-any-return]


def synthetic(store: Store, name: str, sizes: dict[str, int], seed: object = 0, **env: str) -> str:
    """A snapshot of random files (path -> size) for this machine's env (or `env` over it)."""
    key = EnvKey.from_dict({**EnvKey.probe().to_dict(), **env})
    files = []
    for path, size in sorted(sizes.items()):
        data = random.Random(f"{seed}:{path}").randbytes(size)
        files.append(FileEntry(path, "triton", store.put_bytes(data), size, 0o644))
    manifest = Manifest(name, key.to_dict(), key.tag, key.digest, tuple(files))
    return store.commit(manifest).ref
