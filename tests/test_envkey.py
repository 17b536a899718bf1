"""The environment key: tags, digest, the compatibility check and `warmer env`."""

from __future__ import annotations

import json
import re
from typing import Any

from click.testing import CliRunner

from warmer.agent.probe import probe
from warmer.cli import cli
from warmer.envkey import EnvKey, compare

CPU: dict[str, Any] = {
    "torch": "2.13.0+cpu", "cuda": None, "hip": None, "cc": None, "gfx_arch": None,
    "gpu_name": None, "gpu_count": 0, "triton": "3.9.0", "vllm": None,
    "python": "3.11.7", "platform": "linux-x86_64", "backend": "cpu",
}  # fmt: skip
CUDA: dict[str, Any] = {
    **CPU, "torch": "2.6.0+cu124", "cuda": "12.4", "cc": "9.0", "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_count": 8, "triton": "3.2.0", "vllm": "0.9.2", "backend": "cuda",
}  # fmt: skip
ROCM: dict[str, Any] = {
    **CPU, "torch": "2.6.0+rocm6.2", "hip": "6.2.41133-dd7f95766", "gfx_arch": "gfx942",
    "gpu_name": "AMD Instinct MI300X", "gpu_count": 8, "triton": "3.2.0", "backend": "rocm",
}  # fmt: skip


def key(base: dict[str, Any], **changes: Any) -> EnvKey:
    return EnvKey.from_dict({**base, **changes})


def test_tags_name_the_parts_that_key_the_caches() -> None:
    assert key(CPU).tag == "torch2.13.0-cpu-triton3.9.0"
    assert key(CUDA).tag == "torch2.6.0-cuda12.4-cc9.0-triton3.2.0-vllm0.9.2"
    assert key(ROCM).tag == "torch2.6.0-rocm6.2-gfx942-triton3.2.0"


def test_tags_leave_out_unknown_parts_and_unsafe_characters() -> None:
    assert key(CUDA, cc=None, vllm=None).tag == "torch2.6.0-cuda12.4-triton3.2.0"
    assert key(CPU, torch=None, triton=None).tag == "notorch-cpu"
    assert key(CPU, torch="2.7.0a0 git/abc+local").tag == "torch2.7.0a0_git_abc-cpu-triton3.9.0"
    assert key(CUDA, vllm="0.10.1.dev5+g1234").tag.endswith("-vllm0.10.1.dev5")


def test_from_dict_tolerates_missing_and_unknown_keys() -> None:
    empty = EnvKey.from_dict({})
    assert empty.torch is None and empty.gpu_count == 0 and empty.backend == "cpu"
    assert EnvKey.from_dict({**CUDA, "future_part": "x"}) == key(CUDA)
    assert key(CUDA).to_dict() == CUDA
    assert EnvKey.from_dict({"gpu_count": True}).gpu_count == 0


def test_digest_is_stable_and_covers_every_part() -> None:
    reordered = dict(reversed(list(CUDA.items())))
    assert key(CUDA).digest == EnvKey.from_dict(reordered).digest
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", key(CUDA).digest)
    # Pinned: manifests store it, so its canonical form must not drift.
    assert key(CPU).digest == "sha256:f21ac5d815fd78ba"
    assert key(CUDA, gpu_count=4).digest != key(CUDA).digest


def test_identical_environments_have_no_differences() -> None:
    assert compare(key(CUDA), key(CUDA)) == []


def test_compare_returns_every_difference_with_its_severity() -> None:
    here = key(
        CUDA,
        torch="2.6.0+cu126",
        cuda="12.6",
        cc="8.0",
        triton="3.3.0",
        vllm=None,
        python="3.11.9",
        gpu_name="NVIDIA A100-SXM4-80GB",
    )
    found = {d.field: d.severity for d in compare(key(CUDA), here)}
    assert found == {
        "torch": "mismatch",
        "cuda": "mismatch",
        "cc": "mismatch",
        "triton": "mismatch",
        "vllm": "mismatch",
        "python": "warning",
        "gpu_name": "warning",
    }


def test_compare_across_backends_and_platforms() -> None:
    found = {d.field: d.severity for d in compare(key(ROCM), key(CPU, python="3.12.1"))}
    assert found == {
        "torch": "mismatch",
        "backend": "mismatch",
        "hip": "mismatch",
        "gfx_arch": "warning",  # unknown here: no GPU to check against
        "triton": "mismatch",
        "python": "mismatch",
        "gpu_name": "warning",
    }
    platform = compare(key(CPU), key(CPU, platform="linux-aarch64"))
    assert [(d.field, d.severity) for d in platform] == [("platform", "mismatch")]


def test_compare_uses_major_minor_for_toolkits_and_ignores_vllm_the_bundle_lacks() -> None:
    assert compare(key(ROCM), key(ROCM, hip="6.2.0-abc")) == []
    assert compare(key(CUDA, vllm=None), key(CUDA)) == []
    unknown_gpu = compare(key(CUDA), key(CUDA, cc=None, gpu_name=None))
    assert {(d.field, d.severity) for d in unknown_gpu} == {
        ("cc", "warning"),
        ("gpu_name", "warning"),
    }


def test_a_difference_says_what_differs_and_why() -> None:
    (difference,) = compare(key(CPU), key(CPU, triton="3.3.0"))
    assert str(difference).startswith("triton: bundle 3.9.0, here 3.3.0 — Triton's cache key")
    (missing,) = compare(key(CUDA), key(CUDA, vllm=None))
    assert str(missing).startswith("vllm: bundle 0.9.2, here none — ")


def test_probe_key_is_this_machine() -> None:
    assert EnvKey.probe() == EnvKey.from_dict(probe())


def test_env_command_prints_parts_tag_and_digest() -> None:
    here = EnvKey.probe()
    result = CliRunner().invoke(cli, ["env", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == {"tag": here.tag, "digest": here.digest, "parts": here.to_dict()}

    table = CliRunner().invoke(cli, ["env"])
    assert table.exit_code == 0
    assert here.tag in table.stdout and here.digest in table.stdout
    assert re.search(r"^gpu_count\s+\d+", table.stdout, re.MULTILINE)
