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
    assert lines[0].split() == ["REF", "ID", "FILES", "SIZE", "CREATED", "LAST", "USED", "PINNED"]
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
    assert "About to delete 1 snapshot," in result.stderr and "Proceed? [y/N]" in result.stderr
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


def test_ls_shows_pins_history_and_what_gc_would_remove(store_dir: Path) -> None:
    """A rerun that replaces a verified snapshot keeps it as history; `ls` says so, `ls --all`
    lists it, and what no ref holds any more is counted where people look."""
    store = ["--store", str(store_dir)]
    assert invoke("pin", "big", *store).exit_code == 0
    with Store(store_dir) as opened:
        verified = opened.resolve("tiny", touch=False)[0]
        files = put_files(opened, {"/root/.triton/cache/D/k.cubin": b"rerun"}, "triton")
        opened.commit(manifest("tiny", files))  # a plain rerun: no verify result
        opened.commit(manifest("gone", put_files(opened, {"/gone": b"x" * 2000})))
        opened.remove_ref("gone")
    listed = invoke("ls", *store)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert rows[f"big@{TAG}"].rstrip().endswith("yes")  # pinned
    assert "just now" in rows[f"tiny@{TAG}"] and verified.short_id not in listed.stdout
    assert listed.stdout.splitlines()[-1].endswith("; 1 earlier (warmer ls --all)")
    assert "2 unreferenced file(s)" in listed.stderr and "warmer gc removes them" in listed.stderr
    everything = invoke("ls", "--all", "tiny", *store)
    lines = everything.stdout.splitlines()
    assert lines[1].startswith(f"tiny@{TAG}") and "earlier, replaced just now" in lines[2]
    assert verified.short_id in lines[2] and len(lines) == 4
    quiet = invoke("ls", "-q", "-a", *store).stdout.split()
    assert quiet == [f"big@{TAG}", f"tiny@{TAG}", verified.short_id]
    document = json.loads(invoke("ls", "--json", *store).stdout)
    [earlier] = document["history"]
    assert earlier["snapshot"] == verified.snapshot and earlier["replaced"] > 0
    assert document["unreferenced"]["files"] == 2 and document["unreferenced"]["bytes"] > 2000
    # The earlier snapshot is still whole, and restorable by its id.
    shown = json.loads(invoke("show", verified.short_id, "--json", *store).stdout)
    assert shown["verify"]["hit_rate"] == 1.0
    assert json.loads(invoke("gc", "--dry-run", "--json", *store).stdout)["objects_removed"] == 2


def test_rm_removes_refs_after_asking_and_never_on_an_empty_list(store_dir: Path) -> None:
    store = ["--store", str(store_dir)]
    empty = invoke("rm", "-y", *store)
    assert empty.exit_code == UsageError.exit_code and "nothing to remove" in empty.stderr
    assert invoke("pin", "big", *store).exit_code == 0
    pinned = invoke("rm", "big", "tiny", "-y", *store)
    assert pinned.exit_code == UsageError.exit_code and "--force" in pinned.stderr
    unknown = invoke("rm", "nope", "-y", *store)
    assert unknown.exit_code == UsageError.exit_code
    blind = invoke("rm", "tiny", "--json", *store)
    assert blind.exit_code == UsageError.exit_code and "pass -y" in blind.stderr
    dry = json.loads(invoke("rm", "tiny", "--dry-run", "--json", *store).stdout)
    assert [row["name"] for row in dry["refs"]] == ["tiny"] and dry["removed"] == []
    declined = invoke("rm", "tiny", *store, stdin="n\n")
    assert "About to delete 1 snapshot," in declined.stderr and "Nothing deleted" in declined.stderr
    assert invoke("ls", "-q", *store).stdout.count("\n") == 2
    done = invoke("rm", "tiny", *store, stdin="y\n")
    assert done.exit_code == 0 and "Removed 1 snapshot(s)" in done.stderr, done.output
    assert invoke("ls", "-q", *store).stdout == f"big@{TAG}\n"
    # tiny's files are all in big too: only its manifest is left for gc
    assert json.loads(invoke("gc", "--json", *store).stdout)["objects_removed"] == 1
    forced = json.loads(invoke("rm", "big", "--force", "-y", "--json", *store).stdout)
    assert [row["name"] for row in forced["removed"]] == ["big"] and forced["gc_frees"] > 0
    assert invoke("ls", "-q", *store).stdout == ""


def test_verify_a_ref_rehashes_its_objects(store_dir: Path, tmp_path: Path) -> None:
    store = ["--store", str(store_dir)]
    with Store(store_dir) as opened:
        digest = opened.resolve("tiny", touch=False)[1].files[0].digest
        victim = opened.objects.path(digest)
    good = invoke("verify", "big", "--json", *store)
    assert good.exit_code == 0 and json.loads(good.stdout)["objects_checked"] == 14
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    bad = invoke("verify", f"tiny@{TAG}", *store)
    assert bad.exit_code == StoreError.exit_code and digest in bad.stderr
    assert f"error: tiny@{TAG} has 1 problem(s)" in bad.stderr
    assert invoke("verify", "nope", *store).exit_code == UsageError.exit_code
    # An existing file is a bundle, whatever its name.
    odd = tmp_path / "tiny"
    odd.write_bytes(b"not a bundle")
    assert invoke("verify", str(odd), *store).exit_code == BundleError.exit_code


def test_export_refuses_a_damaged_object_and_import_repairs_it(
    store_dir: Path, tmp_path: Path
) -> None:
    store = ["--store", str(store_dir)]
    good = tmp_path / "good.tar.zst"
    assert invoke("export", "tiny", "-o", str(good), *store).exit_code == 0
    with Store(store_dir) as opened:
        entry = opened.resolve("tiny", touch=False)[1].files[-1]
        victim = opened.objects.path(entry.digest)
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    for fmt in ("tar.zst", "tar.gz"):
        refused = invoke("export", "tiny", "-o", str(out / f"tiny.{fmt}"), *store)
        assert refused.exit_code == StoreError.exit_code, refused.output
        assert f"store object {entry.digest} ({entry.path})" in refused.stderr
        assert list(out.iterdir()) == []  # no bundle, no temp file
    imported = invoke("import", str(good), *store)
    assert imported.exit_code == 0, imported.output
    assert invoke("verify", "--json", *store).exit_code == 0
    assert invoke("export", "tiny", "-o", str(out), *store).exit_code == 0
    [bundle] = out.iterdir()
    assert invoke("verify", str(bundle)).exit_code == 0
