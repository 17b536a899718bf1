"""The in-container agent: env probe, protocol, torch-compile and command engines, run for real."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.agent import run_agent
from helpers.interpreter import python

from warmer.agent.probe import gfx_name, parse_torch_version_file, probe, select_visible
from warmer.agent.report import PROTOCOL_VERSION, parse_line
from warmer.caches import CACHE_VARIABLES

TINY_TORCH_JOB: dict[str, Any] = {
    "name": "tiny",
    "backend": "cpu",
    "engine": {
        "kind": "torch-compile",
        "model": "warmer.agent.examples:tiny_transformer",
        "args": {"layers": 1, "dim": 32, "heads": 4, "mlp_ratio": 2},
    },
    "warmup": {"inputs": [{"shape": [1, 8, 32]}, {"shape": [2, 16, 32]}], "repeat": 2},
}
THIRD_PARTY = ("torch", "triton", "vllm", "click", "pydantic", "yaml", "rich", "blake3", "docker")


def cache_env(tmp_path: Path) -> dict[str, str]:
    """Every place a CPU compile writes, inside `tmp_path` (TMPDIR: precompiled headers)."""
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    return env


# --- probe -------------------------------------------------------------------------------


def test_probe_reads_versions_without_importing_torch() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    out = python(
        "import json, sys; from warmer.agent.probe import probe; "
        "print(json.dumps({'probe': probe(), 'torch_imported': 'torch' in sys.modules}))"
    )
    result = json.loads(out)
    found = result["probe"]
    assert result["torch_imported"] is False
    assert found["torch"] == torch.__version__
    assert found["cuda"] == torch.version.cuda
    assert found["hip"] == torch.version.hip
    assert found["triton"] == importlib.metadata.version("triton")
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert found["platform"].startswith(sys.platform + "-")
    expected_backend = "rocm" if torch.version.hip else "cuda" if torch.version.cuda else "cpu"
    assert found["backend"] == expected_backend
    assert set(found) == {
        "torch", "cuda", "hip", "cc", "gfx_arch", "gpu_name", "gpu_count",
        "triton", "vllm", "python", "platform", "backend",
    }  # fmt: skip


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None or os.path.exists("/sys/class/kfd"),
    reason="this machine has a GPU tool; the no-GPU answer cannot be checked",
)
def test_probe_without_gpu_leaves_gpu_parts_unknown() -> None:
    found = probe()
    assert (found["cc"], found["gfx_arch"], found["gpu_name"], found["gpu_count"]) == (
        None,
        None,
        None,
        0,
    )


def test_probe_command_prints_the_probe_as_json() -> None:
    out = python("from warmer.agent.__main__ import main; raise SystemExit(main(['probe']))")
    assert json.loads(out) == probe()


def test_torch_version_file_is_parsed_not_imported(tmp_path: Path) -> None:
    version_file = tmp_path / "version.py"
    version_file.write_text(
        "from typing import Optional\n"
        "__version__ = '2.6.0+cu124'\n"
        "cuda: Optional[str] = '12.4'\n"
        "hip: Optional[str] = None\n"
        "git_version = 'abc'\n"
        "debug = False\n"
    )
    parsed = parse_torch_version_file(str(version_file))
    assert parsed["__version__"] == "2.6.0+cu124"
    assert parsed["cuda"] == "12.4"
    assert parsed["hip"] is None
    assert "debug" not in parsed


@pytest.mark.parametrize(
    ("target", "name"),
    [(90402, "gfx942"), (90010, "gfx90a"), (90008, "gfx908"), (110000, "gfx1100"), (0, None)],
)
def test_gfx_target_version_becomes_the_arch_name(target: int, name: str | None) -> None:
    assert gfx_name(target) == name


GPUS: list[dict[str, str | None]] = [
    {"index": "0", "uuid": "GPU-aaaa1111", "name": "H100", "cc": "9.0"},
    {"index": "1", "uuid": "GPU-bbbb2222", "name": "A100", "cc": "8.0"},
]


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        ("1,0", ["A100", "H100"]),
        ("1", ["A100"]),
        ("GPU-bbbb", ["A100"]),
        ("0,7,1", ["H100"]),  # CUDA stops at the first entry that names no device
        ("", []),
        ("MIG-cccc3333", ["A100"]),
    ],
)
def test_cuda_visible_devices_picks_and_orders_gpus(visible: str, names: list[str]) -> None:
    chosen = select_visible(GPUS, visible, {"MIG-cccc3333": "GPU-bbbb2222"})
    assert [gpu["name"] for gpu in chosen] == names


# --- import discipline -------------------------------------------------------------------


def test_agent_modules_import_nothing_third_party() -> None:
    out = python(
        "import json, sys\n"
        "import warmer.agent.__main__, warmer.agent.examples\n"
        "import warmer.agent.engines.torch_compile, warmer.agent.engines.vllm\n"
        "import warmer.agent.engines.command\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(out)
    assert [name for name in loaded if name.split(".")[0] in THIRD_PARTY] == []
    assert [name for name in loaded if name.startswith("warmer.")] != []
    outside = {"warmer.caches"}
    assert [
        name
        for name in loaded
        if name.startswith("warmer.")
        and not name.startswith("warmer.agent")
        and name not in outside
    ] == []


# --- torch-compile engine, for real ------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_run_misses_then_hits_in_the_same_cache(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    env = cache_env(tmp_path)

    status, progress, cold, stdout, _ = run_agent(TINY_TORCH_JOB, tmp_path, env)
    assert status == 0, cold["error"]
    assert cold["ok"] is True and cold["error"] is None
    assert cold["agent"] == PROTOCOL_VERSION
    announced = [item for item in progress if "elapsed_s" not in item]  # not the heartbeats
    assert announced == [
        {"step": "input[0] (1, 8, 32)", "i": 1, "n": 2},
        {"step": "input[1] (2, 16, 32)", "i": 2, "n": 2},
    ]
    assert all(parse_line(line) for line in stdout.splitlines())  # nothing else on stdout
    assert cold["counters"]["inductor"]["fxgraph_cache_miss"] >= 1
    assert cold["misses"] >= 1 and cold["hits"] == 0
    assert [step["name"] for step in cold["steps"]] == [p["step"] for p in announced]
    assert cold["env"] == probe()
    assert cold["facts"]["environ"]["TORCHINDUCTOR_CACHE_DIR"] == env["TORCHINDUCTOR_CACHE_DIR"]
    assert set(cold["facts"]["environ"]) == set(CACHE_VARIABLES)
    assert cold["facts"]["tmpdir"] == env["TMPDIR"]
    assert cold["facts"]["cwd"] == str(tmp_path)
    timings = cold["timings"]
    assert timings["total_s"] >= timings["compile_s"] > 0 and timings["import_s"] > 0
    assert list((tmp_path / "inductor").rglob("*.py")) != []

    status, _, warm, _, _ = run_agent(TINY_TORCH_JOB, tmp_path, env)
    assert status == 0, warm["error"]
    assert warm["counters"]["inductor"]["fxgraph_cache_hit"] == cold["misses"]
    assert warm["hits"] > 0 and warm["misses"] == 0


def test_engine_failure_is_reported_with_exit_status_1(tmp_path: Path) -> None:
    job = {
        **TINY_TORCH_JOB,
        "engine": {**TINY_TORCH_JOB["engine"], "model": "nonexistent.module:f"},
    }
    status, _, report, _, stderr = run_agent(job, tmp_path, cache_env(tmp_path))
    assert status == 1
    assert report["ok"] is False
    assert report["error"] == "ModuleNotFoundError: No module named 'nonexistent'"
    assert "Traceback (most recent call last)" in stderr
    assert report["env"] == probe()
    assert (report["hits"], report["misses"]) == (0, 0)


def test_tiny_transformer_keeps_the_input_shape() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from warmer.agent.examples import tiny_transformer

    model = tiny_transformer(layers=2, dim=16, heads=2, mlp_ratio=2)
    with torch.no_grad():
        out = model(torch.rand(3, 5, 16))
    assert out.shape == (3, 5, 16)
    with pytest.raises(ValueError, match="multiple of heads"):
        tiny_transformer(dim=30, heads=4)


def test_inputs_are_seeded_and_in_range() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from warmer.agent.engines.torch_compile import make_input

    spec = {"shape": [4, 64], "dtype": "bfloat16", "low": -2.0, "high": 3.0}
    first, again = make_input(torch, spec, 0, "cpu"), make_input(torch, spec, 0, "cpu")
    assert first.dtype == torch.bfloat16 and first.shape == (4, 64)
    assert torch.equal(first, again)
    assert not torch.equal(first, make_input(torch, spec, 1, "cpu"))
    assert first.min() >= -2.0 and first.max() <= 3.0
    ints = make_input(torch, {"shape": [1000], "dtype": "int64", "low": 0.0, "high": 5.0}, 0, "cpu")
    assert set(ints.tolist()) == {0, 1, 2, 3, 4}
    flags = make_input(torch, {"shape": [1000], "dtype": "bool"}, 0, "cpu")
    assert flags.dtype == torch.bool and set(flags.tolist()) == {False, True}


# --- command engine ----------------------------------------------------------------------


def test_command_output_goes_to_stderr_and_success_is_reported(tmp_path: Path) -> None:
    job = {
        "name": "cmd",
        "engine": {
            "kind": "command",
            "command": [sys.executable, "-c", "print('from the command')"],
        },
    }
    status, progress, report, stdout, stderr = run_agent(job, tmp_path)
    assert status == 0 and report["ok"] is True
    assert "from the command\n" in stderr
    assert all(parse_line(line) for line in stdout.splitlines())  # the output is not on stdout
    assert len(progress) == 1 and progress[0]["n"] == 1
    assert (report["counters"], report["hits"], report["misses"]) == ({}, 0, 0)


def test_failing_command_is_a_failed_job(tmp_path: Path) -> None:
    job = {"name": "cmd", "engine": {"kind": "command", "command": "sh -c 'echo oops; exit 3'"}}
    status, _, report, stdout, stderr = run_agent(job, tmp_path)
    assert status == 1
    assert report["ok"] is False
    assert report["error"] == "command exited with status 3: sh -c 'echo oops; exit 3'"
    assert "oops\n" in stderr
    assert all(parse_line(line) for line in stdout.splitlines())
    assert "Traceback" not in stderr
