"""Ray placement: wall time of N jobs on 1, 2 and 3 nodes, and warmer's overhead per job on
Ray against a plain `warmer run` on the same engine, printed side by side from one run.

    WARMER_TEST_RAY=127.0.0.1:6390 python bench/ray.py [N]     (after .ci/ray-up)

It adds three nodes of its own to that cluster (.ci/ray-node, 1 CPU each) declaring
`warmer-bench-1..3` so that the jobs of the k-node round land only on the first k of them;
the jobs are real containers of the CPU image writing one Triton kernel file (what is
measured is placement and bringing bundles back, not compiling). The nodes are stopped by
their process groups at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
IMAGE = "warmer-cpu:py3.11-torch2.13.0"
WARMER = (sys.executable, "-c", "from warmer.cli import main; main()")
QUICK = "mkdir -p /root/.triton/cache/KEY && echo {name} > /root/.triton/cache/KEY/k.cubin"


def jobs_file(directory: Path, n: int, resources: dict[str, float] | None) -> Path:
    entries = [
        {
            "name": f"bench-{i}",
            "image": IMAGE,
            "backend": "cpu",
            "engine": {"kind": "command", "command": ["bash", "-c", QUICK.format(name=i)]},
            "warmup": {},
            **({"resources": resources} if resources else {}),
        }
        for i in range(n)
    ]
    path = directory / f"jobs-{len(list(directory.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "jobs": entries}))
    return path


def timed_run(directory: Path, jobs: Path, *args: str) -> float:
    store = tempfile.mkdtemp(dir=directory)
    env = {**os.environ, "WARMER_STORE": store, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [*WARMER, "run", str(jobs), "--out", f"{store}/dist", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
    assert all(entry["ok"] for entry in json.loads(done.stdout)["jobs"])
    return seconds


def start_nodes(address: str, directory: Path) -> list[subprocess.Popen[bytes]]:
    nodes = []
    for k in (1, 2, 3):
        resources = {"warmer-backend-cpu": 1, **{f"warmer-bench-{j}": 1 for j in range(k, 4)}}
        log = directory / f"node-{k}.log"
        nodes.append(
            subprocess.Popen(
                [sys.executable, str(REPO / ".ci" / "ray-node"), f"bench-{k}", "--address",
                 address, "--resources", json.dumps(resources)],
                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        )  # fmt: skip
        while f"node bench-{k} up" not in log.read_text():
            if nodes[-1].poll() is not None:
                sys.exit(log.read_text())
            time.sleep(0.5)
    return nodes


def main() -> None:
    address = os.environ.get("WARMER_TEST_RAY")
    if not address:
        sys.exit("set WARMER_TEST_RAY (run .ci/ray-up and source its ray.env)")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    with tempfile.TemporaryDirectory(prefix="warmer-bench-ray-") as tmp:
        directory = Path(tmp)
        nodes = start_nodes(address, directory)
        try:
            plain = timed_run(directory, jobs_file(directory, n, None), "--runtime", "docker")
            walls = {
                k: timed_run(
                    directory, jobs_file(directory, n, {f"warmer-bench-{k}": 1}), "--ray", address
                )
                for k in (1, 2, 3)
            }
        finally:
            for node in nodes:
                os.killpg(node.pid, signal.SIGTERM)
            for node in nodes:
                try:
                    node.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
    print(f"{n} jobs (one container each, one Triton file), machine: {os.cpu_count()} cores")
    print(f"{'placement':<22}{'wall':>9}{'per job':>10}{'vs plain':>10}{'speed-up':>10}")
    print(f"{'plain run (docker)':<22}{plain:>8.1f}s{plain / n:>9.2f}s{1.0:>10.2f}{'':>10}")
    for k, wall in walls.items():
        print(
            f"{f'--ray, {k} node(s)':<22}{wall:>8.1f}s{wall / n:>9.2f}s"
            f"{wall / plain:>10.2f}{walls[1] / wall:>9.2f}x"
        )
    print(f"warmer's overhead per job on Ray (1 node vs plain): {(walls[1] - plain) / n:+.2f}s")


if __name__ == "__main__":
    main()
