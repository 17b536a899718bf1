"""Kubernetes for the warm side: a warm job as a ConfigMap and a Job on a GPU pool (`warmer k8s`).

The pod does what `Runner` does with the docker runtime, in three steps:

1. init container `agent` (the warmer image) copies warmer's stdlib-only agent package into
   an emptyDir at /opt/warmer, as the docker runtime mounts it;
2. init container `warm-up` (the job's image) runs the agent on the job (from the
   ConfigMap, at /opt/warmer-job/job.json) with the GPUs it asks for, its env, and every
   cache root pointed at an emptyDir under /warm;
3. container `push` (`--push-image`: an image of the same environment with warmer installed,
   by default the job's image, so the env key it records is the warm-up's) saves /warm as a
   snapshot of the job's name and pushes it to REGISTRY/PREFIX/<job>:<env tag>, from the pod.

A failed warm-up fails the pod before anything is saved: nothing half-made is pushed. GPUs
are a limit of `nvidia.com/gpu` (CUDA) or `amd.com/gpu` (ROCm); `--node-selector` picks the
pool. Registry credentials come from a Docker config Secret (`--registry-secret`), mounted
where warmer's registry client reads it ($DOCKER_CONFIG).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from warmer.runner import JOB_TARGET
from warmer.runtimes.base import AGENT_PACKAGE_TARGET
from warmer.spec import Job

GPU_RESOURCE = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}
WARM = "/warm"
#: every cache root pointed under /warm, so the push step finds them at the same paths
CACHE_ENV = {
    "TRITON_CACHE_DIR": f"{WARM}/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{WARM}/inductor",
    "VLLM_CACHE_ROOT": f"{WARM}/vllm",
    "CUDA_CACHE_PATH": f"{WARM}/nv",
    "TORCH_EXTENSIONS_DIR": f"{WARM}/torch_extensions",
}
_COPY_AGENT = (
    "import os, shutil, warmer; shutil.copytree(os.path.join(os.path.dirname(warmer.__file__), "
    f"'agent'), '{AGENT_PACKAGE_TARGET}/agent'); "
    f"open('{AGENT_PACKAGE_TARGET}/__init__.py', 'w').close()"
)


def _name(job: Job) -> str:
    """A DNS-1123 name for the job's objects."""
    cleaned = "".join(c if c.isalnum() else "-" for c in job.name.lower()).strip("-")
    return f"warm-{cleaned}"[:63].rstrip("-")


def manifests(
    job: Job,
    *,
    registry: str,
    warmer_image: str,
    push_image: str | None = None,
    namespace: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    registry_secret: str | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap holding the job and the Job running it (see the module doc)."""
    import json

    name = _name(job)
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "warmer"}}
    if namespace:
        meta["namespace"] = namespace
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"job.json": json.dumps(job.to_manifest(), sort_keys=True)},
    }
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in {**job.env, **CACHE_ENV}.items()
    ]
    env += [
        {"name": secret, "valueFrom": {"secretKeyRef": {"name": name, "key": secret}}}
        for secret in job.secrets
    ]
    mounts = [
        {"name": "agent", "mountPath": "/opt/warmer", "readOnly": True},
        {"name": "job", "mountPath": JOB_TARGET, "readOnly": True},
        {"name": "warm", "mountPath": WARM},
    ]
    resources: dict[str, Any] = {}
    if job.backend in GPU_RESOURCE:
        count = (
            len(job.gpus) if isinstance(job.gpus, list) else 1 if job.gpus == "all" else job.gpus
        )
        resources = {"limits": {GPU_RESOURCE[job.backend]: str(count)}}
    warm_up: dict[str, Any] = {
        "name": "warm-up",
        "image": job.image,
        "command": ["python3", "-m", "warmer.agent", "run", "--job", f"{JOB_TARGET}/job.json"],
        "env": [{"name": "PYTHONPATH", "value": "/opt/warmer"}, *env],
        "volumeMounts": mounts,
        "resources": resources,
    }
    if job.workdir:
        warm_up["workingDir"] = job.workdir
    push_env = [
        {"name": k, "value": v} for k, v in {**CACHE_ENV, "WARMER_REGISTRY": registry}.items()
    ]
    push_mounts = [{"name": "warm", "mountPath": WARM, "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "agent", "emptyDir": {}},
        {"name": "job", "configMap": {"name": name}},
        {"name": "warm", "emptyDir": {}},
    ]
    if registry_secret:
        push_env.append({"name": "DOCKER_CONFIG", "value": "/docker"})
        push_mounts.append({"name": "docker-config", "mountPath": "/docker", "readOnly": True})
        volumes.append(
            {
                "name": "docker-config",
                "secret": {
                    "secretName": registry_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
    script = (
        f"ref=$(warmer save --name {job.name} --out /tmp --json | python3 -c "
        "\"import json,sys; print(json.load(sys.stdin)['ref'])\") && "
        'warmer push "$ref"'
    )
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [
            {
                "name": "agent",
                "image": warmer_image,
                "command": ["python3", "-c", _COPY_AGENT],
                "volumeMounts": [{"name": "agent", "mountPath": "/opt/warmer"}],
            },
            warm_up,
        ],
        "containers": [
            {
                "name": "push",
                "image": push_image or job.image,
                "command": ["sh", "-c", script],
                "env": push_env,
                "volumeMounts": push_mounts,
            }
        ],
        "volumes": volumes,
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    kube_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(job.timeout) + 600,
            "template": {"metadata": {"labels": meta["labels"]}, "spec": spec},
        },
    }
    return [config_map, kube_job]
