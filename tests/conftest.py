"""Shared fixtures: real compile caches written by Triton and torch (no fakes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HELPERS = Path(__file__).parent / "helpers"
REPO = Path(__file__).resolve().parent.parent
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


def saved_triton(triton_cache: Path, tmp_path: Path) -> tuple[Path, Manifest]:
    """Save a Triton cache (all of it) into tmp_path/store and a bundle in tmp_path."""

    result = save(
        name="triton-unit",
        roots=[CacheRoot("triton", str(triton_cache))],
        out=tmp_path,
        store=Store(tmp_path / "store"),
    )
    assert result.bundle is not None
    return result.bundle, result.manifest


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


# --- a real container engine: Docker, and Podman through its Docker-compatible socket ---

IMAGE = "warmer-cpu:py3.11-torch2.13.0"


@dataclass
class Engine:
    runtime: DockerRuntime
    client: Any
    image: str

    def containers(self, run_id: str) -> list[Any]:
        """Containers of one test, by label (what `docker ps -a --filter label=...` lists)."""
        return list(
            self.client.containers.list(
                all=True, filters={"label": f"warmer.run={run_id}"}, ignore_removed=True
            )
        )


def _podman_url() -> str | None:
    try:
        return podman_base_url()
    except UsageError:
        return None


@pytest.fixture(
    scope="module",
    params=["docker", pytest.param("podman", marks=pytest.mark.podman)],
)
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "docker":
        url = None
        if not engine_answers():
            pytest.skip("no Docker engine reachable (set DOCKER_HOST or run .ci/engine-up)")
        image = IMAGE
    else:
        url = _podman_url()
        if url is None or not engine_answers(url):
            pytest.skip(
                "no Podman service reachable "
                "(set WARMER_PODMAN_SOCKET or run .ci/engine-up --podman)"
            )
        image = f"localhost/{IMAGE}"
    runtime = DockerRuntime(url, name=request.param)
    try:
        runtime.client.images.get(image)
    except ImageNotFound:
        build = "images/cpu/build --podman" if request.param == "podman" else "images/cpu/build"
        pytest.skip(f"image {image} not built: run {build}")
    return Engine(runtime, runtime.client, image)


@pytest.fixture
def run_id(engine: Engine) -> Iterator[str]:
    """A label value of this test's own; no container with it may outlive the test."""
    value = f"test-{uuid.uuid4().hex[:12]}"
    yield value
    leftovers = engine.containers(value)
    for container in leftovers:
        container.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.short_id for c in leftovers]}"


from docker.errors import ImageNotFound  # noqa: E402

from warmer.caches import CacheRoot  # noqa: E402
from warmer.errors import UsageError  # noqa: E402
from warmer.runtimes.docker import DockerRuntime, engine_answers, podman_base_url  # noqa: E402
from warmer.saving import save  # noqa: E402
from warmer.store import Store  # noqa: E402
from warmer.store.manifest import Manifest  # noqa: E402
