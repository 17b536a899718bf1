"""Ray placement (`warmer run --ray`): what a job asks of a node without a cluster, then real
runs on the loopback cluster of `.ci/ray-up` (head with a fake GPU and warmer-backend-cuda,
two workers with warmer-backend-cpu), jobs running in real containers of the CPU image.

$WARMER_TEST_RAY is the head's address and $WARMER_TEST_RAY_STATE the directory of the
nodes' pid files (source the ray.env that .ci/ray-up writes); without them the `ray` tests
skip. The node the kill test stops is its own, started with .ci/ray-node.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import IMAGE, REPO
from helpers.run import warmer
from test_fanout import output, start_warmer, wait_for

from warmer.cluster import check_placeable, needs
from warmer.oci import Reference
from warmer.spec import Job
from warmer.store import Store

RUN_LIMIT_S = 600
#: a warm-up of a second or two in a real container: one Triton kernel file
QUICK = "mkdir -p /root/.triton/cache/KEY && echo {name} > /root/.triton/cache/KEY/k.cubin"


def job(name: str, backend: str = "cpu", **fields: Any) -> Job:
    return Job.model_validate(
        {"name": name, "backend": backend, "engine": {"kind": "command", "command": ["true"]}}
        | fields
    )


def write_jobs(tmp_path: Path, *jobs: dict[str, Any]) -> Path:
    entries = [
        {
            "image": IMAGE,
            "backend": "cpu",
            "engine": {"kind": "command", "command": ["bash", "-c", QUICK.format(name=j["name"])]},
            "warmup": {},
            "timeout": "5m",
            **j,
        }
        for j in jobs
    ]
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "jobs": entries}))
    return path


# --- what a job asks for, and who could give it (no cluster) -------------------------------


def test_a_job_asks_its_backend_its_gpus_and_its_own_resources() -> None:
    assert needs(job("c")) == (0.0, {"warmer-backend-cpu": 0.001})
    assert needs(job("g", "cuda")) == (1.0, {"warmer-backend-cuda": 0.001})
    assert needs(job("g", "cuda", gpus=[0, 3])) == (2.0, {"warmer-backend-cuda": 0.001})
    assert needs(job("r", "rocm", gpus=4, resources={"warmer-arch-gfx942": 1})) == (
        4.0,
        {"warmer-backend-rocm": 0.001, "warmer-arch-gfx942": 1.0},
    )


def test_jobs_no_live_node_could_take_are_named_before_anything_starts() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0, "warmer-backend-cpu": 1.0}},
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "warmer-backend-cuda": 1.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0, "warmer-backend-rocm": 1.0}},
    ]
    check_placeable([job("c"), job("g", "cuda")], nodes)
    with pytest.raises(Exception, match=r"need: big \(CPU: 1, GPU: 2, warmer-backend-cuda") as e:
        check_placeable([job("c"), job("big", "cuda", gpus=2), job("r", "rocm")], nodes)
    assert "r (CPU: 1, GPU: 1, warmer-backend-rocm: 0.001)" in str(e.value)
    assert "ray start --resources" in str(e.value)


def test_a_resource_name_and_amount_are_checked() -> None:
    with pytest.raises(ValueError, match="'bad name' is not a resource name"):
        job("x", resources={"bad name": 1})
    with pytest.raises(ValueError, match="the amount must be more than 0"):
        job("x", resources={"warmer-arch-sm90": 0})
    assert "resources" not in job("x").to_manifest()  # stored manifests stay as they were


def test_ray_and_hosts_together_exit_2(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, {"name": "a"})
    done = warmer("run", str(jobs), "--ray", "127.0.0.1:1", "--hosts", "all", tmp_path=tmp_path)
    assert done.returncode == 2 and "--ray and --hosts" in done.stderr, done.stderr


# --- the loopback cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> str:
    address = os.environ.get("WARMER_TEST_RAY")
    if not address:
        pytest.skip("no Ray cluster: WARMER_TEST_RAY is not set (run .ci/ray-up, source ray.env)")
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'warmer[ray]')")
    from warmer.runtimes.docker import engine_answers

    if not engine_answers():
        pytest.skip("no Docker engine reachable for the nodes' jobs (run .ci/engine-up)")
    return address


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:  # gone, or not ours to read
        pass
    return inodes


def _listening() -> dict[str, str]:
    """inode -> local address of every listening TCP socket of this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[fields[9]] = fields[1]
    return found


def _loopback(hex_address: str) -> bool:
    """Whether a /proc/net/tcp{,6} local address (hex, 32-bit words in host order) is
    loopback, an IPv4 address mapped into IPv6 (::ffff:127.0.0.1) included."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.mark.ray
def test_every_ray_process_listens_on_loopback_only(cluster: str) -> None:
    state = Path(os.environ["WARMER_TEST_RAY_STATE"])
    groups = {int(p.read_text()) for p in state.glob("*.pid")}
    pids = [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _pgid(int(entry)) in groups
    ]
    listening = _listening()
    seen = []
    for pid in pids:
        for inode in _socket_inodes(pid) & set(listening):
            seen.append((pid, listening[inode]))
    assert len(seen) >= 6, seen  # gcs_server, raylets, object managers, agents: it did look
    assert [s for s in seen if not _loopback(s[1])] == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.ray
@pytest.mark.docker
def test_jobs_land_on_nodes_that_declare_their_backend_and_come_back_through_the_store(
    cluster: str, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path, {"name": "ray-a"}, {"name": "ray-b"}, {"name": "ray-c"})
    out = tmp_path / "dist"
    done = warmer(
        "run", str(jobs), "--ray", cluster, "--out", str(out), "--json", tmp_path=tmp_path
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    entries = {e["name"]: e for e in document["jobs"]}
    assert all(e["ok"] for e in entries.values()), entries
    # CPU jobs only on the workers that declare warmer-backend-cpu, never on the head
    assert {e["host"] for e in entries.values()} <= {"worker-a", "worker-b"}
    hosts = {h["name"]: h for h in document["hosts"]}
    assert sorted(n for h in hosts.values() for n in h["jobs"]) == ["ray-a", "ray-b", "ray-c"]
    assert all(h["failed"] == [] and h["seconds"] > 0 for h in hosts.values())
    with Store(tmp_path / "store") as store:
        assert sorted(i.ref for i in store.list()) == sorted(e["ref"] for e in entries.values())
    bundles = sorted(p.name.split("__")[0] for p in out.iterdir())
    assert bundles == ["ray-a", "ray-b", "ray-c"]  # and nothing half-written beside them
    assert re.search(r"^\[ray-a@worker-[ab]\] 127\.0\.0\.1 node ", done.stderr, re.MULTILINE)


@pytest.mark.ray
def test_a_job_no_node_takes_exits_2_before_anything_starts(cluster: str, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, {"name": "c"}, {"name": "r", "backend": "rocm"})
    done = warmer("run", str(jobs), "--ray", cluster, "--json", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "r (CPU: 1, GPU: 1, warmer-backend-rocm: 0.001)" in json.loads(done.stdout)["error"]
    assert not (tmp_path / "store").exists() or Store(tmp_path / "store").list() == []


@pytest.fixture
def doomed_node(cluster: str, tmp_path: Path) -> Iterator[int]:
    """A node of this test's own (the only one offering `warmer-test-doomed`); yields its
    process group id. Stopped by that id afterwards, whatever the test did to it."""
    log = tmp_path / "doomed.log"
    with open(log, "w") as sink:
        node = subprocess.Popen(
            [
                sys.executable,
                str(REPO / ".ci" / "ray-node"),
                "doomed",
                "--address",
                cluster,
                "--resources",
                # 1 CPU: once the doomed job holds it (submitted first, and only this node
                # takes it), no other job fits here
                json.dumps({"warmer-backend-cpu": 1, "warmer-test-doomed": 1}),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        deadline = time.monotonic() + 120
        while "node doomed up" not in log.read_text():
            assert node.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield node.pid
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(node.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)
        node.wait(timeout=30)
        _remove_containers("doomed")


def _remove_containers(job_name: str) -> None:
    """The container of a job whose node was killed outlives it (its worker could not remove
    it); the next run's sweep would, this test does it at once."""
    from warmer.runtimes.docker import DockerRuntime

    client = DockerRuntime().client
    found = client.api.containers(all=True, filters={"label": f"warmer.job={job_name}"})
    for container in found:
        client.api.remove_container(container["Id"], force=True)


@pytest.mark.ray
@pytest.mark.docker
def test_a_node_killed_mid_run_fails_only_its_job_and_nothing_of_it_is_published(
    cluster: str, doomed_node: int, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        {
            "name": "doomed",
            "engine": {"kind": "command", "command": ["bash", "-c", "echo on-doomed; sleep 300"]},
            "resources": {"warmer-test-doomed": 1},
        },
        {"name": "ray-ok", "resources": {"warmer-ci-worker": 0.001}},  # never the doomed node
    )
    out = tmp_path / "dist"
    process = start_warmer(
        tmp_path, "run", str(jobs), "--ray", cluster, "--out", str(out), "--json"
    )
    streamed = re.compile(r"^\[doomed@doomed\] \| on-doomed$", re.MULTILINE)
    wait_for(
        "the doomed node's job streaming",
        lambda: bool(streamed.search(output(tmp_path)[1])),
        process,
    )
    os.killpg(doomed_node, signal.SIGKILL)
    assert process.wait(timeout=RUN_LIMIT_S) == 3, output(tmp_path)[1]
    stdout, stderr = output(tmp_path)
    assert stdout.startswith("{"), stdout[:3000]
    entries = {e["name"]: e for e in json.loads(stdout)["jobs"]}
    assert entries["ray-ok"]["ok"] and entries["ray-ok"]["host"] in ("worker-a", "worker-b")
    assert not entries["doomed"]["ok"] and entries["doomed"]["host"] == "doomed"
    assert entries["doomed"]["error"].startswith("node doomed: "), entries["doomed"]
    with Store(tmp_path / "store") as store:
        assert [i.name for i in store.list()] == ["ray-ok"]
    assert [p.name.split("__")[0] for p in out.iterdir()] == ["ray-ok"]
    assert "[doomed@doomed] FAILED: node doomed:" in stderr


@pytest.mark.ray
@pytest.mark.docker
@pytest.mark.registry
def test_a_bundle_over_the_inline_limit_is_pushed_from_its_node(
    cluster: str, tmp_path: Path
) -> None:
    registry = os.environ.get("WARMER_TEST_REGISTRY")
    if not registry:
        pytest.skip("no OCI registry: WARMER_TEST_REGISTRY is not set (run .ci/registry-up)")
    repo = f"{registry}/ray-{tmp_path.name.lower()}"
    jobs = write_jobs(tmp_path, {"name": "ray-big"})
    done = warmer(
        "run", str(jobs), "--ray", cluster, "--push", "--registry", repo,
        "--out", str(tmp_path / "dist"), "--json",
        tmp_path=tmp_path, env={"WARMER_RAY_INLINE_MAX": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)["jobs"][0]
    pushed = Reference.parse(entry["push"]["reference"])
    assert pushed.repository.endswith("/ray-big") and entry["push"]["bytes_sent"] > 0
    with Store(tmp_path / "store") as store:  # pulled back from the registry, verified
        assert [i.ref for i in store.list()] == [entry["ref"]]
    assert "pushed" in done.stderr
