"""The container arguments the docker runtime builds, as data (no engine needed).

The kwargs go through docker-py's own translation into the engine's API body (container
config + host config), so these tests check what the engine would receive.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from warmer.errors import UsageError
from warmer.runtimes import available_runtime, get_runtime
from warmer.runtimes.base import (
    AGENT_PACKAGE_TARGET,
    HOST_LABEL,
    MANAGED_LABEL,
    PID_LABEL,
    ContainerSpec,
    Mount,
    masker,
    open_chunks,
    read_secrets,
)
from warmer.runtimes.docker import container_kwargs, podman_base_url

docker_types = pytest.importorskip("docker.types", reason="the docker SDK is not installed")
API_VERSION = "1.43"
SECRET = "hf_s3cr3t-token-value"


def make_spec(**changes: Any) -> ContainerSpec:
    fields: dict[str, Any] = {
        "image": "warmer-cpu:py3.11-torch2.13.0",
        "command": ["python3", "-m", "warmer.agent", "run", "--job", "/opt/warmer-job/job.json"],
        "env": {"PYTHONPATH": "/opt/warmer", "HF_HOME": "/models"},
        "secret_names": ("HF_TOKEN",),
        "mounts": (
            Mount("/src/warmer", AGENT_PACKAGE_TARGET),
            Mount("/data/models", "/models", read_only=False),
        ),
        "labels": {"warmer.job": "tiny", "warmer.run": "abc123"},
        "backend": "cpu",
        "gpus": "all",
    }
    fields.update(changes)
    return ContainerSpec(**fields)


def engine_body(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(container config, host config) exactly as docker-py sends them to the engine."""
    from docker.models.containers import _create_container_args

    args = _create_container_args({**kwargs, "version": API_VERSION})
    config = dict(docker_types.ContainerConfig(API_VERSION, **args))
    return config, dict(config.pop("HostConfig"))


def test_cpu_container_is_unprivileged_with_init_and_no_devices() -> None:
    config, host = engine_body(container_kwargs(make_spec(), {"HF_TOKEN": SECRET}))
    assert not host.get("Privileged")
    assert host["Init"] is True
    assert host["NetworkMode"] == "none"
    assert host["SecurityOpt"] == ["no-new-privileges"]
    for absent in ("DeviceRequests", "Devices", "GroupAdd", "CapAdd", "ShmSize"):
        assert absent not in host
    assert config["Image"] == "warmer-cpu:py3.11-torch2.13.0"
    assert config["Entrypoint"] == [""]  # the image's ENTRYPOINT must not wrap the agent
    assert config["Tty"] is False and config["OpenStdin"] is False
    assert config["User"] is None and config["WorkingDir"] is None


def test_secret_goes_in_env_only() -> None:
    config, host = engine_body(container_kwargs(make_spec(), {"HF_TOKEN": SECRET}))
    assert f"HF_TOKEN={SECRET}" in config["Env"]
    assert "HF_HOME=/models" in config["Env"]
    others = {key: value for key, value in config.items() if key != "Env"}
    assert SECRET not in repr(others) + repr(host)
    assert SECRET not in " ".join(config["Cmd"])


def test_labels_mark_the_container_as_managed_by_this_process() -> None:
    config, _ = engine_body(container_kwargs(make_spec(), {}))
    labels = config["Labels"]
    assert labels["warmer.job"] == "tiny" and labels["warmer.run"] == "abc123"
    assert labels[MANAGED_LABEL] == "1"
    assert labels[PID_LABEL] == str(os.getpid())
    assert labels[HOST_LABEL]


def test_mounts_are_binds_read_only_unless_asked() -> None:
    _, host = engine_body(container_kwargs(make_spec(), {}))
    mounts = {m["Target"]: m for m in host["Mounts"]}
    assert mounts[AGENT_PACKAGE_TARGET]["Source"] == "/src/warmer"
    assert mounts[AGENT_PACKAGE_TARGET]["ReadOnly"] is True
    assert mounts["/models"]["ReadOnly"] is False
    assert {m["Type"] for m in host["Mounts"]} == {"bind"}


def test_user_workdir_shm_and_network_pass_through() -> None:
    spec = make_spec(user="1000:1000", workdir="/work", shm_size=2 << 30, network="host")
    config, host = engine_body(container_kwargs(spec, {}))
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/work"
    assert host["ShmSize"] == 2 << 30
    assert host["NetworkMode"] == "host"


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [("all", -1, []), (2, 2, []), ([0, 3], 0, ["0", "3"]), ("1,2", 0, ["1", "2"])],
)
def test_cuda_requests_gpus(gpus: Any, count: int, ids: list[str]) -> None:
    _, host = engine_body(container_kwargs(make_spec(backend="cuda", gpus=gpus), {}))
    (request,) = host["DeviceRequests"]
    assert request["Count"] == count
    assert request["DeviceIDs"] == ids
    assert request["Capabilities"] == [["gpu"]]
    assert not host.get("Privileged")
    assert "Devices" not in host and "GroupAdd" not in host


@pytest.mark.parametrize(
    ("gpus", "names"),
    [
        ("all", ["nvidia.com/gpu=all"]),
        (2, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]),
        ([3], ["nvidia.com/gpu=3"]),
    ],
)
def test_cuda_for_podman_asks_for_cdi_devices(gpus: Any, names: list[str]) -> None:
    spec = make_spec(backend="cuda", gpus=gpus)
    _, host = engine_body(container_kwargs(spec, {}, cdi_gpus=True))
    (request,) = host["DeviceRequests"]
    assert request["Driver"] == "cdi"
    assert request["DeviceIDs"] == names


def test_rocm_gets_device_nodes_and_groups_least_privilege() -> None:
    config, host = engine_body(container_kwargs(make_spec(backend="rocm"), {}))
    assert [
        (d["PathOnHost"], d["PathInContainer"], d["CgroupPermissions"]) for d in host["Devices"]
    ] == [
        ("/dev/kfd", "/dev/kfd", "rwm"),
        ("/dev/dri", "/dev/dri", "rwm"),
    ]
    assert host["GroupAdd"] == ["video", "render"]
    assert not host.get("Privileged")
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert "DeviceRequests" not in host and "CapAdd" not in host
    assert not any(e.startswith("HIP_VISIBLE_DEVICES=") for e in config["Env"])


def test_rocm_device_ids_narrow_hip_and_groups_can_be_numeric() -> None:
    spec = make_spec(backend="rocm", gpus=[1, 2])
    config, host = engine_body(container_kwargs(spec, {}, device_groups=["44", "109"]))
    assert "HIP_VISIBLE_DEVICES=1,2" in config["Env"]
    assert host["GroupAdd"] == ["44", "109"]
    spec = make_spec(backend="rocm", gpus=2, env={"HIP_VISIBLE_DEVICES": "5"})
    config, _ = engine_body(container_kwargs(spec, {}))
    assert "HIP_VISIBLE_DEVICES=5" in config["Env"]


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="tpu"):
        container_kwargs(make_spec(backend="tpu"), {})


def test_secrets_read_from_environment_and_missing_ones_named() -> None:
    assert read_secrets(["A"], {"A": "1", "B": "2"}) == {"A": "1"}
    with pytest.raises(UsageError, match="HF_TOKEN"):
        read_secrets(["A", "HF_TOKEN"], {"A": "1"})


def test_masker_hides_every_value_longest_first() -> None:
    mask = masker(["abcd", "abcdefgh", ""])
    assert mask("x abcdefgh y abcd z") == "x *** y *** z"
    assert mask("nothing here") == "nothing here"


def test_masker_hides_every_line_of_a_multi_line_value() -> None:
    """Output arrives line by line, so a multi-line value never shows whole in one line."""
    key = "-----BEGIN KEY-----\r\nMIIEvQIBADANBg\nkqhkiG9w0BAQEF\n-----END KEY-----\n"
    mask = masker([key])
    printed = f"key: {key}done".splitlines()
    masked = [mask(line.rstrip("\r")) for line in printed]
    assert masked == ["key: ***", "***", "***", "***", "done"]


def test_masker_leaves_values_too_short_to_mask() -> None:
    """A 3-character secret would mask ordinary text everywhere; `warmer run` warns instead."""
    assert masker(["abc"])("abc abcd") == "abc abcd"


def test_open_chunks_reads_a_tar_split_at_odd_places() -> None:
    payload = os.urandom(300_000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("dir/blob.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    chunks = [data[i : i + 7919] for i in range(0, len(data), 7919)]
    with tarfile.open(fileobj=open_chunks(chunks), mode="r|") as tar:
        member = tar.next()
        assert member is not None and member.name == "dir/blob.bin"
        reader = tar.extractfile(member)
        assert reader is not None and reader.read() == payload


def test_podman_socket_resolution(tmp_path: Path) -> None:
    assert podman_base_url({"WARMER_PODMAN_SOCKET": "/x/p.sock"}) == "unix:///x/p.sock"
    assert podman_base_url({"CONTAINER_HOST": "tcp://h:8080"}) == "tcp://h:8080"
    rootless = tmp_path / "podman" / "podman.sock"
    rootless.parent.mkdir()
    rootless.touch()
    assert podman_base_url({"XDG_RUNTIME_DIR": str(tmp_path)}) == f"unix://{rootless}"
    if not os.path.exists("/run/podman/podman.sock"):
        with pytest.raises(UsageError, match="podman system service"):
            podman_base_url({"XDG_RUNTIME_DIR": str(tmp_path / "none")})


def test_unreachable_engines_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"unix://{tmp_path}/no.sock"
    monkeypatch.setenv("DOCKER_HOST", nowhere)
    with pytest.raises(UsageError, match=r"no Docker engine at .*--runtime local"):
        get_runtime("docker")
    monkeypatch.setenv("WARMER_PODMAN_SOCKET", nowhere)
    with pytest.raises(UsageError, match="no Podman service at"):
        get_runtime("podman")
    assert available_runtime() == "local"
    with pytest.raises(UsageError, match="unknown runtime"):
        get_runtime("kubernetes")
