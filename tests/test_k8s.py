"""`warmer k8s`: a warm job as a Kubernetes ConfigMap + Job, checked by the API's own schemas
(`kubernetes-validate --strict`: a misspelt field fails), and run on a real cluster when
KUBECONFIG names one (skipped otherwise: no cluster can run on the CI machines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import IMAGE
from helpers.run import WRITE_KERNEL, warmer

SUITE_JOBS = {
    "version": 1,
    "jobs": [
        {
            "name": "Llama_8B.h100",
            "image": "vllm/vllm-openai:v0.32.0",
            "backend": "cuda",
            "gpus": [0, 1],
            "engine": {"kind": "vllm", "model": "meta-llama/Llama-3.1-8B"},
            "env": {"HF_HUB_OFFLINE": "1"},
            "secrets": ["HF_TOKEN"],
        },
        {
            "name": "cpu-small",
            "image": IMAGE,
            "backend": "cpu",
            "engine": {"kind": "command", "command": ["true"]},
        },
    ],
}


def emit(tmp_path: Path, *extra: str, jobs: dict[str, Any] = SUITE_JOBS) -> list[dict[str, Any]]:
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs))
    done = warmer(
        "k8s", str(path), "--registry", "reg.example.com/warm", "--warmer-image",
        "ghcr.io/example/warmer:0.1", *extra, tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def validate(tmp_path: Path, documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_manifests_pass_strict_validation_and_ask_for_the_gpus_and_pool(
    tmp_path: Path,
) -> None:
    documents = emit(
        tmp_path, "--node-selector", "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        "--registry-secret", "regcred", "--namespace", "warm",
    )  # fmt: skip
    checked = validate(tmp_path, documents)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("ConfigMap", "warm-llama-8b-h100"),
        ("Job", "warm-llama-8b-h100"),
        ("ConfigMap", "warm-cpu-small"),
        ("Job", "warm-cpu-small"),
    ]
    pod = documents[1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    agent, warm_up = pod["initContainers"]
    assert agent["image"] == "ghcr.io/example/warmer:0.1"
    assert warm_up["image"] == "vllm/vllm-openai:v0.32.0"
    assert warm_up["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    env = {e["name"]: e for e in warm_up["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "warm-llama-8b-h100",
        "key": "HF_TOKEN",
    }
    assert env["VLLM_CACHE_ROOT"]["value"] == "/warm/vllm"
    (push,) = pod["containers"]
    assert {e["name"]: e.get("value") for e in push["env"]}["WARMER_REGISTRY"] == (
        "reg.example.com/warm"
    )
    cpu_warm_up = documents[3]["spec"]["template"]["spec"]["initContainers"][1]
    assert cpu_warm_up["resources"] == {}  # a CPU job asks for no GPU


def test_strict_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    documents = emit(tmp_path)
    pod = documents[1]["spec"]["template"]["spec"]
    pod["initContainer"] = pod.pop("initContainers")
    checked = validate(tmp_path, documents)
    assert checked.returncode != 0 and "initContainer" in checked.stdout + checked.stderr


def test_without_a_registry_it_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(SUITE_JOBS))
    done = warmer("k8s", str(path), "--warmer-image", "w", tmp_path=tmp_path,
                  env={"WARMER_REGISTRY": ""})  # fmt: skip
    assert done.returncode == 2 and "needs a registry" in done.stderr


def test_a_warm_job_runs_on_a_real_cluster(tmp_path: Path) -> None:
    """Runs the CPU job's Job on the cluster KUBECONFIG names; its pod must finish (warm-up,
    save and push). Needs WARMER_TEST_K8S_REGISTRY (reachable from the pods) and
    WARMER_TEST_K8S_WARMER_IMAGE (an image with warmer installed, also used to push)."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no Kubernetes cluster: KUBECONFIG is not set")
    kubectl = shutil.which("kubectl")
    registry = os.environ.get("WARMER_TEST_K8S_REGISTRY")
    image = os.environ.get("WARMER_TEST_K8S_WARMER_IMAGE")
    if not (kubectl and registry and image):
        pytest.skip("needs kubectl, WARMER_TEST_K8S_REGISTRY and WARMER_TEST_K8S_WARMER_IMAGE")
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    script = WRITE_KERNEL
    jobs = {"version": 1, "jobs": [{"name": name, "image": image, "backend": "cpu",
            "engine": {"kind": "command", "command": ["bash", "-c", script]}}]}  # fmt: skip
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs))
    done = warmer("k8s", str(path), "--registry", registry, "--warmer-image", image,
                  tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "k.yaml"
    manifest.write_text(done.stdout)
    subprocess.run([kubectl, "apply", "-f", str(manifest)], check=True)
    try:
        waited = subprocess.run(
            [kubectl, "wait", "--for=condition=complete", f"job/warm-{name}", "--timeout=600s"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stderr
    finally:
        subprocess.run([kubectl, "delete", "-f", str(manifest), "--wait=false"], check=False)
