"""bench/gpu-check: on a machine without an NVIDIA GPU it fails at once and says why; on one
with a GPU (marker `gpu`) it runs end to end and the restored run compiles nothing again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu-check"


def cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available()) and torch.version.hip is None


def gpu_check(work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(work)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_without_a_gpu_it_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    if cuda_usable():
        pytest.skip("this machine has an NVIDIA GPU: the GPU test below runs instead")
    done = gpu_check(tmp_path / "work")
    assert done.returncode == 1
    assert done.stderr.startswith("gpu-check: ") and "torch" in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.gpu
def test_on_a_gpu_the_restored_run_hits(tmp_path: Path) -> None:
    if not cuda_usable():
        pytest.skip("no NVIDIA GPU that torch can use")
    done = gpu_check(tmp_path / "work")
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    for factor in ("compute capability", "SM count", "CUDA (torch)", "Triton", "restored run"):
        assert factor in done.stdout
