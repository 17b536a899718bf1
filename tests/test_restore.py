"""Save → bundle → restore elsewhere → the compilers hit (real Triton and Inductor caches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import compile_inductor, compile_triton, saved_triton

from warmer.bundle import write_bundle
from warmer.caches import CacheRoot
from warmer.cli import cli
from warmer.envkey import EnvKey
from warmer.errors import EnvMismatch
from warmer.restoring import restore
from warmer.saving import save
from warmer.store import Store
from warmer.store.manifest import Manifest


def test_triton_cache_hits_after_restore_under_another_root(
    triton_cache: Path, tmp_path: Path
) -> None:
    bundle, manifest = saved_triton(triton_cache, tmp_path)
    kinds = {entry.kind for entry in manifest.files}
    assert kinds == {"triton"}
    assert any(entry.path.endswith(".cubin") for entry in manifest.files)
    assert any(entry.path.endswith(".hsaco") for entry in manifest.files)

    root = tmp_path / "elsewhere"
    root.mkdir()
    report = restore(bundle, root=root)
    assert report.written == len(manifest.files) and report.skipped_identical == 0
    # every group file recorded absolute paths of the original directory: all re-pointed
    groups = [e for e in manifest.files if Path(e.path).name.startswith("__grp__")]
    assert report.rewritten == len(groups) == 6

    restored = root / str(triton_cache).lstrip("/")
    events = compile_triton(restored)
    assert events and all(event["cache_hit"] for event in events), events

    again = restore(bundle, root=root)
    assert again.written == 0 and again.skipped_identical == len(manifest.files)


def test_without_rewriting_the_moved_cache_misses(triton_cache: Path, tmp_path: Path) -> None:
    """The control for the test above: a plain copy of the cache to a new path misses."""
    moved = tmp_path / "moved"
    triton_cache.rename(moved)
    events = compile_triton(moved)
    assert events and not any(event["cache_hit"] for event in events)


def test_inductor_cache_hits_after_restore(tmp_path: Path) -> None:
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    cold = compile_inductor(env)
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and not cold.get("fxgraph_cache_hit")
    result = save(
        name="inductor-unit",
        roots=[CacheRoot("inductor", env["TORCHINDUCTOR_CACHE_DIR"])],
        out=tmp_path,
        store=Store(tmp_path / "store"),
    )
    assert result.bundle is not None
    root = tmp_path / "fresh"
    root.mkdir()
    restore(result.bundle, root=root)
    warm_env = {
        **env,
        "TORCHINDUCTOR_CACHE_DIR": str(root / env["TORCHINDUCTOR_CACHE_DIR"].lstrip("/")),
    }
    warm = compile_inductor(warm_env)
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss"), warm


def foreign(manifest: Manifest, **changes: object) -> Manifest:
    env = {**manifest.env, **changes}
    key = EnvKey.from_dict(env)
    return Manifest(
        name=manifest.name,
        env=key.to_dict(),
        env_tag=key.tag,
        env_digest=key.digest,
        files=manifest.files,
    )


def test_environment_mismatch_refuses_with_every_reason(triton_cache: Path, tmp_path: Path) -> None:
    _bundle, manifest = saved_triton(triton_cache, tmp_path)
    store = Store(tmp_path / "store")
    other = write_bundle(
        foreign(manifest, torch="2.6.0+cu124", triton="3.2.0"),
        store.open_object,
        tmp_path / "x.tar.zst",
    )
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(EnvMismatch) as caught:
        restore(other, root=root)
    assert any("torch" in r for r in caught.value.reasons)
    assert any("triton" in r for r in caught.value.reasons)
    assert list(root.iterdir()) == []

    result = CliRunner().invoke(cli, ["restore", str(other), "--root", str(root), "--json"])
    assert result.exit_code == 4, result.output
    forced = CliRunner().invoke(
        cli, ["restore", str(other), "--root", str(root), "--force", "--json"]
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["written"] == len(manifest.files)


def test_dry_run_writes_nothing_and_json_counts(triton_cache: Path, tmp_path: Path) -> None:
    bundle, manifest = saved_triton(triton_cache, tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    result = CliRunner().invoke(
        cli, ["restore", str(bundle), "--root", str(root), "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["written"] == len(manifest.files)
    assert report["bytes"] == manifest.total_size
    assert list(root.iterdir()) == []


def test_map_moves_a_kind_to_another_directory(triton_cache: Path, tmp_path: Path) -> None:
    bundle, _ = saved_triton(triton_cache, tmp_path)
    target = tmp_path / "mapped-triton"
    result = CliRunner().invoke(
        cli, ["restore", str(bundle), "--map", f"{triton_cache}={target}", "--json"]
    )
    assert result.exit_code == 0, result.output
    events = compile_triton(target)
    assert events and all(event["cache_hit"] for event in events)


def test_save_cli_json_and_kinds(triton_cache: Path, tmp_path: Path) -> None:
    env = {
        "TRITON_CACHE_DIR": str(triton_cache),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "no-inductor"),
        "VLLM_CACHE_ROOT": str(tmp_path / "no-vllm"),
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "WARMER_STORE": str(tmp_path / "store"),
    }
    os.makedirs(env["TMPDIR"])
    out = tmp_path / "out"
    args = ["save", "--kinds", "triton", "--out", str(out), "--json"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) >= {"bundle", "files", "bytes", "env"}
    assert Path(document["bundle"]).parent == out
    assert document["files"] == sum(1 for p in triton_cache.rglob("*") if p.is_file())
    assert set(document["kinds"]) == {"triton"}

    empty = CliRunner().invoke(cli, ["save", "--kinds", "vllm", "--out", str(out)], env=env)
    assert empty.exit_code == 2 and "no compile cache files" in empty.output
    bad = CliRunner().invoke(cli, ["save", "--kinds", "nonsense", "--out", str(out)], env=env)
    assert bad.exit_code == 2 and "unknown cache kind" in bad.output


def test_export_import_between_stores(triton_cache: Path, tmp_path: Path) -> None:
    _bundle, manifest = saved_triton(triton_cache, tmp_path)
    runner = CliRunner()
    first = ["--store", str(tmp_path / "store")]
    exported = runner.invoke(
        cli, ["export", manifest.ref, "-o", str(tmp_path / "x.tar.gz"), *first, "--json"]
    )
    assert exported.exit_code == 0, exported.output
    path = Path(json.loads(exported.stdout)["bundle"])
    assert path.name == "x.tar.gz" and path.read_bytes()[:2] == b"\x1f\x8b"

    second = ["--store", str(tmp_path / "other")]
    imported = runner.invoke(cli, ["import", str(path), *second, "--json"])
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["ref"] == manifest.ref
    with Store(tmp_path / "other") as other:
        assert other.resolve(manifest.ref)[1] == manifest
        assert other.verify().problems == []

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(path.read_bytes()[:-200])
    refused = runner.invoke(cli, ["import", str(broken), "--store", str(tmp_path / "third")])
    assert refused.exit_code == 2, refused.output
    with Store(tmp_path / "third") as third:
        assert third.list() == []
