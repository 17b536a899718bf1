"""`warmer check` as a deploy gate, for real: the bundle of jobs/tiny-cpu.yaml against the
image that made it (hit), and against the same image with one key factor changed (miss,
naming the factor and its two values).

The changed image has the same torch version, so the environment key is the same: only the
key factor that Inductor really hashes (torch's sources, `torch_key()`) tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Engine
from helpers.run import warmer

pytestmark = pytest.mark.docker

#: One comment added to one of torch's sources: what a rebuilt or patched torch of the same
#: version looks like to Inductor's key.
PATCH = (
    "echo '# patched by warmer tests' >> "
    "\"$(python3 -c 'import importlib.util as u; "
    'print(u.find_spec("torch").submodule_search_locations[0])\')/_inductor/config.py"'
)


@pytest.fixture(scope="module")
def docker_engine(engine: Engine) -> Engine:
    if engine.runtime.name != "docker":
        pytest.skip("one engine is enough: the probe runs through the same runtime code")
    return engine


@pytest.fixture
def patched_image(docker_engine: Engine, run_id: str) -> Iterator[str]:
    """The CPU image with torch's sources changed (same version), committed from a container."""
    client = docker_engine.client
    container = client.containers.run(
        docker_engine.image,
        ["sh", "-c", PATCH],
        network_mode="none",
        detach=True,
        labels={"warmer.run": run_id},
    )
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs()
        image = container.commit(repository="warmer-test-patched-torch", tag=run_id)
    finally:
        container.remove(force=True)
    try:
        yield image.id
    finally:
        client.images.remove(image.id, force=True)


def test_check_says_hit_for_the_image_that_made_the_bundle_and_names_the_differing_factor(
    docker_engine: Engine, patched_image: str, tmp_path: Path
) -> None:
    out = tmp_path / "dist"
    made = warmer(
        "run", str(REPO / "jobs" / "tiny-cpu.yaml"), "--out", str(out), "--json",
        tmp_path=tmp_path, engine=docker_engine,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    (job,) = json.loads(made.stdout)["jobs"]
    bundle = job["bundle"]

    same = warmer("check", bundle, "--image", docker_engine.image, "--json", tmp_path=tmp_path)
    assert same.returncode == 0, same.stderr
    verdict = json.loads(same.stdout)
    assert verdict["hit"] and verdict["exact"], verdict
    assert [(k["kind"], k["hit"]) for k in verdict["kinds"]] == [("inductor", True)]

    other = warmer("check", bundle, "--image", patched_image, tmp_path=tmp_path)
    assert other.returncode == 4, other.stderr
    lines = other.stdout.splitlines()
    assert lines[0].split()[:2] == ["inductor", "miss"], other.stdout
    assert lines[1].strip().startswith("inductor.torch_key: bundle "), other.stdout
    bundle_key, here_key = lines[1].split("bundle ")[1].split(", here ")
    assert len(bundle_key) == 64 and here_key.split(" ")[0] != bundle_key
    assert "environment mismatch" in other.stderr and "inductor.torch_key" in other.stderr
