"""The loader API as a model server uses it: examples/server.py, run twice for real.

The first start has nothing to load (`nothing_for_env`), compiles cold and saves; the second
loads the snapshot (`loaded`) and Inductor's FX graph cache hits. Then `warmer check` against
that snapshot on this machine says hit.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from helpers.bundles import FILES, make_manifest, opener
from helpers.run import warmer, warmer_environ

import warmer as api
from warmer.bundle import write_bundle
from warmer.envkey import EnvKey

SERVER = REPO / "examples" / "server.py"


def start(tmp_path: Path) -> dict[str, object]:
    """One start of the example server, with this test's store, cache and config."""
    environ = warmer_environ(tmp_path, {"WARMER_CONFIG": str(tmp_path / "warmer.yaml")})
    environ.pop("WARMER_REGISTRY", None)  # no cold tier: a missing snapshot is just missing
    done = subprocess.run(
        [sys.executable, str(SERVER), "--store", str(tmp_path / "store"),
         "--cache", str(tmp_path / "inductor")],
        capture_output=True, text=True, env=environ, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_example_server_starts_cold_then_loads_and_hits(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    (tmp_path / "warmer.yaml").write_text("{}\n")
    first = start(tmp_path)
    load = first["load"]
    assert isinstance(load, dict) and load["status"] == "nothing_for_env", first
    assert first["inductor"] == {**first["inductor"], "fxgraph_cache_miss": 1}  # type: ignore[dict-item]
    assert str(first["saved"]).startswith("server@")

    shutil.rmtree(tmp_path / "inductor")  # a fresh machine: only the store carries over
    second = start(tmp_path)
    load = second["load"]
    assert isinstance(load, dict) and load["status"] == "loaded", second
    assert load["ref"] == first["saved"] and load["written"] == load["files"] > 0
    counters = second["inductor"]
    assert isinstance(counters, dict)
    assert counters.get("fxgraph_cache_hit", 0) >= 1 and "fxgraph_cache_miss" not in counters

    checked = warmer(
        "check", str(first["saved"]), "--json", tmp_path=tmp_path,
        env={"WARMER_CONFIG": str(tmp_path / "warmer.yaml")},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    document = json.loads(checked.stdout)
    assert document["hit"] and document["exact"], document
    assert [(k["kind"], k["hit"]) for k in document["kinds"]] == [("inductor", True)]


def test_load_answers_with_a_status_and_never_raises_for_what_it_finds(tmp_path: Path) -> None:
    nothing = api.load(tmp_path / "absent.tar.zst")
    assert (nothing.status, nothing.loaded) == ("nothing_for_env", False)

    manifest = make_manifest(FILES)
    good = write_bundle(manifest, opener(FILES), tmp_path, "gz")
    loaded = api.load(good, root=tmp_path / "root")
    assert loaded.status == "loaded" and loaded.written == len(FILES)

    foreign = make_manifest(FILES, env=dataclasses.replace(EnvKey.probe(), torch="1.0.0"))
    other = write_bundle(foreign, opener(FILES), tmp_path / "other", "gz")
    mismatch = api.load(other, root=tmp_path / "root2")
    assert mismatch.status == "mismatch" and any(r.startswith("torch: ") for r in mismatch.reasons)
    assert not (tmp_path / "root2").exists()

    broken = tmp_path / "broken.tar.gz"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    corrupt = api.load(broken, root=tmp_path / "root3")
    assert corrupt.status == "refused_corrupt" and corrupt.reasons

    with pytest.raises(TypeError, match="source must be a path"):
        api.load(42)  # type: ignore[arg-type]
