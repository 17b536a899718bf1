"""`warmer run` end to end: a real container (or the local runtime) warms a real model.

Each test runs the real `warmer` entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine
from helpers.run import SMALL_MODEL, warmer, write_job

from warmer.bundle import open_bundle, read_manifest
from warmer.runner import Runner, staged, tar_chunks, verify_result
from warmer.runtimes.local import LocalRuntime
from warmer.spec import load_jobs
from warmer.store import Store


def leftovers(engine: Engine, job: str) -> list[Any]:
    return list(engine.client.containers.list(all=True, filters={"label": f"warmer.job={job}"}))


@pytest.mark.docker
def test_run_verify_in_a_container_hits_and_publishes(engine: Engine, tmp_path: Path) -> None:
    job = write_job(tmp_path, engine)
    out = tmp_path / "dist"
    done = warmer(
        "run", str(job), "--verify", "--out", str(out), "--json", tmp_path=tmp_path, engine=engine
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    [result] = document["jobs"]
    assert result["ok"] and result["files"] > 0 and result["bytes"] > 0
    verify = result["verify"]
    assert verify["hit_rate"] == 1.0, verify
    assert verify["misses"] == 0 and verify["warm_s"] < verify["cold_s"]
    bundle = Path(result["bundle"])
    assert bundle.parent == out and bundle.name.startswith("small__torch2.13.0-cpu")
    manifest = read_manifest(bundle)
    assert manifest.verify is not None and manifest.verify["hit_rate"] == 1.0
    kinds = {entry.kind for entry in manifest.files}
    assert kinds == {"inductor"}
    # recorded where the image's runtime looks: the container's default Inductor root
    assert all(e.path.startswith("/tmp/torchinductor_root/") for e in manifest.files)
    assert any("/precompiled_headers/" in e.path for e in manifest.files)
    assert not [p for p in result["unclassified"] if p.startswith("/tmp/torchinductor")]
    with Store(tmp_path / "store") as store:
        assert [info.ref for info in store.list()] == [result["ref"]]
    assert leftovers(engine, "small") == []
    assert "small" in done.stderr and "warm-up" in done.stderr  # progress for people


@pytest.mark.docker
def test_a_failing_job_exits_3_shows_the_log_and_publishes_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    job = write_job(tmp_path, engine, engine={**SMALL_MODEL, "model": "no_such_module:factory"})
    out = tmp_path / "dist"
    done = warmer("run", str(job), "--out", str(out), tmp_path=tmp_path, engine=engine)
    assert done.returncode == 3, done.stderr
    assert "FAILED" in done.stderr and "no_such_module" in done.stderr
    assert "last lines of the log" in done.stderr
    assert not out.exists() or list(out.iterdir()) == []
    with Store(tmp_path / "store") as store:
        assert store.list() == []
    assert leftovers(engine, "small") == []


@pytest.mark.docker
def test_a_job_past_its_deadline_is_stopped_and_removed(engine: Engine, tmp_path: Path) -> None:
    job = write_job(
        tmp_path,
        engine,
        engine={"kind": "command", "command": ["sleep", "600"]},
        warmup={},
        timeout="3s",
    )
    done = warmer(
        "run", str(job), "--out", str(tmp_path / "dist"), tmp_path=tmp_path, engine=engine
    )
    assert done.returncode == 3, done.stderr
    assert "timed out" in done.stderr
    assert leftovers(engine, "small") == []


@pytest.mark.docker
def test_secrets_reach_the_job_but_no_output(engine: Engine, tmp_path: Path) -> None:
    secret = "s3cr3t-value-0451"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    script = (  # the spec holds only the secret's hash, so any leak of the value is warmer's
        f'test "$(printf %s "$WARMER_TEST_TOKEN" | sha256sum | cut -d" " -f1)" = {digest} && '
        'echo "token=$WARMER_TEST_TOKEN" && '
        "mkdir -p /root/.triton/cache/KEY && echo kernel > /root/.triton/cache/KEY/k.cubin"
    )
    job = write_job(
        tmp_path,
        engine,
        engine={"kind": "command", "command": ["bash", "-c", script]},
        warmup={},
        secrets=["WARMER_TEST_TOKEN"],
    )
    out = tmp_path / "dist"
    done = warmer(
        "run",
        str(job),
        "--out",
        str(out),
        "--json",
        tmp_path=tmp_path,
        engine=engine,
        env={"WARMER_TEST_TOKEN": secret},
    )
    assert done.returncode == 0, done.stderr
    assert "token=***" in done.stderr and secret not in done.stderr + done.stdout
    bundle = Path(json.loads(done.stdout)["jobs"][0]["bundle"])
    assert secret.encode() not in bundle.read_bytes()
    with open_bundle(bundle) as opened:
        assert "WARMER_TEST_TOKEN" in json.dumps(opened.manifest.job)
        assert secret not in json.dumps(opened.manifest.job)
        files = {entry.path: reader.read_all() for entry, reader in opened.files()}
    assert files == {"/root/.triton/cache/KEY/k.cubin": b"kernel\n"}

    missing = warmer("run", str(job), "--out", str(out), tmp_path=tmp_path, engine=engine)
    assert missing.returncode == 2 and "WARMER_TEST_TOKEN" in missing.stderr


def test_an_invalid_spec_exits_2_before_anything_starts(tmp_path: Path) -> None:
    job = write_job(tmp_path, None, warmup={"inputs": [{"shape": [1, 0, 32]}]})
    done = warmer("run", str(job), "--runtime", "local", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "warmup.inputs[0].shape" in done.stderr
    assert not (tmp_path / "store").exists()


def test_local_runtime_records_default_paths_and_verifies(tmp_path: Path) -> None:
    """No engine needed: a subprocess with fresh cache directories, recorded at the defaults.
    The job names no image: the local runtime needs none."""
    pytest.importorskip("torch", reason="the local runtime compiles with this Python's torch")
    job = write_job(tmp_path, None, image=None)
    out = tmp_path / "dist"
    done = warmer(
        "run",
        str(job),
        "--runtime",
        "local",
        "--verify",
        "--out",
        str(out),
        "--json",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["jobs"]
    assert result["verify"]["hit_rate"] == 1.0, result["verify"]
    manifest = read_manifest(Path(result["bundle"]))
    import getpass
    import tempfile

    default = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    assert manifest.files and all(e.path.startswith(default + "/") for e in manifest.files)
    assert not list(Path(tempfile.gettempdir()).glob("warmer-local-*"))


def test_verify_names_what_an_incomplete_bundle_made_the_warm_start_compile(
    tmp_path: Path,
) -> None:
    """The write proof on a real Inductor cache: a bundle without its FX graphs makes the warm
    start compile them again, and the verify result says so by kind."""
    pytest.importorskip("torch", reason="the local runtime compiles with this Python's torch")
    job = load_jobs(write_job(tmp_path, None, image=None))[0]
    store = Store(tmp_path / "store")
    runner = Runner(LocalRuntime(), store, tmp_path / "dist")
    cold = runner.run(job)
    manifest = store.resolve(cold.ref, touch=False)[1]
    incomplete = dataclasses.replace(
        manifest, files=tuple(e for e in manifest.files if "/fxgraph/" not in e.path)
    )
    assert len(incomplete.files) < len(manifest.files)
    with staged(job, "incomplete") as spec:
        warm = runner.run_pass(job, spec, preload=tar_chunks(incomplete, store), watch=True)
    result = verify_result(incomplete, cold.report, warm)
    assert result["by_kind"]["inductor-fxgraph"]["misses"] >= 1, result
    assert result["misses"] >= 1 and result["hit_rate"] < 1.0
    assert any(name.startswith("inductor-fxgraph:") for name in result["missed"])


def test_local_runtime_keeps_inductors_triton_kernels_where_a_deployment_looks(
    tmp_path: Path,
) -> None:
    """Inductor puts its Triton kernels under its own root only while TRITON_CACHE_DIR is
    unset, as in a container or a deployment: the local runtime must leave it unset, or the
    kernels are recorded at Triton's root and a deployment from the bundle compiles them again."""
    pytest.importorskip("torch", reason="the helper asks torch where Inductor puts Triton")
    pytest.importorskip("triton", reason="Triton is not installed")
    import getpass
    import subprocess
    import sys
    import tempfile

    from conftest import HELPERS

    script = [sys.executable, str(HELPERS / "inductor_triton.py")]
    if os.environ.get("TRITON_CACHE_DIR"):
        pytest.skip("TRITON_CACHE_DIR is set here: Inductor would use it in a deployment too")
    job = write_job(
        tmp_path, None, image=None, engine={"kind": "command", "command": script}, warmup=None
    )
    done = warmer(
        "run", str(job), "--runtime", "local", "--out", str(tmp_path / "dist"), "--json",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["jobs"]
    manifest = read_manifest(Path(result["bundle"]))
    inductor = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    kernels = [e.path for e in manifest.files if e.kind == "inductor" and "/triton/0/" in e.path]
    assert kernels and all(p.startswith(inductor + "/triton/0/") for p in kernels), [
        e.path for e in manifest.files
    ]

    # a deployment: the bundle restored, nothing set, so Inductor looks at its default place
    fresh = tmp_path / "fresh"
    restored = warmer("restore", result["bundle"], "--root", str(fresh), tmp_path=tmp_path)
    assert restored.returncode == 0, restored.stderr
    deployed = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    deployed["TMPDIR"] = str(fresh) + tempfile.gettempdir()
    again = subprocess.run(script, capture_output=True, text=True, env=deployed, check=True)
    assert json.loads(again.stdout.splitlines()[-1])["hits"] == [True]
