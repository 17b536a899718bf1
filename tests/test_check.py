"""`warmer check` and the key factors behind it: which part of which compiler's key differs.

The prediction is tested on manifests with key factors as the agent probe records them; the
probe itself against real packages (local here, in the CPU image in test_check_docker.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers.bundles import FILES, make_manifest
from helpers.run import warmer

from warmer.checking import predict
from warmer.envkey import UNEXPLAINED, EnvKey, explain_misses, json_differences
from warmer.errors import BundleError
from warmer.store.manifest import Manifest

ENV = EnvKey(
    torch="2.13.0+cpu", cuda="12.8", hip=None, cc="9.0", gfx_arch=None, gpu_name="NVIDIA H100 PCIe",
    gpu_count=1, triton="3.9.0", vllm="0.32.0", python="3.11.7", platform="linux-x86_64",
    backend="cuda",
)  # fmt: skip
FACTORS: dict[str, Any] = {
    "triton": {"version": "3.9.0", "key": "sha256:aa", "ptxas": "release 12.8",
               "target": {"backend": "cuda", "arch": "90", "warp_size": 32},
               "backend_hash": "sha256:bb"},
    "inductor": {"torch_key": "d34d", "device_name": "NVIDIA H100 PCIe", "cuda": "12.8",
                 "hip": None, "cpp_compiler": "g++: gcc version 12.2.0"},
    "vllm": {"version": "0.32.0", "install_path": "/usr/local/lib/python3.11/site-packages/vllm",
             "graphs": {"torch_compile_cache/3a332b42ba/rank_0_0":
                        {"env": {"VLLM_USE_V1": True}, "config_hash": "c1", "code_hash": "k1"}}},
    "silicon": {"cc": "9.0", "sm_count": 114, "name": "NVIDIA H100 PCIe", "gcn_arch": None},
}  # fmt: skip
VLLM_FILE = "/root/.cache/vllm/torch_compile_cache/3a332b42ba/rank_0_0/backbone/graph"


def bundle(factors: dict[str, Any] | None = FACTORS) -> Manifest:
    manifest = make_manifest(env=ENV)
    vllm = dataclasses.replace(manifest.files[0], path=VLLM_FILE, kind="vllm")
    return dataclasses.replace(
        manifest, files=(*manifest.files, vllm), key_factors=copy.deepcopy(factors)
    )


def changed(path: str, value: object) -> dict[str, Any]:
    factors = copy.deepcopy(FACTORS)
    *parents, leaf = path.split(".")
    node = factors
    for part in parents:
        node = node[part]
    node[leaf] = value
    return factors


def test_the_same_environment_hits_every_kind() -> None:
    result = predict(bundle(), ENV, FACTORS)
    assert result.hit and result.exact and not result.warnings
    assert [(v.kind, v.hit, v.files) for v in result.kinds] == [
        ("triton", True, 2),
        ("inductor", True, 1),
        ("vllm", True, 1),
    ]


def test_a_patched_torch_of_the_same_version_misses_inductor_and_vllm_only() -> None:
    result = predict(bundle(), ENV, changed("inductor.torch_key", "91a2"))
    verdicts = {v.kind: v for v in result.kinds}
    assert not result.hit and verdicts["triton"].hit
    for kind in ("inductor", "vllm"):
        (factor,) = verdicts[kind].factors
        assert (factor.factor, factor.bundle, factor.here) == ("inductor.torch_key", "d34d", "91a2")
    assert "inductor.torch_key: bundle d34d, here 91a2 — Inductor's FX graph key hashes" in str(
        factor
    )


def test_vllm_at_another_install_path_misses_only_vllm() -> None:
    result = predict(bundle(), ENV, changed("vllm.install_path", "/opt/venv/vllm"))
    assert [(v.kind, v.hit) for v in result.kinds] == [
        ("triton", True),
        ("inductor", True),
        ("vllm", False),
    ]
    assert result.to_dict()["kinds"][2]["factors"][0]["here"] == "/opt/venv/vllm"


def test_same_silicon_another_name_is_a_warning_for_triton_and_a_miss_for_inductor() -> None:
    """An H100 SXM card vs a PCIe one: Triton keys on the compute capability, so its
    kernels hit; Inductor keys on the product name."""
    sxm = changed("silicon.name", "NVIDIA H100 80GB HBM3")
    sxm["inductor"]["device_name"] = "NVIDIA H100 80GB HBM3"
    sxm["silicon"]["sm_count"] = 132
    here = dataclasses.replace(ENV, gpu_name="NVIDIA H100 80GB HBM3")
    result = predict(bundle(), here, sxm)
    verdicts = {v.kind: v for v in result.kinds}
    assert verdicts["triton"].hit and not verdicts["inductor"].hit
    assert [f.factor for f in verdicts["inductor"].factors] == ["inductor.device_name"]
    assert any(w.startswith("gpu_name: bundle NVIDIA H100 PCIe") for w in result.warnings)
    assert any(w.startswith("silicon.sm_count: bundle 114, here 132") for w in result.warnings)


def test_another_compute_capability_misses_everything() -> None:
    here = dataclasses.replace(ENV, cc="8.0")
    result = predict(bundle(), here, changed("silicon.cc", "8.0"))
    assert not any(v.hit for v in result.kinds)
    assert {f.factor for f in result.kinds[0].factors} == {"cc", "silicon.cc"}


def test_a_bundle_without_key_factors_is_checked_by_its_environment_key() -> None:
    old = bundle(None)
    assert predict(old, ENV, FACTORS).hit
    result = predict(old, dataclasses.replace(ENV, torch="2.12.0"), FACTORS)
    assert not result.exact and "records no key factors" in result.warnings[0]
    assert [(v.kind, v.hit) for v in result.kinds] == [
        ("triton", True),
        ("inductor", False),
        ("vllm", False),
    ]


def test_old_manifests_load_and_keep_their_bytes_and_key_factors_round_trip() -> None:
    old = make_manifest(FILES)
    assert "key_factors" not in json.loads(old.to_bytes())
    assert Manifest.from_bytes(old.to_bytes()).to_bytes() == old.to_bytes()
    new = bundle()
    again = Manifest.from_bytes(new.to_bytes())
    assert again.key_factors == FACTORS and again.digest == new.digest


def test_key_factors_are_checked_like_any_manifest_section() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(BundleError, match="key_factors: nested deeper than 32"):
        dataclasses.replace(make_manifest(FILES), key_factors=deep)
    document = json.loads(make_manifest(FILES).to_bytes())
    document["key_factors"] = ["not", "an", "object"]
    with pytest.raises(BundleError, match="key_factors: must be an object"):
        Manifest.from_document(document)


def test_misses_after_the_fact_name_the_factor_and_what_changed_in_vllm_factors() -> None:
    warm = changed("inductor.torch_key", "91a2")
    warm["vllm"]["graphs"]["torch_compile_cache/77aa01bc55/rank_0_0"] = {
        "env": {"VLLM_USE_V1": True},
        "config_hash": "c2",
        "code_hash": "k1",
    }
    missed = [
        "inductor-fxgraph:fabc",
        "vllm-graph:77aa01bc55/rank_0_0/backbone",
        "triton:KEY",
    ]
    why = explain_misses(missed, ENV.to_dict(), FACTORS, ENV.to_dict(), warm)
    assert why["inductor-fxgraph:fabc"][0].startswith("inductor.torch_key: bundle d34d, here 91a2")
    assert any(
        "torch_compile_cache/3a332b42ba/rank_0_0 → torch_compile_cache/77aa01bc55/rank_0_0" in line
        and "config_hash: bundle c1, here c2" in line
        for line in why["vllm-graph:77aa01bc55/rank_0_0/backbone"]
    )
    assert why["triton:KEY"] == [UNEXPLAINED]
    assert json_differences({"a": [1, 2]}, {"a": [1, 3], "b": None}) == ["a[1]: bundle 2, here 3"]


def test_check_cli_nothing_to_check_is_exit_5(tmp_path: Path) -> None:
    missing = warmer("check", str(tmp_path / "absent.tar.zst"), "--json", tmp_path=tmp_path)
    assert missing.returncode == 5, missing.stderr
    assert json.loads(missing.stdout) == {
        "error": f"{tmp_path / 'absent.tar.zst'}: no such bundle",
        "exit": 5,
    }
    both = warmer("check", "x.tar.zst", "--image", "i", "--runtime", "local", tmp_path=tmp_path)
    assert both.returncode == 2 and "leave out --image" in both.stderr


def test_the_agent_probe_reads_the_key_factors_from_the_installed_packages(
    tmp_path: Path,
) -> None:
    """What Inductor and Triton really hash, read here as the agent reads it in an image."""
    pytest.importorskip("torch", reason="torch is not installed")
    from torch._inductor.codecache import torch_key

    from warmer.agent.probe import vllm_graph_factors

    answer = json.loads(python_module("warmer.agent", "probe", "--key-factors"))
    factors = answer["key_factors"]
    assert answer["env"] == json.loads(python_module("warmer.agent", "probe"))
    assert factors["inductor"]["torch_key"] == torch_key().hex()
    if answer["env"]["triton"]:
        assert factors["triton"]["version"] == answer["env"]["triton"]
        assert factors["triton"]["key"].startswith("sha256:")
    graph = tmp_path / "torch_compile_cache" / "3a332b42ba" / "rank_0_0"
    graph.mkdir(parents=True)
    (graph / "cache_key_factors.json").write_text('{"config_hash": "c1"}')
    (tmp_path / "torch_compile_cache" / "junk").mkdir()
    assert vllm_graph_factors(str(tmp_path)) == {
        "torch_compile_cache/3a332b42ba/rank_0_0": {"config_hash": "c1"}
    }


def python_module(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, check=True
    )
    return done.stdout
