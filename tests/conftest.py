"""Shared fixtures: real compile caches written by Triton and torch (no fakes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers"
ALL_TARGETS = ("cuda:90", "cuda:80", "hip:gfx942")


def compile_triton(
    cache_dir: Path, targets: Sequence[str] = ALL_TARGETS
) -> list[dict[str, object]]:
    """Compile the helper kernels for `targets` into `cache_dir`; return the listener events."""
    pytest.importorskip("triton", reason="Triton is not installed")
    out = subprocess.run(
        [sys.executable, str(HELPERS / "compile_triton.py"), str(cache_dir), *targets],
        check=True,
        capture_output=True,
        text=True,
    )
    events: list[dict[str, object]] = json.loads(out.stdout.strip().splitlines()[-1])["events"]
    return events


def compile_inductor(env: dict[str, str]) -> dict[str, int]:
    """Run a real CPU torch.compile with `env` added; return Inductor's counters."""
    pytest.importorskip("torch", reason="torch is not installed")
    out = subprocess.run(
        [sys.executable, str(HELPERS / "compile_inductor.py")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    counters: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return counters


@pytest.fixture(scope="session")
def _triton_cache_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("triton-master") / "cache"
    compile_triton(cache)
    return cache


@pytest.fixture
def triton_cache(_triton_cache_master: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of a real Triton cache: 2 kernels x (cuda sm_90, cuda sm_80, hip gfx942).

    Group files are rewritten to the copy's paths, as Triton itself would have written them.
    """
    cache = tmp_path / "triton-cache"
    shutil.copytree(_triton_cache_master, cache)
    for group in cache.glob("*/__grp__*.json"):
        data = json.loads(group.read_text())
        data["child_paths"] = {
            name: str(group.parent / Path(path).name) for name, path in data["child_paths"].items()
        }
        group.write_text(json.dumps(data))
    yield cache
