"""`warmer ls | show | verify | gc | prune` against a real store.

What the files hold does not matter to these commands, so the store holds files laid out like a
Triton cache and needs no Triton (the cache tests use caches that Triton really wrote)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers.store import TAG, manifest, put_files

from warmer.cli import cli
from warmer.errors import BundleError, StoreError, UsageError
from warmer.store import Store

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, env=env)


#: Three kernels, four files each, as Triton lays them out.
KERNEL_FILES = {
    f"/root/.triton/cache/{key}/{name}": f"{key} {name}\n".encode() * 500 * (index + 1)
    for index, key in enumerate(["A" * 52, "B" * 52, "C" * 52])
    for name in ("k.source", "k.ttir", "k.cubin", "k.json")
}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """Two snapshots sharing a Triton-like cache; `tiny` was last used 3 days ago."""
    root = tmp_path / "store"
    with Store(root) as store:
        entries = put_files(store, KERNEL_FILES, "triton")
        tiny = manifest("tiny", entries).with_verify(
            {"hit_rate": 1.0, "hits": 6, "misses": 0, "cold_s": 12.1, "warm_s": 0.9}
        )
        store.commit(tiny)
        extra = put_files(store, {"/root/.cache/vllm/cache_key_factors.json": b"{}"}, "vllm")
        store.commit(manifest("big", [*entries, *extra]))
    with sqlite3.connect(root / "store-v1" / "index.sqlite") as db:
        db.execute(
            "UPDATE refs SET last_access = ? WHERE name = 'tiny'", (time.time() - 3 * 86400,)
        )
    return root


def test_ls_prints_a_table_and_a_total(store_dir: Path) -> None:
    result = invoke("ls", "--store", str(store_dir))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["REF", "ID", "FILES", "SIZE", "LAST", "USED"]
    assert lines[1].split()[0] == f"big@{TAG}"
    assert lines[2].split()[0] == f"tiny@{TAG}" and lines[2].rstrip().endswith("3d ago")
    assert lines[1].rstrip().endswith("just now")
    assert lines[-1].startswith("2 snapshots, ") and lines[-1].endswith(" stored")
    assert result.stderr == ""


def test_ls_quiet_and_json(store_dir: Path) -> None:
    quiet = invoke("ls", "-q", "--store", str(store_dir))
    assert quiet.stdout == f"big@{TAG}\ntiny@{TAG}\n"
    document = json.loads(invoke("ls", "--json", "--store", str(store_dir)).stdout)
    refs = {row["ref"]: row for row in document["snapshots"]}
    assert set(refs) == {f"big@{TAG}", f"tiny@{TAG}"}
    assert refs[f"big@{TAG}"]["files"] == refs[f"tiny@{TAG}"]["files"] + 1
    # The Triton files are shared, so far fewer bytes are stored than referenced.
    assert document["stored"] < document["referenced"]
    assert refs[f"tiny@{TAG}"]["last_access"] < time.time() - 2 * 86400


def test_ls_of_an_empty_store_says_so_on_stderr(tmp_path: Path) -> None:
    result = invoke("ls", "--store", str(tmp_path))
    assert result.exit_code == 0 and result.stdout == ""
    assert "No snapshots" in result.stderr


def test_show_describes_a_snapshot_without_touching_it(store_dir: Path) -> None:
    result = invoke("show", "tiny", "--store", str(store_dir))
    assert result.exit_code == 0, result.output
    assert f"ref:         tiny@{TAG}" in result.stdout
    assert "hit rate 100% (6 hits, 0 misses), cold 12.1s -> warm 900ms" in result.stdout
    assert "torch=2.13.0+cpu" in result.stdout
    kinds = [line.split() for line in result.stdout.splitlines() if line.startswith("triton")]
    assert len(kinds) == 1 and int(kinds[0][1]) > 10
    listing = json.loads(invoke("ls", "--json", "--store", str(store_dir)).stdout)
    tiny = next(row for row in listing["snapshots"] if row["name"] == "tiny")
    assert tiny["last_access"] < time.time() - 2 * 86400


def test_show_json_with_files(store_dir: Path) -> None:
    document = json.loads(
        invoke("show", "big", "--json", "--files", "--store", str(store_dir)).stdout
    )
    assert document["ref"] == f"big@{TAG}"
    assert document["kinds"]["vllm"] == {"files": 1, "size": 2}
    assert document["kinds"]["triton"]["files"] == document["files"] - 1
    paths = [entry["path"] for entry in document["file_list"]]
    assert paths == sorted(paths) and "/root/.cache/vllm/cache_key_factors.json" in paths
    assert "file_list" not in json.loads(
        invoke("show", "big", "--json", "--store", str(store_dir)).stdout
    )


def test_show_unknown_or_ambiguous_ref_is_a_usage_error(store_dir: Path) -> None:
    result = invoke("show", "nope", "--store", str(store_dir))
    assert result.exit_code == UsageError.exit_code
    assert "error: no snapshot matches 'nope'" in result.stderr and result.stdout == ""


def test_verify_clean_then_corrupt(store_dir: Path) -> None:
    clean = invoke("verify", "--store", str(store_dir))
    assert clean.exit_code == 0 and "no problems" in clean.stderr
    with Store(store_dir) as store:
        _, tiny = store.resolve("tiny")
        victim = store.objects.path(tiny.files[0].digest)
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes() + b"!")
    broken = invoke("verify", "--json", "--store", str(store_dir))
    assert broken.exit_code == StoreError.exit_code == 1
    assert "error: the store has 1 problem(s)" in broken.stderr
    document = json.loads(broken.stdout)
    assert document["ok"] is False
    assert document["problems"] == [f"corrupt object {tiny.files[0].digest} ({victim})"]


def test_verify_exit_code_through_main(store_dir: Path) -> None:
    with Store(store_dir) as store:
        digest = store.resolve("tiny", touch=False)[1].files[0].digest
        victim = store.objects.path(digest)
    victim.chmod(0o644)
    victim.write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", "from warmer.cli import main; main()", "verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "WARMER_STORE": str(store_dir)},
        check=False,
    )
    assert done.returncode == 1
    assert "corrupt object" in done.stderr and "error: the store has 1 problem(s)" in done.stderr
    assert done.stdout == ""


def test_verify_a_bundle(store_dir: Path, tmp_path: Path) -> None:
    from warmer.bundle import export_bundle

    with Store(store_dir) as store:
        bundle = export_bundle(store, "tiny", tmp_path / "out.tar.gz", "gz")
    good = invoke("verify", str(bundle), "--json")
    assert good.exit_code == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    bad = invoke("verify", str(bundle))
    assert bad.exit_code == BundleError.exit_code and "problem(s)" in bad.stderr


def test_gc_dry_run_then_for_real(store_dir: Path) -> None:
    with Store(store_dir) as store:
        store.remove_ref("big")
    dry = json.loads(invoke("gc", "--dry-run", "--json", "--store", str(store_dir)).stdout)
    assert dry == {
        "objects_removed": 2,
        "temp_files_removed": 0,
        "bytes_freed": dry["bytes_freed"],
        "dry_run": True,
    }
    done = invoke("gc", "--store", str(store_dir))
    assert done.exit_code == 0 and done.stderr.startswith("Removed 2 object(s) and 0 temp file(s)")
    assert (
        json.loads(invoke("gc", "--json", "--store", str(store_dir)).stdout)["objects_removed"] == 0
    )


def test_prune_asks_first_and_no_keeps_everything(store_dir: Path) -> None:
    result = invoke("prune", "--older-than", "2d", "--store", str(store_dir), stdin="n\n")
    assert result.exit_code == 0
    assert "About to delete 1 snapshots," in result.stderr and "Proceed? [y/N]" in result.stderr
    assert "Nothing deleted." in result.stderr
    assert f"tiny@{TAG}" in result.stdout  # the plan, as a table
    assert invoke("ls", "-q", "--store", str(store_dir)).stdout.count("\n") == 2


def test_prune_yes_deletes_the_idle_snapshot(store_dir: Path) -> None:
    result = invoke("prune", "--older-than", "2d", "--store", str(store_dir), stdin="y\n")
    assert result.exit_code == 0 and "Deleted 1 snapshot(s)" in result.stderr
    assert invoke("ls", "-q", "--store", str(store_dir)).stdout == f"big@{TAG}\n"
    assert invoke("verify", "--json", "--store", str(store_dir)).exit_code == 0


def test_prune_json_needs_yes(store_dir: Path) -> None:
    refused = invoke("prune", "--max-size", "0", "--json", "--store", str(store_dir))
    assert refused.exit_code == UsageError.exit_code and "pass -y" in refused.stderr
    dry = json.loads(
        invoke("prune", "--max-size", "0", "--json", "--dry-run", "--store", str(store_dir)).stdout
    )
    assert [row["name"] for row in dry["refs"]] == ["tiny", "big"] and dry["freed"] == 0
    assert invoke("ls", "-q", "--store", str(store_dir)).stdout.count("\n") == 2
    done = json.loads(
        invoke("prune", "--max-size", "0", "--json", "-y", "--store", str(store_dir)).stdout
    )
    assert done["freed"] == done["expected_freed"] == dry["expected_freed"] > 0
    assert invoke("ls", "-q", "--store", str(store_dir)).stdout == ""


def test_prune_limits_come_from_options_or_the_environment(store_dir: Path) -> None:
    store = ["--store", str(store_dir)]
    missing = invoke("prune", "-y", *store, env={"WARMER_MAX_SIZE": ""})
    assert missing.exit_code == UsageError.exit_code and "--max-size" in missing.stderr
    bad = invoke("prune", "--older-than", "soon", *store)
    assert bad.exit_code == UsageError.exit_code and "--older-than: not a duration" in bad.stderr
    from_env = invoke("prune", "--dry-run", "--json", *store, env={"WARMER_MAX_SIZE": "1K"})
    assert [row["name"] for row in json.loads(from_env.stdout)["refs"]] == ["tiny", "big"]
    roomy = invoke("prune", "-y", "--max-size", "20G", *store)
    assert roomy.exit_code == 0 and "Nothing to prune." in roomy.stderr
