"""Shell completion as the shell asks for it (`_WARMER_COMPLETE`): REF arguments complete the
store's refs, read without creating or locking anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, saved_triton
from helpers.registry import synthetic

from warmer.store import Store


def complete(words: str, store: Path, shell: str = "bash") -> list[str]:
    """What `warmer`'s completion answers bash for the command line `words` (cursor at its end)."""
    done = subprocess.run(
        [sys.executable, "-c", "from warmer.cli import main; main()"],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "WARMER_STORE": str(store),
            "_WARMER_COMPLETE": f"{shell}_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        },
    )
    return done.stdout.splitlines()


def test_ref_arguments_complete_the_stores_refs(triton_cache: Path, tmp_path: Path) -> None:
    _bundle, manifest = saved_triton(triton_cache, tmp_path)
    store = tmp_path / "store"
    with Store(store) as opened:
        other = synthetic(opened, "tiny-cpu", {"/x/y": 10})
    for command in ("show", "restore", "kernels ls"):
        assert complete(f"warmer {command} tri", store) == [f"plain,{manifest.ref}"], command
    assert complete("warmer show ", store) == sorted([f"plain,{manifest.ref}", f"plain,{other}"])
    # nothing matches: the shell completes file names (a bundle)
    assert complete("warmer restore dist/x", store) == ["file,dist/x"]


def test_no_store_completes_files_and_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "none"
    assert complete("warmer show ti", store) == ["file,ti"]
    assert not store.exists()


def test_the_documented_script_is_printed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from warmer.cli import main; main()"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "_WARMER_COMPLETE": "bash_source"},
    )
    assert "_warmer_completion()" in done.stdout and "complete -o" in done.stdout
