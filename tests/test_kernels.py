"""The kernel index over real Triton caches (cuda sm_90, sm_80, hip gfx942), broken entries,
nested Inductor/vLLM layouts, snapshots and bundles; pruning checked by recompiling."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import compile_inductor, compile_triton
from helpers.kernels import saved

from warmer.errors import UsageError
from warmer.kernels import (
    HIT_LOG_SUFFIX,
    Kernel,
    KernelFilter,
    KernelIndex,
    Scan,
    Source,
    hit_line,
    hit_log_dir,
    plan_prune,
)
from warmer.store.cas import digest_file

CUDA_FILES = {"source", "ttir", "ttgir", "llir", "ptx", "cubin", "json", "grp"}
HIP_FILES = {"source", "ttir", "ttgir", "llir", "amdgcn", "hsaco", "json", "grp"}


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelIndex]:
    monkeypatch.setenv("WARMER_STATE_DIR", str(tmp_path / "state"))
    with KernelIndex() as opened:
        yield opened


def listed(index: KernelIndex, root: Path, **filters: Any) -> tuple[Scan, list[Kernel]]:
    scan = index.scan(Source("dir", root))
    return scan, index.kernels(scan, KernelFilter(**filters))


def entry_dirs(cache: Path) -> dict[tuple[str, str], Path]:
    """(kernel name, target) -> entry directory, read from the metadata files."""
    found = {}
    for metadata in cache.glob("*/[!_]*_kernel.json"):
        data = json.loads(metadata.read_text())
        target = f"{data['target']['backend']}:{data['target']['arch']}"
        found[(data["name"], target)] = metadata.parent
    return found


def test_every_real_kernel_is_indexed_with_its_metadata(
    index: KernelIndex, triton_cache: Path
) -> None:
    import triton

    scan, kernels = listed(index, triton_cache)
    assert scan.problems == () and scan.stale_groups == 0 and scan.summary() is None
    assert {(k.name, k.backend, k.arch) for k in kernels} == {
        (name, backend, arch)
        for name in ("add_kernel", "scale_kernel")
        for backend, arch in (("cuda", "90"), ("cuda", "80"), ("hip", "gfx942"))
    }
    for kernel in kernels:
        directory = Path(kernel.location)
        assert directory.parent == triton_cache and directory.name == kernel.hash
        assert kernel.short_id == kernel.hash[:10]
        assert kernel.warp_size == (32 if kernel.backend == "cuda" else 64)
        assert kernel.num_warps == 4 and kernel.num_ctas == 1 and kernel.shared == 0
        assert kernel.num_stages == (3 if kernel.backend == "cuda" else 2)
        assert kernel.triton_version == triton.__version__
        kinds = {f.kind for f in kernel.files}
        assert kinds == (CUDA_FILES if kernel.backend == "cuda" else HIP_FILES)
        on_disk = {p.name: p.stat().st_size for p in directory.iterdir()}
        assert {f.name: f.size for f in kernel.files} == on_disk
        assert kernel.size == sum(on_disk.values())
        binary = next(directory.glob("*.cubin" if kernel.backend == "cuda" else "*.hsaco"))
        assert kernel.binary_digest == digest_file(binary)[0]
        assert kernel.mtime == (directory / f"{kernel.name}.json").stat().st_mtime
        assert kernel.hits == 0 and kernel.last_access is None and not kernel.stale_group
    assert len({k.binary_digest for k in kernels}) == 6


def test_filters_and_sort_orders(index: KernelIndex, triton_cache: Path) -> None:
    def names(**filters: object) -> list[tuple[str, str]]:
        return [(k.name, k.arch) for k in listed(index, triton_cache, **filters)[1]]

    assert sorted(names(name="add*")) == [
        ("add_kernel", "80"),
        ("add_kernel", "90"),
        ("add_kernel", "gfx942"),
    ]
    assert {n for n, _ in names(name="[!a]*")} == {"scale_kernel"}
    assert {a for _, a in names(backend="hip")} == {"gfx942"}
    assert len(names(arch="sm_90")) == len(names(arch="90")) == 2
    assert names(arch="gfx942", name="scale*") == [("scale_kernel", "gfx942")]
    assert names(backend="cuda", arch="gfx942") == []

    scan = index.scan(Source("dir", triton_cache))
    ten_days_later = time.time() + 10 * 86400
    old = index.kernels(scan, KernelFilter(older_than=7 * 86400), now=ten_days_later)
    young = index.kernels(scan, KernelFilter(younger_than=7 * 86400), now=ten_days_later)
    assert len(old) == 6 and young == []
    assert index.kernels(scan, KernelFilter(older_than=7 * 86400)) == []

    by_size = index.kernels(scan, sort="size")
    assert [k.size for k in by_size] == sorted((k.size for k in by_size), reverse=True)
    by_name = index.kernels(scan, sort="name")
    assert [k.name for k in by_name] == sorted(k.name for k in by_name)
    with pytest.raises(UsageError):
        index.kernels(scan, sort="colour")


def test_only_entries_whose_directory_changed_are_read_again(
    index: KernelIndex, triton_cache: Path
) -> None:
    directory = entry_dirs(triton_cache)[("add_kernel", "cuda:90")]
    metadata = directory / "add_kernel.json"

    def rewrite_in_place(num_warps: int) -> None:
        """Change the metadata without moving the directory's mtime."""
        stamp = directory.stat()
        data = json.loads(metadata.read_text())
        data["num_warps"] = num_warps
        metadata.write_text(json.dumps(data))
        os.utime(directory, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    def warps() -> int | None:
        (kernel,) = listed(index, triton_cache, name="add*", arch="90")[1]
        return kernel.num_warps

    minute_ago = time.time() - 60
    os.utime(directory, (minute_ago, minute_ago))
    assert warps() == 4
    rewrite_in_place(8)
    assert warps() == 4  # the index trusted the unchanged directory
    os.utime(directory)  # what any create, rename or delete inside it does
    assert warps() == 8
    rewrite_in_place(16)  # within the same mtime tick as the change just indexed
    assert warps() == 16  # a directory that changed just now is read again

    shutil.rmtree(directory)
    assert listed(index, triton_cache, name="add*", arch="90")[1] == []
    assert len(listed(index, triton_cache)[1]) == 5


def break_entries(cache: Path) -> dict[str, str]:
    """Break five real entries in five ways and add three non-kernels; entry -> reason."""
    entries = entry_dirs(cache)
    broken = {}
    bad_json = entries[("add_kernel", "cuda:90")]
    (bad_json / "add_kernel.json").write_text('{"hash": ')
    broken[bad_json.name] = "bad metadata JSON"
    no_binary = entries[("scale_kernel", "cuda:90")]
    (no_binary / "scale_kernel.cubin").unlink()
    broken[no_binary.name] = "missing file"
    no_group = entries[("add_kernel", "cuda:80")]
    (no_group / "__grp__add_kernel.json").unlink()
    broken[no_group.name] = "no group file"
    wrong_hash = entries[("scale_kernel", "cuda:80")]
    data = json.loads((wrong_hash / "scale_kernel.json").read_text())
    data["hash"] = "00" * 32
    (wrong_hash / "scale_kernel.json").write_text(json.dumps(data))
    broken[wrong_hash.name] = "hash mismatch"
    no_target = entries[("add_kernel", "hip:gfx942")]
    data = json.loads((no_target / "add_kernel.json").read_text())
    del data["target"]
    (no_target / "add_kernel.json").write_text(json.dumps(data))
    broken[no_target.name] = "not a Triton kernel"

    stranger = cache / ("A" * 52)
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not Triton's")
    broken[stranger.name] = "not a Triton kernel"
    empty = cache / ("B" * 52)
    empty.mkdir()
    broken[empty.name] = "empty entry"
    module = cache / ("C" * 52)  # Triton's host helper: not a kernel, not a problem either
    module.mkdir()
    (module / "cuda_utils.so").write_bytes(b"\x7fELF")
    return broken


def test_broken_and_foreign_entries_are_problems_not_crashes(
    index: KernelIndex, triton_cache: Path
) -> None:
    broken = break_entries(triton_cache)
    scan, kernels = listed(index, triton_cache)
    assert [(k.name, k.arch) for k in kernels] == [("scale_kernel", "gfx942")]
    assert {p.location: p.reason for p in scan.problems} == broken
    summary = scan.summary()
    assert summary is not None and summary.startswith("7 entries skipped:")
    assert "not a Triton kernel (2)" in summary and "bad metadata JSON (1)" in summary
    assert "\n" not in summary


def test_group_paths_from_another_machine_are_understood_not_followed(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    entries = entry_dirs(triton_cache)
    moved = entries[("add_kernel", "cuda:90")]
    group_path = moved / "__grp__add_kernel.json"
    group = json.loads(group_path.read_text())
    group["child_paths"] = {
        name: f"/home/builder/.triton/cache/{moved.name}/{name}" for name in group["child_paths"]
    }
    group_path.write_text(json.dumps(group))

    hostile = entries[("scale_kernel", "cuda:90")]
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    group_path = hostile / "__grp__scale_kernel.json"
    group = json.loads(group_path.read_text())
    group["child_paths"]["scale_kernel.json"] = str(secret)
    group_path.write_text(json.dumps(group))

    scan, kernels = listed(index, triton_cache)
    by_id = {k.hash: k for k in kernels}
    assert by_id[moved.name].stale_group and by_id[moved.name].num_warps == 4
    assert sum(k.stale_group for k in kernels) == scan.stale_groups == 1
    assert hostile.name not in by_id
    (problem,) = scan.problems
    assert problem.reason == "bad group file" and str(secret) in problem.detail
    summary = scan.summary()
    assert summary is not None and "1 kernels have group files pointing elsewhere" in summary


def test_groups_written_through_a_symlinked_root_are_not_stale(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(triton_cache, target_is_directory=True)
    for group_path in triton_cache.glob("*/__grp__*.json"):  # as TRITON_CACHE_DIR=alias writes
        group = json.loads(group_path.read_text())
        entry = alias / group_path.parent.name
        group["child_paths"] = {name: str(entry / name) for name in group["child_paths"]}
        group_path.write_text(json.dumps(group))
    for root in (triton_cache, alias):
        scan, kernels = listed(index, root)
        assert len(kernels) == 6 and scan.stale_groups == 0 and scan.problems == ()


def test_nested_inductor_and_vllm_layouts_are_found(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    vllm = tmp_path / "vllm"
    nested = {
        "torch_compile_cache/0a1b2c3d4e/rank_0_0/inductor_cache/triton/0": "rank 0",
        "torch_compile_cache/0a1b2c3d4e/rank_1_0/inductor_cache/triton/1": "rank 1",
    }
    for relative in nested:
        shutil.copytree(triton_cache, vllm / relative)
    (vllm / "elsewhere").symlink_to(triton_cache, target_is_directory=True)  # never followed
    scan, kernels = listed(index, vllm)
    assert len(kernels) == 12 and scan.problems == ()
    assert {str(Path(k.location).parent.relative_to(vllm)) for k in kernels} == set(nested)
    assert scan.stale_groups == 12  # copied: their groups still name the original cache


@pytest.mark.slow
def test_a_real_inductor_cache_is_walked_without_noise(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    inductor = tmp_path / "inductor"
    counters = compile_inductor({"TORCHINDUCTOR_CACHE_DIR": str(inductor)})
    assert counters.get("fxgraph_cache_miss", 0) >= 1
    scan, kernels = listed(index, inductor)
    assert kernels == [] and scan.problems == ()  # a CPU compile writes C++, not Triton
    shutil.copytree(triton_cache, inductor / "triton" / "0")  # where a GPU run puts Triton's
    scan, kernels = listed(index, inductor)
    assert len(kernels) == 6 and scan.problems == ()


def test_snapshots_and_bundles_list_the_same_kernels(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    ref, store_root, bundle = saved(triton_cache, tmp_path)
    _, on_disk = listed(index, triton_cache)

    def shape(kernels: list[Kernel]) -> list[tuple[object, ...]]:
        return sorted(
            (k.hash, k.name, k.arch, k.num_stages, k.files, k.size, k.binary_digest, k.location)
            for k in kernels
        )

    for source in (Source("store", ref, store_root=store_root), Source("bundle", bundle)):
        scan = index.scan(source)
        kernels = index.kernels(scan, KernelFilter())
        assert scan.problems == () and scan.stale_groups == 0
        assert shape(kernels) == shape(on_disk), source
        assert len(index.kernels(scan, KernelFilter(backend="hip"))) == 2
        assert index.scan(source).source_id == scan.source_id  # indexed once


def test_hit_logs_fold_once_while_the_writer_lives_and_vanish_after(
    index: KernelIndex, triton_cache: Path
) -> None:
    kernels = {k.hash: k for k in listed(index, triton_cache)[1]}
    key = next(iter(kernels))
    log_dir = hit_log_dir(index.state)
    log_dir.mkdir(parents=True)
    log = log_dir / f"123-test{HIT_LOG_SUFFIX}"
    writer = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    fcntl.flock(writer, fcntl.LOCK_SH)  # a live writer, as warmer.tracking holds it
    when = time.time_ns()
    os.write(writer, hit_line(key, when) * 3 + hit_line(key, when + 10**9)[:20])
    assert index.fold_hits() == 3
    assert index.fold_hits() == 0  # counted once
    os.write(writer, hit_line(key, when + 10**9)[20:])  # the torn line completes
    assert index.fold_hits() == 1 and log.exists()
    os.close(writer)
    assert index.fold_hits() == 0 and not log.exists()

    (kernel,) = [k for k in listed(index, triton_cache, hits_above=3)[1]]
    assert kernel.hash == key and kernel.hits == 4
    assert kernel.last_access == pytest.approx(when / 1e9 + 1, abs=0.002)
    assert len(listed(index, triton_cache, hits_below=1)[1]) == 5


def hits_of(events: list[dict[str, object]]) -> dict[tuple[object, object], object]:
    return {(e["kernel"], e["target"]): e["cache_hit"] for e in events}


def test_ir_prune_keeps_every_kernel_loadable(index: KernelIndex, triton_cache: Path) -> None:
    _, kernels = listed(index, triton_cache)
    plan = plan_prune(triton_cache, kernels, "ir")
    assert len(plan.items) == 6 and plan.file_count == 24
    assert plan.expected_freed == sum(
        f.size for k in kernels for f in k.files if f.kind in {"source", "ttir", "ttgir", "llir"}
    )
    result = plan.execute()
    assert result.errors == () and result.freed == plan.expected_freed
    for directory in entry_dirs(triton_cache).values():
        suffixes = {p.suffix for p in directory.iterdir()}
        assert suffixes in ({".json", ".ptx", ".cubin"}, {".json", ".amdgcn", ".hsaco"})
        (group,) = directory.glob("__grp__*.json")
        children = json.loads(group.read_text())["child_paths"]
        assert {Path(p).parent for p in children.values()} == {directory}
        assert set(children) == {p.name for p in directory.iterdir()} - {group.name}
    assert set(hits_of(compile_triton(triton_cache)).values()) == {True}
    _, after = listed(index, triton_cache)
    assert {k.kinds_str for k in after} == {"ptx+cubin", "amdgcn+hsaco"}


def test_full_prune_of_a_selection_removes_only_those(
    index: KernelIndex, triton_cache: Path
) -> None:
    _, hip = listed(index, triton_cache, backend="hip")
    plan = plan_prune(triton_cache, hip, "full")
    assert plan.execute().entries == 2
    hits = hits_of(compile_triton(triton_cache))
    assert {key for key, hit in hits.items() if not hit} == {
        ("add_kernel", "hip:gfx942"),
        ("scale_kernel", "hip:gfx942"),
    }


def test_prune_never_leaves_the_cache_root(
    index: KernelIndex, triton_cache: Path, tmp_path: Path
) -> None:
    _, kernels = listed(index, triton_cache, backend="hip")
    other_root = tmp_path / "other"
    other_root.mkdir()
    result = plan_prune(other_root, kernels, "full").execute()
    assert result.entries == 0 and len(result.errors) == 2
    assert all(Path(k.location).is_dir() for k in kernels)
