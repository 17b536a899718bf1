"""The deployment recipes in deploy/: Kubernetes manifests valid for a stated Kubernetes version
(`kubernetes-validate --strict`) and applied to a real cluster when one is configured, the init
container's command run for real, the CI example checked against GitHub's workflow schema, and
the images they name kept in step with the jobs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, saved_triton
from helpers.registry import REGISTRY, needs_registry, synthetic

from warmer.caches import Facts, default_roots, select
from warmer.spec import load_jobs
from warmer.store import Store

KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
WORKFLOW = REPO / "deploy" / "github-actions" / "warm.yaml"
#: The oldest Kubernetes the manifests are for (image volumes are beta from 1.33), and the
#: newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(name: str) -> dict[str, Any]:
    """The pod template of the Deployment `name` in deploy/kubernetes/."""
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                spec: dict[str, Any] = doc["spec"]["template"]["spec"]
                return spec
    raise AssertionError(f"no Deployment {name} in {KUBERNETES}")


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def validate(*paths: Path, version: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_stated_kubernetes(version: str) -> None:
    assert len(MANIFESTS) >= 2
    done = validate(*MANIFESTS, version=version)
    assert done.returncode == 0, done.stdout + done.stderr
    resources = sum(len(documents(path)) for path in MANIFESTS)
    assert done.stdout.count(" passed for resource ") == resources, done.stdout


def test_strict_validation_refuses_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (KUBERNETES / "vllm-init-container.yaml").read_text()
    broken.write_text(text.replace("volumeMounts:", "volumeMount:", 1))
    done = validate(broken, version=KUBERNETES_VERSIONS[0])
    assert done.returncode != 0 and "volumeMount" in done.stdout + done.stderr


def test_the_init_container_fills_every_cache_root_the_server_reads() -> None:
    """The vLLM image runs as root: the roots of jobs/llama.yaml's cache kinds there are
    mounted, from the same volumes, in the init container and in the vLLM container."""
    job = load_jobs(REPO / "jobs" / "llama.yaml")[0]
    facts = Facts(environ={}, home="/root", tmpdir="/tmp", user="root")
    roots = {root.path for root in select(default_roots(facts), job.caches)}
    assert roots == {"/root/.cache/vllm", "/tmp/torchinductor_root", "/root/.triton/cache"}
    for name in ("vllm", "vllm-image-volume"):
        spec = pod_spec(name)
        [init] = spec["initContainers"]
        [server] = spec["containers"]
        assert server["image"] == job.image, name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for root in roots:
            volume = mounts(server).get(root)
            assert volume is not None and mounts(init).get(root) == volume, (name, root)
            assert "emptyDir" in volumes[volume], (name, root)  # writable, one per pod


def test_the_init_container_restores_the_matching_tag_and_starts_cold_on_exit_5() -> None:
    spec = pod_spec("vllm")
    [init] = spec["initContainers"]
    line = " ".join(init["args"])
    assert re.search(r'warmer restore "\$WARMER_SOURCE" --auto \|\| \[ \$\? -eq 5 \]', line)
    env = {item["name"] for item in init["env"]}
    assert {"WARMER_SOURCE", "WARMER_REGISTRY_USERNAME", "WARMER_REGISTRY_PASSWORD"} <= env
    # the probe of `--auto` must see the serving image's packages and its GPU
    assert init["resources"]["limits"] == spec["containers"][0]["resources"]["limits"]
    dockerfile = (REPO / "Dockerfile.cuda").read_text()
    assert f"FROM {spec['containers'][0]['image']}\n" in dockerfile


def init_line() -> str:
    [init] = pod_spec("vllm")["initContainers"]
    return " ".join(init["args"])


def run_init_line(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init container's command line, run by /bin/sh with this checkout's warmer."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        ["/bin/sh", "-c", init_line()],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            **env,
        },
    )


def test_the_init_line_stops_the_pod_when_the_registry_is_out_of_reach(tmp_path: Path) -> None:
    if shutil.which("warmer", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("no `warmer` script beside this Python (pip install -e .)")
    done = run_init_line(
        {"WARMER_SOURCE": "127.0.0.1:9/warm/llama", "WARMER_STORE": str(tmp_path / "store")}
    )
    assert done.returncode == 1, done.stderr
    assert "127.0.0.1:9" in done.stderr


@needs_registry
def test_the_init_line_restores_a_match_and_starts_cold_without_one(
    triton_cache: Path, tmp_path: Path
) -> None:
    if shutil.which("warmer", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("no `warmer` script beside this Python (pip install -e .)")
    from warmer.oci import Reference
    from warmer.registry import push

    repo = f"{REGISTRY}/test/init-{os.getpid()}"
    _bundle, manifest = saved_triton(triton_cache, tmp_path)
    with Store(tmp_path / "store") as store:
        foreign = synthetic(store, "llama", {"/x/y": 10}, torch="2.6.0+cu124")
        push(store, foreign, Reference.parse(f"{repo}:other"))
        cold = run_init_line({"WARMER_SOURCE": repo, "WARMER_STORE": str(tmp_path / "s1")})
        # warmer exits 5 (NothingToRestore, issue 16): the server starts cold
        assert cold.returncode == 0, cold.stderr
        assert not Path("/x/y").exists()  # the other environment's bundle stays out
        push(store, manifest.ref, Reference.parse(repo))
    shutil.rmtree(triton_cache)
    warm = run_init_line({"WARMER_SOURCE": repo, "WARMER_STORE": str(tmp_path / "s2")})
    assert warm.returncode == 0, warm.stderr
    assert sum(1 for p in triton_cache.rglob("*") if p.is_file()) == len(manifest.files)


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A Kubernetes API client for $KUBECONFIG; skipped, saying why, without one."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set: no cluster to dry-run the manifests against")
    kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed")
    client = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    try:
        yield client
    finally:
        client.close()


@pytest.mark.kubernetes
def test_a_real_cluster_accepts_every_manifest(cluster: Any) -> None:
    """Server-side apply, dry run: the API server's own validation and admission, nothing made."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(cluster)
    namespace = os.environ.get("WARMER_TEST_NAMESPACE", "default")
    for path in MANIFESTS:
        for doc in documents(path):
            resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            applied = resource.server_side_apply(
                body=doc,
                namespace=namespace,
                field_manager="warmer-tests",
                dry_run="All",
            )
            assert applied.metadata.name == doc["metadata"]["name"], path


def test_the_ci_example_is_a_valid_workflow_that_warms_checks_and_pushes() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if checker is None:
        pytest.skip("check-jsonschema is not installed (the dev extra)")
    done = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert not str(WORKFLOW.relative_to(REPO)).startswith(".github/")  # never runs here
    steps = workflow["jobs"]["warm"]["steps"]
    runs = [step.get("run", "") for step in steps]

    def first(command: str) -> int:
        return next(i for i, run in enumerate(runs) if command in run)

    assert first("warmer doctor") < first("warmer run ") < first("warmer check ")
    assert first("warmer check ") < first("warmer push ")
    assert "--verify" in runs[first("warmer run ")]
    job = load_jobs(REPO / "jobs" / "llama.yaml")[0]
    assert workflow["env"]["SERVING_IMAGE"] == job.image
    assert f"dist/{job.name}__" in runs[first("warmer check ")]
    assert "--image" in runs[first("warmer check ")]


def test_the_gpu_dockerfiles_build_on_the_vllm_of_the_jobs() -> None:
    image = load_jobs(REPO / "jobs" / "llama.yaml")[0].image
    assert image is not None
    version = image.rsplit(":", 1)[1]
    cuda = re.findall(r"^FROM (\S+)", (REPO / "Dockerfile.cuda").read_text(), re.MULTILINE)
    rocm = re.findall(r"^FROM (\S+)", (REPO / "Dockerfile.rocm").read_text(), re.MULTILINE)
    assert cuda == [image]
    assert rocm == [f"vllm/vllm-openai-rocm:{version}"]
