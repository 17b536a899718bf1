"""A small job spec, and the real `warmer` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO, Engine

SMALL_MODEL = {
    "kind": "torch-compile",
    "model": "warmer.agent.examples:tiny_transformer",
    "args": {"layers": 1, "dim": 32, "heads": 2},
}
SMALL_INPUTS = {"inputs": [{"shape": [1, 8, 32]}, {"shape": [2, 16, 32]}]}


def write_job(tmp_path: Path, runtime: Engine | None, /, **fields: Any) -> Path:
    job = {
        "version": 1,
        "name": "small",
        "image": runtime.image if runtime else "warmer-cpu:py3.11-torch2.13.0",
        "backend": "cpu",
        "engine": SMALL_MODEL,
        "warmup": SMALL_INPUTS,
        "timeout": "10m",
        **fields,
    }
    job = {key: value for key, value in job.items() if value is not None}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


#: The real `warmer` entry point, as a subprocess command.
WARMER = (sys.executable, "-c", "from warmer.cli import main; main()")


def warmer_environ(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the store of this test (and `env`) in it."""
    return {**os.environ, "WARMER_STORE": str(tmp_path / "store"), **(env or {})}


def warmer(
    *args: str, tmp_path: Path, engine: Engine | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `warmer` command, with the store and engine of this test."""
    if engine is not None and engine.runtime.name == "podman":
        args = (*args, "--runtime", "podman")
    elif engine is not None:
        args = (*args, "--runtime", "docker")
    return subprocess.run(
        [*WARMER, *args],
        capture_output=True,
        text=True,
        env=warmer_environ(tmp_path, env),
        cwd=REPO,
        timeout=900,
        check=False,
    )


#: A command-engine warm-up that writes one Triton-like kernel where the runtime points Triton
#: (the local runtime moves it through TRITON_HOME unless TRITON_CACHE_DIR is set).
WRITE_KERNEL = (
    'd="${TRITON_CACHE_DIR:-$TRITON_HOME/.triton/cache}"; '
    'mkdir -p "$d/KEY" && echo kernel > "$d/KEY/k.cubin"'
)
