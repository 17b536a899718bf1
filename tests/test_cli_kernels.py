"""`warmer kernels ls | prune` end to end on real Triton caches; pruned caches recompiled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import compile_triton

import warmer
from warmer.cli import cli
from warmer.kernels import HIT_LOG_SUFFIX, hit_line, hit_log_dir
from warmer.units import format_size

REQUIRED = {
    "name", "hash", "backend", "arch", "warp_size", "num_warps", "num_stages", "shared",
    "triton_version", "size", "files", "hits", "last_access",
}  # fmt: skip

#: The same kernel compiled for sm_80 with num_stages 2, 3 and 4: three keys whose cubins are
#: byte-identical (nothing to pipeline). Prints {"<key>": {"stages": n, "cache_hit": bool}}.
DUPLICATES = """
import base64, json, os, sys
os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

@triton.jit
def copy_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

hits = []
triton.knobs.compilation.listener = lambda **event: hits.append(event["cache_hit"])
found = {}
for stages in map(int, sys.argv[2:]):
    kernel = triton.compile(
        ASTSource(copy_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}, {"BLOCK": 64}),
        target=GPUTarget("cuda", 80, 32),
        options={"num_stages": stages},
    )
    key = base64.b32encode(bytes.fromhex(kernel.hash)).decode().rstrip("=")
    found[key] = {"stages": stages, "cache_hit": hits[-1]}
print(json.dumps(found))
"""


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("WARMER_STATE_DIR", str(state))
    monkeypatch.setenv("COLUMNS", "200")
    return state


def warmer_cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["kernels", *args], input=stdin)


def ls_json(cache: Path, *args: str) -> list[dict[str, Any]]:
    result = warmer_cli("ls", "--cache-dir", str(cache), "--json", *args)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["total"] == len(document["kernels"])
    assert document["bytes"] == sum(k["size"] for k in document["kernels"])
    kernels: list[dict[str, Any]] = document["kernels"]
    return kernels


def file_names(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*")}


def test_ls_json_table_and_quiet(triton_cache: Path) -> None:
    kernels = ls_json(triton_cache)
    assert len(kernels) == 6 and all(set(k) >= REQUIRED for k in kernels)
    assert {(k["backend"], k["arch"], k["warp_size"]) for k in kernels} == {
        ("cuda", "90", 32),
        ("cuda", "80", 32),
        ("hip", "gfx942", 64),
    }
    for kernel in kernels:
        sizes = {f["kind"]: f["size"] for f in kernel["files"]}
        assert sum(sizes.values()) == kernel["size"] and sizes.keys() >= {"json", "grp"}

    table = warmer_cli("ls", "--cache-dir", str(triton_cache))
    assert table.exit_code == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "BACKEND", "ARCH"]
    assert lines[-1] == f"6 kernels, {format_size(sum(k['size'] for k in kernels))} total"
    assert len(lines) == 8
    assert {line.split()[0] for line in lines[1:-1]} == {str(k["hash"])[:10] for k in kernels}
    size_column = lines[0].index("SIZE") + len("SIZE")
    assert all(line[size_column - 1] != " " for line in lines[1:-1])  # right-aligned

    quiet = warmer_cli("ls", "--cache-dir", str(triton_cache), "-q", "--backend", "rocm")
    ids = quiet.stdout.split()
    assert quiet.exit_code == 0 and len(ids) == 2
    assert all(re.fullmatch(r"[A-Z2-7]{10}", i) for i in ids)


def test_ls_filters_ages_and_default_cache_dir(
    triton_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = time.time() - 10 * 86400
    for metadata in triton_cache.glob("*/[!_]*.json"):
        if json.loads(metadata.read_text())["target"]["backend"] == "hip":
            os.utime(metadata, (old, old))
    older = ls_json(triton_cache, "--older-than", "7d")
    assert {k["backend"] for k in older} == {"hip"} and len(older) == 2
    assert len(ls_json(triton_cache, "--younger-than", "1w")) == 4
    assert [k["arch"] for k in ls_json(triton_cache, "--name", "scale*", "--arch", "sm_90")] == [
        "90"
    ]
    by_age = ls_json(triton_cache, "--sort", "age")
    assert {k["backend"] for k in by_age[:2]} == {"hip"}

    bad = warmer_cli("ls", "--cache-dir", str(triton_cache), "--older-than", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.output
    missing = warmer_cli("ls", "--cache-dir", str(triton_cache / "nope"))
    assert missing.exit_code == 2 and "no such cache directory" in missing.output

    monkeypatch.setenv("TRITON_CACHE_DIR", str(triton_cache))
    assert json.loads(warmer_cli("ls", "--json").stdout)["total"] == 6


def test_concurrent_listings_share_one_index(triton_cache: Path) -> None:
    repo = str(Path(warmer.__file__).resolve().parent.parent)
    command = [sys.executable, "-c", "from warmer.cli import main; main()", "kernels", "ls"]
    listings = [
        subprocess.Popen(
            [*command, "--cache-dir", str(triton_cache), "--json"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": repo},
        )
        for _ in range(4)
    ]
    for listing in listings:
        out, _ = listing.communicate()
        assert listing.returncode == 0 and json.loads(out)["total"] == 6


def test_hits_from_real_tracking_drive_filters_and_sort(
    triton_cache: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_CACHE_MANAGER", "warmer.tracking:TrackingCacheManager")
    repo = str(Path(warmer.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    compile_triton(triton_cache, ["cuda:90"])
    compile_triton(triton_cache, ["cuda:90", "hip:gfx942"])
    hot = ls_json(triton_cache, "--hits-above", "1")
    assert {(k["arch"], k["hits"]) for k in hot} == {("90", 2)} and len(hot) == 2
    assert all(isinstance(k["last_access"], float) for k in hot)
    assert {k["arch"] for k in ls_json(triton_cache, "--hits-below", "1")} == {"80"}
    assert [k["hits"] for k in ls_json(triton_cache, "--sort", "hits")] == [2, 2, 1, 1, 0, 0]
    assert not any(p.name.endswith(HIT_LOG_SUFFIX) for p in hit_log_dir(state).iterdir())


def test_prune_dry_run_prompt_and_ir_prune_keep_the_cache_working(triton_cache: Path) -> None:
    before = file_names(triton_cache)
    dry = warmer_cli("prune", "--cache-dir", str(triton_cache), "--all", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["mode"] == "ir" and plan["dry_run"] and plan["files"] == 24
    ir_bytes = sum(
        p.stat().st_size
        for p in triton_cache.rglob("*")
        if p.suffix in (".source", ".ttir", ".ttgir", ".llir")
    )
    assert plan["expected_freed"] == ir_bytes and plan["freed"] == 0
    assert file_names(triton_cache) == before

    declined = warmer_cli("prune", "--cache-dir", str(triton_cache), "--all", stdin="n\n")
    assert declined.exit_code == 0 and "About to delete 24 files of 6 kernels" in declined.output
    assert "Proceed? [y/N]" in declined.output and file_names(triton_cache) == before

    accepted = warmer_cli("prune", "--cache-dir", str(triton_cache), "--all", stdin="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "Deleted 24 files of 6 kernels" in accepted.output
    assert not any(p.suffix in (".ttir", ".llir") for p in triton_cache.rglob("*"))
    events = compile_triton(triton_cache)
    assert len(events) == 6 and all(e["cache_hit"] for e in events)
    assert all(k["size"] for k in ls_json(triton_cache))


def test_full_prune_by_ids_from_ls_q(triton_cache: Path) -> None:
    ids = warmer_cli("ls", "--cache-dir", str(triton_cache), "-q", "--name", "add*").stdout
    hip_id = next(k["id"] for k in ls_json(triton_cache, "--name", "add*") if k["backend"] == "hip")
    other_ids = [i for i in ids.split() if i != hip_id]
    result = warmer_cli("prune", "--cache-dir", str(triton_cache), "--full", "-y", *other_ids)
    assert result.exit_code == 0, result.output
    assert "Deleted 16 files of 2 kernels" in result.output
    missed = {
        (e["kernel"], e["target"]) for e in compile_triton(triton_cache) if not e["cache_hit"]
    }
    assert missed == {("add_kernel", "cuda:90"), ("add_kernel", "cuda:80")}


def test_an_empty_selection_deletes_nothing(triton_cache: Path) -> None:
    """`prune --full -y $(ls -q --older-than 30d)` with nothing that old: no ids, no filter."""
    before = file_names(triton_cache)
    ids = warmer_cli("ls", "--cache-dir", str(triton_cache), "-q", "--older-than", "30d").stdout
    assert ids.split() == []
    for extra in ([], ["--json"]):
        empty = warmer_cli("prune", "--cache-dir", str(triton_cache), "--full", "-y", *extra)
        assert empty.exit_code == 2 and "--all" in empty.output, empty.output
    mixed = warmer_cli("prune", "--cache-dir", str(triton_cache), "--all", "--name", "add*", "-y")
    assert mixed.exit_code == 2 and file_names(triton_cache) == before
    everything = warmer_cli("prune", "--cache-dir", str(triton_cache), "--full", "--all", "-y")
    assert everything.exit_code == 0, everything.output
    assert ls_json(triton_cache) == []


def test_dedupe_keeps_the_most_recently_used_identical_binary(
    triton_cache: Path, tmp_path: Path, state: Path
) -> None:
    cache = tmp_path / "dupes"
    script = tmp_path / "duplicates.py"  # @triton.jit needs its source in a file
    script.write_text(DUPLICATES)

    def compile_stages(*stages: int) -> dict[str, dict[str, object]]:
        out = subprocess.run(
            [sys.executable, str(script), str(cache), *map(str, stages)],
            check=True,
            capture_output=True,
            text=True,
        )
        found: dict[str, dict[str, object]] = json.loads(out.stdout.splitlines()[-1])
        return found

    keys = compile_stages(2, 3, 4)
    assert len(keys) == 3 and not any(k["cache_hit"] for k in keys.values())
    listing = ls_json(cache)
    assert len({k["binary_digest"] for k in listing}) == 1  # byte-identical, three keys
    used = next(key for key, k in keys.items() if k["stages"] == 3)
    hit_log_dir(state).mkdir(parents=True)
    (hit_log_dir(state) / f"1-test{HIT_LOG_SUFFIX}").write_bytes(hit_line(used, time.time_ns()))

    result = warmer_cli("prune", "--cache-dir", str(cache), "--dedupe", "-y", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {k["hash"] for k in plan["kernels"]} == set(keys) - {used}
    assert all(k["reason"] == f"duplicate of {used[:10]}" and k["whole"] for k in plan["kernels"])
    assert [k["hash"] for k in ls_json(cache)] == [used]
    again = compile_stages(2, 3, 4)
    assert {k["stages"]: k["cache_hit"] for k in again.values()} == {2: False, 3: True, 4: False}


def test_ls_reads_a_store_ref_and_a_bundle(triton_cache: Path, tmp_path: Path) -> None:
    from helpers.kernels import saved

    ref, store_root, bundle = saved(triton_cache, tmp_path)
    from_store = warmer_cli("ls", ref, "--store", str(store_root), "--json")
    assert from_store.exit_code == 0, from_store.output
    on_disk = {(k["hash"], k["binary_digest"]) for k in ls_json(triton_cache)}
    stored = json.loads(from_store.stdout)["kernels"]
    assert {(k["hash"], k["binary_digest"]) for k in stored} == on_disk
    from_bundle = warmer_cli("ls", str(bundle), "-q", "--arch", "gfx942")
    assert from_bundle.exit_code == 0 and len(from_bundle.stdout.split()) == 2
    unknown = warmer_cli("ls", "nothing@here", "--store", str(store_root))
    assert unknown.exit_code == 2 and "no snapshot matches" in unknown.output
    both = warmer_cli("ls", ref, "--cache-dir", str(triton_cache))
    assert both.exit_code == 2 and "not both" in both.output


def test_prune_refuses_snapshots_bundles_and_unconfirmed_json(
    triton_cache: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "x.tar.zst"
    bundle.write_bytes(b"")
    for target in (str(bundle), "llama@torch2.13.0-cpu"):
        refused = warmer_cli("prune", target)
        assert refused.exit_code == 2 and "immutable" in refused.output
    blind = warmer_cli("prune", "--cache-dir", str(triton_cache), "--all", "--json")
    assert blind.exit_code == 2 and "-y" in blind.output
    both = warmer_cli("prune", "--cache-dir", str(triton_cache), "--full", "--dedupe", "-y")
    assert both.exit_code == 2
    assert ls_json(triton_cache)[0]["files"]
