"""TrackingCacheManager under real Triton: hits are logged, misses are not, many processes (and
forked children) append at once while folds run, and a broken state dir never breaks Triton."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compile_triton

import warmer
from warmer.kernels import HIT_LOG_SUFFIX, KernelFilter, KernelIndex, Source, hit_log_dir

pytest.importorskip("triton", reason="Triton is not installed")

REPO = Path(warmer.__file__).resolve().parent.parent
MANAGER = "warmer.tracking:TrackingCacheManager"

#: Hit one entry ROUNDS times, fork, then parent and child hit it ROUNDS times each.
HAMMER = """
import os, sys
from warmer.tracking import TrackingCacheManager
key, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
manager = TrackingCacheManager(key)
for _ in range(rounds):
    assert manager.get_group(name) is not None
pid = os.fork()
for _ in range(rounds):
    assert TrackingCacheManager(key).get_group(name) is not None
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Triton subprocesses run with the tracking manager and a private state dir."""
    state = tmp_path / "state"
    monkeypatch.setenv("WARMER_STATE_DIR", str(state))
    monkeypatch.setenv("TRITON_CACHE_MANAGER", MANAGER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return state


def test_importing_warmer_does_not_import_triton_or_tracking() -> None:
    code = (
        "import sys, warmer, warmer.kernels, warmer.cli.kernels;"
        "print(sorted(m for m in ('triton', 'warmer.tracking', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_hits_are_logged_and_misses_are_not(state: Path, tmp_path: Path) -> None:
    cache = tmp_path / "fresh-cache"
    events = compile_triton(cache, ["cuda:90", "hip:gfx942"])
    assert events and not any(e["cache_hit"] for e in events)
    assert not hit_log_dir(state).exists()  # misses write nothing, not even a log

    before = time.time()
    events = compile_triton(cache, ["cuda:90"])
    after = time.time()
    assert events and all(e["cache_hit"] for e in events)
    with KernelIndex() as index:
        scan = index.scan(Source("dir", cache))
        kernels = {k.hash: k for k in index.kernels(scan, KernelFilter(), sort="hits")}
        hit = [k for k in kernels.values() if k.hits]
        assert {(k.backend, k.arch, k.hits) for k in hit} == {("cuda", "90", 1)}
        assert len(hit) == 2
        assert all(before - 0.01 <= (k.last_access or 0) <= after + 0.01 for k in hit)
        assert len(index.kernels(scan, KernelFilter(hits_below=1))) == 2  # the hip pair
    assert list(hit_log_dir(state).iterdir()) == []  # folded, writers gone: deleted


def test_many_processes_and_their_children_hit_while_folds_run(
    state: Path, triton_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", str(triton_cache))
    entry = next(d for d in triton_cache.iterdir() if (d / "add_kernel.cubin").exists())
    processes, rounds = 4, 300
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, entry.name, "add_kernel.json", str(rounds)],
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    folded = 0
    with KernelIndex() as index:
        while any(worker.poll() is None for worker in workers):
            folded += index.fold_hits()
        for worker in workers:
            assert worker.wait() == 0, worker.stderr.read() if worker.stderr else ""
        folded += index.fold_hits()
        assert folded == processes * rounds * 3
        scan = index.scan(Source("dir", triton_cache))
        (kernel,) = index.kernels(scan, KernelFilter(hits_above=0))
    assert kernel.hash == entry.name and kernel.hits == processes * rounds * 3
    logs = list(hit_log_dir(state).iterdir())
    assert logs == []


def test_a_broken_state_dir_never_breaks_triton(
    state: Path, triton_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("a file where the state dir should be")
    events = compile_triton(triton_cache, ["cuda:80"])
    assert events and all(e["cache_hit"] for e in events)
    assert not any(p.name.endswith(HIT_LOG_SUFFIX) for p in state.parent.rglob("*"))
